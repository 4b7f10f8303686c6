r"""CMB temperature spectra on a grid of cosmological parameters, and a differentiable interpolator.

The blind separation infers φ = (H0, ω_b) of the CMB jointly with the dust.  Its HMC step
needs the 2-D power ``Σ_φ`` and its gradient at any φ inside the prior box; camb takes
seconds per call and is not differentiable, so rule ``cmb_spectra_grid`` computes ``C_ℓ``
once on a grid (:func:`compute_cl_grid`, stored by :func:`write_spectra_grid`) and
:class:`SpectrumInterpolator` interpolates ``log C_ℓ`` with tensor-product cubic
(Catmull–Rom) splines, maps it to the flat-sky 2-D power of the patch (the same linear
ℓ interpolation as :func:`simobs.separation.spectra.power_2d_from_cl`) and normalises by the
*fiducial* pixel variance.  So at the fiducial cosmology ``Σ_φ`` is exactly the known-φ
stage's ``Σ``, and elsewhere it keeps the change of amplitude with φ (``A_s`` fixed), which
is information about φ that a per-φ normalisation would throw away.

Its accuracy against held-out camb spectra is measured by :func:`interpolation_error`
(reported by the rule and tested).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from simobs.io import atomic_path
from simobs.separation.spectra import DEFAULT_COSMOLOGY, cmb_temperature_cl, half_plane_weights, multipoles_on_grid

__all__ = [
    "PARAMETERS",
    "SpectraGrid",
    "compute_cl_grid",
    "write_spectra_grid",
    "read_spectra_grid",
    "SpectrumInterpolator",
    "interpolation_error",
]

#: The inferred CMB parameters, in camb's names, in the order of φ.
PARAMETERS = ("H0", "ombh2")


class SpectraGrid:
    """``C_ℓ`` (μK²) on the grid ``H0 × ombh2``: ``cl`` of shape ``(n_h0, n_ombh2, lmax + 1)``."""

    def __init__(self, h0: np.ndarray, ombh2: np.ndarray, cl: np.ndarray, cosmology: Mapping[str, Any]) -> None:
        h0, ombh2, cl = np.asarray(h0, float), np.asarray(ombh2, float), np.asarray(cl, float)
        if cl.shape[:2] != (len(h0), len(ombh2)):
            raise ValueError(f"cl has shape {cl.shape}, expected ({len(h0)}, {len(ombh2)}, lmax + 1)")
        for name, axis in (("H0", h0), ("ombh2", ombh2)):
            if len(axis) < 2 or np.any(np.diff(axis) <= 0):
                raise ValueError(f"grid axis {name} must hold >= 2 increasing values, got {axis}")
            if not np.allclose(np.diff(axis), axis[1] - axis[0], rtol=1e-6):
                raise ValueError(f"grid axis {name} must be evenly spaced, got {axis}")
        self.h0, self.ombh2, self.cl, self.cosmology = h0, ombh2, cl, dict(cosmology)

    @property
    def lmax(self) -> int:
        return self.cl.shape[-1] - 1

    @property
    def lower(self) -> np.ndarray:
        return np.array([self.h0[0], self.ombh2[0]])

    @property
    def upper(self) -> np.ndarray:
        return np.array([self.h0[-1], self.ombh2[-1]])


def compute_cl_grid(
    h0: Sequence[float],
    ombh2: Sequence[float],
    lmax: int,
    cosmology: Mapping[str, Any] | None = None,
    *,
    on_point: Callable[[int, int], None] | None = None,
) -> SpectraGrid:
    """camb's lensed temperature ``C_ℓ`` at every grid point (the other parameters from ``cosmology``)."""
    base = {**DEFAULT_COSMOLOGY, **dict(cosmology or {})}
    cl = np.zeros((len(h0), len(ombh2), lmax + 1))
    for i, h in enumerate(h0):
        for j, ob in enumerate(ombh2):
            cl[i, j] = cmb_temperature_cl(lmax, {**base, "H0": float(h), "ombh2": float(ob)})
            if on_point is not None:
                on_point(i, j)
    return SpectraGrid(np.asarray(h0, float), np.asarray(ombh2, float), cl, base)


