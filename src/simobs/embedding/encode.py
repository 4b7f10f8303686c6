"""Encoding a source with the trained VAE (rule ``embed``, one job per source).

Writes ``results/embeddings/{source}.h5`` (docs/contracts.md): the masked posterior
mean (the embedding used downstream), the per-image reconstruction MSE and typicality
loss (how typical each image is of the observations the VAE learnt; not a bound on
``-log p(x)``), whether the VAE trained on the image (``vae_split``), and the ids
carried over from the image dataset, and in attr ``vae_digest`` the digest of the
model that made them.  Any source (observation or simulation) can be
encoded; encoding never changes the model.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
import torch

from simobs.embedding.checkpoint import load_model
from simobs.embedding.data import iter_blocks_in_order, read_source_info
from simobs.embedding.model import KSparseVAE, loss_terms
from simobs.devices import resolve_device
from simobs.io import atomic_path

__all__ = ["EmbeddingSummary", "encode_images", "embed_dataset", "vae_split_of", "VAE_SPLITS"]

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
    median_typicality_loss: float
    used_latents: int
    images_per_s: float
    vae_digest: str = ""  # model_digest of the VAE that encoded them

    def metrics(self) -> dict[str, float]:
        return {
            "n_images": float(self.n_images),
            "mean_recon_error": self.mean_recon_error,
            "median_typicality_loss": self.median_typicality_loss,
            "used_latents": float(self.used_latents),
            "images_per_s": self.images_per_s,
        }


#: Values of the ``vae_split`` dataset: the VAE's training or validation image, or neither.
VAE_SPLITS = ("train", "validation", "unused")


def vae_split_of(info: Mapping[str, Any], source: str, n_images: int, model_path: str | Path = "") -> np.ndarray:
    """Which images of ``source`` the VAE trained on, from the split stored with the model.

    Args:
        info: The model file's payload without the weights (:func:`load_model`'s second value).
        source: The dataset's ``source`` attr.
        n_images: Images of the dataset.
        model_path: Named in errors.

    Returns:
        ``(n_images,)`` array of str, each ``train``, ``validation`` or ``unused``
        (``unused`` for every image of a source the VAE did not train on).

    Raises:
        ValueError: if the model trained on ``source`` but records no split (a model from
            before the split was stored: retrain it), or if the split's ranges do not cover
            ``n_images`` exactly (the source changed since training: retrain).
    """
    extra = info.get("extra") or {}
    split = np.full(n_images, "unused", dtype=object)
    if source not in (extra.get("train_sources") or []):
        return split
    ranges = (extra.get("split") or {}).get(source)
    if ranges is None:
        raise ValueError(
            f"{model_path}: the VAE was trained on {source!r} but the model file records no train/validation "
            "split; retrain it (snakemake --forcerun train_embedding)"
        )
    covered = np.zeros(n_images, dtype=int)
    for part, blocks in ranges.items():
        for start, stop in blocks:
            if not 0 <= start < stop <= n_images:
                raise ValueError(
                    f"{model_path}: the {part} images [{start}, {stop}) of {source!r} lie outside its {n_images} "
                    "images; the source changed since training, retrain the VAE"
                )
            split[start:stop] = part
            covered[start:stop] += 1
    if not (covered == 1).all():
        raise ValueError(
            f"{model_path}: the stored split covers {int((covered > 0).sum())} of the {n_images} images of "
            f"{source!r} (some twice or not at all); the source changed since training, retrain the VAE"
        )
    return split


@torch.no_grad()
def encode_images(
    model: KSparseVAE,
    images: np.ndarray | torch.Tensor,
    k: int,
    beta: float,
    device: torch.device | str = "cpu",
    objective: str = "elbo",
) -> dict[str, np.ndarray]:
    """Embedding, reconstruction error and typicality loss of a batch of images.

    The code is the posterior mean (no sampling), so the result is deterministic.

    Args:
        model: The trained VAE.
        images: ``(N, B, H, W)`` normalised images.
        k: Active units per image (``round(alpha * k_train)`` at inference).
        beta: Decoder width the model was trained with.
        device: Where to run.
        objective: The model's training objective; ``infovae`` has no posterior
            width, so its typicality loss has no KL term.

    Returns:
        ``embedding`` ``(N, D)``, ``recon_error`` ``(N,)`` (MSE per pixel) and
        ``typicality_loss`` ``(N,)`` (nats, lower = more typical), all float32 numpy arrays.
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
    kl = torch.zeros_like(out.kl) if objective == "infovae" else out.kl
    terms = loss_terms(x, out.x_hat, kl, beta)
    return {
        "embedding": out.embedding.float().cpu().numpy(),
        "recon_error": terms["mse"].cpu().numpy().astype(np.float32),
        "typicality_loss": terms["typicality_loss"].cpu().numpy().astype(np.float32),
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
    objective = str(((info.get("extra") or {}).get("settings") or {}).get("objective", "elbo"))
    source = read_source_info(dataset_path)
    expected = (arch.bands, arch.image_size, arch.image_size)
    if source.image_shape != expected:
        raise ValueError(
            f"{dataset_path}: images of shape {source.image_shape} but the model {model_path} expects "
            f"{expected}; ingest the source with the bands and cutout size of the training sources"
        )
    n = source.n_images
    split = vae_split_of(info, source.source, n, model_path)
    used = np.zeros(arch.latent_dim, dtype=bool)
    start_time = time.perf_counter()
    with atomic_path(output_path) as tmp, h5py.File(tmp, "w") as out, h5py.File(dataset_path, "r") as src:
        chunk_rows = max(1, min(n, 4096))
        emb = out.create_dataset(
            "embedding", shape=(n, arch.latent_dim), dtype="float32",
            chunks=(min(chunk_rows, max(n, 1)), arch.latent_dim) if n else None,
        )
        recon = out.create_dataset("recon_error", shape=(n,), dtype="float32")
        typicality = out.create_dataset("typicality_loss", shape=(n,), dtype="float32")
        for start, images in iter_blocks_in_order(dataset_path, batch_size):
            result = encode_images(model, images, k, beta, dev, objective)
            stop = start + len(images)
            emb[start:stop] = result["embedding"]
            recon[start:stop] = result["recon_error"]
            typicality[start:stop] = result["typicality_loss"]
            used |= (result["embedding"] != 0).any(axis=0)
        string = h5py.string_dtype("utf-8")
        out.create_dataset("vae_split", data=split.astype(object), dtype=string)
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
            objective=objective,
            model=str(model_path),
            # the lineage every consumer of several embeddings files checks (simobs.provenance)
            vae_digest=info["model_digest"],
        )
        recon_all = recon[...] if n else np.zeros(0, np.float32)
        typicality_all = typicality[...] if n else np.zeros(0, np.float32)
    elapsed = time.perf_counter() - start_time
    summary = EmbeddingSummary(
        source=source.source,
        kind=source.kind,
        n_images=n,
        latent_dim=arch.latent_dim,
        k=k,
        alpha=alpha,
        mean_recon_error=float(recon_all.mean()) if n else float("nan"),
        median_typicality_loss=float(np.median(typicality_all)) if n else float("nan"),
        used_latents=int(used.sum()),
        images_per_s=n / max(elapsed, 1e-9),
        vae_digest=str(info["model_digest"]),
    )
    log.info(
        "encoded %d images of %s (%s) with k=%d: mean MSE %.4g, median typicality loss %.4g, %d latents used, "
        "%.0f img/s", n, summary.source, summary.kind, k, summary.mean_recon_error, summary.median_typicality_loss,
        summary.used_latents, summary.images_per_s,
    )
    return summary
