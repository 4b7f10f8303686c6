# Blind component separation by Gibbs diffusion (issue #15): the CMB parameters
# phi = (H0, ombh2) and its amplitude sigma are unknown and sampled jointly with the dust.
# Opt-in: `snakemake blind` (rule blind in the Snakefile; not in the default targets).  Logic: src/simobs/separation/blind.py.

from simobs.separation.blind import predictor_path

BLIND = SEPARATION["blind"]
BLIND_SEED = SEPARATION_SEED + 10
BLIND_SHARDS = range(BLIND["n_shards"])


rule cmb_spectra_grid:
    output:
        grid="results/separation/cmb_spectra_grid.h5",
        heldout="results/separation/cmb_spectra_grid_heldout.csv",
        metrics="results/separation/cmb_spectra_grid.json",
        run_id="results/separation/cmb_spectra_grid.run_id",
    log:
        "results/logs/separation/cmb_spectra_grid.log",
    benchmark:
        "results/benchmarks/separation/cmb_spectra_grid.tsv"
    params:
        settings=BLIND["grid"],
        prior=BLIND["prior"],
        cosmology=SEPARATION["fields"]["cosmology"],
        npix=SEPARATION["fields"]["npix"],
        pixel_size_arcmin=SEPARATION["fields"]["pixel_size_arcmin"],
        seed=BLIND_SEED,
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        CPU_ENV
    script:
        "../scripts/cmb_spectra_grid.py"


rule blind_observations:
    input:
        fields="results/separation/fields.h5",
        grid="results/separation/cmb_spectra_grid.h5",
        grid_run="results/separation/cmb_spectra_grid.run_id",
    output:
        observations="results/separation/blind/observations.h5",
        run_id="results/separation/blind/observations.run_id",
    log:
        "results/logs/separation/blind_observations.log",
    params:
        settings=BLIND["observations"],
        prior=BLIND["prior"],
        sigma=SEPARATION["fields"]["sigma"],
        seed=BLIND_SEED + 1,
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        CPU_ENV
    script:
        "../scripts/blind_observations.py"


rule blind_separate:
    input:
        # the phi-conditioned score model only for predictor: learned (gaussian needs no training)
        model=lambda w: predictor_path(BLIND, "results/separation/blind_score_model.pt"),
        fields="results/separation/fields.h5",
        grid="results/separation/cmb_spectra_grid.h5",
        observations="results/separation/blind/observations.h5",
        observations_run="results/separation/blind/observations.run_id",
    output:
        chains="results/separation/blind/shard{shard}.h5",
        run_id="results/separation/blind/shard{shard}.run_id",
    log:
        "results/logs/separation/blind_separate.{shard}.log",
    benchmark:
        "results/benchmarks/separation/blind_separate.{shard}.tsv"
    params:
        settings={k: BLIND[k] for k in ("predictor", "n_shards", "n_chains", "n_gibbs", "n_burn", "n_steps",
                                        "method", "init", "hmc", "baselines", "device")},
        prior=BLIND["prior"],
        sigma=SEPARATION["fields"]["sigma"],
        sde=SEPARATION["sde"],
        seed=BLIND_SEED + 2,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    conda:
        GPU_ENV
    script:
        "../scripts/blind_separate.py"


rule evaluate_blind:
    input:
        observations="results/separation/blind/observations.h5",
        chains=expand("results/separation/blind/shard{shard}.h5", shard=BLIND_SHARDS),
        chain_runs=expand("results/separation/blind/shard{shard}.run_id", shard=BLIND_SHARDS),
    output:
        metrics="results/separation/blind/metrics.json",
        table="results/separation/blind/observations.csv",
        traces=report(
            "results/separation/blind/blind_traces.png",
            caption="../report/blind_traces.rst",
            category="3. Component separation",
        ),
        corner=report(
            "results/separation/blind/blind_corner.png",
            caption="../report/blind_corner.rst",
            category="3. Component separation",
        ),
        ranks=report(
            "results/separation/blind/sbc_ranks.png",
            caption="../report/blind_sbc_ranks.rst",
            category="3. Component separation",
        ),
        run_id="results/separation/blind/evaluate_blind.run_id",
    log:
        "results/logs/separation/evaluate_blind.log",
    params:
        settings=BLIND["evaluation"],
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        CPU_ENV
    script:
        "../scripts/evaluate_blind.py"

