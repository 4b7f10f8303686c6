"""Diagnostic figures of the embedding: loss curves, reconstructions, latent traversals."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from simobs.embedding.data import Block, BlockShuffleDataset  # noqa: E402
from simobs.embedding.model import KSparseVAE  # noqa: E402
from simobs.embedding.traversal import decode_latent_traversal, most_used_latents  # noqa: E402
from simobs.io import atomic_path  # noqa: E402

__all__ = [
    "to_rgb",
    "plot_loss_curves",
    "plot_reconstructions",
    "plot_latent_traversals",
    "sample_images",
    "write_training_figures",
]


def to_rgb(images: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Colour composites of normalised images for display.

    Args:
        images: ``(N, B, H, W)``; for ``B >= 3`` the last three bands are shown as
            R, G, B (g, r, i → i=R, r=G, g=B, the usual SDSS composite); ``B = 1``
            is grey; ``B = 2`` uses the mean as the green channel.
        lo, hi: Display range in normalised units; default the 0.5 and 99.7
            percentiles of ``images``, shared by all panels so they are comparable.

    Returns:
        ``(N, H, W, 3)`` float array in ``[0, 1]``.
    """
    images = np.asarray(images, dtype=np.float32)
    bands = images.shape[1]
    if bands >= 3:
        rgb = images[:, [bands - 1, bands - 2, bands - 3]]
    elif bands == 2:
        rgb = np.stack([images[:, 1], images.mean(axis=1), images[:, 0]], axis=1)
    else:
        rgb = np.repeat(images, 3, axis=1)
    if lo is None or hi is None:
        finite = rgb[np.isfinite(rgb)]
        lo_q, hi_q = np.percentile(finite, [0.5, 99.7]) if finite.size else (0.0, 1.0)
        lo = lo_q if lo is None else lo
        hi = hi_q if hi is None else hi
    scaled = (rgb - lo) / max(float(hi - lo), 1e-6)
    return np.clip(np.moveaxis(scaled, 1, -1), 0.0, 1.0)


