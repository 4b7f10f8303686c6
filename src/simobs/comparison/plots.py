"""Figures of the comparison stages.  Every function returns a matplotlib Figure
(Agg backend; callers save or log it and close it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

__all__ = [
    "display_image",
    "plot_projection",
    "plot_projection_panels",
    "plot_reliability",
    "plot_confusion",
    "plot_feature_importance",
    "plot_latent_traversals",
    "plot_posterior_bars",
    "plot_per_galaxy_posteriors",
]

_OBS_CMAP = "Greys"


def display_image(image: np.ndarray) -> np.ndarray:
    """(B, H, W) normalised image -> (H, W, 3) RGB in [0, 1] for display.

    Three or more bands: the last three (reddest) bands as R, G, B from the reddest down
    (e.g. g, r, i -> B, G, R); fewer: the first band in grey.  An asinh stretch between
    the 1st and 99.5th percentiles shows both the core and the faint outskirts.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3:
        raise ValueError(f"expected a (B, H, W) image, got shape {img.shape}")
    rgb = img[-3:][::-1] if img.shape[0] >= 3 else np.repeat(img[:1], 3, axis=0)
    rgb = np.nan_to_num(rgb)
    lo, hi = np.percentile(rgb, 1.0), np.percentile(rgb, 99.5)
    scale = max(hi - lo, 1e-12)
    x = np.arcsinh(np.clip((rgb - lo) / scale, 0, None) * 10.0) / np.arcsinh(10.0)
    return np.clip(np.moveaxis(x, 0, -1), 0.0, 1.0)


def _colours(names: Sequence[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def _density_contours(ax, x: np.ndarray, y: np.ndarray, extent: tuple[float, float, float, float], label: str) -> None:
    h, xe, ye = np.histogram2d(x, y, bins=120, range=[extent[:2], extent[2:]])
    h = gaussian_filter(h.T, 1.5)
    if h.max() <= 0:
        return
    # contours enclosing ~ 90, 68, 38 % of the observed galaxies
    flat = np.sort(h.ravel())[::-1]
    cum = np.cumsum(flat) / flat.sum()
    levels = sorted({float(flat[min(np.searchsorted(cum, q), len(flat) - 1)]) for q in (0.9, 0.68, 0.38)})
    if len(levels) < 2:
        levels = [h.max() * 0.1, h.max() * 0.5]
    xc, yc = 0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1])
    ax.contourf(xc, yc, h, levels=levels + [h.max() * 1.001], cmap=_OBS_CMAP, alpha=0.5)
    ax.contour(xc, yc, h, levels=levels, colors="k", linewidths=0.8)
    ax.plot([], [], color="k", label=label)


def _extent(table: pd.DataFrame) -> tuple[float, float, float, float]:
    x0, x1 = np.percentile(table["umap_1"], [0.1, 99.9])
    y0, y1 = np.percentile(table["umap_2"], [0.1, 99.9])
    px, py = 0.05 * (x1 - x0 + 1e-9), 0.05 * (y1 - y0 + 1e-9)
    return float(x0 - px), float(x1 + px), float(y0 - py), float(y1 + py)


def _thin(df: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    return df if len(df) <= n else df.sample(n, random_state=seed)


def plot_projection(table: pd.DataFrame, max_points_per_source: int = 20000) -> Figure:
    """All sources in one UMAP panel: observations as density contours, simulations as points."""
    ext = _extent(table)
    sims = [s for s in pd.unique(table["source"]) if (table.loc[table.source == s, "kind"] == "simulation").all()]
    colours = _colours(sims)
    fig, ax = plt.subplots(figsize=(7, 6))
    obs = table[table.kind == "observation"]
    if len(obs):
        _density_contours(ax, obs["umap_1"].to_numpy(), obs["umap_2"].to_numpy(), ext, f"observations (N={len(obs)})")
    for s in sims:
        d = _thin(table[table.source == s], max_points_per_source)
        ax.scatter(d["umap_1"], d["umap_2"], s=3, alpha=0.5, color=colours[s], label=f"{s} (N={int((table.source == s).sum())})",
                   rasterized=True)
    ax.set(xlim=ext[:2], ylim=ext[2:], xlabel="UMAP 1", ylabel="UMAP 2", title="Embeddings of all sources")
    ax.legend(markerscale=4, fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def plot_projection_panels(table: pd.DataFrame, max_points_per_source: int = 20000) -> Figure:
    """One panel per simulation against the observed density contours."""
    ext = _extent(table)
    sims = [s for s in pd.unique(table["source"]) if (table.loc[table.source == s, "kind"] == "simulation").all()]
    colours = _colours(sims)
    ncol = min(len(sims), 3) or 1
    nrow = int(np.ceil(len(sims) / ncol)) or 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3.8 * nrow), squeeze=False, sharex=True, sharey=True)
    obs = table[table.kind == "observation"]
    for ax, s in zip(axes.ravel(), sims):
        if len(obs):
            _density_contours(ax, obs["umap_1"].to_numpy(), obs["umap_2"].to_numpy(), ext, "observations")
        d = _thin(table[table.source == s], max_points_per_source)
        ax.scatter(d["umap_1"], d["umap_2"], s=3, alpha=0.6, color=colours[s], label=s, rasterized=True)
        ax.set(xlim=ext[:2], ylim=ext[2:], title=s)
        ax.legend(fontsize=7, markerscale=4)
    for ax in axes.ravel()[len(sims):]:
        ax.set_visible(False)
    fig.supxlabel("UMAP 1")
    fig.supylabel("UMAP 2")
    fig.tight_layout()
    return fig


