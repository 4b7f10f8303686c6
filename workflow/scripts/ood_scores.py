"""Rule ood_scores: every OOD score of every image and the thresholds, computed once."""

from simobs.misspecification.ood_stage import run_ood_scores
from simobs.tracking import job_run

with job_run(snakemake) as run:
    result = run_ood_scores(
        list(snakemake.input.embeddings),
        snakemake.input.classifier,
        snakemake.input.predictions,
        dict(snakemake.output.items()),
        snakemake.params.settings,
        seed=snakemake.params.seed,
    )
    run.set_tags(result.lineage_tags())  # simobs.vae_digest, simobs.classifier_digest
    run.log_metrics(result.metrics)
    for name in ("scores", "thresholds"):
        run.log_artifact(snakemake.output[name], "tables")
