"""Chunk-aligned block reading, the train/validation split and the shuffle."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from simobs.embedding.data import (
    BlockShuffleDataset,
    iter_blocks_in_order,
    make_loader,
    read_source_info,
    split_blocks,
)
from tests.embedding.conftest import write_image_dataset


def _numbered(path: Path, n: int, chunk_rows: int = 8) -> Path:
    """A dataset whose image i is filled with the value i (so batches reveal their rows)."""
    write_image_dataset(path, n, chunk_rows=chunk_rows)
    with h5py.File(path, "r+") as f:
        f["images"][...] = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], f["images"].shape)
    return path


def _rows(batches) -> list[int]:
    return [int(v) for b in batches for v in np.asarray(b)[:, 0, 0, 0]]


def test_source_info_reads_the_contract(observed_dataset: Path) -> None:
    info = read_source_info(observed_dataset)
    assert (info.source, info.kind, info.n_images) == ("obs", "observation", 80)
    assert info.image_shape == (3, 16, 16)
    assert info.bands == ("g", "r", "i")
    assert info.chunk_rows == 8


def test_source_info_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        read_source_info(tmp_path / "missing.h5")


def test_split_is_chunk_aligned_disjoint_complete_and_seeded(tmp_path: Path) -> None:
    infos = [read_source_info(write_image_dataset(tmp_path / "a.h5", 83, chunk_rows=8))]
    train, val = split_blocks(infos, val_fraction=0.25, seed=3, block_rows=10)
    rows = sorted(r for b in train + val for r in range(b.start, b.stop))
    assert rows == list(range(83))  # every image exactly once
    assert all(b.start % 8 == 0 for b in train + val)  # blocks start on chunk boundaries
    assert all(b.size == 16 for b in train + val if b.stop != 83)  # 10 rounded up to 2 chunks
    assert len(val) == round(0.25 * 6)
    again = split_blocks(infos, val_fraction=0.25, seed=3, block_rows=10)
    assert again == (train, val)
    other = split_blocks(infos, val_fraction=0.25, seed=4, block_rows=10)
    assert other != (train, val) or len(train + val) < 3


def test_split_needs_two_blocks(tmp_path: Path) -> None:
    infos = [read_source_info(write_image_dataset(tmp_path / "a.h5", 8, chunk_rows=8))]
    with pytest.raises(ValueError, match="block_rows"):
        split_blocks(infos, val_fraction=0.2, seed=0)


def test_epoch_yields_every_image_once_in_a_seeded_order(tmp_path: Path) -> None:
    path = _numbered(tmp_path / "n.h5", 100)
    train, val = split_blocks([read_source_info(path)], 0.2, seed=0, block_rows=8)
    expected = sorted(r for b in train for r in range(b.start, b.stop))
    ds = BlockShuffleDataset(train, batch_size=12, buffer_blocks=3, seed=5)
    ds.set_epoch(0)
    first = list(ds)
    assert all(len(b) == 12 for b in first[:-1])
    order0 = _rows(first)
    assert sorted(order0) == expected
    assert _rows(ds) == order0  # same epoch, same order (a rerun sees the same batches)
    ds.set_epoch(1)
    order1 = _rows(ds)
    assert sorted(order1) == expected and order1 != order0
    assert order0 != sorted(order0)  # shuffled, not read in file order


def test_workers_split_the_blocks_and_open_files_themselves(tmp_path: Path) -> None:
    path = _numbered(tmp_path / "n.h5", 96)
    train, _ = split_blocks([read_source_info(path)], 0.2, seed=0, block_rows=8)
    ds = BlockShuffleDataset(train, batch_size=8, buffer_blocks=2, seed=1, drop_last=False)
    list(ds)  # opens a handle in this process
    clone = pickle.loads(pickle.dumps(ds))  # what a worker receives
    assert clone._cache is None
    ds.set_epoch(2)
    rows = _rows(make_loader(ds, num_workers=2))
    assert sorted(rows) == sorted(r for b in train for r in range(b.start, b.stop))


def test_in_order_reader_covers_the_file_in_chunk_multiples(tmp_path: Path) -> None:
    path = _numbered(tmp_path / "n.h5", 45, chunk_rows=8)
    pieces = list(iter_blocks_in_order(path, batch_size=20))
    assert [start for start, _ in pieces] == [0, 16, 32]
    assert _rows(images for _, images in pieces) == list(range(45))


@pytest.mark.parametrize("stored", ['["g", "r", "i"]', ["g", "r", "i"]])
def test_bands_are_read_from_a_json_string_or_a_string_array(tmp_path: Path, stored) -> None:
    path = write_image_dataset(tmp_path / "a.h5", 16)
    with h5py.File(path, "r+") as f:
        f.attrs["bands"] = stored
    assert read_source_info(path).bands == ("g", "r", "i")
