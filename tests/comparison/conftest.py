"""Synthetic embeddings shared by the comparison tests: Gaussian clusters per model,
several correlated projections per simulated galaxy, observations from one model
(well-specified) or from a hidden fifth model (misspecified)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from simobs.comparison.embeddings import EmbeddingSet

torch.set_num_threads(1)

D = 8
MODEL_NAMES = ["m0", "m1", "m2", "m3"]


def _means(rng: np.random.Generator) -> np.ndarray:
    # four model centres plus a hidden fifth one, separated by ~3 sigma of the galaxy scatter
    return rng.normal(scale=2.0, size=(5, D))


def make_universe(seed: int = 0, n_galaxies: int = 60, n_proj: int = 3, n_obs: int = 400,
                  obs_model: int = 2) -> list[EmbeddingSet]:
    """Four simulations + one observation set; ``obs_model=4`` is the hidden (misspecified) model."""
    rng = np.random.default_rng(seed)
    means = _means(np.random.default_rng(12345))
    sets = []
    for k, name in enumerate(MODEL_NAMES):
        centres = means[k] + rng.normal(size=(n_galaxies, D))
        emb = (np.repeat(centres, n_proj, axis=0) + 0.3 * rng.normal(size=(n_galaxies * n_proj, D))).astype(np.float32)
        gal = np.repeat([f"g{i:03d}" for i in range(n_galaxies)], n_proj).astype(object)
        proj = np.tile(np.arange(n_proj), n_galaxies)
        ids = np.array([f"{g}_p{p}" for g, p in zip(gal, proj)], dtype=object)
        recon = rng.gamma(4.0, 0.01 * (1 + k), size=len(emb))
        sets.append(EmbeddingSet(name, "simulation", emb, recon, recon * 100, ids, gal, proj))
    # an observed galaxy is seen once: its projection noise is drawn like a simulated one
    obs = (means[obs_model] + rng.normal(size=(n_obs, D)) + 0.3 * rng.normal(size=(n_obs, D))).astype(np.float32)
    ids = np.array([f"o{i:04d}" for i in range(n_obs)], dtype=object)
    recon = rng.gamma(4.0, 0.01, size=n_obs)
    # the VAE trained on 90 % of the observed images and validated on the rest
    vae_split = np.where(rng.random(n_obs) < 0.9, "train", "validation").astype(object)
    sets.append(EmbeddingSet("obs", "observation", obs, recon, recon * 100, ids, ids, np.full(n_obs, -1), vae_split))
    return sets


def write_embedding_file(s: EmbeddingSet, path: Path, vae_digest: str | None = None) -> Path:
    """Write one set in the contract's layout (docs/contracts.md); ``vae_digest``: the
    attr naming the VAE that made it (left out when ``None``, as in older files)."""
    str_t = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as f:
        f["embedding"] = s.embedding
        f["recon_error"] = s.recon_error.astype(np.float32)
        f["typicality_loss"] = s.typicality_loss.astype(np.float32)
        f.create_dataset("vae_split", data=np.asarray(s.vae_split).astype(str).tolist(), dtype=str_t)
        f.create_dataset("ids", data=s.ids.astype(str).tolist(), dtype=str_t)
        f.create_dataset("galaxy_ids", data=s.galaxy_ids.astype(str).tolist(), dtype=str_t)
        f["projection_ids"] = s.projection_ids.astype(np.int32)
        f.attrs.update({"source": s.source, "kind": s.kind, "latent_dim": s.embedding.shape[1], "k": 4, "alpha": 1.0})
        if vae_digest is not None:
            f.attrs["vae_digest"] = vae_digest
    return path


@pytest.fixture(scope="session")
def well_specified() -> list[EmbeddingSet]:
    return make_universe(seed=1, obs_model=2)


@pytest.fixture(scope="session")
def misspecified() -> list[EmbeddingSet]:
    return make_universe(seed=2, obs_model=4)
