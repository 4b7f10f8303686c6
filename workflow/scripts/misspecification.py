"""Rule misspecification: OOD scores, VAE typicality, MMD tests, galleries."""

from simobs.misspecification.stage import run_misspecification
from simobs.tracking import job_run

with job_run(snakemake) as run:
    datasets = dict(zip(snakemake.params.sources, snakemake.input.datasets))
    result = run_misspecification(
        list(snakemake.input.embeddings),
        snakemake.input.ood_scores,
        snakemake.input.ood_thresholds,
        datasets,
        dict(snakemake.output.items()),
        snakemake.params.settings,
        seed=snakemake.params.seed,
    )
    run.set_tags(result.lineage_tags())  # simobs.vae_digest, simobs.classifier_digest
    run.log_metrics(result.metrics)
    for name in ("summary", "mmd", "verdict", "scores"):
        run.log_artifact(snakemake.output[name], "tables")
    for fig in result.figures:
        run.log_artifact(fig, "figures")
