"""Sharded ingestion: partitioning, manifests, the skip/fail policies, merging."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from simobs.data.ingest import (
    IngestError,
    Normalisation,
    ingest_shard,
    merge_shards,
    shard_slice,
    write_file_index,
)
from tests.data.test_formats import MEF, planes, write_mef

NORM = Normalisation("asinh", {"g": 0.5, "r": 0.5, "i": 1.0})


@pytest.mark.parametrize("n_files, n_shards", [(0, 1), (5, 1), (10, 3), (7, 7), (3, 5), (600_000, 64)])
def test_shards_partition_the_index(n_files, n_shards):
    slices = [shard_slice(n_files, s, n_shards) for s in range(n_shards)]
    covered = np.concatenate([np.arange(n_files)[s] for s in slices]) if n_files else np.array([])
    np.testing.assert_array_equal(covered, np.arange(n_files))
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1


def make_files(folder, n, start=0):
    folder.mkdir(exist_ok=True)
    return [str(write_mef(folder / f"{i:04d}.fits", planes(i), objid=str(i))) for i in range(start, start + n)]


def test_index_lists_sorted_files_and_fails_on_empty_source(tmp_path):
    files = make_files(tmp_path / "raw", 3)
    n = write_file_index(str(tmp_path / "raw/*.fits"), tmp_path / "index.txt", source="s")
    assert n == 3 and (tmp_path / "index.txt").read_text().split() == sorted(files)
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match=r"source 's': path .*empty/\*\.fits' matches no file"):
        write_file_index(str(tmp_path / "empty/*.fits"), tmp_path / "none.txt", source="s")
    assert not (tmp_path / "none.txt").exists()


def test_skip_lists_each_bad_file_with_its_reason(tmp_path):
    files = make_files(tmp_path / "raw", 4)
    bad = tmp_path / "raw/bad.fits"
    bad.write_bytes(b"garbage")
    nan = write_mef(tmp_path / "raw/nan.fits", np.full((3, 16, 16), np.nan, np.float32), objid="nan")
    dup = write_mef(tmp_path / "raw/dup.fits", planes(0), objid="0")
    res = ingest_shard([*files, str(bad), str(nan), str(dup)], source="s", layout=MEF, normalisation=NORM,
                       out=tmp_path / "shard.h5", manifest=tmp_path / "rej.tsv")
    assert res.n_images == 4 and res.n_files == 7
    manifest = pd.read_csv(tmp_path / "rej.tsv", sep="\t")
    assert dict(zip(manifest["file"], manifest["code"])) == {
        str(bad): "unreadable", str(nan): "non_finite", str(dup): "duplicate_id"}
    with h5py.File(tmp_path / "shard.h5") as h5:
        assert h5["images"].shape == (4, 3, 16, 16)
        np.testing.assert_allclose(h5["images"][1], NORM.apply(planes(1), MEF.bands), rtol=1e-6)


def test_fail_policy_names_the_file_and_leaves_no_output(tmp_path):
    files = make_files(tmp_path / "raw", 2)
    bad = tmp_path / "raw/zz.fits"
    bad.write_bytes(b"garbage")
    with pytest.raises(IngestError, match=r"file .*zz\.fits rejected: not a readable FITS"):
        ingest_shard([*files, str(bad)], source="s", layout=MEF, normalisation=NORM,
                     out=tmp_path / "shard.h5", manifest=tmp_path / "rej.tsv", on_bad_file="fail")
    assert not (tmp_path / "shard.h5").exists() and not (tmp_path / "rej.tsv").exists()
    assert list(tmp_path.glob(".shard.h5*")) == []  # no temporary left behind



def test_merge_rejects_duplicates_across_shards_and_records_provenance(tmp_path):
    raw = tmp_path / "raw"
    a = make_files(raw, 3)
    other = raw / "copy_of_2.fits"
    write_mef(other, planes(2), objid="2")
    for i, part in enumerate([a, [str(other)]]):
        ingest_shard(part, source="s", layout=MEF, normalisation=NORM,
                     out=tmp_path / f"{i}.h5", manifest=tmp_path / f"{i}.tsv")
    res = merge_shards([tmp_path / "0.h5", tmp_path / "1.h5"], [tmp_path / "0.tsv", tmp_path / "1.tsv"],
                       out=tmp_path / "s.h5", manifest_out=tmp_path / "s.tsv", source="s", kind="observation",
                       layout=MEF, normalisation=NORM, config_digest="abc", max_rejected_fraction=0.9)
    assert res.n_images == 3
    manifest = pd.read_csv(tmp_path / "s.tsv", sep="\t")
    assert manifest["file"].tolist() == [str(other)] and "first seen in" in manifest["reason"][0]
    with h5py.File(tmp_path / "s.h5") as h5:
        assert h5["ids"].asstr()[:].tolist() == ["0", "1", "2"]
        assert h5.attrs["kind"] == "observation" and h5.attrs["n_rejected"] == 1
        assert '"method": "asinh"' in h5.attrs["normalisation"] and h5.attrs["config_digest"] == "abc"
        assert h5["images"].chunks[1:] == (3, 16, 16)


def test_merge_fails_when_most_files_are_bad(tmp_path):
    raw = tmp_path / "raw"
    good = make_files(raw, 1)
    bad = []
    for i in range(3):
        p = raw / f"bad{i}.fits"
        p.write_bytes(b"x")
        bad.append(str(p))
    ingest_shard([*good, *bad], source="s", layout=MEF, normalisation=NORM,
                 out=tmp_path / "0.h5", manifest=tmp_path / "0.tsv")
    with pytest.raises(IngestError, match="3 of 4 files were rejected"):
        merge_shards([tmp_path / "0.h5"], [tmp_path / "0.tsv"], out=tmp_path / "s.h5", manifest_out=tmp_path / "s.tsv",
                     source="s", kind="observation", layout=MEF, normalisation=NORM)
    assert not (tmp_path / "s.h5").exists()
    assert len(pd.read_csv(tmp_path / "s.tsv", sep="\t")) == 3  # the reasons are kept for the user


def test_normalisation_round_trip_and_missing_band():
    x = planes(3) * 5
    np.testing.assert_allclose(NORM.invert(NORM.apply(x, "gri"), "gri"), x, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"no value for band\(s\) \['z'\]"):
        NORM.apply(np.zeros((1, 2, 2)), ["z"])
