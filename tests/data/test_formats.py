"""The format readers (mef, cube) and their shared helpers: band order from headers, ids from
file names, units from BUNIT, BSCALE/BZERO integers, and every kind of bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from simobs.data.formats import PREPARED_LAYOUTS, READERS, RejectedFile, SourceLayout, read_images
from simobs.data.formats.base import GalaxyImage, bands_from_header, canonical_band, check_pixels

BANDS = ("g", "r", "i")
MEF = SourceLayout(layout="mef", bands=BANDS, image_shape=(16, 16), id_key="OBJID", pixel_scale=0.396)
CUBE = SourceLayout(layout="cube", bands=BANDS, image_shape=(16, 16), id_key="GALID", galaxy_key="GALID",
                    projection_key="PROJ", cube_band_order=("i", "r", "g"), pixel_scale=0.396)


def read_galaxy_image(path: Path, layout: SourceLayout) -> GalaxyImage:
    """Read a one-image file and check it as the ingestion does."""
    (img,) = read_images(path, layout)
    check_pixels(img.pixels, layout.bands, layout.image_shape)
    return img


def planes(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(3, 16, 16)).astype(np.float32)


def write_mef(path: Path, data: np.ndarray, order=BANDS, objid="123", pixscale=0.396, bands=BANDS) -> Path:
    hdus = [fits.PrimaryHDU()]
    for band in order:
        if band not in bands:
            continue
        h = fits.ImageHDU(data[BANDS.index(band)], name=band.upper())
        h.header["BAND"] = band
        h.header["PIXSCALE"] = pixscale
        if objid is not None:
            h.header["OBJID"] = objid
        hdus.append(h)
    fits.HDUList(hdus).writeto(path)
    return path


def write_cube(path: Path, data: np.ndarray, order=("i", "r", "g"), integer=False) -> Path:
    cube = data[[BANDS.index(b) for b in order]]
    h = fits.PrimaryHDU(cube)
    if integer:
        h.scale("int16", bscale=float(np.ptp(cube)) / 60000, bzero=float(cube.mean()))
    h.header.update(GALID="gal-7", PROJ=2, PIXSCALE=0.396)
    h.writeto(path)
    return path


def test_mef_band_order_comes_from_headers(tmp_path):
    data = planes()
    img = read_galaxy_image(write_mef(tmp_path / "a.fits", data, order=("r", "i", "g")), MEF)
    assert img.image_id == "123" and img.galaxy_id == "123" and img.projection_id == -1
    np.testing.assert_array_equal(img.pixels, data)


def test_cube_band_order_and_ids(tmp_path):
    data = planes(1)
    img = read_galaxy_image(write_cube(tmp_path / "c.fits", data), CUBE)
    assert (img.image_id, img.galaxy_id, img.projection_id) == ("gal-7_p2", "gal-7", 2)
    np.testing.assert_array_equal(img.pixels, data)


def test_int16_with_bscale_bzero_is_scaled(tmp_path):
    data = planes(2) * 10
    img = read_galaxy_image(write_cube(tmp_path / "c.fits", data, integer=True), CUBE)
    step = float(np.ptp(data)) / 60000
    assert img.pixels.dtype == np.float32
    np.testing.assert_allclose(img.pixels, data, atol=2 * step)


@pytest.mark.parametrize(
    "make, code, words",
    [
        (lambda p: (p.write_bytes(b"not a fits file at all" * 10), p)[1], "unreadable", "not a readable FITS"),
        (lambda p: write_mef(p, planes(), bands=("g", "r")), "missing_band", "missing band(s) ['i']"),
        (lambda p: write_mef(p, np.where(np.eye(16, dtype=bool), np.nan, planes())), "non_finite", "non-finite"),
        (lambda p: write_mef(p, planes(), objid=None), "missing_keyword", "'OBJID'"),
        (lambda p: write_mef(p, planes(), pixscale=0.262), "pixel_scale", "pixel scale 0.262"),
    ],
)
def test_bad_mef_files_are_rejected_with_a_reason(tmp_path, make, code, words):
    path = make(tmp_path / "bad.fits")
    with pytest.raises(RejectedFile) as err:
        read_galaxy_image(path, MEF)
    assert err.value.code == code
    assert words in str(err.value)


def test_truncated_file_is_rejected(tmp_path):
    path = write_mef(tmp_path / "t.fits", planes())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(RejectedFile) as err:
        read_galaxy_image(path, MEF)
    assert err.value.code in ("unreadable", "missing_band")


def test_wrong_shape_is_rejected(tmp_path):
    path = tmp_path / "s.fits"
    h = fits.PrimaryHDU(np.zeros((3, 16, 12), np.float32))
    h.header.update(GALID="g", PROJ=0)
    h.writeto(path)
    with pytest.raises(RejectedFile, match=r"expected \(bands, H, W\) = \(3, 16, 16\)"):
        read_galaxy_image(path, CUBE)


def test_cube_with_wrong_band_count(tmp_path):
    path = tmp_path / "s.fits"
    fits.PrimaryHDU(np.zeros((2, 16, 16), np.float32)).writeto(path)
    with pytest.raises(RejectedFile, match="cube shape"):
        read_galaxy_image(path, CUBE)


def test_layout_rejects_incomplete_band_order():
    with pytest.raises(ValueError, match="lacks band"):
        SourceLayout(layout="cube", bands=BANDS, image_shape=(8, 8), cube_band_order=("g", "r"))
    with pytest.raises(ValueError, match="named group"):
        SourceLayout(layout="cube", bands=BANDS, image_shape=(8, 8), id_pattern=r"gal_(\d+)\.fits")


def test_registry_matches_the_schema_layouts():
    import yaml

    schema = yaml.safe_load(Path("workflow/schemas/config.schema.yaml").read_text())
    enum = schema["properties"]["sources"]["items"]["properties"]["layout"]["enum"]
    assert sorted(enum) == sorted([*READERS, *PREPARED_LAYOUTS])


@pytest.mark.parametrize(
    "header, expected",
    [
        ({f"FILTER{k}": f"sloan/sdss_{b}" for k, b in enumerate("griz")}, ["g", "r", "i", "z"]),
        ({"BANDS": "grz", "BAND0": "g", "BAND1": "r", "BAND2": "z"}, ["g", "r", "z"]),
        ({"BANDS": "grz"}, ["g", "r", "z"]),
        ({"BANDS": "i,r,g"}, ["i", "r", "g"]),
        ({"NAXIS": 3}, None),
    ],
)
def test_band_order_from_header_keywords(header, expected):
    assert bands_from_header(header, len(expected) if expected else 3) == expected


def test_band_names_are_canonical():
    assert [canonical_band(b) for b in ("sloan/sdss_g", "SDSS_r", "I", " z ")] == ["g", "r", "i", "z"]


def write_filter_cube(path: Path, data: np.ndarray, filters, bunit="nanomaggy") -> Path:
    h = fits.PrimaryHDU(data)
    for k, f in enumerate(filters):
        h.header[f"FILTER{k}"] = f
    if bunit is not None:
        h.header["BUNIT"] = bunit
    h.writeto(path)
    return path


def test_cube_band_order_from_filter_keywords_and_ids_from_the_file_name(tmp_path):
    data = planes(4)
    layout = SourceLayout(layout="cube", bands=BANDS, image_shape=(16, 16), id_key=None,
                          id_pattern=r"gal_(?P<galaxy>\d+)_p(?P<projection>\d+)\.fits", unit="nanomaggy")
    path = write_filter_cube(tmp_path / "gal_0042_p3.fits", data[::-1], ["SDSS_i", "SDSS_r", "SDSS_g"])
    img = read_galaxy_image(path, layout)
    assert (img.image_id, img.galaxy_id, img.projection_id, img.unit) == ("0042_p3", "0042", 3, "nanomaggy")
    np.testing.assert_array_equal(img.pixels, data)


@pytest.mark.parametrize(
    "filters, bunit, code, words",
    [
        (["SDSS_g", "SDSS_r", "SDSS_i"], "counts/s/pixel", "wrong_unit", "header keyword BUNIT"),
        (["SDSS_g", "SDSS_r", "SDSS_z"], "nanomaggy", "missing_band", "FILTERn"),
        ([], "nanomaggy", "missing_keyword", "FILTER0"),
    ],
)
def test_cube_rejections_name_the_keyword(tmp_path, filters, bunit, code, words):
    layout = SourceLayout(layout="cube", bands=BANDS, image_shape=(16, 16), id_key=None,
                          id_pattern=r"gal_(?P<galaxy>\d+)\.fits", unit="nanomaggy")
    path = write_filter_cube(tmp_path / "gal_1.fits", planes(), filters, bunit)
    with pytest.raises(RejectedFile) as err:
        read_images(path, layout)
    assert err.value.code == code and words in str(err.value)


def test_file_name_not_matching_the_pattern_is_rejected(tmp_path):
    layout = SourceLayout(layout="cube", bands=BANDS, image_shape=(16, 16), id_key=None,
                          id_pattern=r"gal_(?P<galaxy>\d+)\.fits")
    path = write_filter_cube(tmp_path / "other.fits", planes(), ["g", "r", "i"])
    with pytest.raises(RejectedFile, match="does not match the source's id_pattern") as err:
        read_images(path, layout)
    assert err.value.code == "bad_filename"
