# Embedding (Zhou et al. 2025): a k-sparse VAE trained on the observed images only,
# then every source, observed or simulated, encoded with it (one job per source).
# Adding a simulation source adds its ingestion and its `embed` job; the VAE's inputs
# and params do not mention simulations, so it is never retrained for one.
# Logic: src/simobs/embedding.

EMBEDDING = config["embedding"]
# Inference-only keys stay out of train_embedding's params: changing them must re-encode,
# not retrain (Snakemake reruns a job whose params change).  `alpha` is not one of them:
# the latent statistics stored with the model for traversals are those at alpha * k.
EMBEDDING_INFERENCE_KEYS = ("embed_batch_size", "train_sources")


# The observation sources the VAE is trained on (default: all of them).
EMBEDDING_TRAIN_SOURCES = EMBEDDING["train_sources"] or OBSERVATIONS
if set(EMBEDDING_TRAIN_SOURCES) - set(OBSERVATIONS):
    raise WorkflowError(
        f"config embedding.train_sources: {sorted(set(EMBEDDING_TRAIN_SOURCES) - set(OBSERVATIONS))} are not "
        f"observation sources (observations: {OBSERVATIONS}); the VAE is trained on observations only"
    )

TARGETS.extend(
    [
        "results/embedding/model.pt",
        *expand("results/embeddings/{source}.h5", source=SOURCES),
    ]
)


rule train_embedding:
    input:
        datasets=expand("results/datasets/{source}.h5", source=EMBEDDING_TRAIN_SOURCES),
        dataset_runs=expand("results/datasets/{source}.run_id", source=EMBEDDING_TRAIN_SOURCES),
    output:
        model="results/embedding/model.pt",
        architecture="results/embedding/model.json",
        metrics="results/embedding/metrics.json",
        loss_curves=report(
            "results/embedding/loss_curves.png",
            caption="../report/loss_curves.rst",
            category="1. Embedding",
        ),
        reconstructions=report(
            "results/embedding/reconstructions.png",
            caption="../report/reconstructions.rst",
            category="1. Embedding",
        ),
        traversals=report(
            "results/embedding/latent_traversals.png",
            caption="../report/embedding_traversals.rst",
            category="1. Embedding",
        ),
        run_id="results/embedding/train_embedding.run_id",
    log:
        "results/logs/train_embedding.log",
    benchmark:
        "results/benchmarks/train_embedding.tsv"
    params:
        settings={k: v for k, v in EMBEDDING.items() if k not in EMBEDDING_INFERENCE_KEYS},
        sources=EMBEDDING_TRAIN_SOURCES,
        # study seed + the stage's offset
        seed=config["seed"] + EMBEDDING["seed"],
        # Not an output: Snakemake deletes the outputs of a failed job, and the per-epoch
        # checkpoint must survive a crash or a SLURM time limit so the rerun resumes.
        checkpoint_dir="results/embedding/checkpoints",
    threads: 4
    priority: PRIORITY_VAE_CHAIN
    resources:
        mem_mb=16000,
        runtime=720,  # minutes; the GPU itself comes from the SLURM profile
    conda:
        GPU_ENV
    script:
        "../scripts/train_embedding.py"


rule embed:
    input:
        model="results/embedding/model.pt",
        model_run="results/embedding/train_embedding.run_id",
        dataset="results/datasets/{source}.h5",
        dataset_run="results/datasets/{source}.run_id",
    output:
        embeddings="results/embeddings/{source}.h5",
        run_id="results/embeddings/{source}.run_id",
    log:
        "results/logs/embed/{source}.log",
    benchmark:
        "results/benchmarks/embed/{source}.tsv"
    params:
        alpha=EMBEDDING["alpha"],
        batch_size=EMBEDDING["embed_batch_size"],
        device=EMBEDDING["device"],
    threads: 2
    priority: PRIORITY_IMAGES
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        GPU_ENV
    script:
        "../scripts/embed.py"
