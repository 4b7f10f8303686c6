"""The demo universe: physically distinct models, reproducible files in both conventions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from simobs.data.demo_universe import MODELS, DemoSettings, render_galaxy, sample_galaxies, write_demo_source
from simobs.data.formats import SourceLayout, read_images


def test_models_differ_where_documented():
    rng = np.random.default_rng(0)
    s = {m: sample_galaxies(m, 400, 1, rng) for m in MODELS}
    size = {m: np.median(np.log(f["disk_hlr"] / f["redshift"])) for m, f in s.items()}
    assert size["compact"] < size["fiducial"] < size["extended"]
    assert s["bulgy"]["bt_r"].mean() > 0.5 > s["fiducial"]["bt_r"].mean()
    assert (s["extended"]["bulge_n"] < s["fiducial"]["bulge_n"]).all()
    assert (s["clumpy"]["knot_fraction"] > 0).all() and not any((s[m]["knot_fraction"] > 0).any() for m in
                                                                 ("fiducial", "compact", "extended", "bulgy"))
    for f in s.values():  # a flux-limited sample
        assert f["r_mag"].max() < DemoSettings().mag_limit


def test_projections_share_intrinsic_parameters():
    f = sample_galaxies("fiducial", 10, 3, np.random.default_rng(1))
    assert len(f) == 30
    per_galaxy = f.groupby("galaxy_id")
    assert (per_galaxy["log_mass"].nunique() == 1).all() and (per_galaxy["redshift"].nunique() == 1).all()
    assert (per_galaxy["inclination"].nunique() == 3).all()


def test_render_conserves_flux_and_adds_sdss_like_noise():
    row = sample_galaxies("compact", 1, 1, np.random.default_rng(2)).iloc[0].copy()
    img = render_galaxy(row)
    assert img.shape == (3, 64, 64) and img.dtype == np.float32
    # r-band total flux within the stamp is close to the catalogue flux (compact: little light lost)
    assert img[1].sum() == pytest.approx(row["flux_r"], rel=0.1)
    corner = img[1][:8, :8]
    assert 0.015 < corner.std() < 0.06  # sky noise near the SDSS r-band level (0.027 nmgy)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown demo model 'nihao'"):
        sample_galaxies("nihao", 1, 1, np.random.default_rng(0))


def test_sources_are_written_in_both_conventions_and_read_back(tmp_path):
    obs = write_demo_source(tmp_path / "obs", source="obs", kind="observation", model="fiducial",
                            n_galaxies=4, n_projections=3, seed=5)
    sim = write_demo_source(tmp_path / "sim", source="bulgy", kind="simulation", model="bulgy", n_galaxies=2,
                            n_projections=3, seed=6, band_order=("i", "r", "g"), integer=True)
    assert len(obs) == 4 and len(sim) == 6
    truth = pd.read_csv(tmp_path / "sim/truth.csv")
    assert set(truth["galaxy_key"]) == {"bulgy-00000", "bulgy-00001"}

    with fits.open(tmp_path / "obs" / obs["file"][0]) as h:
        assert [x.header.get("BAND") for x in h[1:]] == ["g", "r", "i"] and h[1].header["BUNIT"] == "nanomaggy"
    with fits.open(tmp_path / "sim" / sim["file"][0], do_not_scale_image_data=True) as h:
        assert h[0].data.dtype.kind == "i" and "BSCALE" in h[0].header and h[0].header["BANDS"] == "i,r,g"

    layout = SourceLayout(layout="cube", bands=("g", "r", "i"), image_shape=(64, 64), id_key="GALID",
                          galaxy_key="GALID", projection_key="PROJ", cube_band_order=("i", "r", "g"), pixel_scale=0.396)
    (img,) = read_images(tmp_path / "sim" / sim["file"][4], layout)
    assert img.galaxy_id == "bulgy-00001" and img.projection_id == 1
    assert img.image_id == sim["image_id"][4]
    # The g band is bluer-fainter than r for a red bulge-dominated galaxy; both have real signal.
    assert img.pixels[1].sum() > img.pixels[0].sum() > 0


def test_same_seed_gives_identical_files(tmp_path):
    kw = dict(source="o", kind="observation", model="clumpy", n_galaxies=2, n_projections=1, seed=9)
    a = write_demo_source(tmp_path / "a", **kw)
    b = write_demo_source(tmp_path / "b", **kw)
    pd.testing.assert_frame_equal(a, b)
    for f in a["file"]:
        with fits.open(tmp_path / "a" / f) as x, fits.open(tmp_path / "b" / f) as y:
            np.testing.assert_array_equal(x[2].data, y[2].data)
