"""Denoising score matching: reproducible weights, crash-resume, weights-only checkpoints."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from simobs.separation.fields import lognormal_dust
from simobs.separation.model import load_noise_predictor
from simobs.separation.sample import sample_posterior
from simobs.separation.sde import ColouredNoise, LinearBetaSchedule
from simobs.separation.train import TrainSettings, train_score_model, training_t_max
from simobs.separation.wiener import estimate_power_2d, wiener_filter

from .conftest import cmb_like_power

NPIX = 16


def _settings(**kw) -> TrainSettings:
    base = dict(epochs=2, batch_size=8, base_channels=4, channel_mults=[1, 2], learning_rate=1e-3,
                val_fraction=0.2, seed=7, t_max=0.5)
    return TrainSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def maps() -> np.ndarray:
    return lognormal_dust(30, NPIX, slope=-2.5, log_scatter=0.8, rng=np.random.default_rng(0))


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_training_is_reproducible_and_loads_weights_only(maps, tmp_path) -> None:
    cmb = cmb_like_power(NPIX)
    seen = []
    r1 = train_score_model(maps, cmb, _settings(), model_path=tmp_path / "a.pt", checkpoint_path=tmp_path / "a.ckpt",
                           device="cpu", on_epoch=lambda m, e: seen.append((e, m["train_loss"])))
    train_score_model(maps, cmb, _settings(), model_path=tmp_path / "b.pt", checkpoint_path=tmp_path / "b.ckpt",
                      device="cpu")
    assert [e for e, _ in seen] == [1, 2] and all(np.isfinite(v) for _, v in seen)
    assert len(r1.history) == 2 and r1.resumed_from_epoch == 0 and r1.device == "cpu"
    wa, wb = _weights(tmp_path / "a.pt"), _weights(tmp_path / "b.pt")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0)
    torch.load(tmp_path / "a.ckpt", weights_only=True)  # the checkpoint is weights-only too
    # A different seed gives different weights (the comparison above can fail).
    train_score_model(maps, cmb, _settings(seed=8), model_path=tmp_path / "c.pt",
                      checkpoint_path=tmp_path / "c.ckpt", device="cpu")
    assert not torch.equal(_weights(tmp_path / "c.pt")["unet.out.weight"], wa["unet.out.weight"])
    model = load_noise_predictor(tmp_path / "a.pt")
    z, t = torch.randn(3, NPIX, NPIX), torch.rand(3)
    torch.testing.assert_close(model(z, t), r1.model(z, t))


def test_resume_after_a_crash_gives_the_same_weights(maps, tmp_path, caplog) -> None:
    cmb = cmb_like_power(NPIX)
    train_score_model(maps, cmb, _settings(), model_path=tmp_path / "full.pt",
                      checkpoint_path=tmp_path / "full.ckpt", device="cpu")

    def crash(metrics, epoch):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill after epoch 1")

    with pytest.raises(KeyboardInterrupt):
        train_score_model(maps, cmb, _settings(), model_path=tmp_path / "r.pt", checkpoint_path=tmp_path / "r.ckpt",
                          device="cpu", on_epoch=crash)
    assert (tmp_path / "r.ckpt").exists() and not (tmp_path / "r.pt").exists()
    with caplog.at_level(logging.INFO, logger="simobs.separation.train"):
        result = train_score_model(maps, cmb, _settings(), model_path=tmp_path / "r.pt",
                                   checkpoint_path=tmp_path / "r.ckpt", device="cpu")
    assert result.resumed_from_epoch == 1 and len(result.history) == 2
    assert "resuming training from checkpoint" in caplog.text
    full, resumed = _weights(tmp_path / "full.pt"), _weights(tmp_path / "r.pt")
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0)


def test_untrained_model_with_gaussian_part_is_the_wiener_filter(maps, tmp_path) -> None:
    """Zero output layer + Gaussian part: before training, Tweedie gives the Wiener estimate."""
    cmb = cmb_like_power(NPIX)
    result = train_score_model(maps, cmb, _settings(epochs=0), model_path=tmp_path / "m.pt",
                               checkpoint_path=tmp_path / "m.ckpt", device="cpu")
    schedule = LinearBetaSchedule()
    y = maps[:4] + 0.8 * np.random.default_rng(1).standard_normal((4, NPIX, NPIX))
    got = sample_posterior(result.model, torch.as_tensor(y, dtype=torch.float32), 0.8, schedule=schedule,
                           noise=ColouredNoise(cmb), method="tweedie").numpy()
    n_val = round(0.2 * len(maps))
    mean, power = estimate_power_2d(maps[: len(maps) - n_val].astype(np.float32))
    np.testing.assert_allclose(got, wiener_filter(y, 0.8, power, cmb, mean), atol=1e-4)


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="unknown training settings"):
        TrainSettings.from_mapping({"epochs": 1, "epoch": 2})
    assert 0 < training_t_max(LinearBetaSchedule(), 2.0) < 1
