"""Rule index_source: list a source's raw files once, sorted (shards take slices of it)."""

from simobs.data.ingest import write_file_index
from simobs.tracking import job_run

with job_run(snakemake, params={"pattern": snakemake.params.pattern}) as run:
    n = write_file_index(snakemake.params.pattern, snakemake.output.index, source=snakemake.wildcards.source)
    run.log_metrics({"n_files": n})
