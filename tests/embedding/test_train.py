"""Training: artefacts, determinism, resume after a crash, early stopping, guards."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from simobs.embedding.checkpoint import load_checkpoint, load_model, read_model_file
from simobs.embedding.settings import EmbeddingSettings
from simobs.embedding.model import KSparseVAE, VAEArchitecture, rbf_mmd
from simobs.embedding.train import auxiliary_loss, k_at_step, train_embedding
from tests.embedding.conftest import tiny_settings, write_image_dataset

METRICS = {
    "loss", "recon", "kl", "val_loss", "val_fve", "l0", "k", "dead_fraction", "lr",
    "train_images_per_s", "val_images_per_s",
}


class Crash(RuntimeError):
    pass


def _train(tmp: Path, dataset: Path, settings: EmbeddingSettings, **kwargs):
    return train_embedding(
        [dataset], tmp / "model.pt", settings, checkpoint_dir=tmp / "checkpoints",
        architecture_json=tmp / "model.json", show_progress=False, **kwargs,
    )


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_training_writes_a_weights_only_model_and_reports_metrics(tmp_path: Path, observed_dataset: Path) -> None:
    seen: list[tuple[int, dict]] = []
    result = _train(tmp_path, observed_dataset, tiny_settings(), on_epoch=lambda m, e: seen.append((e, dict(m))))
    assert [e for e, _ in seen] == [1, 2, 3]
    assert METRICS <= set(seen[0][1])
    assert seen[0][1]["k"] > 4 and seen[-1][1]["k"] == 4  # annealed to the target
    assert 0.0 <= seen[-1][1]["dead_fraction"] <= 1.0
    assert len(result.history) == 3 and result.resumed_from_epoch is None

    payload = torch.load(tmp_path / "model.pt", weights_only=True)  # never an arbitrary pickle
    assert payload["architecture"]["latent_dim"] == 32 and payload["architecture"]["k"] == 4
    assert json.loads((tmp_path / "model.json").read_text())["architecture"] == payload["architecture"]
    model, info = load_model(tmp_path / "model.pt")
    assert info["beta"] == pytest.approx(0.1)
    assert torch.all(model.latent_std >= 0) and 0 < float(model.latent_usage.sum())
    assert set(result.final_metrics) >= {"val_fve", "dead_fraction", "val_fve_inference"}
    assert result.final_metrics["val_fve"] > 0.0  # it learned something about the blobs


def test_cpu_rerun_with_the_same_seed_gives_identical_weights(tmp_path: Path, observed_dataset: Path) -> None:
    settings = tiny_settings(max_epochs=2)
    _train(tmp_path / "a", observed_dataset, settings)
    _train(tmp_path / "b", observed_dataset, settings)
    _assert_same_weights(read_model_file(tmp_path / "a/model.pt")["state_dict"],
                         read_model_file(tmp_path / "b/model.pt")["state_dict"])
    _train(tmp_path / "c", observed_dataset, tiny_settings(max_epochs=2, seed=1))
    other = read_model_file(tmp_path / "c/model.pt")["state_dict"]
    assert not torch.equal(other["to_posterior.weight"],
                           read_model_file(tmp_path / "a/model.pt")["state_dict"]["to_posterior.weight"])


def test_resume_after_a_crash_continues_at_the_next_epoch_with_the_same_state(
    tmp_path: Path, observed_dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = tiny_settings(max_epochs=4, patience=10)
    reference = _train(tmp_path / "ref", observed_dataset, settings)

    def crash_after_two(metrics, epoch):
        if epoch == 2:
            raise Crash("killed by the scheduler")

    with pytest.raises(Crash):
        _train(tmp_path / "run", observed_dataset, settings, on_epoch=crash_after_two)
    assert not (tmp_path / "run/model.pt").exists()
    state = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert state is not None and state["epoch"] == 2
    saved_optimizer = state["optimizer"]

    epochs: list[int] = []
    last_states: list[dict] = []

    def record(metrics, epoch):  # called after the epoch's checkpoint is written
        epochs.append(epoch)
        last_states.append(load_checkpoint(tmp_path / "run/checkpoints/last.pt"))

    with caplog.at_level(logging.INFO, logger="simobs.embedding.train"):
        resumed = _train(tmp_path / "run", observed_dataset, settings, on_epoch=record)
    assert "resuming from checkpoint" in caplog.text
    assert resumed.resumed_from_epoch == 2
    assert epochs == [3, 4]
    assert [h["epoch"] for h in resumed.history] == [1.0, 2.0, 3.0, 4.0]
    # the optimiser state went on from the checkpoint: Adam's step count includes the first two epochs
    final = last_states[-1]
    step_before = next(iter(saved_optimizer["state"].values()))["step"]
    step_after = next(iter(final["optimizer"]["state"].values()))["step"]
    assert float(step_after) == float(final["step"]) and float(step_before) == float(state["step"])
    # and the result is the one of an uninterrupted run, bit for bit
    _assert_same_weights(read_model_file(tmp_path / "ref/model.pt")["state_dict"],
                         read_model_file(tmp_path / "run/model.pt")["state_dict"])
    assert resumed.history[-1]["val_loss"] == reference.history[-1]["val_loss"]


def test_a_finished_run_leaves_no_checkpoint_so_a_rerun_trains_from_epoch_one(
    tmp_path: Path, observed_dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 14: the finished checkpoint stood in for a forced retraining ("8 of at most 8
    # epochs done (training had finished; rebuilding the model file)").
    settings = tiny_settings(max_epochs=2)
    _train(tmp_path, observed_dataset, settings)
    assert (tmp_path / "model.pt").is_file()
    assert not (tmp_path / "checkpoints/last.pt").exists()
    epochs: list[int] = []
    with caplog.at_level(logging.INFO, logger="simobs.embedding.train"):
        again = _train(tmp_path, observed_dataset, settings, on_epoch=lambda m, e: epochs.append(e))
    assert again.resumed_from_epoch is None and epochs == [1, 2]
    assert "resuming from checkpoint" not in caplog.text


def test_other_settings_start_over_instead_of_resuming(
    tmp_path: Path, observed_dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def crash(metrics, epoch):
        raise Crash("killed after epoch 1")

    with pytest.raises(Crash):  # leaves the checkpoint of epoch 1
        _train(tmp_path, observed_dataset, tiny_settings(max_epochs=2), on_epoch=crash)
    with caplog.at_level(logging.INFO, logger="simobs.embedding.train"):
        result = _train(tmp_path, observed_dataset, tiny_settings(max_epochs=2, beta=0.2))
    assert result.resumed_from_epoch is None
    assert "starting training from scratch" in caplog.text


def test_early_stopping_keeps_the_best_epoch(tmp_path: Path, observed_dataset: Path) -> None:
    # A learning rate this small makes no epoch improve by 50 %: training stops once
    # patience runs out after the annealing epochs and keeps the first target-k epoch.
    settings = tiny_settings(max_epochs=10, patience=1, min_delta=0.5, lr=1e-6, k_anneal_epochs=1.0)
    result = _train(tmp_path, observed_dataset, settings)
    assert result.stopped_early
    assert result.best_epoch == 2
    assert len(result.history) == 3


def test_simulations_are_refused_for_training(tmp_path: Path) -> None:
    sim = write_image_dataset(tmp_path / "sim.h5", 40, source="tng", kind="simulation", n_projections=4)
    with pytest.raises(ValueError, match="observations only"):
        _train(tmp_path, sim, tiny_settings())


def test_k_is_annealed_geometrically_to_the_target() -> None:
    s = tiny_settings(k=4, k_start=16, k_anneal_epochs=2.0)
    ks = [k_at_step(step, 10, s) for step in range(25)]
    assert ks[0] == 16 and ks[10] == 8 and ks[20:] == [4] * 5
    assert all(a >= b for a, b in zip(ks, ks[1:]))


def test_settings_name_unknown_and_invalid_keys() -> None:
    with pytest.raises(ValueError, match="latnt_dim"):
        EmbeddingSettings.from_config({"latnt_dim": 3})
    with pytest.raises(ValueError, match="alpha"):
        EmbeddingSettings.from_config({"alpha": 0.5})
    settings = EmbeddingSettings.from_config({"k": 16, "train_sources": ["sdss"], "alpha": 1.5})
    assert settings.k_inference == 24


def test_infovae_objective_trains_a_deterministic_sparse_code_and_encodes(tmp_path: Path, observed_dataset: Path) -> None:
    result = _train(tmp_path, observed_dataset, tiny_settings(objective="infovae"))
    assert result.final_metrics["val_fve"] > 0.0
    assert all(h["kl"] == 0.0 and h["mmd"] > 0.0 for h in result.history)  # MMD, not KL
    assert read_model_file(tmp_path / "model.pt")["extra"]["settings"]["objective"] == "infovae"
    from simobs.embedding.encode import embed_dataset

    summary = embed_dataset(tmp_path / "model.pt", observed_dataset, tmp_path / "e.h5", device="cpu")
    assert summary.median_typicality_loss == summary.median_typicality_loss  # finite, not NaN
    with pytest.raises(ValueError, match="objective"):
        tiny_settings(objective="vae")


def test_rbf_mmd_is_zero_for_equal_samples_and_grows_with_a_shift() -> None:
    torch.manual_seed(0)
    prior = torch.randn(256, 32)
    assert rbf_mmd(prior, prior).item() == pytest.approx(0.0, abs=1e-6)
    near = rbf_mmd(torch.randn(256, 32), prior).item()
    far = rbf_mmd(torch.randn(256, 32) + 3.0, prior).item()
    assert 0 <= near < far
    # the kernel of Zhou et al.'s code: exp(-||a - b||^2 / D^2)
    a, b = torch.zeros(1, 32), torch.full((1, 32), 2.0)
    expected = 2 * (1 - math.exp(-(4 * 32) / 32**2))
    assert rbf_mmd(a, b).item() == pytest.approx(expected, rel=1e-5)


def test_auxk_gradient_reaches_only_dead_units_and_their_decoder_columns() -> None:
    # Gao et al. 2024: the auxiliary loss fits the detached residual with the dead
    # latents only; the old form decoded stopgrad(z_active) + mu * m_dead through a
    # trainable decoder, so every decoder weight learnt from codes the main loss never shows.
    torch.manual_seed(0)
    model = KSparseVAE(VAEArchitecture(bands=3, image_size=16, width=8, depth=2, max_width=16, latent_dim=32, k=4))
    x = torch.randn(8, 3, 16, 16)
    out = model(x, k=4, sample=False)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[20:] = True
    out.mu.retain_grad()
    auxiliary_loss(model, x, out, dead, aux_k=6).backward()
    grad_mu = out.mu.grad
    alive_or_active = ~(dead[None] & (out.mask == 0))
    assert torch.all(grad_mu[alive_or_active] == 0) and grad_mu.abs().sum() > 0
    w = model.from_latent.weight.grad  # (flat, D): only dead columns
    assert torch.all(w[:, :20] == 0) and w[:, 20:].abs().sum() > 0
    assert model.from_latent.bias.grad is None or torch.all(model.from_latent.bias.grad == 0)
    for name, param in model.decoder.named_parameters():
        assert param.grad is None or torch.all(param.grad == 0), name


def test_resume_on_a_node_with_another_worker_count_starts_over(
    tmp_path: Path, observed_dataset: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 18: `num_workers: -1` resolves from the CPU count and the batch stream depends
    # on the resolved count, but the resume fingerprint held only -1.
    import simobs.embedding.train as train_module

    settings = tiny_settings(max_epochs=2, num_workers=-1)

    def crash(metrics, epoch):
        raise Crash("time limit")

    monkeypatch.setattr(train_module, "_num_workers", lambda s, d: 0)
    with pytest.raises(Crash):
        _train(tmp_path, observed_dataset, settings, on_epoch=crash)
    monkeypatch.setattr(train_module, "_num_workers", lambda s, d: 2)
    with caplog.at_level(logging.INFO, logger="simobs.embedding.train"):
        result = _train(tmp_path, observed_dataset, settings)
    assert result.resumed_from_epoch is None and "starting training from scratch" in caplog.text


def test_a_checkpoint_of_another_architecture_is_not_resumed_and_both_are_named(
    tmp_path: Path, observed_dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def crash(metrics, epoch):
        raise Crash("killed after epoch 1")

    with pytest.raises(Crash):  # leaves the checkpoint of epoch 1, of a width-8 network
        _train(tmp_path, observed_dataset, tiny_settings(max_epochs=2), on_epoch=crash)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["architecture"]["width"] == 8
    with caplog.at_level(logging.INFO, logger="simobs.embedding.train"):
        result = _train(tmp_path, observed_dataset, tiny_settings(max_epochs=2, width=4))
    assert result.resumed_from_epoch is None
    assert "another architecture" in caplog.text
    assert "'width': 8" in caplog.text and "'width': 4" in caplog.text
