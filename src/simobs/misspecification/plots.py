"""Figures of the misspecification stage (Agg backend; return Figures)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from simobs.comparison.plots import display_image  # noqa: E402

__all__ = ["plot_score_histograms", "plot_gallery", "plot_mmd_nulls"]


def plot_score_histograms(scores: Mapping[str, np.ndarray], threshold: float | None, xlabel: str,
                          title: str = "", log_x: bool = False) -> Figure:
    """Normalised histograms of a score per source with the decision threshold."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    finite = np.concatenate([np.asarray(v)[np.isfinite(v)] for v in scores.values() if len(v)])
    if log_x:
        finite = finite[finite > 0]
    lo, hi = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    bins = np.geomspace(max(lo, 1e-12), hi, 60) if log_x else np.linspace(lo, hi + 1e-12, 60)
    for i, (name, v) in enumerate(scores.items()):
        v = np.asarray(v)
        v = v[np.isfinite(v)]
        ax.hist(np.clip(v, bins[0], bins[-1]), bins=bins, density=True, histtype="step", lw=1.5, color=f"C{i}",
                label=f"{name} (N={len(v)})")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", label="threshold")
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel="density", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_gallery(images: np.ndarray, titles: Sequence[str], suptitle: str = "", ncol: int = 8) -> Figure:
    """Grid of (N, B, H, W) images with a title each (e.g. source, id and score)."""
    n = len(images)
    if n == 0:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "no galaxies to show", ha="center", va="center")
        return fig
    ncol = min(ncol, n)
    nrow = int(np.ceil(n / ncol))
    # Each panel's title takes up to three lines (source, id, score) above a square image;
    # constrained layout keeps a row's titles off the row above (tight_layout let them overlap).
    lines = max((str(t).count("\n") + 1 for t in titles), default=1)
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.6 * ncol, (1.5 + 0.12 * lines) * nrow + 0.4),
                             squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, t in zip(axes.ravel(), images, titles):
        ax.imshow(display_image(img), origin="lower")
        ax.set_title(t, fontsize=6)
    fig.suptitle(suptitle, fontsize=9)
    return fig


def plot_mmd_nulls(results: Mapping[str, object], alpha: float = 0.05) -> Figure:
    """Permutation null of MMD^2 per simulation with the observed statistic and p-value."""
    names = list(results)
    ncol = min(len(names), 3) or 1
    nrow = int(np.ceil(len(names) / ncol)) or 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3 * nrow), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        r = results[name]
        ax.hist(r.null, bins=40, color="0.6", density=True, label="permutation null")
        ax.axvline(r.mmd2, color="C3" if r.p_value < alpha else "C2", lw=2, label=f"observed, p={r.p_value:.3g}")
        ax.set(title=f"{name} vs observations", xlabel="MMD$^2$ (unbiased)")
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig
