"""SKIRT mocks as users have them (TNG and NIHAO layouts) through realism and ingestion."""

from __future__ import annotations

import copy

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from simobs.config import check_sources, explain_schema_errors, merge_extra_sources
from simobs.data.dataset import read_info, read_params
from simobs.data.formats import RejectedFile, SourceLayout, read_images
from simobs.data.ingest import ingest_source_shard, merge_source_shards, prepared_manifest_path, write_file_index
from simobs.data.realism_stage import realism_figure, realism_shard
from tests.conftest import REPO
from tests.data.skirt_files import TNG_FILTERS, write_nihao, write_tng

SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
INGEST = {"image_size": [64, 64], "on_bad_file": "skip", "chunk_images": 64,
          "normalisation": {"method": "asinh", "scale": {"g": 0.1, "r": 0.1, "i": 0.15}}}


def example(name: str) -> dict:
    """The source an example overlay adds, with the schema's defaults filled as Snakemake does."""
    from snakemake.utils import validate

    base = yaml.safe_load((REPO / "config/config.yaml").read_text())
    overlay = yaml.safe_load((REPO / f"config/examples/{name}").read_text())
    config = {**base, **overlay}
    merge_extra_sources(config)
    validate(config, str(REPO / "workflow/schemas/config.schema.yaml"))
    return config


@pytest.mark.parametrize("name", ["tng-skirt.yaml", "nihao-skirt.yaml"])
def test_example_overlays_validate(name, tmp_path):
    config = example(name)
    assert explain_schema_errors(config, SCHEMA) is None
    added = config["sources"][-1]
    assert added["name"] == name.split(".")[0].replace("-", "_") and added["realism"]["pixel_scale"] == 0.396
    folder = (tmp_path / added["path"]).parent
    folder.mkdir(parents=True)
    (folder / ("broadband_1.fits" if "tng" in name else "g1_nihao-resolved-photometry.fits")).touch()
    check_sources({**config, "sources": [s if s is not added else {**added, "path": str(tmp_path / added["path"])}
                                         for s in config["sources"]]}, base=REPO)


def tng_dir(tmp_path, sizes=(72, 150, 96, 211, 40), bad=True):
    raw = tmp_path / "data/tng_skirt"
    raw.mkdir(parents=True)
    for k, n in enumerate(sizes):
        write_tng(raw / f"broadband_{1000 + 7 * k}.fits", n, seed=k)
    if bad:
        write_tng(raw / "broadband_5.fits", 64, bunit="nanomaggy")
        write_tng(raw / "broadband_6.fits", 64, filters=TNG_FILTERS[:3])
        write_tng(raw / "broadband_7.fits", 64, filters=("sloan/sdss_u", *TNG_FILTERS[1:]))
    return raw


def tng_source(raw):
    return copy.deepcopy({**example("tng-skirt.yaml")["sources"][-1], "path": str(raw / "*.fits")})


def test_tng_reader_ids_bands_units_and_rejections_naming_the_keyword(tmp_path):
    raw = tng_dir(tmp_path)
    layout = SourceLayout.from_source(tng_source(raw), (64, 64))
    (img,) = read_images(raw / "broadband_1007.fits", layout)
    assert (img.image_id, img.galaxy_id, img.projection_id) == ("1007", "1007", -1)
    assert img.pixels.shape == (3, 150, 150) and img.unit == "counts/s/pixel" and img.redshift == 0.05
    assert img.pixel_scale_arcsec == 0.396 and img.pixel_size_pc == pytest.approx(0.396 * 982.4)
    for name, code, words in (("broadband_5.fits", "wrong_unit", "header keyword BUNIT"),
                              ("broadband_6.fits", "missing_keyword", "FILTER3"),
                              ("broadband_7.fits", "missing_band", "FILTERn")):
        with pytest.raises(RejectedFile) as err:
            read_images(raw / name, layout)
        assert err.value.code == code and words in str(err.value), str(err.value)


def run_tng(tmp_path, raw, n_shards, tag):
    source = tng_source(raw)
    index = tmp_path / f"{tag}/index.txt"
    write_file_index(source["path"], index, source="tng_skirt")
    shards, manifests = [], []
    for s in range(n_shards):
        prep = tmp_path / f"{tag}/realism/{s}.h5"
        realism_shard(source, INGEST, seed=42, index=index, shard=s, n_shards=n_shards, out=prep,
                      manifest=prepared_manifest_path(prep))
        shards.append(tmp_path / f"{tag}/shards/{s}.h5")
        manifests.append(tmp_path / f"{tag}/shards/{s}.rejected.tsv")
        ingest_source_shard(source, INGEST, shard=s, n_shards=n_shards, prepared=prep, out=shards[-1],
                            manifest=manifests[-1])
    out = tmp_path / f"{tag}/tng_skirt.h5"
    merge_source_shards(source, INGEST, shards=[str(p) for p in shards], manifests=[str(m) for m in manifests],
                        out=out, manifest_out=tmp_path / f"{tag}/tng_skirt.rejected.tsv", config_digest="x")
    return out