def plot_loss_curves(history: Sequence[Mapping[str, float]]) -> Figure:
    """Training and validation curves per epoch (loss, terms, FVE, sparsity, lr)."""
    epochs = [h["epoch"] for h in history]

    def series(key: str) -> list[float]:
        return [h.get(key, np.nan) for h in history]

    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), constrained_layout=True)
    panels = [
        ("loss per image [nats] (−ELBO; infovae: MSE + MMD)", [("loss", "train"), ("val_loss", "validation")], True),
        ("reconstruction term [nats]", [("recon", "train"), ("val_recon", "validation")], True),
        ("KL of active units [nats]", [("kl", "train"), ("val_kl", "validation")], False),
        ("validation FVE", [("val_fve", "fraction of variance explained")], False),
        ("sparsity", [("dead_fraction", "dead latents (fraction)")], False),
        ("learning rate", [("lr", "lr")], True),
    ]
    for ax, (title, keys, log_y) in zip(axes.flat, panels):
        for key, label in keys:
            ax.plot(epochs, series(key), marker="o", ms=3, label=label)
        if title == "sparsity":
            twin = ax.twinx()
            twin.plot(epochs, series("k"), color="C3", ls="--", label="k (active units)")
            twin.set_ylabel("k")
            twin.legend(loc="upper right", fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if log_y and all(v > 0 for key, _ in keys for v in series(key) if np.isfinite(v)):
            ax.set_yscale("log")
        ax.legend(loc="upper left" if title == "sparsity" else "best", fontsize=8)
        ax.grid(alpha=0.3)
    return fig


@torch.no_grad()
def plot_reconstructions(model: KSparseVAE, images: np.ndarray, k: int) -> Figure:
    """Inputs (top row), reconstructions (middle) and residuals (bottom).

    Args:
        model: The trained VAE.
        images: ``(N, B, H, W)`` images (N ≲ 12 for a readable figure).
        k: Active units per image.
    """
    model.eval()
    device = model.latent_mean.device
    x = torch.as_tensor(images, dtype=torch.float32, device=device)
    x_hat = model(x, k=k, sample=False).x_hat.float().cpu().numpy()
    images = np.asarray(images)
    n = len(images)
    lo, hi = np.percentile(images, [0.5, 99.7])
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5.2), squeeze=False, constrained_layout=True)
    residual = images - x_hat
    r = float(np.percentile(np.abs(residual), 99.5)) or 1.0
    for j in range(n):
        axes[0, j].imshow(to_rgb(images[j : j + 1], lo, hi)[0], origin="lower")
        axes[1, j].imshow(to_rgb(x_hat[j : j + 1], lo, hi)[0], origin="lower")
        axes[2, j].imshow(residual[j].mean(axis=0), origin="lower", cmap="RdBu_r", vmin=-r, vmax=r)
        mse = float(np.mean(residual[j] ** 2))
        axes[2, j].set_title(f"MSE {mse:.2g}", fontsize=7)
    for row, label in enumerate(["input", f"reconstruction (k={k})", "residual (band mean)"]):
        axes[row, 0].set_ylabel(label, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


@torch.no_grad()
def plot_latent_traversals(
    model: KSparseVAE, latent_indices: Sequence[int], *, n_steps: int = 7, n_sigma: float = 3.0
) -> Figure:
    """One row per latent: a typical sparse code with that latent moved by ``±n_sigma`` of its active spread."""
    images, offsets = decode_latent_traversal(model, latent_indices, n_steps=n_steps, n_sigma=n_sigma)
    rows = max(len(latent_indices), 1)
    fig, axes = plt.subplots(
        rows, n_steps, figsize=(1.4 * n_steps, 1.5 * rows), squeeze=False, constrained_layout=True
    )
    if len(images):
        lo, hi = np.percentile(images, [0.5, 99.7])
        usage = model.latent_usage.detach().cpu().numpy()
        for r, latent in enumerate(latent_indices):
            rgb = to_rgb(images[r], lo, hi)
            for c in range(n_steps):
                axes[r, c].imshow(rgb[c], origin="lower")
                if r == 0:
                    sig = np.linspace(-n_sigma, n_sigma, n_steps)[c]
                    axes[r, c].set_title(f"{sig:+.1f}σ", fontsize=8)
            axes[r, 0].set_ylabel(f"z{latent}\n({100 * usage[latent]:.0f}% used)", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def sample_images(blocks: Sequence[Block], n: int) -> np.ndarray:
    """The first ``n`` images of ``blocks`` in order, ``(n, B, H, W)`` float32."""
    out = []
    count = 0
    for batch in BlockShuffleDataset(blocks, batch_size=max(n, 1), shuffle=False):
        out.append(batch.numpy())
        count += len(batch)
        if count >= n:
            break
    return np.concatenate(out)[:n]


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def write_training_figures(
    model: KSparseVAE,
    history: Sequence[Mapping[str, float]],
    val_blocks: Sequence[Block],
    out_dir: str | Path,
    *,
    k: int,
    n_examples: int = 10,
    n_traversals: int = 8,
) -> dict[str, Path]:
    """Write ``loss_curves.png``, ``reconstructions.png`` and ``latent_traversals.png``.

    Args:
        model: The trained VAE.
        history: Per-epoch metrics.
        val_blocks: Held-out images (the reconstructions are of unseen images).
        out_dir: Folder of the figures.
        k: Active units for the reconstructions (the inference k).
        n_examples: Images in the reconstruction grid.
        n_traversals: Most used latents to traverse.

    Returns:
        ``{name: path}`` for the three figures.
    """
    out_dir = Path(out_dir)
    paths = {
        "loss_curves": _save(plot_loss_curves(history), out_dir / "loss_curves.png"),
        "reconstructions": _save(
            plot_reconstructions(model, sample_images(val_blocks, n_examples), k), out_dir / "reconstructions.png"
        ),
        "latent_traversals": _save(
            plot_latent_traversals(model, most_used_latents(model, n_traversals)),
            out_dir / "latent_traversals.png",
        ),
    }
    return paths
