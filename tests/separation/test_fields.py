"""Field generation (Gaussian, log-normal), flat-sky spectra and FITS dust-map validation."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from simobs.separation.fields import (
    gaussian_random_field,
    lognormal_dust,
    power_law_power_2d,
    read_dust_fits,
    standardise_dust,
)
from simobs.separation.spectra import cmb_power_2d, multipoles_on_grid, normalise_power, power_2d_from_cl


def test_gaussian_random_field_power_and_variance() -> None:
    power = power_law_power_2d(16, -2.0)
    maps = gaussian_random_field(power, 3000, np.random.default_rng(0))
    emp = (np.abs(np.fft.fft2(maps, norm="ortho")) ** 2).mean(axis=0)
    keep = power > 0
    assert abs((emp[keep] / power[keep]).mean() - 1) < 0.01
    assert abs(maps.var() - 1) < 0.05 and np.isrealobj(maps)


def test_lognormal_dust_is_standardised_and_skewed() -> None:
    maps = lognormal_dust(400, 32, slope=-2.5, log_scatter=0.8, rng=np.random.default_rng(1))
    assert abs(maps.mean()) < 0.05 and abs(maps.std() - 1) < 0.1
    assert np.mean(maps**3) > 1.0  # heavy positive tail: not Gaussian
    with pytest.raises(ValueError, match="log_scatter"):
        lognormal_dust(1, 8, slope=-2.5, log_scatter=0.0, rng=np.random.default_rng(0))


def test_flat_sky_power_from_cl() -> None:
    npix, pix = 32, 10.0
    ell_max = int(np.ceil(multipoles_on_grid(npix, pix).max())) + 1
    cl = np.zeros(ell_max + 1)
    cl[2:] = 1.0 / np.arange(2, ell_max + 1) ** 2
    power = power_2d_from_cl(cl, npix, pix)
    assert power[0, 0] == 0 and np.allclose(power, power.T) and np.all(power >= 0)
    normed, scale = normalise_power(power)
    assert np.isclose(normed.mean(), 1.0) and scale > 0
    with pytest.raises(ValueError, match="higher lmax"):
        power_2d_from_cl(cl[:100], npix, pix)


def test_camb_cmb_power_is_normalised() -> None:
    power, cl, var = cmb_power_2d(16, 30.0)
    assert power.shape == (16, 16) and np.isclose(power.mean(), 1.0)
    assert 2000 < cl[200] * 200 * 201 / (2 * np.pi) < 8000  # the first acoustic peak, ~5700 μK²
    assert var > 0


def _write(path, data) -> str:
    fits.PrimaryHDU(data).writeto(path)
    return str(path)


def test_read_dust_fits_keeps_units_and_standardise_uses_the_training_maps(tmp_path) -> None:
    rng = np.random.default_rng(0)
    a_data, b_data = 5 + 2 * rng.standard_normal((8, 8)), 5 + 2 * rng.standard_normal((3, 8, 8))
    maps, rejected = read_dust_fits([_write(tmp_path / "a.fits", a_data), _write(tmp_path / "b.fits", b_data)], 8)
    assert maps.shape == (4, 8, 8) and rejected.empty
    np.testing.assert_allclose(maps, np.concatenate([a_data[None], b_data]))  # the files' units
    train, test, mean, std = standardise_dust(maps[1:], 100 + maps[:1])
    assert abs(train.mean()) < 1e-12 and abs(train.std() - 1) < 1e-12 and 4 < mean < 6 and 1.5 < std < 2.5
    assert mean == maps[1:].mean() and std == maps[1:].std()  # nothing of the test maps enters
    np.testing.assert_allclose(test, (100 + maps[:1] - mean) / std)
    with pytest.raises(ValueError, match="constant"):
        standardise_dust(np.ones((2, 8, 8)), maps[:1])


def test_read_dust_fits_names_the_bad_file(tmp_path) -> None:
    good = _write(tmp_path / "good.fits", np.ones((8, 8)) + np.eye(8))
    nan = np.ones((8, 8))
    nan[2, 3] = np.nan
    bad_nan = _write(tmp_path / "nan.fits", nan)
    bad_shape = _write(tmp_path / "shape.fits", np.ones((8, 6)))
    not_fits = tmp_path / "notfits.fits"
    not_fits.write_text("hello")
    with pytest.raises(ValueError, match=r"nan\.fits.*NaN/inf"):
        read_dust_fits([good, bad_nan], 8)
    with pytest.raises(ValueError, match=r"shape\.fits.*shape \(8, 6\)"):
        read_dust_fits([good, bad_shape], 8)
    with pytest.raises(ValueError, match=r"notfits\.fits.*FITS"):
        read_dust_fits([good, str(not_fits)], 8)
    with pytest.raises(ValueError, match="no dust FITS"):
        read_dust_fits([], 8)


def test_read_dust_fits_checks_the_wcs_pixel_size(tmp_path) -> None:
    def with_cdelt(name: str, degrees: object) -> str:
        hdu = fits.PrimaryHDU(np.ones((8, 8)) + np.eye(8))
        hdu.header["CDELT1"], hdu.header["CDELT2"] = degrees, degrees
        hdu.writeto(tmp_path / name)
        return str(tmp_path / name)

    matching, coarse = with_cdelt("8arcmin.fits", -8 / 60), with_cdelt("16arcmin.fits", 16 / 60)
    assert read_dust_fits([matching], 8, pixel_size_arcmin=8.0).maps.shape == (1, 8, 8)
    with pytest.raises(ValueError, match=r"16arcmin\.fits: pixels are 16 arcmin \(CDELT1\).*pixel_size_arcmin is 8"):
        read_dust_fits([matching, coarse], 8, pixel_size_arcmin=8.0)
    assert read_dust_fits([coarse], 8).maps.shape == (1, 8, 8)  # no grid given: no check
    skipped = read_dust_fits([matching, coarse, matching], 8, pixel_size_arcmin=8.0, on_bad_file="skip")
    assert skipped.maps.shape == (2, 8, 8) and list(skipped.rejected.code) == ["pixel_scale"]
    with pytest.raises(ValueError, match=r"CDELT1='x' is not a number"):
        read_dust_fits([with_cdelt("text.fits", "x")], 8, pixel_size_arcmin=8.0)
