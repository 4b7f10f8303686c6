# Ingestion: raw FITS -> one validated, normalised HDF5 dataset per source.
# Per source: one index job, n shard jobs (parallel; separate SLURM jobs on a cluster),
# one merge job.  The DAG never has one job per file.

TARGETS.extend(expand("results/datasets/{source}.h5", source=SOURCES))


rule index_source:
    input:
        # generated (demo) sources depend on their generation job; real ones on nothing
        lambda w: [f"data/demo/{w.source}"] if w.source in DEMO_SOURCES else [],
    output:
        index="results/datasets/index/{source}.files.txt",
        run_id="results/datasets/index/{source}.run_id",
    log:
        "results/logs/index_source/{source}.log",
    params:
        pattern=lambda w: SOURCES[w.source]["path"],
        # changes when files are added to or removed from a real source: reruns its ingestion
        fingerprint=lambda w: "" if w.source in DEMO_SOURCES else files_fingerprint(SOURCES[w.source]["path"]),
    priority: source_priority
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        CPU_ENV
    script:
        "../scripts/index_source.py"


rule ingest_shard:
    input:
        unpack(ingest_shard_input),
    output:
        shard=temp("results/datasets/shards/{source}/{shard}.h5"),
        manifest=temp("results/datasets/shards/{source}/{shard}.rejected.tsv"),
        run_id=temp("results/datasets/shards/{source}/{shard}.run_id"),
    log:
        "results/logs/ingest_shard/{source}.{shard}.log",
    benchmark:
        "results/benchmarks/ingest_shard/{source}.{shard}.tsv"
    params:
        source=lambda w: SOURCES[w.source],
        settings=config["ingest"],
        n_shards=lambda w: n_shards(w.source),
    priority: source_priority
    resources:
        mem_mb=2000,
        runtime=120,
    conda:
        CPU_ENV
    script:
        "../scripts/ingest_shard.py"


rule ingest_merge:
    input:
        shards=lambda w: expand("results/datasets/shards/{{source}}/{i}.h5", i=range(n_shards(w.source))),
        manifests=lambda w: expand(
            "results/datasets/shards/{{source}}/{i}.rejected.tsv", i=range(n_shards(w.source))
        ),
        shard_runs=lambda w: expand("results/datasets/shards/{{source}}/{i}.run_id", i=range(n_shards(w.source))),
    output:
        dataset="results/datasets/{source}.h5",
        manifest="results/datasets/{source}.rejected.tsv",
        run_id="results/datasets/{source}.run_id",
    log:
        "results/logs/ingest_merge/{source}.log",
    benchmark:
        "results/benchmarks/ingest_merge/{source}.tsv"
    params:
        source=lambda w: SOURCES[w.source],
        settings=config["ingest"],
        # where the rejected-files manifest goes when the merge fails (Snakemake then deletes
        # the job's outputs, the manifest among them; this file is no output)
        failure_manifest=lambda w: f"results/logs/ingest_merge/{w.source}.rejected.tsv",
    priority: source_priority
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        CPU_ENV
    script:
        "../scripts/ingest_merge.py"
