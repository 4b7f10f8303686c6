"""The MLflow dashboard of the tiny study, checked in headless Chromium as a reviewer uses it.

A reviewer opens the study's experiment, finds one row per ``snakemake`` invocation, opens
it into its jobs, opens the training run (loss curve, reconstruction figure) and the
``summary`` run (headline table).  Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from tests.browser.dashboard import (
    ARTIFACTS,
    Dashboard,
    expand_run,
    metric_chart,
    open_artifact,
    open_experiment,
    open_run_tab,
    runs_table_row,
    screenshot,
    show_description,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: Runs a reviewer looks for under the invocation (the issue's examples among them).
EXPECTED_JOB_RUNS = ["train_embedding", "embed · sdss_demo", "embed · fiducial", "model_posterior",
                     "misspecification", "train_score_model", "summary"]


def _runs(dash: Dashboard) -> list:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=dash.tracking_uri).search_runs([dash.experiment_id], max_results=1000)


def _latest(runs: list, name: str):
    named = [r for r in runs if r.info.run_name == name]
    assert named, f"no run named {name!r}; runs: {sorted({r.info.run_name for r in runs})}"
    return max(named, key=lambda r: r.info.start_time)


def _invocations(runs: list) -> list:
    """Invocation runs, oldest first."""
    return sorted((r for r in runs if r.data.tags.get("simobs.kind") == "invocation"), key=lambda r: r.info.start_time)


def _parent(runs: list, run):
    return next(r for r in runs if r.info.run_id == run.data.tags["mlflow.parentRunId"])


def _children(runs: list, parent) -> list:
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def test_each_invocation_is_one_row_that_opens_into_its_jobs(dashboard: Dashboard, tall_page) -> None:
    runs = _runs(dashboard)
    invocations = _invocations(runs)
    assert len(invocations) >= 2, "expected the study's invocation(s) and the rerun of one rule"
    *earlier, rerun = invocations
    assert [r.info.run_name for r in _children(runs, rerun)] == ["summary"]
    assert set(EXPECTED_JOB_RUNS) <= {r.info.run_name for inv in earlier for r in _children(runs, inv)}
    # every run but the invocations is nested under one
    assert all(r.data.tags.get("mlflow.parentRunId") for r in runs if r not in invocations)
    study = _parent(runs, _latest([r for r in runs if r not in _children(runs, rerun)], "train_embedding"))

    page = tall_page
    open_experiment(page, dashboard)
    top_level = page.locator('[role="row"] a[href*="/runs/"]')
    for inv in invocations:
        runs_table_row(page, inv.info.run_name).first.wait_for()
    # one row per `snakemake` call; its jobs are folded into it
    assert top_level.count() == len(invocations)
    assert runs_table_row(page, "train_embedding").count() == 0
    screenshot(page, ARTIFACTS / "dashboard-experiment.png")

    expand_run(page, study.info.run_name)
    jobs = [r.info.run_name for r in _children(runs, study)]
    for name in jobs:
        runs_table_row(page, name).first.wait_for()
    assert top_level.count() == len(invocations) + len(jobs)
    screenshot(page, ARTIFACTS / "dashboard-invocation-expanded.png")


def test_a_rerun_rule_shows_under_its_own_invocation_with_its_lineage(dashboard: Dashboard, page) -> None:
    runs = _runs(dashboard)
    *_, rerun = _invocations(runs)
    rerun_summary = _children(runs, rerun)[0]
    # lineage: the runs whose artefacts the rerun used, made by the earlier invocation(s)
    used = {name: _latest([r for r in runs if r is not rerun_summary], name).info.run_id
            for name in ("model_posterior", "misspecification", "evaluate_separation")}
    parents = rerun_summary.data.tags["simobs.parent_runs"].split(",")
    assert set(used.values()) <= set(parents)

    open_experiment(page, dashboard)
    expand_run(page, rerun.info.run_name)
    runs_table_row(page, "summary").first.wait_for()
    page.get_by_role("link", name="summary", exact=True).first.click()
    # the run page lists its tags: the lineage tag with the upstream run ids, and where it ran
    page.get_by_text(used["model_posterior"]).first.wait_for()
    page.get_by_text("simobs.parent_runs").first.wait_for()
    page.get_by_text(rerun_summary.data.tags["simobs.config_digest"]).first.wait_for()
    screenshot(page, ARTIFACTS / "dashboard-rerun-lineage.png")


def test_training_run_shows_its_loss_curve_and_reconstruction_figure(dashboard: Dashboard, tall_page) -> None:
    runs = _runs(dashboard)
    train = _latest(runs, "train_embedding")
    from mlflow import MlflowClient

    history = MlflowClient(tracking_uri=dashboard.tracking_uri).get_metric_history(train.info.run_id, "loss")
    assert len(history) >= 2, "train_embedding logged fewer than two epochs of 'loss'"

    # from the runs table, as a reviewer gets there
    open_experiment(tall_page, dashboard)
    expand_run(tall_page, _parent(runs, train).info.run_name)
    tall_page.get_by_role("link", name="train_embedding", exact=True).first.click()
    tall_page.get_by_role("tab", name="Model metrics").click()
    chart = metric_chart(tall_page, "loss")
    # one marker per epoch on the curve
    chart.locator("path.point").nth(len(history) - 1).wait_for(state="attached")
    assert chart.locator("path.point").count() >= len(history)
    chart.scroll_into_view_if_needed()
    screenshot(tall_page, ARTIFACTS / "dashboard-training-loss.png")

    tall_page.get_by_role("tab", name="Artifacts").click()
    open_artifact(tall_page, "figures/reconstructions.png")
    image = tall_page.locator('img[alt="figures/reconstructions.png"]').first
    image.wait_for()
    tall_page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    screenshot(tall_page, ARTIFACTS / "dashboard-training-reconstructions.png")


def test_summary_run_shows_the_headline_table(dashboard: Dashboard, study_dir: Path, page) -> None:
    headline = pd.read_csv(study_dir / "results/summary/headline.csv")
    posterior = headline[headline.section == "Model posterior"].iloc[0]
    mmd = headline[headline.section == "MMD tests"].iloc[0]
    summary = _latest(_runs(dashboard), "summary")

    open_experiment(page, dashboard)
    open_run_tab(page, dashboard, summary.info.run_id, "")
    # the description (Markdown) is the headline: sections and numbers at one click
    show_description(page)
    page.get_by_role("heading", name="Model posterior").first.wait_for()
    page.get_by_role("heading", name="Separation").first.wait_for()
    page.get_by_role("cell", name=posterior.quantity, exact=True).first.wait_for()
    page.get_by_role("cell", name=f"{mmd.subject}", exact=True).first.wait_for()
    # headline numbers are metrics as well
    page.get_by_text(f"posterior/{posterior.subject}/", exact=False).first.wait_for()
    screenshot(page, ARTIFACTS / "dashboard-summary.png")

    page.get_by_role("tab", name="Artifacts").click()
    open_artifact(page, "headline.csv")
    # MLflow shows a CSV artefact as a table
    page.get_by_role("columnheader", name="quantity").first.wait_for()
    page.get_by_role("cell", name="MMD permutation p-value").first.wait_for()
    screenshot(page, ARTIFACTS / "dashboard-summary-table.png")
    for name in ("figures", "headline.html", "headline.md"):
        assert page.locator(f'[data-testid="artifact-tree-node"][artifact-name="{name}"]').count() == 1
