"""The realism forward model on arrays: each step checked against a number."""

from __future__ import annotations

import galsim
import numpy as np
import pytest
from scipy.optimize import curve_fit

from simobs.data.realism import (
    JY_PER_NMGY,
    TNG_FLUXMAG0,
    RealismSettings,
    add_sky_and_noise,
    centre_and_crop,
    electrons_per_nmgy,
    image_seed,
    make_survey_like,
    place_at_redshift,
    psf_kernel,
    rebin_flux,
    sky_sigma_nmgy,
    to_nanomaggies,
)
from tests.data.skirt_files import exponential_disk

BANDS = ("g", "r", "i")


def test_calibration_to_nanomaggies():
    px = np.ones((3, 2, 2))
    nm = to_nanomaggies(px * 2.3826e10, "counts/s/pixel", BANDS)
    np.testing.assert_allclose(nm[1], 1e9)  # fluxmag0 counts/s = magnitude 0 = 1e9 nmgy
    np.testing.assert_allclose(nm[0], 2.3826e10 / TNG_FLUXMAG0["g"] * 1e9)
    np.testing.assert_allclose(to_nanomaggies(px * 3631.0, "Jy", BANDS), 1e9)
    assert JY_PER_NMGY == 3.631e-6
    with pytest.raises(ValueError, match="'MJy/sr' cannot be calibrated"):
        to_nanomaggies(px, "MJy/sr", BANDS)


@pytest.mark.parametrize("n, ratio", [(80, 0.396 / 0.2), (137, 1.7), (64, 3.0), (50, 0.8)])
def test_rebinning_conserves_flux(n, ratio):
    img = np.stack([exponential_disk(n, n / 10, 100.0, seed=s) for s in range(3)])
    out = rebin_flux(img, ratio)
    assert out.shape[-1] == int(np.ceil(n / ratio))
    np.testing.assert_allclose(out.sum(axis=(1, 2)), img.sum(axis=(1, 2)), rtol=1e-3)
    fov = rebin_flux(img, n / 64, shape=(64, 64))  # resample_fov: the whole field to 64 x 64
    np.testing.assert_allclose(fov.sum(axis=(1, 2)), img.sum(axis=(1, 2)), rtol=1e-3)


def test_placement_scales_size_and_dims_surface_brightness():
    from astropy.cosmology import Planck18

    img = np.ones((1, 4, 4))
    out, scale, z = place_at_redshift(img, pixel_size_pc=200.0, pixel_scale=0.396, file_redshift=0.05, redshift=None)
    assert (scale, z) == (0.396, 0.05) and out is img
    out, scale, z = place_at_redshift(img, pixel_size_pc=200.0, pixel_scale=0.396, file_redshift=0.05, redshift=0.1)
    expected = 200.0 / Planck18.angular_diameter_distance(0.1).to_value("pc") * 206264.806
    assert scale == pytest.approx(expected, rel=1e-6)
    dl = Planck18.luminosity_distance
    assert out[0, 0, 0] == pytest.approx((dl(0.05) / dl(0.1)).value ** 2, rel=1e-9)
    # surface brightness per arcsec^2 dims as (1+z)^-4 between the two redshifts
    scale_05 = 200.0 / Planck18.angular_diameter_distance(0.05).to_value("pc") * 206264.806
    sb_ratio = (out[0, 0, 0] / scale**2) / (1.0 / scale_05**2)
    assert sb_ratio == pytest.approx((1.05 / 1.1) ** 4, rel=1e-6)
    with pytest.raises(ValueError, match="realism.redshift"):
        place_at_redshift(img, pixel_size_pc=100.0, pixel_scale=None, file_redshift=None, redshift=None)


def _gaussian(xy, amp, x0, y0, sigma):
    x, y = xy
    return amp * np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2))


def _moffat(xy, amp, x0, y0, alpha, beta=4.765):
    x, y = xy
    return amp * (1 + ((x - x0) ** 2 + (y - y0) ** 2) / alpha**2) ** -beta


