"""Rule classifier_replicates: the classifier retrained on bootstrap resamples of its training galaxies."""

from simobs.comparison.stages import run_classifier_replicates
from simobs.tracking import job_run

with job_run(snakemake) as run:
    settings = dict(snakemake.params.settings)
    if settings.get("backend", "xgboost") == "xgboost" and not settings.get("xgboost", {}).get("n_threads"):
        # 0 = "the cores Snakemake gave this job", not every core of a shared node
        settings["xgboost"] = {**settings.get("xgboost", {}), "n_threads": snakemake.threads}
    result = run_classifier_replicates(
        list(snakemake.input.embeddings),
        snakemake.input.classifier,
        snakemake.input.predictions,
        dict(snakemake.output.items()),
        settings,
        seed=snakemake.params.seed,
    )
    run.set_tags(result.lineage_tags())  # simobs.vae_digest, simobs.classifier_digest
    run.log_metrics(result.metrics)
    run.log_artifact(snakemake.output.table, "tables")
