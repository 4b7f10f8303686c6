"""Workflow tests of the embedding stage on the tiny study (Snakemake end to end).

- the tiny study trains the VAE and encodes every source (contract of the outputs);
- adding a simulation source schedules its ingestion and its `embed` job only;
- a `train_embedding` killed mid-training resumes from its last checkpoint;
- a forced rerun of a finished `train_embedding` trains from the first epoch (issue 14).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from tests.conftest import REPO, SNAKEMAKE, TINY_CONFIG, copy_study, run_snakemake

pytestmark = pytest.mark.slow


def _sources() -> list[dict]:
    return yaml.safe_load((REPO / "config/config.yaml").read_text())["sources"]


def test_tiny_study_trains_the_vae_and_encodes_every_source(tiny_study) -> None:
    results = tiny_study.workdir / "results"
    payload = torch.load(results / "embedding/model.pt", weights_only=True)
    latent_dim = payload["architecture"]["latent_dim"]
    metrics = json.loads((results / "embedding/metrics.json").read_text())
    assert 0 < metrics["val_fve"] <= 1 and 0 <= metrics["dead_fraction"] <= 1
    for name in ("loss_curves", "reconstructions", "latent_traversals"):
        assert (results / f"embedding/{name}.png").stat().st_size > 0
    # a finished run retires its checkpoint: it must never stand in for a training asked for
    assert not (results / "embedding/checkpoints/last.pt").exists()
    assert json.loads((results / "embedding/metrics.json").read_text())["resumed_from_epoch"] == 0
    for source in _sources():
        with h5py.File(results / f"embeddings/{source['name']}.h5") as emb, \
                h5py.File(results / f"datasets/{source['name']}.h5") as data:
            n = data["images"].shape[0]
            assert emb["embedding"].shape == (n, latent_dim)
            assert emb["recon_error"].shape == emb["typicality_loss"].shape == emb["vae_split"].shape == (n,)
            assert np.isfinite(emb["typicality_loss"][...]).all()
            split = set(emb["vae_split"].asstr()[...])
            assert split == ({"train", "validation"} if source["kind"] == "observation" else {"unused"}), split
            assert list(emb["ids"].asstr()[...]) == list(data["ids"].asstr()[...])
            assert emb.attrs["kind"] == source["kind"]
        assert (results / f"embeddings/{source['name']}.run_id").read_text().strip()


def test_a_new_simulation_is_ingested_and_encoded_without_retraining(tiny_study, tmp_path: Path) -> None:
    study = copy_study(tiny_study.workdir, tmp_path / "study")
    sources = _sources()
    template = next(s for s in sources if s["kind"] == "simulation" and s.get("demo_model"))
    extra = tmp_path / "new_source.yaml"
    extra.write_text(yaml.safe_dump({"sources": [*sources, {**template, "name": "newsim",
                                                           "path": "data/demo/newsim/*.fits"}]}))
    dry = run_snakemake(study, "-n", configfiles=(TINY_CONFIG, extra))
    assert dry.returncode == 0, dry.output[-3000:]
    counts = dry.job_counts()
    assert "train_embedding" not in counts, counts
    assert counts.get("embed") == 1 and counts.get("ingest_merge") == 1, counts


def test_killed_training_resumes_from_its_last_epoch(tiny_study, tmp_path: Path) -> None:
    study = copy_study(tiny_study.workdir, tmp_path / "study")
    # Other settings -> the old checkpoint does not match and training starts over; many
    # epochs so that there is time to kill it after the first checkpoint.
    extra = tmp_path / "long.yaml"
    extra.write_text(yaml.safe_dump({"embedding": {"max_epochs": 200, "patience": 200, "seed": 7},
                                     "tracking": {"enabled": False}}))
    checkpoint = study / "results/embedding/checkpoints/last.pt"
    assert not checkpoint.exists()  # the finished tiny study left none
    # the target before --configfile, which takes every following word as a config file
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(study), "--cores", "2",
           "results/embedding/model.pt", "--configfile", str(TINY_CONFIG), str(extra)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=study, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if checkpoint.exists():
                break
            time.sleep(1)
        else:
            pytest.fail("train_embedding wrote no checkpoint within 10 minutes")
        state = torch.load(checkpoint, weights_only=True)
        assert state["epoch"] >= 1 and not state["finished"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # a crash / SLURM time limit: no clean-up
        proc.wait()
    killed_at = torch.load(checkpoint, weights_only=True)["epoch"]

    # The same command again: it must continue after the last checkpoint, not start over.
    subprocess.run([SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(study), "--unlock",
                    "--cores", "1", "--configfile", str(TINY_CONFIG), str(extra)], cwd=study, check=True,
                   capture_output=True)
    log = study / "results/logs/train_embedding.log"
    resumed = subprocess.Popen(
        cmd + ["--rerun-incomplete"], cwd=study, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and resumed.poll() is None:
            if log.exists() and "resuming from checkpoint" in log.read_text():
                break
            time.sleep(1)
    finally:
        if resumed.poll() is None:
            os.killpg(resumed.pid, signal.SIGKILL)
        resumed.wait()
    text = log.read_text()
    assert "resuming from checkpoint" in text and f"{killed_at} of at most 200 epochs done" in text, text[-3000:]


def test_forced_rerun_of_a_finished_training_trains_from_the_first_epoch(tiny_study, tmp_path: Path) -> None:
    # Issue 14: `snakemake --forcerun train_embedding` loaded the finished checkpoint and
    # logged "8 of at most 8 epochs done (training had finished; rebuilding the model file)".
    study = copy_study(tiny_study.workdir, tmp_path / "study")
    log = study / "results/logs/train_embedding.log"
    before = log.read_text() if log.exists() else ""
    old_model = (study / "results/embedding/model.pt").stat().st_mtime_ns
    # the target first: --forcerun takes every following word as a rule name
    run = run_snakemake(study, "results/embedding/model.pt", "--forcerun", "train_embedding")
    assert run.returncode == 0, run.output[-3000:]
    assert run.job_counts().get("train_embedding") == 1, run.job_counts()
    text = log.read_text()
    new = text[len(before):] if text.startswith(before) else text
    assert "resuming from checkpoint" not in new, new[-3000:]
    assert "epoch 1:" in new, new[-3000:]
    assert json.loads((study / "results/embedding/metrics.json").read_text())["resumed_from_epoch"] == 0
    assert (study / "results/embedding/model.pt").stat().st_mtime_ns != old_model
    assert not (study / "results/embedding/checkpoints/last.pt").exists()


def test_alpha_reaches_the_training_so_traversal_statistics_are_at_alpha_k(tiny_study, tmp_path: Path) -> None:
    # Issue 18: alpha was an inference-only key, so the model's latent statistics (used
    # by the traversals) were computed at k even when every embedding used alpha * k.
    payload = torch.load(tiny_study.workdir / "results/embedding/model.pt", weights_only=True)
    k_inference = round(payload["alpha"] * payload["architecture"]["k"])
    assert float(payload["state_dict"]["latent_usage"].sum()) == pytest.approx(k_inference, rel=1e-4)
    study = copy_study(tiny_study.workdir, tmp_path / "study")
    extra = tmp_path / "alpha.yaml"
    extra.write_text(yaml.safe_dump({"embedding": {"alpha": 1.5}}))
    dry = run_snakemake(study, "-n", "results/embedding/model.pt", configfiles=(TINY_CONFIG, extra))
    assert dry.returncode == 0, dry.output[-3000:]
    assert dry.job_counts().get("train_embedding") == 1, dry.job_counts()
