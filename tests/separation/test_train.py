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
from simobs.separation.train import TrainSettings, _augment, train_score_model, training_t_max
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
    assert not (tmp_path / "a.ckpt").exists()  # retired once the model was written
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
    torch.load(tmp_path / "r.ckpt", weights_only=True)  # the checkpoint is weights-only too
    with caplog.at_level(logging.INFO, logger="simobs.separation.train"):
        result = train_score_model(maps, cmb, _settings(), model_path=tmp_path / "r.pt",
                                   checkpoint_path=tmp_path / "r.ckpt", device="cpu")
    assert result.resumed_from_epoch == 1 and len(result.history) == 2
    assert "resuming training from checkpoint" in caplog.text
    full, resumed = _weights(tmp_path / "full.pt"), _weights(tmp_path / "r.pt")
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0)


def test_a_finished_run_leaves_no_checkpoint_to_stand_in_for_training(maps, tmp_path) -> None:
    """A rerun after success (``--forcerun``) trains from the first epoch, not from the finished checkpoint."""
    cmb = cmb_like_power(NPIX)
    paths = dict(model_path=tmp_path / "m.pt", checkpoint_path=tmp_path / "m.ckpt", device="cpu")
    first = train_score_model(maps, cmb, _settings(), **paths)
    assert not (tmp_path / "m.ckpt").exists()
    again = train_score_model(maps, cmb, _settings(), **paths)
    assert first.resumed_from_epoch == 0 and again.resumed_from_epoch == 0 and len(again.history) == 2


def _crash_after_first_epoch(metrics, epoch):
    if epoch == 1:
        raise KeyboardInterrupt("simulated kill after epoch 1")


@pytest.mark.parametrize("change", ["dust", "cmb_power", "n_train"])
def test_a_checkpoint_of_other_training_data_is_not_resumed(maps, tmp_path, caplog, change) -> None:
    """New fields (dust model, cosmology/pixel size through the CMB power, n_train) mean a new run."""
    cmb = cmb_like_power(NPIX)
    paths = dict(model_path=tmp_path / "m.pt", checkpoint_path=tmp_path / "m.ckpt", device="cpu")
    with pytest.raises(KeyboardInterrupt):
        train_score_model(maps, cmb, _settings(), on_epoch=_crash_after_first_epoch, **paths)
    new_maps, new_cmb = maps, cmb
    if change == "dust":
        new_maps = lognormal_dust(30, NPIX, slope=-2.0, log_scatter=0.5, rng=np.random.default_rng(0))
    elif change == "cmb_power":
        new_cmb = cmb_like_power(NPIX) ** 1.2
        new_cmb /= new_cmb.mean()
    else:
        new_maps = maps[:25]
    with caplog.at_level(logging.WARNING, logger="simobs.separation.train"):
        result = train_score_model(new_maps, new_cmb, _settings(), **paths)
    assert result.resumed_from_epoch == 0 and len(result.history) == 2
    assert "other settings or training data" in caplog.text
    # The saved Gaussian part is that of the new data.
    saved = _weights(tmp_path / "m.pt")
    np.testing.assert_allclose(saved["gaussian_part.cmb_half"].numpy(), new_cmb[:, : NPIX // 2 + 1])
    n_val = round(0.2 * len(new_maps))
    _, power = estimate_power_2d(new_maps[: len(new_maps) - n_val].astype(np.float32))
    np.testing.assert_allclose(saved["gaussian_part.dust_half"].numpy(), power[:, : NPIX // 2 + 1], rtol=1e-5)


def test_augmentation_transforms_each_map_on_its_own(maps) -> None:
    batch = torch.as_tensor(np.repeat(maps[:1], 16, axis=0), dtype=torch.float32)
    out = _augment(batch, torch.Generator().manual_seed(0))
    distinct = {tuple(np.round(m.numpy().ravel()[:8], 5)) for m in out}
    assert len(distinct) > 8  # 128 dihedral x shift transforms of 16 maps: nearly all different
    for m in out:  # each is a rotation / flip / periodic shift of the input: same pixel values
        np.testing.assert_array_equal(np.sort(m.numpy().ravel()), np.sort(batch[0].numpy().ravel()))


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


@pytest.mark.parametrize("gaussian_part", [True, False])
def test_network_output_is_projected_onto_the_cmb_support(gaussian_part) -> None:
    """A bias in the U-Net's last layer predicts a mean the true coloured noise (Σ_00 = 0) cannot have."""
    from simobs.separation.model import build_noise_predictor

    cmb = cmb_like_power(NPIX)
    cmb[0, 3] = cmb[0, -3] = 0.0  # one more pair of modes without CMB power
    config = dict(npix=NPIX, base_channels=4, channel_mults=[1, 2], num_res_blocks=1, beta_min=0.1, beta_max=20.0,
                  gaussian_part=gaussian_part, dust_power=cmb_like_power(NPIX), cmb_power=cmb, dust_mean=0.3)
    model = build_noise_predictor(config).eval()
    with torch.no_grad():
        model.unet.out.bias.fill_(0.7)
        torch.nn.init.normal_(model.unet.out.weight, std=0.1, generator=torch.Generator().manual_seed(0))
    z = torch.randn(3, NPIX, NPIX, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eta = model(z, torch.full((3,), 0.3))
    spec = np.fft.fft2(eta.numpy(), norm="ortho")
    assert np.abs(spec[:, cmb == 0]).max() < 1e-5  # no mean, nothing where the CMB has no power
    assert np.abs(spec[:, cmb > 0]).max() > 0.1  # the rest is untouched
    y = z.numpy() + 1.0
    x_hat = sample_posterior(model, torch.as_tensor(y), 1.0, schedule=model.schedule, noise=ColouredNoise(cmb),
                             method="tweedie").numpy()
    np.testing.assert_allclose(x_hat.mean(axis=(1, 2)), y.mean(axis=(1, 2)), atol=1e-5)  # the mean is dust's
