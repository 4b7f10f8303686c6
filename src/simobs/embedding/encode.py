"""Encoding a source with the trained VAE (rule ``embed``, one job per source).

Writes ``results/embeddings/{source}.h5`` (docs/contracts.md): the masked posterior
mean (the embedding used downstream), the per-image reconstruction MSE and ELBO
(the "typicality" of each image under the model of the observations), and the ids
carried over from the image dataset.  Any source (observation or simulation) can be
encoded; encoding never changes the model.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from simobs.embedding.checkpoint import load_model
from simobs.embedding.data import iter_blocks_in_order, read_source_info
from simobs.embedding.model import KSparseVAE, elbo_terms
from simobs.devices import resolve_device
from simobs.io import atomic_path

__all__ = ["EmbeddingSummary", "encode_images", "embed_dataset"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddingSummary:
    """Numbers worth logging about one encoded source."""

    source: str
    kind: str
    n_images: int
    latent_dim: int
    k: int
    alpha: float
    mean_recon_error: float
    median_elbo: float
    used_latents: int
    images_per_s: float

    def metrics(self) -> dict[str, float]:
        return {
            "n_images": float(self.n_images),
            "mean_recon_error": self.mean_recon_error,
            "median_elbo": self.median_elbo,
            "used_latents": float(self.used_latents),
            "images_per_s": self.images_per_s,
        }


@torch.no_grad()
def encode_images(
    model: KSparseVAE,
    images: np.ndarray | torch.Tensor,
    k: int,
    beta: float,
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    """Embedding, reconstruction error and ELBO of a batch of images.

    The code is the posterior mean (no sampling), so the result is deterministic.

    Args:
        model: The trained VAE.
        images: ``(N, B, H, W)`` normalised images.
        k: Active units per image (``round(alpha * k_train)`` at inference).
        beta: Decoder width the model was trained with.
        device: Where to run.

    Returns:
        ``embedding`` ``(N, D)``, ``recon_error`` ``(N,)`` (MSE per pixel) and
        ``elbo`` ``(N,)`` (nats), all float32 numpy arrays.
    """
    device = torch.device(device)
    x = torch.as_tensor(images, dtype=torch.float32).to(device)
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    with autocast:
        out = model(x, k=k, sample=False)
    terms = elbo_terms(x, out.x_hat, out.kl, beta)
    return {
        "embedding": out.embedding.float().cpu().numpy(),
        "recon_error": terms["mse"].cpu().numpy().astype(np.float32),
        "elbo": terms["elbo"].cpu().numpy().astype(np.float32),
    }


def embed_dataset(
    model_path: str | Path,
    dataset_path: str | Path,
    output_path: str | Path,
    *,
    alpha: float | None = None,
    batch_size: int = 512,
    device: str = "auto",
) -> EmbeddingSummary:
    """Encode every image of one source and write its embeddings file.

    Reads the dataset in chunk-aligned slices (memory stays bounded by
    ``batch_size`` images whatever the size of the source) and writes the results
    into preallocated HDF5 datasets, atomically.

    Args:
        model_path: The model written by ``train_embedding``.
        dataset_path: The source's image dataset.
        output_path: ``results/embeddings/{source}.h5``.
        alpha: Inference multiplier of k; default: the value stored with the model.
        batch_size: Images per forward pass.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.

    Returns:
        An :class:`EmbeddingSummary`.

    Raises:
        ValueError: if the images do not match the model's bands or size.
    """
    dev = resolve_device(device)
    model, info = load_model(model_path, dev)
    arch = model.arch
    alpha = float(info["alpha"] if alpha is None else alpha)
    if alpha < 1:
        raise ValueError(f"embedding.alpha={alpha} must be >= 1")
    k = min(arch.latent_dim, int(round(alpha * arch.k)))
    beta = float(info["beta"])
    source = read_source_info(dataset_path)
    expected = (arch.bands, arch.image_size, arch.image_size)
    if source.image_shape != expected:
        raise ValueError(
            f"{dataset_path}: images of shape {source.image_shape} but the model {model_path} expects "
            f"{expected}; ingest the source with the bands and cutout size of the training sources"
        )
    n = source.n_images
    used = np.zeros(arch.latent_dim, dtype=bool)
    start_time = time.perf_counter()
    with atomic_path(output_path) as tmp, h5py.File(tmp, "w") as out, h5py.File(dataset_path, "r") as src:
        chunk_rows = max(1, min(n, 4096))
        emb = out.create_dataset(
            "embedding", shape=(n, arch.latent_dim), dtype="float32",
            chunks=(min(chunk_rows, max(n, 1)), arch.latent_dim) if n else None,
        )
        recon = out.create_dataset("recon_error", shape=(n,), dtype="float32")
        elbo = out.create_dataset("elbo", shape=(n,), dtype="float32")
        for start, images in iter_blocks_in_order(dataset_path, batch_size):
            result = encode_images(model, images, k, beta, dev)
            stop = start + len(images)
            emb[start:stop] = result["embedding"]
            recon[start:stop] = result["recon_error"]
            elbo[start:stop] = result["elbo"]
            used |= (result["embedding"] != 0).any(axis=0)
        string = h5py.string_dtype("utf-8")
        for name in ("ids", "galaxy_ids"):
            if name in src:
                out.create_dataset(name, data=src[name].asstr()[...].astype(object), dtype=string)
        if "projection_ids" in src:
            out.create_dataset("projection_ids", data=src["projection_ids"][...].astype(np.int32))
        out.attrs.update(
            source=source.source,
            kind=source.kind,
            latent_dim=arch.latent_dim,
            # k and alpha as in the config: each image uses round(alpha * k) = k_active units.
            k=arch.k,
            alpha=alpha,
            k_active=k,
            beta=beta,
            model=str(model_path),
        )
        recon_all = recon[...] if n else np.zeros(0, np.float32)
        elbo_all = elbo[...] if n else np.zeros(0, np.float32)
    elapsed = time.perf_counter() - start_time
    summary = EmbeddingSummary(
        source=source.source,
        kind=source.kind,
        n_images=n,
        latent_dim=arch.latent_dim,
        k=k,
        alpha=alpha,
        mean_recon_error=float(recon_all.mean()) if n else float("nan"),
        median_elbo=float(np.median(elbo_all)) if n else float("nan"),
        used_latents=int(used.sum()),
        images_per_s=n / max(elapsed, 1e-9),
    )
    log.info(
        "encoded %d images of %s (%s) with k=%d: mean MSE %.4g, median ELBO %.4g, %d latents used, %.0f img/s",
        n, summary.source, summary.kind, k, summary.mean_recon_error, summary.median_elbo,
        summary.used_latents, summary.images_per_s,
    )
    return summary
