"""Encoding sources, latent traversals and the training figures."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from simobs.embedding.checkpoint import load_model
from simobs.embedding.data import BlockShuffleDataset
from simobs.embedding.encode import embed_dataset
from simobs.embedding.figures import write_training_figures
from simobs.embedding.train import TrainingResult, train_embedding
from simobs.embedding.traversal import decode_latent_traversal, most_used_latents
from tests.embedding.conftest import tiny_settings, write_image_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainingResult]:
    tmp = tmp_path_factory.mktemp("trained")
    obs = write_image_dataset(tmp / "obs.h5", 80)
    result = train_embedding(
        [obs], tmp / "model.pt", tiny_settings(max_epochs=2, alpha=1.5), checkpoint_dir=tmp / "ckpt",
        show_progress=False,
    )
    return tmp / "model.pt", result


def test_embeddings_of_a_simulation_follow_the_contract(trained, tmp_path: Path) -> None:
    model_path, _ = trained
    sim = write_image_dataset(tmp_path / "tng.h5", 37, source="tng", kind="simulation", n_projections=4, seed=9)
    out = tmp_path / "embeddings/tng.h5"
    summary = embed_dataset(model_path, sim, out, batch_size=16, device="cpu")
    assert summary.n_images == 37 and summary.k == 6  # round(1.5 * 4)
    with h5py.File(out, "r") as f, h5py.File(sim, "r") as src:
        emb = f["embedding"][...]
        assert emb.dtype == np.float32 and emb.shape == (37, 32)
        assert np.all((emb != 0).sum(axis=1) == 6)  # alpha * k active units per image
        for name in ("recon_error", "typicality_loss"):
            assert f[name].dtype == np.float32 and f[name].shape == (37,)
            assert np.all(np.isfinite(f[name][...]))
        assert np.all(f["recon_error"][...] > 0)
        for name in ("ids", "galaxy_ids"):
            assert list(f[name].asstr()[...]) == list(src[name].asstr()[...])
        assert np.array_equal(f["projection_ids"][...], src["projection_ids"][...])
        assert f["projection_ids"].dtype == np.int32
        assert f.attrs["source"] == "tng" and f.attrs["kind"] == "simulation"
        assert (f.attrs["latent_dim"], f.attrs["k"], f.attrs["alpha"]) == (32, 4, 1.5)
        assert "elbo" not in f  # not a bound on log p(x): renamed typicality_loss
        assert list(f["vae_split"].asstr()[...]) == ["unused"] * 37  # the VAE never saw a simulation
        assert f.attrs["vae_digest"] == load_model(model_path)[1]["model_digest"]  # its lineage
    # deterministic: encoding again gives the same numbers
    again = tmp_path / "again.h5"
    embed_dataset(model_path, sim, again, batch_size=7, device="cpu")
    with h5py.File(out, "r") as a, h5py.File(again, "r") as b:
        np.testing.assert_allclose(a["embedding"][...], b["embedding"][...], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a["typicality_loss"][...], b["typicality_loss"][...], rtol=1e-5)


def test_typicality_loss_ranks_foreign_images_above_observed_ones(trained, tmp_path: Path) -> None:
    model_path, _ = trained
    obs = write_image_dataset(tmp_path / "obs2.h5", 40, seed=11, source="obs2")
    noise = write_image_dataset(tmp_path / "noise.h5", 40, seed=12, source="noise", kind="simulation")
    with h5py.File(noise, "r+") as f:  # a "simulation" that looks nothing like the observations
        f["images"][...] = np.random.default_rng(0).normal(0, 1.0, f["images"].shape).astype(np.float32)
    embed_dataset(model_path, obs, tmp_path / "e_obs.h5", device="cpu")
    embed_dataset(model_path, noise, tmp_path / "e_noise.h5", device="cpu")
    with h5py.File(tmp_path / "e_obs.h5") as a, h5py.File(tmp_path / "e_noise.h5") as b:
        assert np.median(a["typicality_loss"][...]) < np.median(b["typicality_loss"][...])
        assert set(a["vae_split"].asstr()[...]) == {"unused"}


def test_vae_split_marks_the_training_and_validation_images(trained, tmp_path: Path) -> None:
    model_path, result = trained
    obs = Path(result.train_blocks[0].path)
    embed_dataset(model_path, obs, tmp_path / "e_train.h5", device="cpu")
    expected = np.full(80, "", dtype=object)
    for part, blocks in (("train", result.train_blocks), ("validation", result.val_blocks)):
        for block in blocks:
            expected[block.start : block.stop] = part
    with h5py.File(tmp_path / "e_train.h5") as f:
        split = f["vae_split"].asstr()[...]
    assert list(split) == list(expected)
    assert {"train", "validation"} == set(split)


def test_vae_split_refuses_a_source_that_changed_since_training(trained, tmp_path: Path) -> None:
    model_path, _ = trained
    # same source name as the training source, but 40 images instead of 80
    changed = write_image_dataset(tmp_path / "obs.h5", 40, seed=11)
    with pytest.raises(ValueError, match="source changed since training, retrain"):
        embed_dataset(model_path, changed, tmp_path / "e.h5", device="cpu")
    assert not (tmp_path / "e.h5").exists()


def test_encoding_refuses_images_of_another_shape(trained, tmp_path: Path) -> None:
    model_path, _ = trained
    wrong = write_image_dataset(tmp_path / "big.h5", 10, size=32)
    with pytest.raises(ValueError, match="expects"):
        embed_dataset(model_path, wrong, tmp_path / "out.h5", device="cpu")
    assert not (tmp_path / "out.h5").exists()  # nothing half-written


def _training_codes(model, result: TrainingResult, k: int) -> torch.Tensor:
    """Sparse codes (posterior mean, top-k) of every training image, recomputed here."""
    x = torch.cat([torch.as_tensor(b) for b in BlockShuffleDataset(result.train_blocks, 256, shuffle=False)])
    with torch.no_grad():
        return model(x, k=k, sample=False).embedding


def test_latent_statistics_are_those_of_the_active_codes_at_alpha_k(trained) -> None:
    # Issue 18: with alpha > 1 the statistics were computed at k, not alpha * k, and the
    # spread was that of the masked code over all images (mostly zeros).
    model_path, result = trained
    model, info = load_model(model_path)
    k_inference = 6  # round(alpha=1.5 * k=4)
    codes = _training_codes(model, result, k_inference).double()
    active = codes != 0
    assert float(model.latent_usage.sum()) == pytest.approx(k_inference, rel=1e-5)
    np.testing.assert_allclose(model.latent_usage.numpy(), active.float().mean(0).numpy(), atol=1e-6)
    count = active.sum(0).clamp_min(1)
    mean = codes.sum(0) / count
    std = ((codes.square().sum(0) / count) - mean.square()).clamp_min(0).sqrt()
    np.testing.assert_allclose(model.latent_mean.numpy(), mean.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.latent_std.numpy(), std.numpy(), rtol=1e-3, atol=1e-5)


def test_latent_traversal_starts_from_a_typical_sparse_code_and_stays_in_the_active_spread(trained) -> None:
    model_path, result = trained
    model, _ = load_model(model_path)
    top = most_used_latents(model, 3)
    usage = model.latent_usage
    assert usage[top[0]] >= usage[top[1]] >= usage[top[2]] and usage[top[0]] == usage.max()
    images, offsets = decode_latent_traversal(model, top, n_steps=5, n_sigma=3.0)
    assert images.shape == (3, 5, 3, 16, 16) and offsets.shape == (3, 5)
    training_codes = _training_codes(model, result, 6)
    for row, latent in enumerate(top):
        base = model.traversal_codes[latent]
        # the start is the sparse code of an actual training image in which the latent is active
        assert int((base != 0).sum()) == 6 and base[latent] != 0
        assert torch.isclose(training_codes, base[None], rtol=1e-4, atol=1e-6).all(dim=1).any()
        values = model.latent_mean[latent] + torch.linspace(-3, 3, 5) * model.latent_std[latent]
        np.testing.assert_allclose(offsets[row], (values - base[latent]).numpy(), rtol=1e-4, atol=1e-6)
        code = base.clone()
        code[latent] = model.latent_mean[latent]
        with torch.no_grad():
            centre = model.decode(code[None]).numpy()[0]
        np.testing.assert_allclose(images[row, 2], centre, rtol=1e-4, atol=1e-5)  # middle step = active mean
    assert not np.allclose(images[0, 0], images[0, -1])  # moving the latent changes the image
    with pytest.raises(IndexError, match="99"):
        decode_latent_traversal(model, [99])


def test_training_figures_are_written(trained, tmp_path: Path) -> None:
    model_path, result = trained
    model, _ = load_model(model_path)
    paths = write_training_figures(model, result.history, result.val_blocks, tmp_path / "figs", k=6,
                                   n_examples=4, n_traversals=3)
    assert set(paths) == {"loss_curves", "reconstructions", "latent_traversals"}
    for path in paths.values():
        assert path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"