def write_spectra_grid(grid: SpectraGrid, path: str | Path, **attrs: Any) -> None:
    """Store a grid in HDF5 (``h0``, ``ombh2``, ``cl`` in μK², attribute ``cosmology`` JSON)."""
    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f["h0"], f["ombh2"], f["cl"] = grid.h0, grid.ombh2, grid.cl
        f["cl"].attrs["unit"] = "muK^2"
        f.attrs["cosmology"] = json.dumps(grid.cosmology)
        f.attrs["parameters"] = json.dumps(list(PARAMETERS))
        for key, value in attrs.items():
            f.attrs[key] = value if isinstance(value, (int, float, str)) else json.dumps(value)


def read_spectra_grid(path: str | Path) -> SpectraGrid:
    """Read a grid written by :func:`write_spectra_grid`.

    Raises:
        ValueError: the file lacks one of the datasets (naming the file and the dataset).
    """
    with h5py.File(path, "r") as f:
        missing = [k for k in ("h0", "ombh2", "cl") if k not in f]
        if missing:
            raise ValueError(f"{path}: not a CMB spectra grid (missing {missing}); rerun rule cmb_spectra_grid")
        return SpectraGrid(f["h0"][...], f["ombh2"][...], f["cl"][...], json.loads(f.attrs["cosmology"]))


def _catmull_rom_weights(u: torch.Tensor) -> torch.Tensor:
    """Weights of points i−1, i, i+1, i+2 at fraction ``u`` of cell [i, i+1]; shape ``(*u.shape, 4)``."""
    u2, u3 = u * u, u * u * u
    return 0.5 * torch.stack([-u3 + 2 * u2 - u, 3 * u3 - 5 * u2 + 2, -3 * u3 + 4 * u2 + u, u3 - u2], dim=-1)


