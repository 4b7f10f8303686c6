"""Random fields for component separation: Gaussian (CMB-like), log-normal dust, FITS dust maps.

All maps are float64 arrays of shape ``(n, npix, npix)``; powers follow the
orthonormal-FFT convention of :mod:`simobs.separation.spectra`.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from simobs.data.formats import RejectedFile
from simobs.data.ingest import MANIFEST_COLUMNS
from simobs.separation.spectra import fourier_wavenumbers

__all__ = [
    "DustMaps",
    "gaussian_random_field",
    "power_law_power_2d",
    "lognormal_dust",
    "gaussian_dust",
    "read_dust_fits",
    "dust_fits_files",
]


log = logging.getLogger(__name__)

class DustMaps(NamedTuple):
    """Standardised user dust maps and what was left out."""

    maps: np.ndarray  #: (n, npix, npix), zero mean and unit variance over all maps
    mean: float  #: the files' mean, in their units
    std: float  #: the files' standard deviation, in their units
    rejected: pd.DataFrame  #: one row per skipped file (:data:`MANIFEST_COLUMNS`)


def gaussian_random_field(power: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Stationary Gaussian fields with a given 2-D power.

    White noise is coloured in Fourier space (``f = IFFT(√P · FFT(w))``, orthonormal
    FFT), which keeps the field real because ``P(k) = P(-k)``.

    Args:
        power: 2-D power, shape ``(npix, npix)``, non-negative.
        n: number of realisations.
        rng: numpy random generator (the only source of randomness).

    Returns:
        Fields, shape ``(n, npix, npix)``, float64, pixel variance ``mean(power)``.
    """
    if power.ndim != 2 or power.shape[0] != power.shape[1]:
        raise ValueError(f"power must be square (npix, npix), got shape {power.shape}")
    if np.any(power < 0) or not np.all(np.isfinite(power)):
        raise ValueError("power must be finite and non-negative")
    npix = power.shape[0]
    white = rng.standard_normal((n, npix, npix))
    half = np.sqrt(power[:, : npix // 2 + 1])
    return np.fft.irfft2(half * np.fft.rfft2(white, norm="ortho"), s=(npix, npix), norm="ortho")


def power_law_power_2d(npix: int, slope: float) -> np.ndarray:
    """Isotropic power law ``P(k) ∝ |k|^slope`` (k in cycles per pixel), zero monopole, ``mean(P) = 1``.

    Dust in the diffuse ISM has ``slope ≈ -2.5 to -3``.
    """
    k = fourier_wavenumbers(npix)
    power = np.zeros_like(k)
    nonzero = k > 0
    power[nonzero] = k[nonzero] ** slope
    return power / power.mean()


def lognormal_dust(
    n: int, npix: int, *, slope: float, log_scatter: float, rng: np.random.Generator
) -> np.ndarray:
    """Standardised log-normal dust maps ``(exp(s·g) − m) / d``.

    ``g`` is a unit-variance Gaussian random field with power ``∝ |k|^slope`` and
    ``s = log_scatter``.  ``m = exp(s²/2)`` and ``d = √((e^{s²} − 1) e^{s²})`` are the
    log-normal's *population* mean and standard deviation, so every map is standardised
    by the same affine map: train and test maps share one distribution with zero
    mean and unit variance, and per-map fluctuations of mean and variance are kept
    (they are part of the signal).

    Returns:
        Maps, shape ``(n, npix, npix)``, float64.
    """
    if log_scatter <= 0:
        raise ValueError(f"log_scatter={log_scatter} must be > 0 (use dust kind 'gaussian' for Gaussian dust)")
    g = gaussian_random_field(power_law_power_2d(npix, slope), n, rng)
    s2 = log_scatter**2
    mean = np.exp(s2 / 2.0)
    std = np.sqrt((np.exp(s2) - 1.0) * np.exp(s2))
    return (np.exp(log_scatter * g) - mean) / std


def gaussian_dust(n: int, npix: int, *, slope: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian dust maps with power ``∝ |k|^slope`` and unit variance (the exactly solvable case)."""
    return gaussian_random_field(power_law_power_2d(npix, slope), n, rng)


def _check_pixel_size(path: Path, header: Any, pixel_size_arcmin: float | None) -> None:
    """Compare the WCS pixel size (``CDELT1``/``CDELT2`` in degrees), when the header has one."""
    if pixel_size_arcmin is None:
        return
    for key in ("CDELT1", "CDELT2"):
        if key not in header:
            continue
        try:
            size = abs(float(header[key])) * 60.0
        except (TypeError, ValueError):
            raise RejectedFile(f"{path}: header {key}={header[key]!r} is not a number (degrees per pixel)",
                               "bad_header") from None
        if not np.isclose(size, pixel_size_arcmin, rtol=0.01):
            raise RejectedFile(
                f"{path}: pixels are {size:.4g} arcmin ({key}) but separation.fields.pixel_size_arcmin is "
                f"{pixel_size_arcmin}; the CMB is drawn on that grid, so resample the maps or set "
                "pixel_size_arcmin to their pixel size", "pixel_scale"
            )


def _load_fits_maps(path: Path, npix: int, pixel_size_arcmin: float | None = None) -> np.ndarray:
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            hdu = next((h for h in hdul if getattr(h, "data", None) is not None and h.data.ndim >= 2), None)
            if hdu is None:
                raise RejectedFile(f"{path}: no image HDU with 2-D or 3-D data; store the dust map as an image HDU",
                                   "missing_hdu")
            _check_pixel_size(path, hdu.header, pixel_size_arcmin)
            data = np.asarray(hdu.data, dtype=np.float64)
    except RejectedFile:
        raise
    except Exception as err:  # astropy raises OSError, ValueError, TypeError... for broken files
        raise RejectedFile(f"{path}: not a readable FITS file ({err}); dust maps must be complete FITS images",
                           "not_fits") from err
    shape = data.shape
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or data.shape[1:] != (npix, npix):
        raise RejectedFile(
            f"{path}: dust map has shape {shape}, expected ({npix}, {npix}) or (n, {npix}, {npix}); "
            f"cut the maps to {npix}x{npix} or set separation.fields.npix to their size", "wrong_shape"
        )
    bad = ~np.isfinite(data)
    if bad.any():
        raise RejectedFile(
            f"{path}: {int(bad.sum())} NaN/inf pixels; fill or mask them before use (the diffusion prior "
            "needs complete periodic maps)", "non_finite"
        )
    return data


def read_dust_fits(
    paths: Sequence[str | os.PathLike[str]],
    npix: int,
    pixel_size_arcmin: float | None = None,
    *,
    on_bad_file: str = "fail",
    max_rejected_fraction: float = 0.5,
) -> DustMaps:
    """Read user dust maps (e.g. MHD simulations) from FITS files, validated and standardised.

    Each file holds one map ``(npix, npix)`` or a stack ``(n, npix, npix)`` in its first
    image HDU.  All maps are standardised by one dataset-wide affine map (mean and
    standard deviation over all pixels of all maps), so relative amplitudes between
    maps are kept.  When ``pixel_size_arcmin`` is given and a header carries the WCS
    pixel size (``CDELT1``/``CDELT2``, degrees), the two must agree within 1 %.

    Bad files follow the image ingestion's policy (config ``ingest.on_bad_file``):
    ``fail`` stops at the first one, ``skip`` lists each in :attr:`DustMaps.rejected`
    with its reason and goes on, unless more than ``max_rejected_fraction`` of the files
    are bad (usually a wrong ``npix`` or pixel size in the config).

    Raises:
        ValueError: no files; a file that is not FITS, has the wrong shape or pixel size
            or NaN/inf pixels (policy ``fail``; the message names the file); too many bad
            files (``skip``); constant maps.
    """
    if on_bad_file not in ("skip", "fail"):
        raise ValueError(f"ingest.on_bad_file must be 'skip' or 'fail', not {on_bad_file!r}")
    if not paths:
        raise ValueError("no dust FITS files given: set separation.fields.dust.fits_files (paths or globs)")
    parts, rejected = [], []
    for p in paths:
        try:
            parts.append(_load_fits_maps(Path(p), npix, pixel_size_arcmin))
        except RejectedFile as exc:
            if on_bad_file == "fail":
                raise ValueError(f"{exc} (or set ingest.on_bad_file: skip to list bad dust files and go on)") from exc
            log.warning("rejected dust map %s", exc)
            rejected.append({"file": str(p), "code": exc.code, "reason": str(exc)})
    frame = pd.DataFrame(rejected, columns=MANIFEST_COLUMNS)
    if not parts or len(rejected) > max_rejected_fraction * len(paths):
        first = "; ".join(frame["reason"].head(3))
        raise ValueError(
            f"{len(rejected)} of {len(paths)} dust FITS files rejected (more than ingest.max_rejected_fraction="
            f"{max_rejected_fraction}); check separation.fields.npix and pixel_size_arcmin. First reasons: {first}"
        )
    maps = np.concatenate(parts)
    mean, std = float(maps.mean()), float(maps.std())
    if std == 0:
        raise ValueError(f"dust maps in {list(map(str, paths))} are constant; nothing to separate")
    return DustMaps((maps - mean) / std, mean, std, frame)


def dust_fits_files(dust: Mapping[str, Any]) -> list[str]:
    """The FITS files of a dust config (``kind: fits``), globs expanded and sorted; ``[]`` for other kinds.

    Raises:
        ValueError: a pattern that matches no file (named in the message).
    """
    if dust.get("kind") != "fits":
        return []
    paths: list[str] = []
    for pattern in dust.get("fits_files", []):
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise ValueError(f"dust FITS pattern {pattern!r} matches no file (separation.fields.dust.fits_files)")
        paths.extend(matches)
    return sorted(set(paths))
