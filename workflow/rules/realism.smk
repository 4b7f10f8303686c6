# Realism: idealised simulation mocks (SKIRT images of TNG, NIHAO) -> SDSS-like prepared
# shards, which ingest_shard then validates and normalises (docs/contracts.md).
# Sources opt in with a `realism:` block in their config entry; sharded like ingestion.

REALISM_SOURCES = [n for n, s in SOURCES.items() if s.get("realism") is not None]
register_prepared("realism", REALISM_SOURCES)


rule realism:
    input:
        index="results/datasets/index/{source}.files.txt",
        index_run="results/datasets/index/{source}.run_id",
    output:
        shard=temp("results/realism/{source}/{shard}.h5"),
        manifest=temp("results/realism/{source}/{shard}.rejected.tsv"),
        run_id=temp("results/realism/{source}/{shard}.run_id"),
    log:
        "results/logs/realism/{source}.{shard}.log",
    benchmark:
        "results/benchmarks/realism/{source}.{shard}.tsv"
    params:
        source=lambda w: SOURCES[w.source],
        settings=config["ingest"],
        seed=config["seed"],
        n_shards=lambda w: n_shards(w.source),
    priority: PRIORITY_IMAGES
    resources:
        mem_mb=2000,
        runtime=120,
    conda:
        CPU_ENV
    script:
        "../scripts/realism.py"