def _pad_quadratic(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Ghost points beyond both ends by quadratic extrapolation (the end cells keep third order)."""
    n = values.shape[dim]
    if n < 3:  # two nodes: linear
        first = 2 * values.narrow(dim, 0, 1) - values.narrow(dim, 1, 1)
        last = 2 * values.narrow(dim, -1, 1) - values.narrow(dim, -2, 1)
    else:
        first = 3 * values.narrow(dim, 0, 1) - 3 * values.narrow(dim, 1, 1) + values.narrow(dim, 2, 1)
        last = 3 * values.narrow(dim, -1, 1) - 3 * values.narrow(dim, -2, 1) + values.narrow(dim, -3, 1)
    return torch.cat([first, values, last], dim=dim)


def _flat_sky_matrix(npix: int, pixel_size_arcmin: float, lmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparse-as-dense weights W (n_modes, lmax+1) with power_half = W @ C_ℓ, and the rfft-half mode ℓ."""
    ell = multipoles_on_grid(npix, pixel_size_arcmin)[:, : npix // 2 + 1].ravel()
    if ell.max() > lmax:
        raise ValueError(
            f"the spectra grid reaches lmax={lmax} but a {npix}x{npix} patch of {pixel_size_arcmin} arcmin "
            f"pixels needs lmax >= {int(np.ceil(ell.max()))}; rerun cmb_spectra_grid with a larger lmax"
        )
    lo = np.floor(ell).astype(int)
    frac = ell - lo
    w = np.zeros((ell.size, lmax + 2))
    rows = np.arange(ell.size)
    w[rows, lo] += 1 - frac
    w[rows, np.minimum(lo + 1, lmax + 1)] += frac
    w = w[:, : lmax + 1]
    w[ell == 0] = 0.0  # no monopole
    pixel_sr = np.deg2rad(pixel_size_arcmin / 60.0) ** 2
    return w / pixel_sr, ell


class SpectrumInterpolator(nn.Module):
    """φ = (H0, ombh2) → 2-D CMB power on the rfft half of an ``npix`` patch, differentiable in φ.

    Args:
        grid: the camb grid.
        npix, pixel_size_arcmin: the patch.
        fiducial: the cosmology whose pixel variance normalises every ``Σ_φ`` (its ``H0`` and
            ``ombh2`` must lie in the grid); default: the grid's base cosmology.
        dtype: float64 by default (HMC energies need it).

    ``forward(phi (B, 2)) -> (B, npix, npix // 2 + 1)``, mean over the full grid 1 at the fiducial φ.
    """

    def __init__(self, grid: SpectraGrid, npix: int, pixel_size_arcmin: float,
                 fiducial: Mapping[str, float] | None = None, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.npix = int(npix)
        weights, _ = _flat_sky_matrix(npix, pixel_size_arcmin, grid.lmax)
        used = np.flatnonzero(weights.any(axis=0))  # multipoles the patch touches
        cl = grid.cl[..., used]
        if np.any(cl <= 0):
            raise ValueError("the spectra grid has C_ell <= 0 at multipoles the patch uses; cannot take its log")
        log_cl = torch.as_tensor(np.log(cl), dtype=dtype)
        self.register_buffer("log_cl", _pad_quadratic(_pad_quadratic(log_cl, 0), 1))  # (n1+2, n2+2, L)
        self.register_buffer("weights", torch.as_tensor(weights[:, used].T, dtype=dtype))  # (L, modes)
        self.register_buffer("origin", torch.as_tensor([grid.h0[0], grid.ombh2[0]], dtype=dtype))
        self.register_buffer("spacing", torch.as_tensor([grid.h0[1] - grid.h0[0], grid.ombh2[1] - grid.ombh2[0]],
                                                        dtype=dtype))
        self.register_buffer("lower", torch.as_tensor(grid.lower, dtype=dtype))
        self.register_buffer("upper", torch.as_tensor(grid.upper, dtype=dtype))
        self.n_cells = (len(grid.h0) - 1, len(grid.ombh2) - 1)
        fid = {**grid.cosmology, **dict(fiducial or {})}
        self.register_buffer("scale", torch.ones((), dtype=dtype))
        phi_fid = torch.as_tensor([[fid["H0"], fid["ombh2"]]], dtype=dtype)
        if torch.any(phi_fid < self.lower) or torch.any(phi_fid > self.upper):
            raise ValueError(f"the fiducial cosmology (H0, ombh2) = {phi_fid.tolist()[0]} lies outside the grid")
        self.scale = self._raw_full_mean(phi_fid)[0]

    def log_cl_at(self, phi: torch.Tensor) -> torch.Tensor:
        """Interpolated ``log C_ℓ`` at the multipoles the patch uses, shape ``(B, L)``."""
        phi = phi.to(self.origin.dtype)
        pos = (phi - self.origin) / self.spacing
        cells = torch.as_tensor(self.n_cells, device=phi.device)
        idx = torch.minimum(pos.detach().floor().clamp(min=0).long(), cells - 1)  # (B, 2)
        u = pos - idx  # differentiable fraction (extrapolates linearly-ish outside the box)
        wa, wb = _catmull_rom_weights(u[:, 0]), _catmull_rom_weights(u[:, 1])  # (B, 4)
        # padded index of point i-1 is i; gather the 4x4 neighbourhood
        ia = idx[:, 0, None] + torch.arange(4, device=phi.device)  # (B, 4)
        ib = idx[:, 1, None] + torch.arange(4, device=phi.device)
        block = self.log_cl[ia[:, :, None], ib[:, None, :]]  # (B, 4, 4, L)
        return torch.einsum("ba,bc,bacl->bl", wa, wb, block)

    def _raw_half(self, phi: torch.Tensor) -> torch.Tensor:
        cl = torch.exp(self.log_cl_at(phi))
        return (cl @ self.weights).reshape(-1, self.npix, self.npix // 2 + 1)

    def _raw_full_mean(self, phi: torch.Tensor) -> torch.Tensor:
        half = self._raw_half(phi)
        return (half_plane_weights(self.npix, half.dtype, half.device) * half).sum(dim=(-2, -1)) / self.npix**2

    def forward(self, phi: torch.Tensor) -> torch.Tensor:
        return self._raw_half(phi) / self.scale


def interpolation_error(interp: SpectrumInterpolator, phis: np.ndarray, cls: np.ndarray,
                        pixel_size_arcmin: float) -> float:
    """Largest relative error of the interpolated 2-D power against camb's at held-out φ.

    Args:
        interp: the interpolator.
        phis: held-out points, shape ``(n, 2)``.
        cls: camb ``C_ℓ`` at those points, shape ``(n, lmax + 1)`` with lmax ≥ the grid's.
        pixel_size_arcmin: the patch's pixel size.

    Returns:
        ``max |P_interp / P_camb − 1|`` over the points and the modes with ℓ ≥ 2.
    """
    weights, ell = _flat_sky_matrix(interp.npix, pixel_size_arcmin, cls.shape[-1] - 1)
    truth = cls @ weights.T / float(interp.scale)
    with torch.no_grad():
        est = interp(torch.as_tensor(phis)).reshape(len(phis), -1).numpy()
    keep = ell >= 2
    return float(np.max(np.abs(est[:, keep] / truth[:, keep] - 1)))
