"""Rule project: seeded UMAP of the embeddings of all sources (tables + figures)."""

from simobs.comparison.stages import run_projection
from simobs.tracking import job_run

with job_run(snakemake) as run:
    settings = {**snakemake.params.settings, "seed": snakemake.params.seed}
    result = run_projection(list(snakemake.input.embeddings), dict(snakemake.output.items()), settings)
    run.log_metrics(result.metrics)
    run.log_artifact(snakemake.output.table, "tables")
    for fig in result.figures:
        run.log_artifact(fig, "figures")
