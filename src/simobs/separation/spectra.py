"""CMB angular power spectra (camb) and their flat-sky 2-D power on the FFT grid.

Conventions used across :mod:`simobs.separation`:

* Maps are square, ``npix x npix`` pixels of side ``pixel_size_arcmin``, periodic
  (the flat-sky approximation on a torus).
* A 2-D power spectrum ``P`` is an array of shape ``(npix, npix)`` on the
  ``numpy.fft.fftfreq`` grid, defined with the *orthonormal* FFT
  (``norm="ortho"``): a stationary field ``f`` with power ``P`` has
  ``E|FFT_ortho(f)_k|^2 = P_k`` and pixel variance ``mean(P)``.
* The CMB is *standardised*: its 2-D power is normalised to ``mean(P) = 1`` so
  that the CMB field has unit pixel variance.  ``Σ`` of the coloured diffusion is
  this normalised power, and σ in ``y = dust + σ·cmb`` is the CMB amplitude
  relative to the (also standardised) dust.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_COSMOLOGY",
    "cmb_temperature_cl",
    "fourier_wavenumbers",
    "multipoles_on_grid",
    "power_2d_from_cl",
    "normalise_power",
    "cmb_power_2d",
    "rfft_half",
    "half_plane_weights",
]

#: Planck-2018-like ΛCDM parameters (camb's names); any camb ``set_params`` keyword may be added.
DEFAULT_COSMOLOGY: dict[str, float] = {
    "H0": 67.4,
    "ombh2": 0.0224,
    "omch2": 0.120,
    "tau": 0.054,
    "As": 2.1e-9,
    "ns": 0.965,
    "mnu": 0.06,
}


def cmb_temperature_cl(lmax: int, cosmology: Mapping[str, Any] | None = None) -> np.ndarray:
    """Lensed CMB temperature power spectrum from camb.

    Args:
        lmax: highest multipole ℓ computed.
        cosmology: camb ``set_params`` keywords (``H0``, ``ombh2``, ``omch2``, ``As``,
            ``ns``, ``tau``, ``mnu``, ...); missing keys take :data:`DEFAULT_COSMOLOGY`.

    Returns:
        ``C_ℓ`` in μK², shape ``(lmax + 1,)`` (``C_0 = C_1 = 0``).

    Raises:
        ValueError: ``lmax`` below 2, or a cosmology key camb does not know (the
            message names the key).
    """
    import camb  # heavy import, only needed by make_fields

    if lmax < 2:
        raise ValueError(f"lmax={lmax}: need lmax >= 2 for a CMB power spectrum")
    params = {**DEFAULT_COSMOLOGY, **dict(cosmology or {})}
    try:
        cp = camb.set_params(lmax=int(lmax), **params)
    except Exception as err:  # camb raises CAMBUnknownArgumentError / CAMBParamRangeError
        raise ValueError(
            f"camb rejected the cosmology {params}: {err}. Use camb.set_params keyword names "
            f"(e.g. {sorted(DEFAULT_COSMOLOGY)})."
        ) from err
    results = camb.get_results(cp)
    cls = results.get_cmb_power_spectra(cp, CMB_unit="muK", raw_cl=True, lmax=int(lmax))
    return np.asarray(cls["total"][:, 0], dtype=np.float64)


def fourier_wavenumbers(npix: int) -> np.ndarray:
    """|k| on the FFT grid in cycles per pixel, shape ``(npix, npix)`` (Nyquist = 0.5)."""
    f = np.fft.fftfreq(npix)
    return np.hypot(f[:, None], f[None, :])


def multipoles_on_grid(npix: int, pixel_size_arcmin: float) -> np.ndarray:
    """Flat-sky multipole ℓ = 2π|k| (k in cycles per radian) of each FFT mode, shape ``(npix, npix)``."""
    pixel_rad = np.deg2rad(pixel_size_arcmin / 60.0)
    return 2.0 * np.pi * fourier_wavenumbers(npix) / pixel_rad


def power_2d_from_cl(cl: np.ndarray, npix: int, pixel_size_arcmin: float) -> np.ndarray:
    """Flat-sky 2-D power on the FFT grid from an angular spectrum ``C_ℓ``.

    In the flat-sky limit a field with angular spectrum ``C_ℓ`` has, with the
    orthonormal FFT on a grid of pixel solid angle ``Ω_pix``, ``E|f_k|^2 = C_ℓ(k) / Ω_pix``.
    ``C_ℓ`` is linearly interpolated at non-integer ℓ; the monopole is set to zero.

    Args:
        cl: ``C_ℓ`` for ℓ = 0..lmax, in (unit)²; lmax must reach the grid's corner
            ℓ = √2·π/θ_pix.
        npix: map side in pixels.
        pixel_size_arcmin: pixel side in arcmin.

    Returns:
        2-D power, shape ``(npix, npix)``, in (unit)² per mode.
    """
    ell = multipoles_on_grid(npix, pixel_size_arcmin)
    lmax_needed = float(ell.max())
    if len(cl) - 1 < lmax_needed:
        raise ValueError(
            f"C_ell reaches lmax={len(cl) - 1} but the {npix}x{npix} grid of {pixel_size_arcmin} arcmin pixels "
            f"needs lmax >= {int(np.ceil(lmax_needed))}; compute C_ell to a higher lmax."
        )
    pixel_sr = np.deg2rad(pixel_size_arcmin / 60.0) ** 2
    power = np.interp(ell, np.arange(len(cl)), cl) / pixel_sr
    power[0, 0] = 0.0  # no monopole: the patch mean is not a CMB degree of freedom here
    return power


def normalise_power(power: np.ndarray) -> tuple[np.ndarray, float]:
    """Scale a 2-D power to unit pixel variance (``mean(P) = 1``).

    Returns:
        ``(power / s, s)`` where ``s = mean(power)`` is the pixel variance before
        normalisation (μK² for the CMB), kept to convert back to physical units.
    """
    scale = float(np.mean(power))
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"power spectrum has non-positive or non-finite mean {scale}; cannot normalise")
    return power / scale, scale


def cmb_power_2d(
    npix: int, pixel_size_arcmin: float, cosmology: Mapping[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Normalised CMB temperature 2-D power ``Σ`` for a patch (camb → flat sky → unit variance).

    Returns:
        ``(sigma_power (npix, npix), cl (lmax+1,) in μK², pixel_variance_muK2)``.
    """
    lmax = int(np.ceil(multipoles_on_grid(npix, pixel_size_arcmin).max())) + 2
    cl = cmb_temperature_cl(lmax, cosmology)
    power, scale = normalise_power(power_2d_from_cl(cl, npix, pixel_size_arcmin))
    return power, cl, scale


def rfft_half(power: np.ndarray) -> np.ndarray:
    """The ``rfft2`` half (last axis ``npix // 2 + 1``) of a full-grid 2-D power."""
    return power[..., : power.shape[-1] // 2 + 1]


def half_plane_weights(npix: int, dtype=None, device=None):
    """Multiplicity of each ``rfft2``-half mode among the ``npix²`` real degrees of freedom:
    2, or 1 in the self-conjugate kx = 0 and Nyquist columns; a torch tensor ``(npix, npix // 2 + 1)``."""
    import torch

    w = torch.full((npix, npix // 2 + 1), 2.0, dtype=dtype or torch.float64, device=device)
    w[:, 0] = 1.0
    if npix % 2 == 0:
        w[:, -1] = 1.0
    return w
