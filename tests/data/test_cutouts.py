"""Cutouts from SDSS corrected frames + a catalogue: centring, flux, frame choice, rejections, bad input.

The frames are written in the SDSS data model's layout (2048 x 1489 nanomaggies, TAN
WCS, calibration vector, sky table) with noiseless Gaussian galaxies drawn by GalSim
through each frame's own WCS; the three bands' frames are offset and rotated against
each other, as SDSS's are.
"""

from __future__ import annotations

import shutil

import galsim
import h5py
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table

from simobs.data import cutouts
from simobs.data.cutouts import CatalogueColumns, CutoutError, build_frame_index, cut_shard, plan_cutouts, read_catalogue
from simobs.data.demo_frames import FIELD_STEP, frame_wcs, paint_frames
from simobs.data.sdss_frames import FRAME_SHAPE, frame_ivar, read_frame, sdss_dark_variance, sdss_gain, write_frame

BANDS = ["g", "r", "i"]
SHAPE = (64, 64)
SCALE = 0.396
RUN, CAMCOL = 94, 1
OFFSET = {"g": (23.4, -37.9), "r": (0.0, 0.0), "i": (-15.2, 31.7)}
ROTATION = {"g": 0.5, "r": 0.0, "i": -0.4}
FLUX = {"g": 60.0, "r": 100.0, "i": 130.0}
# Galaxies in the stripe's r-band pixel coordinates (x, y); field 13 has no i frame.
GALAXIES = {
    "1001": (1000.3, 700.7, 11),   # well inside field 11
    "1002": (300.6, 1466.2, 11),   # leaves field 11's frames: cut from field 12's
    "1003": (1500.2, 2000.4, 12),
    "1004": (-300.0, 700.0, 11),   # off every frame
    "1005": (22.0, 900.0, 11),     # the cutout crosses the stripe's left edge
    "1006": (1200.7, 2 * FIELD_STEP + 700.0, 13),  # field 13: g and r only
}


def _ref_wcs():
    return frame_wcs(150.0, 2.0, 0.0, SCALE)


def _frames():
    ref = _ref_wcs()
    frames = []
    for k, field in enumerate((11, 12, 13)):
        for band in BANDS:
            if field == 13 and band == "i":
                continue
            dx, dy = OFFSET[band]
            ra, dec = ref.wcs_pix2world([[(FRAME_SHAPE[1] - 1) / 2 + dx, (FRAME_SHAPE[0] - 1) / 2 + k * FIELD_STEP + dy]], 0)[0]
            frames.append({"band": band, "field": field, "wcs": frame_wcs(float(ra), float(dec), ROTATION[band], SCALE)})
    return frames


def _positions():
    xy = np.array([v[:2] for v in GALAXIES.values()])
    return _ref_wcs().wcs_pix2world(xy[:, 0], xy[:, 1], 0)


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """Frames (SAS tree), a FITS catalogue with run/camcol/field, and the truth."""
    root = tmp_path_factory.mktemp("sdss")
    frames = _frames()
    ra, dec = _positions()
    profiles = [{b: galsim.Gaussian(sigma=0.9, flux=FLUX[b]) for b in BANDS} for _ in GALAXIES]
    images = paint_frames(frames, ra, dec, profiles)
    folder = root / f"frames/{RUN}/{CAMCOL}"
    for f, image in zip(frames, images):
        calib = np.full(FRAME_SHAPE[1], 0.005, dtype=np.float32) * (1 + 0.05 * np.linspace(-1, 1, FRAME_SHAPE[1]))
        write_frame(folder, band=f["band"], run=RUN, camcol=CAMCOL, field=f["field"], image=image,
                    wcs=f["wcs"], calib=calib.astype(np.float32), allsky=np.full((192, 256), 120.0, np.float32))
    cat = Table({"objID": np.array(list(GALAXIES), dtype=np.int64), "RA": ra, "DEC": dec,
                 "run": np.full(len(ra), RUN), "camcol": np.full(len(ra), CAMCOL),
                 "field": np.array([v[2] for v in GALAXIES.values()])})
    cat.write(root / "catalogue.fits")
    return root


COLUMNS = CatalogueColumns(id="objID", ra="RA", dec="DEC", run="run", camcol="camcol", field="field")


