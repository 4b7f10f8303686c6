"""The φ-conditioned noise predictor of the blind stage: architecture, exact Gaussian part, save/load, training.

The CMB family is the synthetic two-parameter one of ``test_gibbs`` (no camb), scaled to a
mean power of order 1 like the normalised CMB; the trainer only sees ``phi -> Σ_φ``.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest
import torch

from simobs.separation.fields import gaussian_random_field, power_law_power_2d
from simobs.separation.gibbs import GaussianDustPredictor, RowColouredNoise
from simobs.separation.model import build_conditional_predictor, load_conditional_predictor, save_conditional_predictor
from simobs.separation.sde import LinearBetaSchedule
from simobs.separation.train import ConditionalTrainSettings, train_conditional_score_model
from simobs.separation.unet import UNet

from .test_gibbs import LOWER, UPPER, _family

NPIX = 16
PHI_LOWER, PHI_UPPER = LOWER[:2], UPPER[:2]  # (slope, damping scale); σ is not a network input


def _spectrum(npix: int = NPIX):
    family = _family(npix)
    return lambda phi: 100.0 * family(phi)  # mean power 0.4-1.4 over the box


def _config(**kw) -> dict:
    base = dict(npix=NPIX, base_channels=4, channel_mults=[1, 2], num_res_blocks=1, beta_min=0.1, beta_max=20.0,
                gaussian_part=True, cond_embedding_dim=8, lower=PHI_LOWER, upper=PHI_UPPER,
                dust_power=power_law_power_2d(NPIX, -2.5), dust_mean=0.2)
    return {**base, **kw}


def _settings(**kw) -> ConditionalTrainSettings:
    base = dict(epochs=2, batch_size=8, base_channels=4, channel_mults=[1, 2], learning_rate=1e-3,
                val_fraction=0.2, seed=7, t_max=0.5, cond_embedding_dim=8)
    return ConditionalTrainSettings(**{**base, **kw})


def _phis(n: int, seed: int) -> torch.Tensor:
    u = torch.rand((n, 2), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.as_tensor(PHI_LOWER) + torch.as_tensor(PHI_UPPER - PHI_LOWER) * u


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Non-zero weights everywhere (an untrained U-Net's zero output layer would hide the conditioning)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module")
def gaussian_maps() -> np.ndarray:
    return gaussian_random_field(power_law_power_2d(NPIX, -2.5), 40, np.random.default_rng(0)).astype(np.float32)


def test_an_unconditioned_unet_is_the_known_phi_architecture() -> None:
    """cond_dim=0 keeps the parameter names and shapes of existing checkpoints (pinned before the change)."""
    plain = UNet(1, 4, (1, 2), 1).state_dict()
    shapes = repr([(k, tuple(plain[k].shape)) for k in sorted(plain)]).encode()
    assert hashlib.sha256(shapes).hexdigest()[:16] == "80f28ce2fa331383"
    assert sum(v.numel() for v in plain.values()) == 8337
    conditioned = UNet(1, 4, (1, 2), 1, cond_dim=2, cond_embedding_dim=8).state_dict()
    assert set(conditioned) - set(plain) == {f"cond_mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    with pytest.raises(ValueError, match="cond_dim=0"):
        UNet(1, 4, (1, 2), 1)(torch.zeros(1, 1, 8, 8), torch.zeros(1), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="cond_dim=2"):
        UNet(1, 4, (1, 2), 1, cond_dim=2)(torch.zeros(1, 1, 8, 8), torch.zeros(1))


def test_the_output_depends_on_phi_and_keeps_to_each_rows_cmb_support() -> None:
    # 16 channels: GroupNorm groups of 2 channels (with 4 or 8 channels every group is one channel, and the
    # per-channel shift by the time + φ embedding is normalised away before it reaches the output)
    model = build_conditional_predictor(_config(gaussian_part=False, base_channels=16)).eval()
    _randomise(model.unet, 0)
    spectrum = _spectrum()
    z = torch.randn(3, NPIX, NPIX, generator=torch.Generator().manual_seed(1))
    t = torch.full((3,), 0.3)
    power = spectrum(_phis(1, 2).expand(3, 2)).float()  # the same Σ in every row: only φ differs below
    with torch.no_grad():
        a = model(z, t, _phis(3, 3), power)
        b = model(z, t, _phis(3, 4), power)
    assert (a - b).abs().max() > 1e-3 * a.abs().max()
    spec = np.fft.rfft2(a.numpy(), norm="ortho")
    assert np.abs(spec[:, 0, 0]).max() < 1e-5  # Σ_φ has no monopole: neither has η̂
    torch.testing.assert_close(model.normalise(torch.as_tensor(np.stack([PHI_LOWER, PHI_UPPER]))),
                               torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=torch.float64))


def test_save_and_load_give_the_same_predictor(tmp_path) -> None:
    config = _config()
    model = build_conditional_predictor(config).eval()
    _randomise(model.unet, 5)
    save_conditional_predictor(model, config, tmp_path / "m.pt", extra={"note": "test"})
    assert torch.load(tmp_path / "m.pt", weights_only=True)["extra"] == {"note": "test"}
    loaded = load_conditional_predictor(tmp_path / "m.pt", device="cpu")
    assert not loaded.training and loaded.schedule == LinearBetaSchedule(0.1, 20.0)
    np.testing.assert_array_equal(loaded.lower.numpy(), PHI_LOWER)
    np.testing.assert_array_equal(loaded.upper.numpy(), PHI_UPPER)
    phi = _phis(4, 6)
    z, t = torch.randn(4, NPIX, NPIX), torch.rand(4)
    power = _spectrum()(phi).float()
    with torch.no_grad():
        torch.testing.assert_close(loaded(z, t, phi, power), model(z, t, phi, power), rtol=0, atol=0)
    with pytest.raises(ValueError, match="train_blind_score_model"):
        torch.save({"format": "other"}, tmp_path / "bad.pt")
        load_conditional_predictor(tmp_path / "bad.pt")


def test_with_a_zero_correction_it_is_the_exact_gaussian_dust_predictor_at_each_rows_phi() -> None:
    config = _config()
    model = build_conditional_predictor(config).eval()
    _randomise(model.unet, 7)
    with torch.no_grad():  # what an untrained U-Net has: the zero output layer
        model.unet.out.weight.zero_()
        model.unet.out.bias.zero_()
    spectrum = _spectrum()
    phi = _phis(5, 8)
    power = spectrum(phi)
    z = torch.randn(5, NPIX, NPIX, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    t = torch.linspace(0.05, 0.9, 5, dtype=torch.float64)
    dust_half = torch.as_tensor(config["dust_power"][:, : NPIX // 2 + 1])
    exact = GaussianDustPredictor(dust_half, LinearBetaSchedule(), dust_mean=0.2)
    with torch.no_grad():
        got = model(z, t, phi, power)
    for i in range(5):
        want = exact(z[i : i + 1], t[i : i + 1], phi[i : i + 1], power[i : i + 1])
        torch.testing.assert_close(got[i : i + 1], want, rtol=1e-10, atol=1e-10)
    # and the rows differ: each used its own Σ_φ
    assert (got[0] - exact(z[:1], t[:1], phi[1:2], power[1:2])[0]).abs().max() > 1e-3


def _losses(model, n: int = 64) -> tuple[float, float]:
    """(DSM loss, mean squared difference to the exact predictor of the true Gaussian dust) at fixed draws."""
    gen = torch.Generator().manual_seed(123)
    phi = _phis(n, 11)
    power = _spectrum()(phi).float()
    schedule = model.schedule
    dust_power = power_law_power_2d(NPIX, -2.5)
    x = torch.as_tensor(gaussian_random_field(dust_power, n, np.random.default_rng(5)), dtype=torch.float32)
    t = 0.02 + 0.4 * torch.rand(n, generator=gen)
    abar = schedule.alpha_bar(t)[:, None, None]
    eta = RowColouredNoise(power).sample((n,), generator=gen)
    z = torch.sqrt(abar) * x + torch.sqrt(1 - abar) * eta
    exact = GaussianDustPredictor(torch.as_tensor(dust_power[:, : NPIX // 2 + 1]).float(), schedule)
    with torch.no_grad():
        pred = model(z, t, phi, power)
    return float(torch.mean((pred - eta) ** 2)), float(torch.mean((pred - exact(z, t, phi, power)) ** 2))


def test_training_on_gaussian_dust_approaches_the_exact_predictor(tmp_path) -> None:
    """Without the Gaussian part the untrained net predicts 0; a short training must move it towards the truth."""
    maps = gaussian_random_field(power_law_power_2d(NPIX, -2.5), 240, np.random.default_rng(1)).astype(np.float32)
    settings = _settings(epochs=4, batch_size=16, base_channels=16, learning_rate=3e-3, gaussian_part=False,
                         ema_decay=0.5, t_max=0.45)
    untrained = train_conditional_score_model(maps, _spectrum(), PHI_LOWER, PHI_UPPER, _settings(
        epochs=0, batch_size=16, base_channels=16, gaussian_part=False), model_path=tmp_path / "u.pt",
        checkpoint_path=tmp_path / "u.ckpt", device="cpu")
    trained = train_conditional_score_model(maps, _spectrum(), PHI_LOWER, PHI_UPPER, settings,
                                            model_path=tmp_path / "t.pt", checkpoint_path=tmp_path / "t.ckpt",
                                            device="cpu")
    (loss_before, error_before), (loss_after, error_after) = _losses(untrained.model), _losses(trained.model)
    assert loss_after < 0.9 * loss_before, (loss_before, loss_after)
    assert error_after < 0.5 * error_before, (error_before, error_after)  # measured: 0.57 -> 0.09


def _crash_after_first_epoch(metrics, epoch):
    if epoch == 1:
        raise KeyboardInterrupt("simulated kill after epoch 1")


def test_resume_after_a_crash_gives_the_same_weights(gaussian_maps, tmp_path, caplog) -> None:
    spectrum = _spectrum()
    args = (gaussian_maps, spectrum, PHI_LOWER, PHI_UPPER, _settings())
    train_conditional_score_model(*args, model_path=tmp_path / "full.pt", checkpoint_path=tmp_path / "full.ckpt",
                                  device="cpu")
    with pytest.raises(KeyboardInterrupt):
        train_conditional_score_model(*args, model_path=tmp_path / "r.pt", checkpoint_path=tmp_path / "r.ckpt",
                                      device="cpu", on_epoch=_crash_after_first_epoch)
    assert (tmp_path / "r.ckpt").exists() and not (tmp_path / "r.pt").exists()
    with caplog.at_level(logging.INFO, logger="simobs.separation.train"):
        result = train_conditional_score_model(*args, model_path=tmp_path / "r.pt",
                                               checkpoint_path=tmp_path / "r.ckpt", device="cpu")
    assert result.resumed_from_epoch == 1 and len(result.history) == 2
    assert not (tmp_path / "r.ckpt").exists()
    full = torch.load(tmp_path / "full.pt", weights_only=True)["state_dict"]
    resumed = torch.load(tmp_path / "r.pt", weights_only=True)["state_dict"]
    assert "unet.cond_mlp.0.weight" in full
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0)
    # Another prior box is other training data: its checkpoint is not resumed.
    with pytest.raises(KeyboardInterrupt):
        train_conditional_score_model(*args, model_path=tmp_path / "b.pt", checkpoint_path=tmp_path / "b.ckpt",
                                      device="cpu", on_epoch=_crash_after_first_epoch)
    with caplog.at_level(logging.WARNING, logger="simobs.separation.train"):
        other = train_conditional_score_model(gaussian_maps, spectrum, PHI_LOWER, PHI_UPPER * 0.9, _settings(),
                                              model_path=tmp_path / "b.pt", checkpoint_path=tmp_path / "b.ckpt",
                                              device="cpu")
    assert other.resumed_from_epoch == 0 and "other settings or training data" in caplog.text
