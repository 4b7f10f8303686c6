"""The CMB spectra grid's interpolator: exact at the nodes, accurate between them, differentiable.

camb takes seconds per spectrum, so these tests use a smooth synthetic family of C_ell on
the grid; the accuracy against camb itself is measured by rule cmb_spectra_grid
(``interpolation_error`` on held-out camb spectra) and by the slow test below.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simobs.separation.spectra import normalise_power, power_2d_from_cl, rfft_half
from simobs.separation.spectra_grid import (
    SpectraGrid,
    SpectrumInterpolator,
    compute_cl_grid,
    interpolation_error,
    read_spectra_grid,
    write_spectra_grid,
)

NPIX, PIX = 16, 30.0
LMAX = 1100


def _synthetic_cl(h0: float, ombh2: float) -> np.ndarray:
    """A smooth stand-in for camb: acoustic-like wiggles whose scale and damping move with (H0, ombh2)."""
    ell = np.arange(LMAX + 1, dtype=float)
    peak = 220.0 * (h0 / 67.0) ** 0.3
    cl = 1e3 / (1 + (ell / 80.0) ** 2) * (1 + 0.3 * np.cos(np.pi * ell / peak)) * np.exp(-((ell / (1000 + 4000 * ombh2)) ** 2))
    cl[:2] = 0.0
    return cl


def _grid(n1: int = 7, n2: int = 7) -> SpectraGrid:
    h0, ob = np.linspace(50, 90, n1), np.linspace(0.0075, 0.0567, n2)
    cl = np.array([[_synthetic_cl(a, b) for b in ob] for a in h0])
    return SpectraGrid(h0, ob, cl, {"H0": 67.4, "ombh2": 0.0224})


def test_interpolator_is_exact_at_nodes_and_normalised_at_the_fiducial() -> None:
    grid = _grid()
    interp = SpectrumInterpolator(grid, NPIX, PIX)
    node = torch.tensor([[grid.h0[2], grid.ombh2[4]]], dtype=torch.float64)
    expected = rfft_half(power_2d_from_cl(grid.cl[2, 4], NPIX, PIX))
    got = interp(node)[0].numpy() * float(interp.scale)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    fid_power, _ = normalise_power(power_2d_from_cl(_synthetic_cl(67.4, 0.0224), NPIX, PIX))
    # the fiducial lies between nodes: the normalised power equals the known-phi stage's within the interpolation error
    fid = interp(torch.tensor([[67.4, 0.0224]], dtype=torch.float64))[0].numpy()
    np.testing.assert_allclose(fid, rfft_half(fid_power), rtol=5e-3)


def test_interpolation_error_between_nodes_is_small_and_shrinks_with_the_grid() -> None:
    rng = np.random.default_rng(0)
    phis = np.c_[rng.uniform(50, 90, 20), rng.uniform(0.0075, 0.0567, 20)]
    cls = np.array([_synthetic_cl(a, b) for a, b in phis])
    coarse = interpolation_error(SpectrumInterpolator(_grid(5, 5), NPIX, PIX), phis, cls, PIX)
    fine = interpolation_error(SpectrumInterpolator(_grid(9, 9), NPIX, PIX), phis, cls, PIX)
    assert fine < 5e-3, fine
    assert fine < coarse / 4, (coarse, fine)  # cubic convergence: about (4/8)^3 = 1/8


def test_interpolator_gradient_matches_finite_differences() -> None:
    interp = SpectrumInterpolator(_grid(), NPIX, PIX)
    phi = torch.tensor([[61.3, 0.031], [84.0, 0.012]], dtype=torch.float64, requires_grad=True)
    fn = lambda p: interp(p)[:, 1:4, 1:4]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (phi,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_grid_round_trip_and_bad_files(tmp_path) -> None:
    grid = _grid(3, 4)
    write_spectra_grid(grid, tmp_path / "g.h5", npix=NPIX)
    back = read_spectra_grid(tmp_path / "g.h5")
    np.testing.assert_array_equal(back.cl, grid.cl)
    assert back.cosmology == grid.cosmology
    import h5py

    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["h0"] = [1.0, 2.0]
    with pytest.raises(ValueError, match=r"bad.h5.*missing \['ombh2', 'cl'\].*cmb_spectra_grid"):
        read_spectra_grid(tmp_path / "bad.h5")
    with pytest.raises(ValueError, match="evenly spaced"):
        SpectraGrid(np.array([1.0, 2.0, 4.0]), grid.ombh2, np.zeros((3, 4, 10)), {})
    with pytest.raises(ValueError, match="needs lmax >= "):
        SpectrumInterpolator(SpectraGrid(grid.h0, grid.ombh2, grid.cl[..., :200], {"H0": 67.4, "ombh2": 0.0224}),
                             NPIX, PIX)


@pytest.mark.slow
def test_camb_grid_interpolates_held_out_camb_spectra() -> None:
    """A 5x5 camb grid over the papers' prior: held-out spectra agree to the stated accuracy."""
    npix, pix = 32, 16.0
    grid = compute_cl_grid(np.linspace(50, 90, 5), np.linspace(0.0075, 0.0567, 5), 1000)
    interp = SpectrumInterpolator(grid, npix, pix)
    from simobs.separation.spectra import cmb_temperature_cl

    phis = np.array([[58.0, 0.02], [77.0, 0.045]])
    cls = np.array([cmb_temperature_cl(1000, {"H0": a, "ombh2": b}) for a, b in phis])
    assert interpolation_error(interp, phis, cls, pix) < 0.03  # measured: 1.4 %
