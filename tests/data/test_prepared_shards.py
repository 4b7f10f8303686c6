"""The prepared-shards contract: a pre-ingestion stage's shard goes through the normal
validation and normalisation, and its per-image parameters and ivar reach the dataset."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from simobs.data.dataset import read_images_by_id, read_info, read_ivar_by_id, read_params
from simobs.data.formats import SourceLayout
from simobs.data.ingest import (
    IngestError,
    Normalisation,
    ingest_prepared_shard,
    ingest_source_shard,
    merge_shards,
    prepared_manifest_path,
)
from simobs.data.shards import ShardWriter, shard_info

BANDS = ("g", "r", "i")
LAYOUT = SourceLayout(layout="cube", bands=BANDS, image_shape=(8, 8), pixel_scale=0.396)
NORM = Normalisation("asinh", {"g": 0.5, "r": 0.5, "i": 1.0})


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(3, 8, 8)).astype(np.float32)


def write_prepared(path, seeds, *, ids=None, n_files=None, stage_rejects=(), bands=BANDS, nan_at=()):
    """A prepared shard the way a stage writes it: ivar, float and string parameters."""
    ids = ids or [f"gal{s}_p0" for s in seeds]
    with ShardWriter(path, bands=bands, image_shape=(8, 8), manifest=prepared_manifest_path(path),
                     with_ivar=True) as w:
        for k, (seed, image_id) in enumerate(zip(seeds, ids)):
            px = image(seed)
            if k in nan_at:
                px[1, 2, 3] = np.nan
            w.add(px, image_id=image_id, galaxy_id=image_id.split("_")[0], projection_id=0,
                  file=f"raw/broadband_{seed}.fits", ivar=np.full((3, 8, 8), 4.0 + seed, np.float32),
                  params={"seeing_fwhm_r": 1.0 + 0.1 * seed, "psf": f"moffat-{seed}"})
        for file, code, reason in stage_rejects:
            w.reject(file, code, reason)
        w.n_files = n_files if n_files is not None else len(seeds) + len(stage_rejects)
    return path


def test_writer_follows_the_contract_and_writes_nothing_on_error(tmp_path):
    path = write_prepared(tmp_path / "0.h5", [1, 2], stage_rejects=[("raw/x.fits", "wrong_unit", "BUNIT ...")])
    with h5py.File(path) as h5:
        assert h5["images"].shape == (2, 3, 8, 8) and h5["images"].dtype == np.float32
        assert h5["ivar"].shape == (2, 3, 8, 8)
        assert list(h5["ids"].asstr()[:]) == ["gal1_p0", "gal2_p0"]
        assert h5["projection_ids"].dtype == np.int32
        np.testing.assert_allclose(h5["params/seeing_fwhm_r"][:], [1.1, 1.2])
        assert list(h5["params/psf"].asstr()[:]) == ["moffat-1", "moffat-2"]
        assert json.loads(h5.attrs["bands"]) == list(BANDS) and h5.attrs["n_files"] == 3
    manifest = pd.read_csv(tmp_path / "0.rejected.tsv", sep="\t")
    assert list(manifest.columns) == ["file", "code", "reason"] and list(manifest["code"]) == ["wrong_unit"]

    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "1.h5", bands=BANDS, image_shape=(8, 8)) as w:
        w.add(image(0), image_id="a", galaxy_id="a", projection_id=-1, file="f")
        raise RuntimeError("stage failed")
    assert not (tmp_path / "1.h5").exists() and not list(tmp_path.glob(".1.h5*"))
    with pytest.raises(ValueError, match="parameters"), ShardWriter(tmp_path / "2.h5", bands=BANDS,
                                                                    image_shape=(8, 8)) as w:
        w.add(image(0), image_id="a", galaxy_id="a", projection_id=-1, file="f", params={"x": 1.0})
        w.add(image(1), image_id="b", galaxy_id="b", projection_id=-1, file="f", params={"y": 1.0})


def test_prepared_shard_is_validated_normalised_and_keeps_params(tmp_path):
    prep = write_prepared(tmp_path / "realism/0.h5", [1, 2, 3, 4], ids=["a_p0", "b_p0", "a_p0", "c_p0"],
                          nan_at=(1,), stage_rejects=[("raw/broadband_9.fits", "wrong_unit", "unit ...")])
    res = ingest_prepared_shard(prep, source="tng", layout=LAYOUT, normalisation=NORM,
                                out=tmp_path / "shard.h5", manifest=tmp_path / "shard.rejected.tsv")
    assert (res.n_files, res.n_images) == (5, 2)
    manifest = pd.read_csv(tmp_path / "shard.rejected.tsv", sep="\t")
    assert list(manifest["code"]) == ["wrong_unit", "non_finite", "duplicate_id"]
    assert list(manifest["file"]) == ["raw/broadband_9.fits", "raw/broadband_2.fits", "raw/broadband_3.fits"]
    with h5py.File(tmp_path / "shard.h5") as h5:
        assert list(h5["ids"].asstr()[:]) == ["a_p0", "c_p0"]
        np.testing.assert_allclose(h5["images"][1], NORM.apply(image(4), BANDS), rtol=1e-6)
        np.testing.assert_array_equal(h5["ivar"][1], np.full((3, 8, 8), 8.0, np.float32))  # flux unit, not normalised
        np.testing.assert_allclose(h5["params/seeing_fwhm_r"][:], [1.1, 1.4])
        assert h5.attrs["n_files"] == 5


def test_params_and_ivar_reach_the_dataset_through_merge(tmp_path):
    shards, manifests = [], []
    for k, seeds in enumerate(([1, 2], [3])):
        prep = write_prepared(tmp_path / f"realism/{k}.h5", seeds)
        shards.append(tmp_path / f"{k}.h5")
        manifests.append(tmp_path / f"{k}.rejected.tsv")
        ingest_prepared_shard(prep, source="tng", layout=LAYOUT, normalisation=NORM, out=shards[-1],
                              manifest=manifests[-1])
    merge_shards(shards, manifests, out=tmp_path / "tng.h5", manifest_out=tmp_path / "tng.rejected.tsv",
                 source="tng", kind="simulation", layout=LAYOUT, normalisation=NORM)
    info = read_info(tmp_path / "tng.h5")
    assert info.n_images == 3 and info.has_ivar and info.params == ("psf", "seeing_fwhm_r")
    params = read_params(tmp_path / "tng.h5")
    assert list(params.index) == ["gal1_p0", "gal2_p0", "gal3_p0"]
    np.testing.assert_allclose(params["seeing_fwhm_r"], [1.1, 1.2, 1.3])
    assert list(params["psf"]) == ["moffat-1", "moffat-2", "moffat-3"]
    np.testing.assert_array_equal(read_ivar_by_id(tmp_path / "tng.h5", ["gal3_p0", "gal1_p0"])[:, 0, 0, 0], [7.0, 5.0])
    np.testing.assert_allclose(read_images_by_id(tmp_path / "tng.h5", ["gal2_p0"])[0], NORM.apply(image(2), BANDS),
                               rtol=1e-6)


def test_prepared_shard_from_other_settings_or_with_rejections_under_fail(tmp_path):
    prep = write_prepared(tmp_path / "p/0.h5", [1], bands=("g", "r", "z"))
    with pytest.raises(IngestError, match=r"holds bands \['g', 'r', 'z'\].*asks for bands \['g', 'r', 'i'\]"):
        ingest_prepared_shard(prep, source="tng", layout=LAYOUT, normalisation=NORM, out=tmp_path / "s.h5",
                              manifest=tmp_path / "s.tsv")
    prep = write_prepared(tmp_path / "q/0.h5", [1], stage_rejects=[("raw/broadband_7.fits", "wrong_unit", "BUNIT")])
    with pytest.raises(IngestError, match=r"file raw/broadband_7\.fits rejected: BUNIT"):
        ingest_prepared_shard(prep, source="tng", layout=LAYOUT, normalisation=NORM, out=tmp_path / "s.h5",
                              manifest=tmp_path / "s.tsv", on_bad_file="fail")
    assert not (tmp_path / "s.h5").exists()


def test_config_glue_reads_the_prepared_shard_instead_of_an_index(tmp_path):
    prep = write_prepared(tmp_path / "realism/tng/0.h5", [5, 6])
    source = {"name": "tng", "kind": "simulation", "layout": "cube", "bands": list(BANDS), "pixel_scale": 0.396}
    settings = {"image_size": [8, 8], "normalisation": {"method": "linear", "scale": {"g": 2.0, "r": 2.0, "i": 2.0}}}
    res = ingest_source_shard(source, settings, shard=0, n_shards=1, prepared=prep, out=tmp_path / "s.h5",
                              manifest=tmp_path / "s.tsv")
    assert res.n_images == 2 and shard_info(tmp_path / "s.h5")["params"] == ["psf", "seeing_fwhm_r"]
    with h5py.File(tmp_path / "s.h5") as h5:
        np.testing.assert_allclose(h5["images"][0], image(5) / 2.0, rtol=1e-6)
