"""The separation stage through Snakemake: fields → score model → sharded posteriors → evaluation.

Runs only the stage's target on a tiny overlay of the tiny study (16×16 maps, one short
epoch), so it does not depend on the other stages.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import TINY_CONFIG, copy_study, run_snakemake

pytestmark = pytest.mark.slow

TARGET = "results/separation/metrics.json"
SEPARATION_RULES = {"make_fields", "train_score_model", "separate", "evaluate_separation"}
OVERLAY = {
    "separation": {
        "fields": {"npix": 16, "pixel_size_arcmin": 30.0, "n_train": 48, "n_test": 4, "sigma": [0.5, 1.0]},
        "model": {"base_channels": 4, "channel_mults": [1, 2]},
        "training": {"epochs": 2, "batch_size": 16},
        "sampling": {"n_samples": 6, "n_steps": 4, "batch_size": 6, "n_shards": 2},
        "evaluation": {"n_bins": 4, "n_examples": 2},
    }
}


def _overlay(folder: Path, changes: dict | None = None) -> Path:
    cfg = json.loads(json.dumps(OVERLAY))
    for section, values in (changes or {}).items():
        cfg["separation"][section].update(values)
    path = folder / "separation-overlay.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def stage(tiny_study, tmp_path_factory):
    """A copy of the tiny study (whose separation settings equal OVERLAY): nothing reruns."""
    workdir = copy_study(tiny_study.workdir, tmp_path_factory.mktemp("separation_stage") / "study")
    res = run_snakemake(workdir, TARGET, configfiles=(TINY_CONFIG, _overlay(workdir)), timeout=900)
    if res.returncode != 0:
        pytest.fail(f"separation stage failed:\n{res.output[-6000:]}")
    return res


def test_outputs_and_metrics(stage) -> None:
    w = stage.workdir / "results/separation"
    metrics = json.loads((w / "metrics.json").read_text())
    for key in ("dust_mse_ratio_vs_wiener", "cmb_mse_ratio_vs_wiener", "dust_coverage_68", "dust_coverage_95",
                "dust_power_max_abs_rel_error_below_half_nyquist"):
        assert key in metrics and metrics[key] == metrics[key]  # present and not NaN
    for shard in (0, 1):
        with h5py.File(w / f"posterior/shard{shard}.h5") as f:
            assert f["dust_mean"].shape == (2, 16, 16) and f["dust_lower"].shape == (2, 4, 16, 16)
    for name in ("power_spectra.png", "coverage.png", "dust_examples.png", "cmb_examples.png",
                 "denoising_examples.png", "fields_overview.png"):
        assert (w / name).stat().st_size > 0
    import torch

    payload = torch.load(w / "score_model.pt", weights_only=True)
    assert payload["config"]["npix"] == 16


def test_mlflow_runs_carry_metrics_figures_and_lineage(stage) -> None:
    client = MlflowClient(f"sqlite:///{stage.workdir}/results/tracking/mlflow.db")
    exp = client.get_experiment_by_name(yaml.safe_load(TINY_CONFIG.read_text())["study"])
    runs = {}
    for r in client.search_runs([exp.experiment_id]):
        # the study holds every stage's runs; this test is about the separation branch
        if r.data.tags.get("simobs.rule") in SEPARATION_RULES:
            runs.setdefault(r.data.tags["simobs.rule"], []).append(r)
    assert {k: len(v) for k, v in runs.items()} == {
        "make_fields": 1, "train_score_model": 1, "separate": 2, "evaluate_separation": 1}
    train = runs["train_score_model"][0]
    history = client.get_metric_history(train.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2]
    artefacts = {a.path for a in client.list_artifacts(train.info.run_id, "figures")}
    assert "figures/denoising_examples.png" in artefacts
    evaluation = runs["evaluate_separation"][0]
    assert "dust_mse_ratio_vs_wiener" in evaluation.data.metrics
    assert {"figures/coverage.png", "figures/power_spectra.png"} <= {
        a.path for a in client.list_artifacts(evaluation.info.run_id, "figures")}
    shard_runs = {r.info.run_id for r in runs["separate"]}
    assert set(evaluation.data.tags["simobs.parent_runs"].split(",")) == shard_runs


def test_sampling_settings_rerun_only_sampling(stage) -> None:
    overlay = _overlay(stage.workdir, {"sampling": {"n_steps": 5}})
    res = run_snakemake(stage.workdir, TARGET, "-n", configfiles=(TINY_CONFIG, overlay))
    assert res.returncode == 0
    counts = res.job_counts()
    assert counts.get("separate") == 2 and counts.get("evaluate_separation") == 1
    assert "train_score_model" not in counts and "make_fields" not in counts


def test_forced_rerun_trains_from_the_first_epoch(stage) -> None:
    """``--forcerun train_score_model`` (the README's "retrain") trains; no finished checkpoint stands in."""
    w = stage.workdir
    checkpoint = w / "results/separation/checkpoints/score_model.ckpt"
    assert not checkpoint.exists()  # retired when the first run wrote the model
    log_path = w / "results/logs/separation/train_score_model.log"
    log_path.unlink()
    before = (w / "results/separation/score_model.pt").stat().st_mtime_ns
    res = run_snakemake(w, "results/separation/score_model.pt", "--forcerun", "train_score_model",
                        configfiles=(TINY_CONFIG, _overlay(w)))
    assert res.returncode == 0, res.output[-4000:]
    log = log_path.read_text()
    assert "resuming training from checkpoint" not in log
    assert "epoch 1/2" in log and "epoch 2/2" in log, log[-2000:]
    assert (w / "results/separation/score_model.pt").stat().st_mtime_ns > before and not checkpoint.exists()