@pytest.mark.parametrize("model", ["gaussian", "moffat", "kolmogorov"])
def test_point_source_comes_out_with_the_drawn_fwhm(model):
    settings = RealismSettings(psf=model, sky_sigma_mag={b: (40.0, 0.0) for b in BANDS})  # no visible noise
    point = np.zeros((3, 101, 101))
    point[:, 50, 50] = 1e6
    image, _, params = make_survey_like(point, 0.396, BANDS, settings, np.random.default_rng(3))
    for k, b in enumerate(BANDS):
        drawn = params[f"seeing_fwhm_{b}"]
        plane = image[k]
        y, x = np.mgrid[: plane.shape[0], : plane.shape[1]]
        xy = (x.ravel(), y.ravel())
        if model == "gaussian":
            p, _ = curve_fit(_gaussian, xy, plane.ravel(), p0=(plane.max(), 32, 32, 1.5))
            fwhm = 2.3548 * abs(p[3]) * 0.396
        elif model == "moffat":
            p, _ = curve_fit(_moffat, xy, plane.ravel(), p0=(plane.max(), 32, 32, 3.0))
            fwhm = 2 * abs(p[3]) * np.sqrt(2 ** (1 / 4.765) - 1) * 0.396
        else:
            gim = galsim.Image(plane.astype(np.float64), scale=0.396)  # GalSim pixel 33 = array index 32
            fwhm = gim.calculateFWHM(center=galsim.PositionD(33, 33))
        assert fwhm == pytest.approx(drawn, rel=0.03), (model, b)
    assert 0.5 <= min(params[f"seeing_fwhm_{b}"] for b in BANDS)


def test_psf_kernel_is_normalised():
    for model in ("gaussian", "moffat", "kolmogorov"):
        assert psf_kernel(model, 1.4, 0.396).sum() == pytest.approx(1.0, abs=1e-12)


def test_blank_sky_noise_matches_the_configured_depth():
    settings = RealismSettings(sky_sigma_mag={"g": (24.880, 0.0), "r": (24.384, 0.0), "i": (23.820, 0.0)},
                               image_size=(128, 128))
    blank = np.zeros((3, 128, 128))
    image, ivar, params = make_survey_like(blank, 0.396, BANDS, settings, np.random.default_rng(11))
    for k, b in enumerate(BANDS):
        expected = 10 ** (-0.4 * (settings.sky_sigma_mag[b][0] - 22.5)) * 0.396**2
        assert params[f"sky_sigma_nmgy_{b}"] == pytest.approx(expected, rel=1e-9)
        assert image[k].std() == pytest.approx(expected, rel=0.05)
        assert abs(image[k].mean()) < 5 * expected / 128  # sky-subtracted
        assert np.median(ivar[k]) == pytest.approx(expected**-2, rel=0.01)
    # the SDSS r-band depth is ~0.028 nmgy per pixel, the demo universe's 0.027
    assert params["sky_sigma_nmgy_r"] == pytest.approx(0.0277, rel=0.01)


def test_source_poisson_noise_follows_the_gain():
    e = electrons_per_nmgy(RealismSettings(), "r")
    assert e == pytest.approx(53.907456 * 10 ** (-0.4 * (22.5 - 24.03 + 0.1032 * 1.177)) * 4.735, rel=1e-12)
    bright = np.full((200, 200), 5.0)  # nmgy per pixel, sky-noise-free
    out, ivar = add_sky_and_noise(bright, 1e-6, e, np.random.default_rng(0))
    assert out.std() == pytest.approx(np.sqrt(5.0 / e), rel=0.05)
    assert out.mean() == pytest.approx(5.0, rel=1e-3)


def test_centring_on_the_light_and_padding():
    img = np.zeros((1, 40, 50))
    img[0, 10, 40] = 1.0
    out, (cy, cx) = centre_and_crop(img, (64, 64))
    assert (cy, cx) == (10.0, 40.0) and out.shape == (1, 64, 64) and out[0, 32, 32] == 1.0 and out.sum() == 1.0


def test_seeds_depend_on_the_image_not_its_position():
    assert image_seed(42, "tng", "123") == image_seed(42, "tng", "123")
    assert len({image_seed(42, "tng", "123"), image_seed(43, "tng", "123"), image_seed(42, "tng", "124"),
                image_seed(42, "nihao", "123")}) == 4
    img = np.stack([exponential_disk(90, 6, 50.0, seed=1)] * 3)
    a = make_survey_like(img, 0.396, BANDS, RealismSettings(), np.random.default_rng(image_seed(1, "s", "x")))
    b = make_survey_like(img, 0.396, BANDS, RealismSettings(), np.random.default_rng(image_seed(1, "s", "x")))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[2] == b[2]


def test_resample_fov_keeps_the_whole_field():
    img = np.stack([exponential_disk(200, 12, 80.0, seed=2)] * 3)
    s = RealismSettings(geometry="resample_fov", sky_sigma_mag={b: (40.0, 0.0) for b in BANDS})
    image, _, params = make_survey_like(img, 0.396, BANDS, s, np.random.default_rng(0))
    assert params["pixel_scale_arcsec"] == pytest.approx(0.396 * 200 / 64)
    np.testing.assert_allclose(image.sum(axis=(1, 2)), 80.0, rtol=0.01)  # all light kept (PSF edge losses < 1 %)


def test_missing_band_setting_names_the_key():
    with pytest.raises(ValueError, match=r"realism.seeing_fwhm has no value for band\(s\) \['z'\]"):
        RealismSettings().check_bands(("g", "r", "z"))
