# Component separation (Heurtel-Depeiges et al. 2023): dust and CMB maps, a score model
# of the dust learned by denoising score matching on a diffusion whose noise is coloured
# by the CMB spectrum, posterior sampling of the dust given y = dust + sigma * cmb
# (sharded over observations), and an evaluation against the Wiener filter.
# Logic: src/simobs/separation.

from simobs.separation.fields import dust_fits_files

SEPARATION = config["separation"]
SEPARATION_SEED = config["seed"] + SEPARATION["seed"]
SEPARATION_SHARDS = range(SEPARATION["sampling"]["n_shards"])
_SIGMA = SEPARATION["fields"]["sigma"]
# Training covers the diffusion times up to t*(largest sigma to separate).
SEPARATION_SIGMA_MAX = SEPARATION["training"]["sigma_max"] or max(
    _SIGMA if isinstance(_SIGMA, list) else [_SIGMA]
)

TARGETS.extend(["results/separation/metrics.json"])


rule make_fields:
    input:
        # the user's dust maps (dust.kind: fits; globs expanded); generated dust reads nothing
        fits=dust_fits_files(SEPARATION["fields"]["dust"]),
    output:
        fields="results/separation/fields.h5",
        overview=report(
            "results/separation/fields_overview.png",
            caption="../report/separation_fields.rst",
            category="3. Component separation",
        ),
        # user dust files left out under ingest.on_bad_file: skip (header only when none)
        rejected="results/separation/dust.rejected.tsv",
        run_id="results/separation/make_fields.run_id",
    log:
        "results/logs/separation/make_fields.log",
    params:
        settings=SEPARATION["fields"],
        seed=SEPARATION_SEED,
        on_bad_file=config["ingest"]["on_bad_file"],
        max_rejected_fraction=config["ingest"]["max_rejected_fraction"],
    priority: PRIORITY_SCORE_MODEL
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        CPU_ENV
    script:
        "../scripts/make_fields.py"


rule train_score_model:
    input:
        fields="results/separation/fields.h5",
        fields_run="results/separation/make_fields.run_id",
    output:
        model="results/separation/score_model.pt",
        history="results/separation/training_history.csv",
        denoising=report(
            "results/separation/denoising_examples.png",
            caption="../report/separation_denoising.rst",
            category="3. Component separation",
        ),
        run_id="results/separation/train_score_model.run_id",
    log:
        "results/logs/separation/train_score_model.log",
    benchmark:
        "results/benchmarks/separation/train_score_model.tsv"
    params:
        settings={**SEPARATION["model"], **SEPARATION["sde"], **SEPARATION["training"]},
        seed=SEPARATION_SEED + 1,
        sigma_max=SEPARATION_SIGMA_MAX,
        # Not an output: Snakemake deletes the outputs of a failed job, and the per-epoch
        # checkpoint must survive a crash or a SLURM time limit so that the rerun resumes.
        checkpoint="results/separation/checkpoints/score_model.ckpt",
    threads: 2
    priority: PRIORITY_SCORE_MODEL
    resources:
        mem_mb=8000,
        runtime=720,  # minutes; the GPU itself comes from the SLURM profile
    conda:
        GPU_ENV
    script:
        "../scripts/train_score_model.py"


rule separate:
    input:
        fields="results/separation/fields.h5",
        model="results/separation/score_model.pt",
        model_run="results/separation/train_score_model.run_id",
    output:
        posterior="results/separation/posterior/shard{shard}.h5",
        run_id="results/separation/posterior/shard{shard}.run_id",
    log:
        "results/logs/separation/separate.{shard}.log",
    benchmark:
        "results/benchmarks/separation/separate.{shard}.tsv"
    params:
        settings=SEPARATION["sampling"],
        n_bins=SEPARATION["evaluation"]["n_bins"],
        seed=SEPARATION_SEED + 2,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    conda:
        GPU_ENV
    script:
        "../scripts/separate.py"


rule evaluate_separation:
    input:
        fields="results/separation/fields.h5",
        posteriors=expand("results/separation/posterior/shard{shard}.h5", shard=SEPARATION_SHARDS),
        posterior_runs=expand("results/separation/posterior/shard{shard}.run_id", shard=SEPARATION_SHARDS),
    output:
        metrics="results/separation/metrics.json",
        dust_spectra="results/separation/dust_power_spectra.csv",
        cmb_spectra="results/separation/cmb_power_spectra.csv",
        coverage_table="results/separation/coverage.csv",
        dust_examples=report(
            "results/separation/dust_examples.png",
            caption="../report/separation_examples.rst",
            category="3. Component separation",
        ),
        cmb_examples=report(
            "results/separation/cmb_examples.png",
            caption="../report/separation_examples.rst",
            category="3. Component separation",
        ),
        power_spectra=report(
            "results/separation/power_spectra.png",
            caption="../report/separation_power_spectra.rst",
            category="3. Component separation",
        ),
        cross_correlation=report(
            "results/separation/cross_correlation.png",
            caption="../report/separation_cross_correlation.rst",
            category="3. Component separation",
        ),
        coverage=report(
            "results/separation/coverage.png",
            caption="../report/separation_coverage.rst",
            category="3. Component separation",
        ),
        run_id="results/separation/evaluate_separation.run_id",
    log:
        "results/logs/separation/evaluate_separation.log",
    params:
        settings=SEPARATION["evaluation"],
        # the Gaussian-part baseline is sampled as the model was: same sde, steps, seeds
        sde=SEPARATION["sde"],
        sampling=SEPARATION["sampling"],
        seed=SEPARATION_SEED + 2,
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        CPU_ENV
    script:
        "../scripts/evaluate_separation.py"


# Opt-in (not in TARGETS): the phi-conditioned score model of the blind stage (Gibbs
# diffusion), trained on the same dust maps with phi = (H0, ombh2) drawn per example from
# the box of the camb spectra grid (rule cmb_spectra_grid) and the noise coloured by
# Sigma_phi.  Run: snakemake results/separation/blind_score_model.pt
rule train_blind_score_model:
    input:
        fields="results/separation/fields.h5",
        fields_run="results/separation/make_fields.run_id",
        spectra_grid="results/separation/cmb_spectra_grid.h5",
    output:
        model="results/separation/blind_score_model.pt",
        history="results/separation/blind_training_history.csv",
        run_id="results/separation/train_blind_score_model.run_id",
    log:
        "results/logs/separation/train_blind_score_model.log",
    benchmark:
        "results/benchmarks/separation/train_blind_score_model.tsv"
    params:
        settings={
            **SEPARATION["model"],
            **SEPARATION["sde"],
            **SEPARATION["training"],
            **SEPARATION["conditional"],
        },
        seed=SEPARATION_SEED + 1,
        # train up to t*(the largest sigma the blind sampler may visit)
        sigma_max=SEPARATION["conditional"]["sigma_max"] or SEPARATION_SIGMA_MAX,
        # not an output: it must survive a failed job (see train_score_model)
        checkpoint="results/separation/checkpoints/blind_score_model.ckpt",
    threads: 2
    priority: PRIORITY_SCORE_MODEL
    resources:
        mem_mb=8000,
        runtime=720,  # minutes; the GPU itself comes from the SLURM profile
    conda:
        GPU_ENV
    script:
        "../scripts/train_blind_score_model.py"
