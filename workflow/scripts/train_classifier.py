"""Rule train_classifier: simulation classifier, calibration on held-out simulations, SHAP."""

from simobs.comparison.stages import run_train_classifier
from simobs.tracking import job_run

with job_run(snakemake) as run:
    settings = dict(snakemake.params.settings)
    backend = settings.get("backend", "xgboost")
    if backend == "xgboost" and not settings.get("xgboost", {}).get("n_threads"):
        # 0 = "the cores Snakemake gave this job", not every core of a shared node
        settings["xgboost"] = {**settings.get("xgboost", {}), "n_threads": snakemake.threads}
    result = run_train_classifier(
        list(snakemake.input.embeddings),
        dict(snakemake.output.items()),
        settings,
        seed=snakemake.params.seed,
        embedding_model=snakemake.input.embedding_model,
        on_epoch=run.log_metrics,
    )
    run.set_tags(result.lineage_tags())  # simobs.vae_digest, simobs.classifier_digest
    run.log_metrics(result.metrics)
    for name in ("metrics", "shap", "model"):
        run.log_artifact(snakemake.output[name], "classifier")
    for fig in result.figures:
        run.log_artifact(fig, "figures")
