"""RGB cutouts (SkyServer PNG/JPEG), the Lupton stretch, and Legacy Survey cutout cubes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.visualization import make_lupton_rgb
from PIL import Image

from simobs.data.formats import RejectedFile, SourceLayout, read_images
from simobs.data.formats.base import check_pixels
from simobs.data.ingest import Normalisation, ingest_shard

BANDS = ("g", "r", "i")


def read_galaxy_image(path, layout):
    (img,) = read_images(path, layout)
    check_pixels(img.pixels, layout.bands, layout.image_shape)
    return img


def _rgb_array(seed=0, shape=(64, 64)):
    # smooth, distinct channels (JPEG keeps smooth images within a few levels)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    r = 128 + 100 * np.sin(xx / 9.0)
    g = 128 + 100 * np.cos(yy / 7.0)
    b = 40 + 2.5 * (xx + yy) / 2
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


RGB = SourceLayout(layout="rgb", bands=BANDS, image_shape=(64, 64), id_pattern=r"^(?P<id>\d+)\.")


def test_png_round_trip_is_exact_and_maps_channels_to_bands(tmp_path):
    arr = _rgb_array()
    path = tmp_path / "1237650000000000123.png"
    Image.fromarray(arr).save(path)
    img = read_galaxy_image(path, RGB)
    assert img.image_id == img.galaxy_id == "1237650000000000123"
    # R, G, B = i, r, g (the SkyServer's mapping); stored in the source's band order g, r, i
    np.testing.assert_array_equal(img.pixels, np.stack([arr[..., 2], arr[..., 1], arr[..., 0]]) / np.float32(255))
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (3, 64, 64)


def test_jpeg_round_trip_within_compression_error(tmp_path):
    arr = _rgb_array()
    path = tmp_path / "1237650000000000124.jpg"
    Image.fromarray(arr).save(path, quality=95)
    img = read_galaxy_image(path, RGB)
    expected = np.stack([arr[..., 2], arr[..., 1], arr[..., 0]]) / 255.0
    assert np.abs(img.pixels - expected).mean() < 1.5 / 255
    assert np.abs(img.pixels - expected).max() < 12 / 255


def test_rgb_of_the_wrong_size_or_not_an_image_is_rejected(tmp_path):
    small = tmp_path / "1.png"
    Image.fromarray(_rgb_array(shape=(32, 32))).save(small)
    with pytest.raises(RejectedFile, match=r"image size 32x32 differs from ingest.image_size \[64, 64\]"):
        read_galaxy_image(small, RGB)
    junk = tmp_path / "2.jpg"
    junk.write_bytes(b"\xff\xd8 not really")
    with pytest.raises(RejectedFile, match="not a readable PNG/JPEG"):
        read_galaxy_image(junk, RGB)
    Image.fromarray(_rgb_array()).save(tmp_path / "x.png")
    with pytest.raises(RejectedFile, match=r"file name 'x.png' does not match the source's id_pattern"):
        read_galaxy_image(tmp_path / "x.png", RGB)


def test_lupton_stretch_equals_astropys_make_lupton_rgb():
    rng = np.random.default_rng(1)
    pixels = (rng.lognormal(-2, 1.5, (3, 64, 64)) - 0.1).astype(np.float32)  # g, r, i nanomaggies
    norm = Normalisation(method="lupton_rgb", lupton={"Q": 10.0, "stretch": 0.5, "minimum": 0.0})
    out = norm.apply(pixels, BANDS)
    ref = make_lupton_rgb(pixels[2], pixels[1], pixels[0], minimum=0.0, stretch=0.5, Q=10.0)
    np.testing.assert_array_equal(out, np.stack([ref[..., 2], ref[..., 1], ref[..., 0]]) / np.float32(255))
    # defaults: SkyServer-like i, r, g -> R, G, B, Q = 8, stretch = 0.4 nanomaggies
    ref = make_lupton_rgb(pixels[2], pixels[1], pixels[0], minimum=0.0, stretch=0.4, Q=8.0)
    np.testing.assert_array_equal(Normalisation(method="lupton_rgb").apply(pixels[None], BANDS)[0],
                                  np.stack([ref[..., 2], ref[..., 1], ref[..., 0]]) / np.float32(255))


def test_rgb_files_are_ingested_without_a_second_stretch(tmp_path):
    arr = _rgb_array()
    files = []
    for i in range(3):
        files.append(tmp_path / f"{100 + i}.png")
        Image.fromarray(np.roll(arr, i, axis=1)).save(files[-1])
    res = ingest_shard([str(f) for f in files], source="rgb", layout=RGB, normalisation=Normalisation("lupton_rgb"),
                       out=tmp_path / "0.h5", manifest=tmp_path / "0.tsv")
    import h5py

    with h5py.File(tmp_path / "0.h5") as h5:
        assert h5["ids"].asstr()[:].tolist() == ["100", "101", "102"]
        np.testing.assert_array_equal(h5["images"][0][1], arr[..., 1] / np.float32(255))
    assert res.n_images == 3 and pd.read_csv(tmp_path / "0.tsv", sep="\t").empty


# --------------------------------------------------------------------------- Legacy Survey cubes


def _legacy(path, data, **header):
    hdu = fits.PrimaryHDU(data.astype(np.float32))
    hdu.header.update(header)
    hdu.header["BUNIT"] = "nanomaggy"
    hdu.writeto(path)


LEGACY = SourceLayout(layout="cube", bands=("g", "r", "z"), image_shape=(16, 16), id_key=None,
                      id_pattern=r"legacy_(?P<id>\d+)_")


def test_legacy_cube_band_order_from_its_header_and_id_from_its_name(tmp_path):
    data = np.stack([np.full((16, 16), v) for v in (3.0, 1.0, 2.0)])  # z, g, r planes
    path = tmp_path / "legacy_42_cutout.fits"
    _legacy(path, data, BANDS="zgr")
    img = read_galaxy_image(path, LEGACY)
    assert img.image_id == "42"
    np.testing.assert_array_equal(img.pixels[:, 0, 0], [1.0, 2.0, 3.0])  # g, r, z


def test_a_two_dimensional_image_is_a_one_band_cube(tmp_path):
    layout = SourceLayout(layout="cube", bands=("r",), image_shape=(16, 16), id_key=None,
                          id_pattern=r"legacy_(?P<id>\d+)_")
    for name, keys in (("legacy_7_r.fits", {"BAND": "r"}), ("legacy_8_r.fits", {"BANDS": "r"})):
        _legacy(tmp_path / name, np.arange(256.0).reshape(16, 16), **keys)
        img = read_galaxy_image(tmp_path / name, layout)
        assert img.pixels.shape == (1, 16, 16) and img.pixels[0, 1, 0] == 16.0
    _legacy(tmp_path / "legacy_9_g.fits", np.zeros((16, 16)), BAND="g")
    with pytest.raises(RejectedFile, match=r"missing band\(s\) \['r'\]"):
        read_galaxy_image(tmp_path / "legacy_9_g.fits", layout)
