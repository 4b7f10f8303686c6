"""VAE typicality: which simulated galaxies fall outside the observed typical set.

The VAE is trained on observations only, so its reconstruction error and typicality
loss (both lower = more typical) measure how typical an image is *of the observations*.
The typical set is bounded by a quantile of the observed sample (e.g. the 99th
percentile); a simulation whose galaxies often fall beyond it produces images the
observations do not contain.

Which observed images?  Only those the VAE did *not* train on (its validation images):
the simulated images are all unseen, and a VAE reconstructs its training images better
than unseen ones, so a boundary from training images would call a correct simulation
atypical by the generalisation gap alone (see :func:`generalisation_gap`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["typical_set_threshold", "atypical_mask", "atypical_fraction", "generalisation_gap", "STATISTICS"]

STATISTICS = ("recon_error", "typicality_loss")  # per-image, larger = more atypical
_DIRECTIONS = {s: True for s in STATISTICS}  # True: larger = more atypical


def _direction(statistic: str) -> bool:
    try:
        return _DIRECTIONS[statistic]
    except KeyError:
        raise ValueError(f"unknown typicality statistic {statistic!r}; choose one of {sorted(_DIRECTIONS)}") from None


def typical_set_threshold(observed: np.ndarray, statistic: str = "recon_error", quantile: float = 0.99) -> float:
    """Boundary of the observed typical set.

    Args:
        observed: (N,) per-image statistic of the observed galaxies.
        statistic: ``recon_error`` or ``typicality_loss`` (upper bound at ``quantile``).
        quantile: fraction of observed galaxies inside the typical set, in (0, 1).
    """
    v = np.asarray(observed, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError(f"no finite observed {statistic} values to define the typical set")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"typicality quantile must be in (0, 1), got {quantile}")
    return float(np.quantile(v, quantile if _direction(statistic) else 1.0 - quantile))


def atypical_mask(values: np.ndarray, threshold: float, statistic: str = "recon_error") -> np.ndarray:
    """(N,) True where a galaxy lies outside the typical set (non-finite values count as outside)."""
    v = np.asarray(values, dtype=np.float64)
    out = v > threshold if _direction(statistic) else v < threshold
    return out | ~np.isfinite(v)


def atypical_fraction(values: np.ndarray, threshold: float, statistic: str = "recon_error") -> float:
    """Fraction of galaxies outside the typical set (the observed sample gives 1 - quantile)."""
    v = np.asarray(values)
    return float(atypical_mask(v, threshold, statistic).mean()) if v.size else float("nan")


def generalisation_gap(values: np.ndarray, seen: np.ndarray) -> float:
    """Median statistic of the VAE's unseen observed images minus that of its training
    images (> 0: the VAE fits its training images better than new ones); NaN without both."""
    v, m = np.asarray(values, dtype=np.float64), np.asarray(seen, dtype=bool)
    if m.all() or not m.any():
        return float("nan")
    return float(np.nanmedian(v[~m]) - np.nanmedian(v[m]))
