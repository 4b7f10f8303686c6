"""Figures of the separation stage; each function returns a matplotlib Figure (Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["separation_examples_figure", "power_spectra_figure", "cross_correlation_figure", "coverage_figure",
           "denoising_examples_figure", "fields_overview_figure", "blind_trace_figure", "blind_corner_figure",
           "sbc_rank_figure"]


def separation_examples_figure(
    observation: np.ndarray,
    truth: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    samples: np.ndarray,
    sigma: np.ndarray,
    component: str,
) -> Figure:
    """Rows: observations; columns: observation / truth / posterior mean / posterior std / two samples.

    Args:
        observation, truth, mean, std: shape ``(m, npix, npix)``.
        samples: shape ``(m, S, npix, npix)``, ``S >= 0`` (up to two are shown).
        sigma: σ per row, shape ``(m,)``.
        component: ``"dust"`` or ``"cmb"`` (titles).
    """
    m = observation.shape[0]
    n_samples = min(2, samples.shape[1])
    cols = 4 + n_samples
    fig, axes = plt.subplots(m, cols, figsize=(2.2 * cols, 2.2 * m + 0.3), squeeze=False)
    titles = ["observation y", f"true {component}", "posterior mean", "posterior std"] + [
        f"sample {j + 1}" for j in range(n_samples)
    ]
    for i in range(m):
        lo, hi = np.percentile(truth[i], [1, 99])
        panels = [observation[i], truth[i], mean[i], std[i]] + [samples[i, j] for j in range(n_samples)]
        for j, (ax, img) in enumerate(zip(axes[i], panels, strict=True)):
            kwargs = {"cmap": "magma"} if j == 3 else {"cmap": "RdBu_r" if component == "cmb" else "inferno",
                                                       "vmin": lo, "vmax": hi}
            if j == 0:
                kwargs = {"cmap": "viridis"}
            ax.imshow(img, origin="lower", **kwargs)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=9)
        axes[i, 0].set_ylabel(f"σ = {sigma[i]:.2f}", fontsize=9)
    fig.tight_layout()
    return fig


def power_spectra_figure(
    k: np.ndarray,
    spectra: Mapping[str, Mapping[str, np.ndarray]],
    half_nyquist: float = 0.25,
    stderr: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> Figure:
    """Binned power spectra per component (one panel each) with their relative errors below.

    Args:
        k: bin centres, cycles per pixel, shape ``(K,)``.
        spectra: ``{component: {"truth": P, "posterior samples": P, "Wiener": P, ...}}``, each ``(K,)``.
        half_nyquist: where the dashed line marks half the Nyquist frequency.
        stderr: optional ``{component: {label: standard error of the relative error (K,)}}``,
            drawn as ±1 standard-error bands around those relative-error curves.
    """
    comps = list(spectra)
    fig, axes = plt.subplots(2, len(comps), figsize=(4.5 * len(comps), 5.5), squeeze=False,
                             gridspec_kw={"height_ratios": [2, 1]}, sharex=True)
    for j, comp in enumerate(comps):
        truth = spectra[comp]["truth"]
        for label, p in spectra[comp].items():
            style = {"color": "k", "lw": 2} if label == "truth" else {}
            axes[0, j].semilogy(k, p, "o-", ms=3, label=label, **style)
            if label != "truth":
                rel = (p - truth) / truth
                line, = axes[1, j].plot(k, rel, "o-", ms=3, label=label)
                band = (stderr or {}).get(comp, {}).get(label)
                if band is not None:
                    axes[1, j].fill_between(k, rel - band, rel + band, color=line.get_color(), alpha=0.25, lw=0)
        axes[0, j].set_title(comp)
        axes[0, j].set_ylabel("P(k)")
        axes[1, j].axhspan(-0.1, 0.1, color="0.9")
        axes[1, j].axhline(0, color="k", lw=1)
        axes[1, j].set_ylabel("relative error")
        axes[1, j].set_xlabel("k [cycles / pixel]")
        for ax in axes[:, j]:
            ax.axvline(half_nyquist, color="0.5", ls="--", lw=1)
        axes[0, j].legend(fontsize=8)
    fig.tight_layout()
    return fig


def cross_correlation_figure(k: np.ndarray, curves: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """r(k) between estimates and truth; ``curves = {component: {estimate label: r (K,)}}``."""
    comps = list(curves)
    fig, axes = plt.subplots(1, len(comps), figsize=(4.5 * len(comps), 3.2), squeeze=False)
    for j, comp in enumerate(comps):
        for label, r in curves[comp].items():
            axes[0, j].plot(k, r, "o-", ms=3, label=label)
        axes[0, j].set_ylim(min(0.0, float(np.nanmin([np.nanmin(r) for r in curves[comp].values()]))), 1.02)
        axes[0, j].set_title(comp)
        axes[0, j].set_xlabel("k [cycles / pixel]")
        axes[0, j].set_ylabel("r(k)")
        axes[0, j].legend(fontsize=8)
    fig.tight_layout()
    return fig


def coverage_figure(levels: np.ndarray, coverage: Mapping[str, np.ndarray]) -> Figure:
    """Empirical vs nominal coverage of pixel-wise central credible intervals.

    Args:
        levels: nominal levels, shape ``(L,)``.
        coverage: ``{label: empirical coverage (L,)}``.
    """
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], color="k", lw=1)
    ax.fill_between([0, 1], [-0.05, 0.95], [0.05, 1.05], color="0.9", label="±5 points")
    for label, cov in coverage.items():
        ax.plot(levels, cov, "o-", label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal credible level")
    ax.set_ylabel("empirical coverage")
    ax.set_title("pixel-wise credible intervals\n(dust and CMB: identical, cmb = (y − dust)/σ)", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def denoising_examples_figure(clean: np.ndarray, noisy: np.ndarray, denoised: np.ndarray,
                              sigmas: Sequence[float]) -> Figure:
    """Training check: clean map, ``x + σ·cmb`` and the one-step Tweedie estimate per σ.

    Args:
        clean: shape ``(npix, npix)``.
        noisy, denoised: shape ``(len(sigmas), npix, npix)``.
    """
    m = len(sigmas)
    fig, axes = plt.subplots(2, m + 1, figsize=(2.2 * (m + 1), 4.6), squeeze=False)
    lo, hi = np.percentile(clean, [1, 99])
    axes[0, 0].imshow(clean, origin="lower", cmap="inferno", vmin=lo, vmax=hi)
    axes[0, 0].set_title("dust", fontsize=9)
    axes[1, 0].axis("off")
    for j, s in enumerate(sigmas):
        axes[0, j + 1].imshow(noisy[j], origin="lower", cmap="viridis")
        axes[0, j + 1].set_title(f"y, σ={s:g}", fontsize=9)
        axes[1, j + 1].imshow(denoised[j], origin="lower", cmap="inferno", vmin=lo, vmax=hi)
        axes[1, j + 1].set_title("Tweedie E[x|y]", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def fields_overview_figure(fields) -> Figure:
    """The inputs of the stage: one dust map, one CMB map, their observation, and the CMB ``C_ℓ``.

    Args:
        fields: a :class:`~simobs.separation.dataset.FieldDataset` (its test split is shown).
    """
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    sigma = float(fields.sigma[0])
    for ax, img, title, cmap in (
        (axes[0], fields.test_dust[0], "dust (standardised)", "inferno"),
        (axes[1], fields.test_cmb[0], "CMB (standardised)", "RdBu_r"),
        (axes[2], fields.observation[0], f"y = dust + {sigma:.2f}·CMB", "viridis"),
    ):
        ax.imshow(img, origin="lower", cmap=cmap)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    cl = np.asarray(fields.attrs.get("cmb_cl", []))
    if cl.size > 2:
        ell = np.arange(cl.size)
        axes[3].plot(ell[2:], ell[2:] * (ell[2:] + 1) * cl[2:] / (2 * np.pi))
        axes[3].set_xlabel("ℓ")
        axes[3].set_ylabel("ℓ(ℓ+1)C_ℓ/2π [μK²]")
        axes[3].set_title("CMB TT spectrum (camb)", fontsize=9)
    else:
        axes[3].axis("off")
    fig.tight_layout()
    return fig


def blind_trace_figure(chains: np.ndarray, truth: np.ndarray, names: Sequence[str], title: str = "") -> Figure:
    """Trace of every chain of one observation, one panel per parameter, the truth dashed.

    Args:
        chains: shape ``(C, T, P)``.
        truth: shape ``(P,)``.
        names: parameter names, length ``P``.
    """
    c, t, p = chains.shape
    fig, axes = plt.subplots(p, 1, figsize=(6, 1.6 * p), sharex=True, squeeze=False)
    for j, ax in enumerate(axes[:, 0]):
        for k in range(c):
            ax.plot(np.arange(t), chains[k, :, j], lw=0.8)
        ax.axhline(truth[j], color="k", ls="--", lw=1)
        ax.set_ylabel(names[j])
    axes[-1, 0].set_xlabel("Gibbs iteration (after burn-in)")
    axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def blind_corner_figure(panels: Sequence[tuple[str, Mapping[str, np.ndarray], np.ndarray]],
                        names: Sequence[str]) -> Figure:
    """Corner plots of posterior draws per method against the truth, one block per observation, side by side.

    Args:
        panels: ``(title, {method: (S, P) draws}, truth (P,))`` per observation.
        names: parameter names, length ``P``.
    """
    p = len(names)
    fig = plt.figure(figsize=(2.2 * p * len(panels), 2.2 * p + 0.3), layout="constrained")
    subfigs = np.atleast_1d(fig.subfigures(1, len(panels)))
    for sub, (title, draws, truth) in zip(subfigs, panels):
        axes = sub.subplots(p, p, squeeze=False)
        colours = dict(zip(draws, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
        for i in range(p):
            for j in range(p):
                ax = axes[i, j]
                if j > i:
                    ax.set_axis_off()
                    continue
                for label, d in reversed(list(draws.items())):  # the first method drawn on top
                    if i == j:
                        ax.hist(d[:, i], bins=30, density=True, histtype="step", color=colours[label], label=label)
                    else:
                        ax.plot(d[:, j], d[:, i], ".", ms=2 if label == next(iter(draws)) else 1.5, alpha=0.5,
                                color=colours[label])
                if i == j:
                    ax.axvline(truth[i], color="k", ls="--", lw=1)
                    ax.set_yticks([])
                else:
                    ax.plot(truth[j], truth[i], "k+", ms=10, mew=1.5)
                if i == p - 1:
                    ax.set_xlabel(names[j])
                if j == 0 and i > 0:
                    ax.set_ylabel(names[i])
                ax.tick_params(labelsize=6)
        handles, labels = axes[0, 0].get_legend_handles_labels()
        axes[0, 0].legend(handles[::-1], labels[::-1], fontsize=7, loc="upper left", bbox_to_anchor=(1.05, 1.0))
        sub.suptitle(title, fontsize=9)
    return fig


def sbc_rank_figure(ranks: Mapping[str, np.ndarray], n_ranks: Mapping[str, int], names: Sequence[str],
                    n_bins: int, pvalues: Mapping[str, Sequence[float]]) -> Figure:
    """SBC rank histograms: one row per method, one column per parameter, the uniform expectation shaded (±2 sd).

    Args:
        ranks: ``{method: (n, P) ranks in 0..L}``.
        n_ranks: ``{method: L}``.
        names: parameter names.
        n_bins: histogram bins (those of the χ² test).
        pvalues: ``{method: P p-values}`` shown in the panels.
    """
    methods, p = list(ranks), len(names)
    fig, axes = plt.subplots(len(methods), p, figsize=(2.6 * p, 2.0 * len(methods)), squeeze=False)
    for r, m in enumerate(methods):
        edges = np.linspace(0, n_ranks[m] + 1, n_bins + 1).round()
        n = ranks[m].shape[0]
        expected = n * np.diff(edges) / (n_ranks[m] + 1)
        for j in range(p):
            ax = axes[r, j]
            ax.hist(ranks[m][:, j], bins=edges, color="C0", alpha=0.7)
            ax.fill_between(edges, *(np.r_[expected, expected[-1]] + s * 2 * np.sqrt(np.r_[expected, expected[-1]])
                                     for s in (-1, 1)), step="post", color="0.85", zorder=0)
            ax.set_title(f"{m}: {names[j]} (p = {pvalues[m][j]:.2f})", fontsize=8)
            ax.set_yticks([])
            if r == len(methods) - 1:
                ax.set_xlabel("rank of the truth")
    fig.tight_layout()
    return fig
