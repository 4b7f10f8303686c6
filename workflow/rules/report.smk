# Review: the study's headline (rule `summary`, one MLflow run named "summary") and the
# Snakemake report (`snakemake --report results/report.html`, or .zip for a large study).
# Every figure of the workflow is wrapped in report(...) with a caption from
# workflow/report/; the categories number the stages so that the report lists them in order.
# Logic: src/simobs/summary.py.

TARGETS.extend(["results/summary/headline.csv"])


# The report's front page (rendered with the config, so it names the study and its sources).
report: "../report/workflow.rst"


# Figures that make the study's result visible at one click: they are copied into the
# summary run's artefacts next to the headline table.
SUMMARY_FIGURES = [
    "results/model_posterior/posterior.png",
    "results/misspecification/mmd.png",
    "results/misspecification/energy.png",
    "results/projection/umap_all.png",
    "results/classifier/reliability.png",
    "results/embedding/reconstructions.png",
    "results/separation/power_spectra.png",
]


rule summary:
    input:
        posterior="results/model_posterior/aggregate.csv",
        misspecification="results/misspecification/summary.csv",
        mmd="results/misspecification/mmd_tests.csv",
        verdict="results/misspecification/verdict.json",
        classifier="results/classifier/metrics.json",
        embedding="results/embedding/metrics.json",
        separation="results/separation/metrics.json",
        figures=SUMMARY_FIGURES,
        # lineage: the summary run records the runs whose results it reports
        runs=[
            "results/model_posterior/model_posterior.run_id",
            "results/misspecification/misspecification.run_id",
            "results/classifier/train_classifier.run_id",
            "results/projection/project.run_id",
            "results/embedding/train_embedding.run_id",
            "results/separation/evaluate_separation.run_id",
        ],
    output:
        table=report(
            "results/summary/headline.csv",
            caption="../report/headline.rst",
            category="0. Study summary",
        ),
        markdown="results/summary/headline.md",
        # the report shows HTML in place (a CSV is only offered for download)
        html=report(
            "results/summary/headline.html",
            caption="../report/headline.rst",
            category="0. Study summary",
        ),
        metrics="results/summary/metrics.json",
        run_id="results/summary/summary.run_id",
    log:
        "results/logs/summary.log",
    params:
        title=f"Study {config['study']}: headline results",
        figures=SUMMARY_FIGURES,
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CPU_ENV
    script:
        "../scripts/summary.py"
