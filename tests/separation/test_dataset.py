"""The field dataset (make_fields) and its FITS route."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from simobs.separation import dataset as ds
from simobs.separation.dataset import FieldSettings, draw_sigmas, make_field_dataset, read_field_dataset, shard_indices

from .conftest import cmb_like_power


@pytest.fixture
def fake_camb(monkeypatch):
    """Skip camb (tested in test_fields): a CMB-like spectrum with a nominal variance."""
    monkeypatch.setattr(ds, "cmb_power_2d", lambda npix, pix, cosmo: (cmb_like_power(npix), np.ones(10), 1e4))


def test_lognormal_dataset(tmp_path, fake_camb) -> None:
    settings = FieldSettings.from_mapping({"npix": 16, "pixel_size_arcmin": 30.0, "n_train": 40, "n_test": 300,
                                           "sigma": [0.5, 2.0], "seed": 3})
    summary = make_field_dataset(settings, tmp_path / "f.h5")
    f = read_field_dataset(tmp_path / "f.h5")
    assert f.train_dust.shape == (40, 16, 16) and f.test_dust.shape == (300, 16, 16)
    assert 0.5 <= f.sigma.min() < f.sigma.max() <= 2.0 and summary["dust_skewness"] > 0.5
    np.testing.assert_allclose(f.observation, f.test_dust + f.sigma[:, None, None] * f.test_cmb, atol=1e-5)
    assert abs(f.test_cmb.var() - 1) < 0.1 and np.isclose(f.cmb_power.mean(), 1)
    assert json.loads(f.attrs["dust"])["kind"] == "lognormal" and f.attrs["npix"] == 16
    # Same seed, same file content.
    make_field_dataset(settings, tmp_path / "g.h5")
    np.testing.assert_array_equal(read_field_dataset(tmp_path / "g.h5").observation, f.observation)


def test_fits_dataset(tmp_path, fake_camb) -> None:
    rng = np.random.default_rng(0)
    for i in range(2):
        fits.PrimaryHDU(10 + rng.standard_normal((5, 16, 16))).writeto(tmp_path / f"mhd_{i}.fits")
    settings = FieldSettings.from_mapping({"npix": 16, "sigma": 1.0, "dust": {
        "kind": "fits", "fits_files": [str(tmp_path / "mhd_*.fits")], "test_fraction": 0.2}})
    make_field_dataset(settings, tmp_path / "f.h5")
    f = read_field_dataset(tmp_path / "f.h5")
    assert f.train_dust.shape[0] == 8 and f.test_dust.shape[0] == 2 and np.all(f.sigma == 1.0)
    assert 9 < f.attrs["dust_fits_mean"] < 11
    # Standardised with the training maps' statistics alone (no leak from the test truths).
    assert abs(f.train_dust.mean()) < 1e-6 and abs(f.train_dust.std() - 1) < 1e-5
    raw = np.concatenate([fits.getdata(tmp_path / f"mhd_{i}.fits") for i in range(2)])
    assert not np.isclose(f.attrs["dust_fits_mean"], raw.mean(), rtol=0, atol=1e-9)
    bad = FieldSettings.from_mapping({"npix": 16, "dust": {"kind": "fits", "fits_files": [str(tmp_path / "x*.fits")]}})
    with pytest.raises(ValueError, match=r"x\*\.fits.*matches no file"):
        make_field_dataset(bad, tmp_path / "h.h5")
    assert not (tmp_path / "h.h5").exists()


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_bad_dust_files_follow_the_ingestion_policy(tmp_path, fake_camb) -> None:
    rng = np.random.default_rng(1)
    for i in range(3):
        fits.PrimaryHDU(rng.standard_normal((4, 16, 16))).writeto(tmp_path / f"mhd_{i}.fits")
    (tmp_path / "mhd_truncated.fits").write_bytes((tmp_path / "mhd_0.fits").read_bytes()[:3000])
    settings = FieldSettings.from_mapping({"npix": 16, "sigma": 1.0, "dust": {
        "kind": "fits", "fits_files": [str(tmp_path / "mhd_*.fits")], "test_fraction": 0.25}})

    with pytest.raises(ValueError, match=r"mhd_truncated\.fits.*on_bad_file: skip"):
        make_field_dataset(settings, tmp_path / "fail.h5", rejected_path=tmp_path / "fail.tsv", on_bad_file="fail")
    assert not (tmp_path / "fail.h5").exists() and not (tmp_path / "fail.tsv").exists()

    summary = make_field_dataset(settings, tmp_path / "f.h5", rejected_path=tmp_path / "rejected.tsv",
                                 on_bad_file="skip")
    manifest = pd.read_csv(tmp_path / "rejected.tsv", sep="\t")
    assert list(manifest.file) == [str(tmp_path / "mhd_truncated.fits")] and summary["n_rejected_dust_files"] == 1
    f = read_field_dataset(tmp_path / "f.h5")
    assert f.train_dust.shape[0] + f.test_dust.shape[0] == 12  # the three good files, four maps each

    with pytest.raises(ValueError, match=r"1 of 4 dust FITS files rejected"):
        make_field_dataset(settings, tmp_path / "strict.h5", on_bad_file="skip", max_rejected_fraction=0.2)

    generated = FieldSettings.from_mapping({"npix": 16, "n_train": 4, "n_test": 2})
    make_field_dataset(generated, tmp_path / "g.h5", rejected_path=tmp_path / "none.tsv", on_bad_file="skip")
    assert (tmp_path / "none.tsv").read_text().strip() == "file\tcode\treason"


def test_settings_and_helpers() -> None:
    with pytest.raises(ValueError, match="dust.kind"):
        FieldSettings.from_mapping({"dust": {"kind": "mhd"}})
    with pytest.raises(ValueError, match="sigma"):
        draw_sigmas([2.0, 1.0], 3, np.random.default_rng(0))
    parts = [shard_indices(10, 3, k) for k in range(3)]
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(10))
    with pytest.raises(ValueError, match="shard 3"):
        shard_indices(10, 3, 3)
