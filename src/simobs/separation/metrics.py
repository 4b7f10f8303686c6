"""Separation metrics: binned power spectra, r(k), spectrum errors, MSE, interval coverage.

Wavenumbers are in cycles per pixel (Nyquist = 0.5); bins are linear in |k| over
``(0, 0.5]`` so that "below half the Nyquist frequency" is ``k_centre < 0.25``.
Powers follow the orthonormal-FFT convention of :mod:`simobs.separation.spectra`.
"""

from __future__ import annotations

import numpy as np

from simobs.separation.spectra import fourier_wavenumbers

__all__ = [
    "k_bin_edges",
    "binned_power_spectrum",
    "binned_mode_average",
    "binned_cross_spectrum",
    "cross_correlation",
    "power_relative_error",
    "power_relative_error_stderr",
    "mse",
    "interval_coverage",
]


def k_bin_edges(n_bins: int) -> np.ndarray:
    """Linear bin edges in |k| (cycles per pixel) from 0 to the Nyquist frequency 0.5, shape ``(n_bins + 1,)``."""
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins} must be >= 1")
    return np.linspace(0.0, 0.5, n_bins + 1)


def _bin_index(npix: int, n_bins: int) -> np.ndarray:
    k = fourier_wavenumbers(npix)
    idx = np.digitize(k, k_bin_edges(n_bins), right=True) - 1  # bin i holds edges[i] < k <= edges[i+1]
    idx[(k == 0) | (k > 0.5)] = -1  # no monopole, no corner modes beyond Nyquist
    return idx


def binned_cross_spectrum(a: np.ndarray, b: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Binned cross-power ``⟨Re(A_k B_k*)⟩`` over the modes of each |k| bin.

    Args:
        a, b: maps of equal shape ``(..., npix, npix)``.
        n_bins: number of linear |k| bins up to Nyquist.

    Returns:
        ``(k_centres (n_bins,), power (..., n_bins))``; empty bins (tiny maps) are NaN.
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    fa = np.fft.fft2(np.asarray(a, dtype=np.float64), norm="ortho")
    fb = fa if b is a else np.fft.fft2(np.asarray(b, dtype=np.float64), norm="ortho")
    power = binned_mode_average((fa * np.conj(fb)).real, n_bins)
    edges = k_bin_edges(n_bins)
    return 0.5 * (edges[1:] + edges[:-1]), power


def binned_power_spectrum(maps: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Binned auto power of maps ``(..., npix, npix)``: ``(k_centres (n_bins,), power (..., n_bins))``."""
    return binned_cross_spectrum(maps, maps, n_bins)


def binned_mode_average(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Average of a per-mode quantity ``(..., npix, npix)`` (full FFT grid) over each |k| bin's modes: ``(..., n_bins)``.

    The same bins and modes as :func:`binned_power_spectrum`, e.g. to bin a posterior variance per mode.
    """
    npix = values.shape[-1]
    idx = _bin_index(npix, n_bins).ravel()
    keep = idx >= 0
    counts = np.bincount(idx[keep], minlength=n_bins).astype(np.float64)
    flat = np.asarray(values, np.float64).reshape(-1, npix * npix)[:, keep]
    sums = np.stack([np.bincount(idx[keep], weights=row, minlength=n_bins) for row in flat])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts).reshape(*values.shape[:-2], n_bins)


def cross_correlation(estimate: np.ndarray, truth: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Cross-correlation coefficient ``r(k) = P_et / √(P_ee P_tt)`` pooled over a set of maps.

    Args:
        estimate, truth: shape ``(n, npix, npix)``.

    Returns:
        ``(k_centres, r)`` with ``r`` of shape ``(n_bins,)``; 1 means perfect phase and
        amplitude agreement in that bin up to a scale.
    """
    k, p_et = binned_cross_spectrum(estimate, truth, n_bins)
    _, p_ee = binned_power_spectrum(estimate, n_bins)
    _, p_tt = binned_power_spectrum(truth, n_bins)
    axes = tuple(range(p_et.ndim - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = p_et.mean(axis=axes) / np.sqrt(p_ee.mean(axis=axes) * p_tt.mean(axis=axes))
    return k, r


def power_relative_error(estimated_power: np.ndarray, true_power: np.ndarray) -> np.ndarray:
    """Relative error ``(P_est − P_true) / P_true`` per bin, after averaging over all leading axes."""
    est = estimated_power.reshape(-1, estimated_power.shape[-1]).mean(axis=0)
    tru = true_power.reshape(-1, true_power.shape[-1]).mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (est - tru) / tru


def power_relative_error_stderr(estimated_power: np.ndarray, true_power: np.ndarray) -> np.ndarray:
    """Standard error of :func:`power_relative_error` over observations, per bin.

    The per-observation differences ``P_est,i − P_true,i`` (shape ``(n, K)``) are
    independent between observations, so the error of their mean is
    ``std / √n``, here relative to the mean true power.  A relative error is only
    resolved when it exceeds this by a few times: with few test maps the largest
    scales (a handful of modes per map) are dominated by sample variance.

    Returns:
        Shape ``(K,)``; NaN where fewer than two observations are given.
    """
    if estimated_power.shape != true_power.shape or estimated_power.ndim != 2:
        raise ValueError(f"need two (n, K) arrays of equal shape, got {estimated_power.shape} and {true_power.shape}")
    n = estimated_power.shape[0]
    if n < 2:
        return np.full(estimated_power.shape[1], np.nan)
    diff = estimated_power - true_power
    with np.errstate(invalid="ignore", divide="ignore"):
        return diff.std(axis=0, ddof=1) / np.sqrt(n) / true_power.mean(axis=0)


def mse(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Mean squared error over all pixels of all maps."""
    return float(np.mean((np.asarray(estimate, np.float64) - np.asarray(truth, np.float64)) ** 2))


def interval_coverage(truth: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Fraction of pixels whose true value lies in ``[lower, upper]`` (empirical coverage)."""
    inside = (truth >= lower) & (truth <= upper)
    return float(np.mean(inside))
