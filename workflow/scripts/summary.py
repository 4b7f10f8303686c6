"""Rule summary: the study's headline table, its key figures and headline metrics in one MLflow run."""

from simobs.summary import SummaryInputs, collect_headline, headline_markdown, publish_headline, write_headline
from simobs.tracking import job_run

i, o, p = snakemake.input, snakemake.output, snakemake.params
inputs = SummaryInputs(
    posterior=i.posterior,
    misspecification=i.misspecification,
    mmd=i.mmd,
    verdict=i.verdict,
    classifier=i.classifier,
    embedding=i.embedding,
    separation=i.separation,
)
with job_run(snakemake, params={"title": p.title, "figures": list(p.figures)}) as run:
    headline = collect_headline(inputs)
    write_headline(headline, p.title, table=o.table, markdown=o.markdown, html_page=o.html, metrics=o.metrics)
    run.log_metrics(headline.metrics)
    for path in (o.table, o.html, o.markdown):
        run.log_artifact(path)
    for path in i.figures:
        run.log_artifact(path, "figures")
    publish_headline(run, headline_markdown(headline, p.title))