def _cut(survey, tmp_path, columns=COLUMNS, off_frame="reject", with_ivar=False):
    frames = sorted(str(p) for p in survey.glob("frames/*/*/frame-*.fits*"))
    index = build_frame_index(frames, BANDS)
    cat = read_catalogue(survey / "catalogue.fits", columns)
    plan = plan_cutouts(cat, index, bands=BANDS, shape=SHAPE, pixel_scale=SCALE, off_frame=off_frame)
    out, manifest = tmp_path / "0.h5", tmp_path / "0.rejected.tsv"
    stats = cut_shard(plan, bands=BANDS, shape=SHAPE, pixel_scale=SCALE, catalogue_path="catalogue.fits",
                      out=out, manifest=manifest, with_ivar=with_ivar)
    with h5py.File(out) as h5:
        images = {i: h5["images"][k] for k, i in enumerate(h5["ids"].asstr()[:])}
        ivar = h5["ivar"][:] if with_ivar else None
        attrs = dict(h5.attrs)
    return plan, images, pd.read_csv(manifest, sep="\t"), stats, ivar, attrs


@pytest.fixture(scope="module")
def result(survey, tmp_path_factory):
    return _cut(survey, tmp_path_factory.mktemp("cut"))


def _centroid(img):
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    return (img * xx).sum() / img.sum(), (img * yy).sum() / img.sum()


def test_positions_recovered_to_a_tenth_of_a_pixel_in_every_band(result):
    _, images, _, _, _, _ = result
    assert set(images) == {"1001", "1002", "1003"}
    centre = (SHAPE[1] - 1) / 2.0
    for gid, cube in images.items():
        for b, band in enumerate(BANDS):
            x, y = _centroid(cube[b])
            assert abs(x - centre) < 0.1 and abs(y - centre) < 0.1, (gid, band, x, y)


def test_resampling_conserves_flux_to_1e3(result):
    _, images, _, _, _, _ = result
    for gid, cube in images.items():
        for b, band in enumerate(BANDS):
            assert cube[b].sum() == pytest.approx(FLUX[band], rel=1e-3), (gid, band)


def test_edge_galaxy_is_cut_from_the_neighbouring_field(result):
    plan = result[0].set_index("id")
    # r and g frames of field 11 end 22 and 60 rows too early; field 11's i frame (offset
    # 32 rows the other way) still holds it, and the catalogue's own field comes first.
    assert [plan.loc["1002", f"frame_{b}"].rsplit("/", 1)[1] for b in BANDS] == [
        "frame-g-000094-1-0012.fits", "frame-r-000094-1-0012.fits", "frame-i-000094-1-0011.fits"]
    assert plan.loc["1001", "frame_r"].endswith("frame-r-000094-1-0011.fits")


def test_manifest_lists_off_frame_and_missing_band_rows_by_id(result):
    _, _, manifest, stats, _, attrs = result
    by_id = {f.split("id=")[1]: (c, r) for f, c, r in manifest.itertuples(index=False)}
    assert set(by_id) == {"1004", "1005", "1006"}
    assert by_id["1004"][0] == "off_frame" and "outside every frame" in by_id["1004"][1]
    assert by_id["1005"][0] == "off_frame" and "whole 64x64 cutout" in by_id["1005"][1]
    assert by_id["1006"][0] == "missing_band" and "no i-band frame" in by_id["1006"][1]
    assert all(f.startswith("catalogue.fits#row=") for f in manifest["file"])
    assert stats["n_rows"] == len(GALAXIES) and attrs["n_files"] == len(GALAXIES) and attrs["bands"] == '["g", "r", "i"]'


def test_footprint_lookup_without_run_camcol_field_gives_the_same_cutouts(survey, result, tmp_path):
    cols = CatalogueColumns(id="objID", ra="RA", dec="DEC")
    _, images, manifest, _, _, _ = _cut(survey, tmp_path, columns=cols)
    assert set(images) == set(result[1])
    for gid in images:  # the frame farthest from an edge may differ from the catalogue's field
        np.testing.assert_allclose(images[gid].sum(axis=(1, 2)), result[1][gid].sum(axis=(1, 2)), rtol=1e-3)
    assert dict(zip(manifest["file"].str.split("id=").str[1], manifest["code"])) == {
        "1004": "off_frame", "1005": "off_frame", "1006": "missing_band"}


def test_pad_mode_cuts_edge_galaxies_and_masks_the_rest(survey, tmp_path):
    _, images, manifest, _, ivar, _ = _cut(survey, tmp_path, off_frame="pad", with_ivar=True)
    assert "1005" in images and set(manifest["file"].str.split("id=").str[1]) == {"1004", "1006"}
    with h5py.File(tmp_path / "0.h5") as h5:
        k = list(h5["ids"].asstr()[:]).index("1005")
        assert h5["params/padded"][k]
    # x = 22 in r: columns 0-9 lie west of the r frame's edge, 0-32 of the g frame's (offset
    # 23.4 pixels); the i frame (offset -15.2) holds the whole cutout.
    g, r, i = ivar[k]
    assert (r[:, :9] == 0).all() and (r[:, 11:] > 0).all() and (g[:, :32] == 0).all() and (g[:, 34:] > 0).all()
    assert (i > 0).all() and (images["1005"][ivar[k] == 0] == 0).all()


