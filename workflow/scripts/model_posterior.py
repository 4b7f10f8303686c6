"""Rule model_posterior: posterior model probabilities per observed galaxy and per sample."""

from simobs.comparison.stages import run_model_posterior
from simobs.tracking import job_run

with job_run(snakemake) as run:
    result = run_model_posterior(
        list(snakemake.input.embeddings),
        snakemake.input.classifier,
        snakemake.input.predictions,
        snakemake.input.ood_scores,
        snakemake.input.ood_thresholds,
        dict(snakemake.output.items()),
        snakemake.params.settings,
        snakemake.params.ood,
        seed=snakemake.params.seed,
        replicates_path=snakemake.input.replicates,
        replicate_heldout_path=snakemake.input.replicate_heldout_logits,
    )
    run.set_tags(result.lineage_tags())  # simobs.vae_digest, simobs.classifier_digest
    run.log_metrics(result.metrics)
    for name in ("aggregate", "bayes_factors", "per_galaxy", "survey_calibration"):
        run.log_artifact(snakemake.output[name], "tables")
    for fig in result.figures:
        run.log_artifact(fig, "figures")
