"""Rule ingest_merge: one dataset per source from its shards, with the rejected-file manifest."""

from simobs.data.ingest import merge_source_shards
from simobs.io import config_digest
from simobs.tracking import job_run

p = snakemake.params
with job_run(snakemake, params={"source": p.source, "ingest": p.settings}) as run:
    result = merge_source_shards(
        p.source,
        p.settings,
        shards=list(snakemake.input.shards),
        manifests=list(snakemake.input.manifests),
        out=snakemake.output.dataset,
        manifest_out=snakemake.output.manifest,
        config_digest=config_digest(snakemake.config),
        failure_manifest=p.failure_manifest,
    )
    run.log_metrics(
        {
            "n_files": result.n_files,
            "n_images": result.n_images,
            "n_rejected": len(result.rejected),
            **{f"rejected.{code}": n for code, n in result.reason_counts.items()},
        }
    )
    run.log_artifact(snakemake.output.manifest, "manifests")
    run.log_input_dataset(snakemake.output.dataset, f"{snakemake.wildcards.source}-images", context="output")