def test_tng_files_become_a_dataset_with_their_realism_parameters(tmp_path):
    raw = tng_dir(tmp_path)
    out = run_tng(tmp_path, raw, 1, "a")
    info = read_info(out)
    assert info.n_images == 5 and info.n_rejected == 3 and info.bands == ("g", "r", "i") and info.has_ivar
    manifest = pd.read_csv(tmp_path / "a/tng_skirt.rejected.tsv", sep="\t")
    assert sorted(manifest["code"]) == ["missing_band", "missing_keyword", "wrong_unit"]
    params = read_params(out)
    assert sorted(params.index) == ["1000", "1007", "1014", "1021", "1028"]
    for b in "gri":
        assert params[f"seeing_fwhm_{b}"].between(0.5, 3.0).all() and params[f"sky_sigma_mag_{b}"].gt(23).all()
    assert (params["redshift"] == 0.05).all() and (params["pixel_scale_arcsec"] == 0.396).all()
    assert list(params["mock_size_pixels"]) == [72, 150, 96, 211, 40]
    with h5py.File(out) as h5:
        assert h5["images"].shape == (5, 3, 64, 64)
        assert h5["ivar"].shape == (5, 3, 64, 64)


def test_two_runs_and_one_or_three_shards_give_identical_images(tmp_path):
    raw = tng_dir(tmp_path, bad=False)
    one, again, three = (run_tng(tmp_path, raw, n, tag) for n, tag in ((1, "one"), (1, "again"), (3, "three")))
    with h5py.File(one) as a, h5py.File(again) as b, h5py.File(three) as c:
        np.testing.assert_array_equal(a["images"][:], b["images"][:])
        np.testing.assert_array_equal(a["images"][:], c["images"][:])
        np.testing.assert_array_equal(a["ivar"][:], c["ivar"][:])
        assert list(a["ids"].asstr()[:]) == list(c["ids"].asstr()[:])
    pd.testing.assert_frame_equal(read_params(one), read_params(three))


def test_nihao_orientations_become_projections_of_one_galaxy(tmp_path):
    raw = tmp_path / "data/nihao_skirt"
    raw.mkdir(parents=True)
    write_nihao(raw / "g1.05e11_nihao-resolved-photometry.fits", "g1.05e11", 48)
    write_nihao(raw / "g2.79e12_nihao-resolved-photometry.fits", "g2.79e12", 30)
    source = {**example("nihao-skirt.yaml")["sources"][-1], "path": str(raw / "*.fits")}
    layout = SourceLayout.from_source(source, (64, 64))
    imgs = read_images(raw / "g1.05e11_nihao-resolved-photometry.fits", layout)
    assert [i.projection_id for i in imgs] == list(range(10)) and {i.galaxy_id for i in imgs} == {"g1.05e11"}
    assert imgs[0].unit == "Jy" and imgs[0].pixel_size_pc == pytest.approx(40000 / 48)
    np.testing.assert_allclose(imgs[0].pixels.sum(axis=(1, 2)), 0.05 * np.array([0.65, 0.7, 0.75]), rtol=1e-5)
    index = tmp_path / "index.txt"
    write_file_index(source["path"], index, source="nihao_skirt")
    res = realism_shard(source, INGEST, seed=1, index=index, shard=0, n_shards=1, out=tmp_path / "p.h5",
                        manifest=tmp_path / "p.rejected.tsv")
    assert (res.n_files, res.n_images, res.n_rejected) == (2, 20, 0)
    with h5py.File(tmp_path / "p.h5") as h5:
        assert sorted(set(h5["galaxy_ids"].asstr()[:])) == ["g1.05e11", "g2.79e12"]
        scale = h5["params/mock_pixel_scale_arcsec"][0]
        # 40 kpc / 48 pixels seen at z = 0.05 (Planck18: 1.0105 kpc per arcsec): 0.8246 arcsec per pixel
        from astropy.cosmology import Planck18

        assert scale == pytest.approx(40000 / 48 / (Planck18.kpc_proper_per_arcmin(0.05).value / 60 * 1000), rel=1e-6)
        assert scale == pytest.approx(0.8244, rel=1e-3)
        assert h5["params/redshift"][0] == 0.05


def test_realism_figure_shows_both_versions(tmp_path):
    raw = tng_dir(tmp_path, sizes=(120,), bad=False)
    index = tmp_path / "index.txt"
    source = tng_source(raw)
    write_file_index(source["path"], index, source="tng_skirt")
    res = realism_shard(source, INGEST, seed=42, index=index, shard=0, n_shards=1, out=tmp_path / "p.h5",
                        manifest=tmp_path / "p.rejected.tsv")
    fig = realism_figure(*res.example)
    assert len(fig.axes) == 2 and res.example[0].shape == (3, 120, 120) and res.example[1].shape == (3, 64, 64)