def plot_reliability(tables: Mapping[str, pd.DataFrame], ece: Mapping[str, float]) -> Figure:
    """Reliability diagram(s): observed frequency against confidence, per labelled table
    (e.g. ``{"uncalibrated": ..., "calibrated": ...}`` from ``reliability_curve``)."""
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    for name, t in tables.items():
        centre = 0.5 * (t["bin_lower"] + t["bin_upper"])
        ok = t["count"] > 0
        ax.plot(t.loc[ok, "mean_confidence"], t.loc[ok, "observed_frequency"], "o-", label=f"{name} (ECE={ece[name]:.3f})")
        axh.bar(centre, t["count"], width=t["bin_upper"] - t["bin_lower"], alpha=0.4, label=name)
    ax.set(ylabel="observed frequency of predicted model", xlim=(0, 1), ylim=(0, 1),
           title="Reliability on held-out simulations")
    ax.legend(fontsize=8)
    axh.set(xlabel="confidence (max posterior model probability)", ylabel="count")
    fig.tight_layout()
    return fig


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Row-normalised confusion matrix (true model in rows)."""
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2, 1.2 * k + 1.5))
    im = ax.imshow(confusion, vmin=0, vmax=1, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{confusion[i, j]:.2f}", ha="center", va="center",
                    color="white" if confusion[i, j] > 0.5 else "black", fontsize=9)
    ax.set(xticks=range(k), yticks=range(k), xticklabels=class_names, yticklabels=class_names,
           xlabel="predicted model", ylabel="true model", title="Confusion (held-out simulations)")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def plot_feature_importance(importance: np.ndarray, class_names: Sequence[str], n_top: int = 10) -> Figure:
    """Mean |SHAP| of the top latent dimensions, one panel per model."""
    k = len(class_names)
    ncol = min(k, 4)
    nrow = int(np.ceil(k / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 0.3 * min(n_top, importance.shape[1]) * nrow + 1.5 * nrow),
                             squeeze=False)
    for ax, kk in zip(axes.ravel(), range(k)):
        order = np.argsort(-importance[kk], kind="stable")[:n_top]
        ax.barh(range(len(order))[::-1], importance[kk, order], color="C0")
        ax.set(yticks=range(len(order))[::-1], yticklabels=[f"z{j}" for j in order], title=class_names[kk],
               xlabel="mean |SHAP| (logit)")
    for ax in axes.ravel()[k:]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot_latent_traversals(traversals: Mapping[int, np.ndarray], values: Sequence[float] | None = None,
                           labels: Mapping[int, str] | None = None) -> Figure:
    """Decoded images along traversals of selected latents, one row per latent.

    Args:
        traversals: latent index -> (S, B, H, W) decoded images for S traversal values.
        values: S traversal values (column titles), optional.
        labels: latent index -> row label (e.g. "z3: m1, m2"), optional.
    """
    rows = list(traversals)
    s = max(len(v) for v in traversals.values())
    fig, axes = plt.subplots(len(rows), s, figsize=(1.3 * s, 1.35 * len(rows) + 0.4), squeeze=False)
    for r, j in enumerate(rows):
        for c in range(s):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if c < len(traversals[j]):
                ax.imshow(display_image(traversals[j][c]), origin="lower")
            if c == 0:
                ax.set_ylabel((labels or {}).get(j, f"z{j}"), fontsize=7)
            if r == 0 and values is not None and c < len(values):
                ax.set_title(f"{values[c]:+.1f}", fontsize=7)
    fig.suptitle("Latent traversals of the features the classifier uses most", fontsize=9)
    fig.tight_layout()
    return fig


def plot_posterior_bars(table: pd.DataFrame) -> Figure:
    """Aggregated posterior model probabilities with bootstrap intervals, and log posteriors."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    x = np.arange(len(table))
    err = np.vstack([table["posterior"] - table["posterior_lo"], table["posterior_hi"] - table["posterior"]])
    a.bar(x, table["posterior"], yerr=np.clip(err, 0, None), capsize=4, color="C0")
    a.set(xticks=x, xticklabels=table["model"], ylim=(0, 1.05), ylabel="p(model | observed sample)",
          title="Aggregated posterior")
    lerr = np.vstack([table["log_posterior"] - table["log_posterior_lo"], table["log_posterior_hi"] - table["log_posterior"]])
    b.bar(x, table["log_posterior"], yerr=np.clip(lerr, 0, None), capsize=4, color="C1")
    b.set(xticks=x, xticklabels=table["model"], ylabel="log p(model | observed sample)", title="Log posterior (nats)")
    for ax in (a, b):
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    return fig


def plot_per_galaxy_posteriors(probs: np.ndarray, class_names: Sequence[str], excluded: np.ndarray | None = None) -> Figure:
    """Distribution of per-galaxy posterior model probabilities (one histogram per model).

    Args:
        probs: (N, K) per-galaxy posterior model probabilities.
        excluded: optional (N,) mask of galaxies left out of the aggregate (OOD), drawn hatched.
    """
    k = len(class_names)
    fig, axes = plt.subplots(1, k, figsize=(2.8 * k, 2.8), sharey=True, squeeze=False)
    bins = np.linspace(0, 1, 21)
    keep = np.ones(len(probs), bool) if excluded is None else ~np.asarray(excluded)
    for kk, ax in enumerate(axes[0]):
        ax.hist(probs[keep, kk], bins=bins, color="C0", alpha=0.8, label="counted")
        if excluded is not None and excluded.any():
            ax.hist(probs[~keep, kk], bins=bins, histtype="step", hatch="//", color="C3", label="OOD (excluded)")
        ax.set(title=class_names[kk], xlabel="p(model | galaxy)")
        ax.set_yscale("log")
    axes[0, 0].set_ylabel("galaxies")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig
