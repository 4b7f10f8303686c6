"""The study's headline table (simobs.summary): reading the stages' outputs, rendering, MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from simobs.summary import (
    HEADLINE_COLUMNS,
    SummaryInputs,
    clip_markdown,
    collect_headline,
    headline_html,
    headline_markdown,
    publish_headline,
    write_headline,
)


@pytest.fixture
def stage_outputs(tmp_path: Path) -> SummaryInputs:
    """Small files with the columns the comparison, misspecification and separation stages write."""
    pd.DataFrame({
        "observations": ["sdss"] * 3,
        "model": ["fiducial", "compact", "bulgy"],
        "posterior": [0.90, 0.07, 0.03],
        "posterior_lo": [0.85, 0.05, 0.01],
        "posterior_hi": [0.94, 0.10, 0.05],
        "n_counted": [190] * 3,
        "n_excluded_ood": [10] * 3,
    }).to_csv(tmp_path / "aggregate.csv", index=False)
    pd.DataFrame({
        "source": ["sdss", "fiducial", "compact", "bulgy"],
        "kind": ["observation", "simulation", "simulation", "simulation"],
        "n": [200, 60, 60, 60],
        "flagged_fraction_energy": [0.05, 0.04, 0.06, 0.05],
        "flagged_fraction_max_softmax": [0.06, 0.05, 0.05, 0.04],
        "atypical_fraction": [0.01, 0.02, 0.40, 0.10],
        "nominal_flagged_fraction": [0.05] * 4,
    }).to_csv(tmp_path / "summary.csv", index=False)
    pd.DataFrame({
        "observations": ["sdss"] * 3, "simulation": ["fiducial", "compact", "bulgy"],
        "mmd2": [0.001, 0.2, 0.1], "p_value": [0.41, 0.001, 0.002], "rejected": [False, True, True],
        "alpha": [0.05] * 3,
    }).to_csv(tmp_path / "mmd.csv", index=False)
    (tmp_path / "verdict.json").write_text(json.dumps({"sdss": {
        "consistent_simulations": ["fiducial"], "misspecified": False, "flagged_fraction": 0.05,
        "nominal_flagged_fraction": 0.05, "statement": "Consistent with sdss at alpha=0.05: fiducial."}}))
    (tmp_path / "classifier.json").write_text(json.dumps({"test_accuracy": 0.81, "test_ece": 0.012, "n_test": 30}))
    (tmp_path / "embedding.json").write_text(json.dumps({"val_fve": 0.93, "val_fve_inference": 0.91,
                                                         "dead_fraction": 0.0}))
    (tmp_path / "separation.json").write_text(json.dumps({
        "dust_mse_ratio_vs_wiener": 0.8, "cmb_mse_ratio_vs_wiener": 0.9,
        "dust_coverage_68": 0.66, "dust_coverage_68_wiener": 0.6, "n_observations": 4,
        "dust_power_max_abs_rel_error_below_half_nyquist": 0.05,
        "dust_power_max_abs_rel_error_below_half_nyquist_stderr": 0.02}))
    return SummaryInputs(
        posterior=tmp_path / "aggregate.csv", misspecification=tmp_path / "summary.csv", mmd=tmp_path / "mmd.csv",
        verdict=tmp_path / "verdict.json", classifier=tmp_path / "classifier.json",
        embedding=tmp_path / "embedding.json", separation=tmp_path / "separation.json",
    )


def _value(table: pd.DataFrame, section: str, subject: str, quantity_part: str) -> pd.Series:
    rows = table[(table.section == section) & (table.subject == subject) & table.quantity.str.contains(quantity_part,
                                                                                                       regex=False)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_headline_holds_every_stage_number(stage_outputs: SummaryInputs) -> None:
    h = collect_headline(stage_outputs)
    t = h.table
    assert list(t.columns) == HEADLINE_COLUMNS
    fid = _value(t, "Model posterior", "sdss", "p(fiducial | sdss)")
    assert (fid.value, fid.lo, fid.hi) == (0.90, 0.85, 0.94)
    assert "most probable model" in fid.note and "190 galaxies counted" in fid.note
    assert "most probable" not in _value(t, "Model posterior", "sdss", "p(compact").note
    assert _value(t, "Misspecification", "sdss", "flagged out of distribution").value == 0.05
    assert _value(t, "Misspecification", "compact", "typical set").value == 0.40
    # the observed sample has no "atypical" row: its typical set is defined by itself
    assert not ((t.subject == "sdss") & t.quantity.str.contains("typical set")).any()
    mmd = _value(t, "MMD tests", "compact vs sdss", "p-value")
    assert mmd.value == 0.001 and mmd.note.startswith("rejected")
    assert _value(t, "MMD tests", "fiducial vs sdss", "p-value").note.startswith("not rejected")
    assert _value(t, "Classifier", "simulations", "accuracy").value == 0.81
    assert _value(t, "Embedding", "observations", "inference k").value == 0.91
    assert _value(t, "Separation", "dust", "Wiener").value == 0.8
    cov = _value(t, "Separation", "dust", "68 %")
    assert cov.value == 0.66 and "Wiener 60.0%" in cov.note
    power = _value(t, "Separation", "dust", "relative power error")
    assert power.value == 0.05 and "± 2.0% standard error" in power.note
    assert h.statements == {"sdss": "Consistent with sdss at alpha=0.05: fiducial."}
    # the same numbers under MLflow metric names
    assert h.metrics["posterior/sdss/fiducial"] == 0.90
    assert h.metrics["mmd_p_value/sdss/bulgy"] == 0.002
    assert h.metrics["flagged_fraction/sdss"] == 0.05
    assert h.metrics["atypical_fraction/compact"] == 0.40
    assert h.metrics["classifier/test_ece"] == 0.012
    assert h.metrics["separation/dust_coverage_68"] == 0.66
    assert "separation/n_observations" not in h.metrics


def test_stages_left_out_leave_out_their_rows(stage_outputs: SummaryInputs) -> None:
    h = collect_headline(SummaryInputs(posterior=stage_outputs.posterior))
    assert set(h.table.section) == {"Model posterior"}
    assert "No stage" in headline_markdown(collect_headline(SummaryInputs()), "empty")


def test_a_table_without_the_expected_columns_names_file_and_columns(tmp_path: Path) -> None:
    bad = tmp_path / "aggregate.csv"
    pd.DataFrame({"observations": ["sdss"], "prob": [1.0]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"aggregate\.csv.*\['model', 'posterior'\]"):
        collect_headline(SummaryInputs(posterior=bad))
    with pytest.raises(ValueError, match="missing.json"):
        collect_headline(SummaryInputs(classifier=tmp_path / "missing.json"))


def test_renderings_and_files(stage_outputs: SummaryInputs, tmp_path: Path) -> None:
    h = collect_headline(stage_outputs)
    md = headline_markdown(h, "Study x")
    assert md.startswith("# Study x\n")
    assert "## Model posterior" in md and "## Separation" in md
    assert md.index("## Model posterior") < md.index("## MMD tests") < md.index("## Separation")
    assert "| sdss | p(fiducial \\| sdss) | 0.900 | [0.850, 0.940] |" in md
    page = headline_html(h, "Study <x>")
    assert "<title>Study &lt;x&gt;</title>" in page and "<h2>MMD tests</h2>" in page
    assert "http" not in page  # self-contained: no external resources
    out = tmp_path / "out"
    write_headline(h, "Study x", table=out / "headline.csv", markdown=out / "headline.md",
                   html_page=out / "headline.html", metrics=out / "metrics.json")
    back = pd.read_csv(out / "headline.csv")
    assert len(back) == len(h.table) and back.value.notna().all()
    assert json.loads((out / "metrics.json").read_text()) == h.metrics
    assert sorted(p.name for p in out.iterdir()) == ["headline.csv", "headline.html", "headline.md", "metrics.json"]


def test_clip_markdown_cuts_at_a_line_and_says_so() -> None:
    text = "".join(f"| row {i} | {i} |\n" for i in range(1000))
    clipped = clip_markdown(text, 500)
    assert len(clipped) <= 500
    assert clipped.splitlines()[-1].startswith("*(cut here")
    assert all(line.startswith("| row") for line in clipped.splitlines()[:-2])
    assert clip_markdown("short\n", 500) == "short\n"


def test_publish_headline_describes_the_run_and_its_invocation(tmp_path: Path, monkeypatch) -> None:
    from mlflow import MlflowClient

    from simobs.tracking import JobRun, TrackingSettings

    settings = TrackingSettings(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t")
    client = MlflowClient(tracking_uri=settings.uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, run_name="snakemake · now").info.run_id
    child = client.create_run(exp, run_name="summary", tags={"mlflow.parentRunId": parent}).info.run_id
    publish_headline(JobRun(run_id=child, settings=settings, _client=client), "# Study\n\n| a | b |\n")
    tags = client.get_run(child).data.tags
    assert tags["mlflow.note.content"] == "# Study\n\n| a | b |\n"
    assert tags["simobs.kind"] == "summary"
    parent_note = client.get_run(parent).data.tags["mlflow.note.content"]
    assert parent_note.startswith("# Study") and child in parent_note


def test_without_a_verdict_every_ood_score_has_a_row(stage_outputs: SummaryInputs) -> None:
    h = collect_headline(SummaryInputs(misspecification=stage_outputs.misspecification))
    rows = h.table[h.table.subject == "sdss"]
    assert sorted(rows.quantity) == ["flagged out of distribution (energy score)",
                                     "flagged out of distribution (max_softmax score)"]
    assert h.metrics["flagged_fraction/sdss/max_softmax"] == 0.06


def test_publish_headline_without_tracking_reaches_no_store(tmp_path: Path) -> None:
    from simobs.tracking import JobRun, TrackingSettings

    run = JobRun(run_id="untracked", settings=TrackingSettings(enabled=False), _client=None)
    publish_headline(run, "# Study\n")  # must not try to reach a store