def test_each_frame_is_read_once_per_shard(survey, tmp_path, monkeypatch):
    calls = []
    real = cutouts.read_frame
    monkeypatch.setattr(cutouts, "read_frame", lambda p, **kw: calls.append(p) or real(p, **kw))
    _, _, _, stats, _, _ = _cut(survey, tmp_path)
    assert len(calls) == len(set(calls)) == stats["n_frames_read"] == 6


def test_inverse_variance_follows_the_sdss_recipe(survey, tmp_path):
    path = next(survey.glob("frames/*/*/frame-r-000094-1-0011.fits"))
    frame = read_frame(path)
    ivar = frame_ivar(frame)
    dn = frame.image / frame.calib[None, :] + 120.0
    expected = 1.0 / ((dn / sdss_gain("r", CAMCOL, RUN) + sdss_dark_variance("r", CAMCOL, RUN)) * frame.calib[None, :] ** 2)
    np.testing.assert_allclose(ivar, expected, rtol=1e-5)
    # Resampled: the kernel averages pixels, so the cutout's noise is below the frame's; its
    # ivar must describe the cutout's own pixels (noise / sigma has unit variance).
    noisy = frame.image + np.random.default_rng(5).standard_normal(frame.image.shape) / np.sqrt(ivar)
    wcs = frame.wcs()
    for x, y in ((400.2, 300.7), (1700.5, 1100.1)):  # blank sky
        ra, dec = wcs.wcs_pix2world([[x, y]], 0)[0]
        img, cut_ivar, _ = cutouts.resample_band(noisy, wcs, ivar, cutouts.cutout_wcs(ra, dec, SHAPE, SCALE), SHAPE)
        assert np.std(img * np.sqrt(cut_ivar)) == pytest.approx(1.0, abs=0.08)
        assert np.median(cut_ivar) > 2 * np.median(ivar)


def test_bz2_frames_are_read(survey, tmp_path):
    src = next(survey.glob("frames/*/*/frame-g-000094-1-0011.fits"))
    import bz2

    dst = tmp_path / (src.name + ".bz2")
    dst.write_bytes(bz2.compress(src.read_bytes(), 1))
    np.testing.assert_array_equal(read_frame(dst).image, read_frame(src).image)


# --------------------------------------------------------------------------- bad input


def test_frame_without_wcs_is_named(survey, tmp_path):
    bad = tmp_path / "frame-r-000094-1-0011.fits"
    with fits.open(next(survey.glob("frames/*/*/frame-r-000094-1-0011.fits"))) as hdul:
        for key in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CD1_1", "CD1_2", "CD2_1", "CD2_2"):
            del hdul[0].header[key]
        hdul.writeto(bad)
    with pytest.raises(CutoutError, match=rf"frame {bad}: no usable TAN WCS"):
        build_frame_index([str(bad)], BANDS)


def test_frame_of_the_wrong_band_in_a_bands_slot_is_named(survey, tmp_path):
    bad = tmp_path / "frame-i-000094-1-0011.fits"
    shutil.copy(next(survey.glob("frames/*/*/frame-g-000094-1-0011.fits")), bad)
    with pytest.raises(CutoutError, match=r"frame-i-000094-1-0011.fits: its file name says band 'i' but its FILTER keyword says 'g'"):
        build_frame_index([str(bad)], BANDS)


def test_catalogue_without_the_named_column_is_named(survey):
    with pytest.raises(CutoutError, match=r"has no column\(s\) \['ra_deg'\].*its columns are \['objID', 'RA'"):
        read_catalogue(survey / "catalogue.fits", CatalogueColumns(id="objID", ra="ra_deg", dec="DEC"))


def test_duplicate_catalogue_ids_are_named_with_their_rows(tmp_path):
    path = tmp_path / "cat.csv"
    pd.DataFrame({"objid": ["7", "8", "7"], "ra": [1.0, 2.0, 3.0], "dec": [0.0, 0.0, 0.0]}).to_csv(path, index=False)
    with pytest.raises(CutoutError, match=r"e.g. '7' in rows \[0, 2\]"):
        read_catalogue(path, CatalogueColumns())


def test_csv_catalogue_is_read_with_string_ids(tmp_path):
    path = tmp_path / "cat.csv"
    pd.DataFrame({"objid": ["1237650000000000001"], "ra": [1.5], "dec": [-0.5]}).to_csv(path, index=False)
    cat = read_catalogue(path, CatalogueColumns())
    assert cat["id"].tolist() == ["1237650000000000001"] and cat["ra"].tolist() == [1.5]
