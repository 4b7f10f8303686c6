"""Rule ingest_shard: read, validate and normalise one slice of a source's files (or its prepared shard)."""

from simobs.data.ingest import ingest_source_shard
from simobs.tracking import job_run

p = snakemake.params
with job_run(snakemake, params={"source": p.source, "ingest": p.settings, "n_shards": p.n_shards}) as run:
    result = ingest_source_shard(
        p.source,
        p.settings,
        index=snakemake.input.get("index"),
        prepared=snakemake.input.get("prepared"),
        shard=int(snakemake.wildcards.shard),
        n_shards=p.n_shards,
        out=snakemake.output.shard,
        manifest=snakemake.output.manifest,
    )
    run.log_metrics({"n_files": result.n_files, "n_images": result.n_images, "n_rejected": len(result.rejected)})
