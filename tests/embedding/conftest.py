"""Tiny image datasets following docs/contracts.md, and settings of a tiny network.

Images are 3x16x16 blobs (a Gaussian of random position, width and colour plus
noise) so that the network is small and a training epoch takes a fraction of a
second on one core, while the images still have structure to learn.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from simobs.embedding.settings import EmbeddingSettings

torch.set_num_threads(1)


def write_image_dataset(
    path: Path,
    n: int,
    *,
    source: str = "obs",
    kind: str = "observation",
    size: int = 16,
    bands: tuple[str, ...] = ("g", "r", "i"),
    chunk_rows: int = 8,
    seed: int = 0,
    n_projections: int = 1,
) -> Path:
    """Write an image dataset as ingest_merge would (contract: docs/contracts.md)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) - (size - 1) / 2
    cx, cy = rng.normal(0, size / 8, (2, n, 1, 1)).astype(np.float32)
    width = rng.uniform(1.0, size / 5, (n, 1, 1)).astype(np.float32)
    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width**2))
    colours = rng.dirichlet(np.ones(len(bands)), n).astype(np.float32) * 3
    images = colours[:, :, None, None] * blob[:, None] + rng.normal(0, 0.05, (n, len(bands), size, size))
    images = images.astype(np.float32)
    if kind == "observation":
        ids = [f"{source}-{i:05d}" for i in range(n)]
        galaxy_ids = ids
        projections = np.full(n, -1, np.int32)
    else:
        galaxy_ids = [f"{source}-g{i // n_projections:04d}" for i in range(n)]
        projections = (np.arange(n) % n_projections).astype(np.int32)
        ids = [f"{g}-p{p}" for g, p in zip(galaxy_ids, projections)]
    string = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images, chunks=(min(chunk_rows, n), len(bands), size, size))
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=string)
        f.create_dataset("galaxy_ids", data=np.array(galaxy_ids, dtype=object), dtype=string)
        f.create_dataset("projection_ids", data=projections)
        f.attrs.update(
            source=source, kind=kind, bands=list(bands), pixel_scale_arcsec=0.396,
            normalisation=json.dumps({"method": "asinh", "softening": 1.0}), config_digest="test",
            n_images=n, n_rejected=0, simobs_version="test",
        )
    return path


def tiny_settings(**overrides: object) -> EmbeddingSettings:
    """A network and schedule small enough for unit tests (seconds on one core)."""
    values: dict[str, object] = dict(
        latent_dim=32, k=4, k_start=16, k_anneal_epochs=1.0, width=8, depth=2, max_width=16,
        batch_size=16, max_epochs=3, patience=2, lr=1e-2, warmup_epochs=0.2, val_fraction=0.2,
        block_rows=8, shuffle_buffer_blocks=4, aux_k=4, dead_window_epochs=0.5, device="cpu", seed=0,
    )
    values.update(overrides)
    return EmbeddingSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def observed_dataset(tmp_path: Path) -> Path:
    """80 observed 3x16x16 images in chunks of 8 rows."""
    return write_image_dataset(tmp_path / "obs.h5", 80)
