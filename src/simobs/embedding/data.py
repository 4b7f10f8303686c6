"""Reading image datasets (``results/datasets/{source}.h5``) in chunk-aligned blocks.

Why blocks: a per-sample ``__getitem__`` costs one HDF5 call (and one chunk
decompression) per image, which dominates a training step of a small network.  Here a
dataset is cut into blocks of whole HDF5 chunks; each read is one contiguous slice.
Shuffling is two-level: the order of the blocks is shuffled every epoch, and images
are shuffled within a buffer of several blocks.  Only the buffer is in memory, so the
datasets may be larger than memory.

Workers: each ``torch.utils.data.DataLoader`` worker takes every ``num_workers``-th
block of the epoch's order and opens the HDF5 files itself on first use (an h5py file
handle must never cross a ``fork``).  Batches are assembled in the worker, so the
loader runs with ``batch_size=None``.

The reader depends on the raw HDF5 contract of docs/contracts.md only (dataset
``images`` of shape ``(N, B, H, W)``, attrs ``source``, ``kind``, ``bands``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

__all__ = [
    "Block",
    "SourceInfo",
    "read_source_info",
    "split_blocks",
    "split_record",
    "BlockShuffleDataset",
    "make_loader",
    "iter_blocks_in_order",
]


@dataclass(frozen=True)
class Block:
    """A contiguous run of images ``[start, stop)`` of the file ``path``."""

    path: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class SourceInfo:
    """What the loader needs to know about one dataset file.

    Attributes:
        path: The HDF5 file.
        source: attr ``source`` (file stem if absent).
        kind: attr ``kind`` (``observation`` / ``simulation``; ``""`` if absent).
        n_images: Rows of ``images``.
        image_shape: ``(B, H, W)``.
        bands: attr ``bands`` as a tuple of str (empty if absent).
        chunk_rows: Rows per HDF5 chunk of ``images`` (``n_images`` if contiguous).
    """

    path: str
    source: str
    kind: str
    n_images: int
    image_shape: tuple[int, int, int]
    bands: tuple[str, ...]
    chunk_rows: int


def _as_str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bands(value: object) -> tuple[str, ...]:
    # The attr is a JSON list in a string (ingest_merge) or an HDF5 array of strings.
    if isinstance(value, (bytes, str)):
        text = _as_str(value)
        try:
            parsed = json.loads(text)
        except ValueError:
            return (text,)
        return tuple(str(b) for b in parsed) if isinstance(parsed, list) else (str(parsed),)
    return tuple(_as_str(b) for b in np.atleast_1d(value))


def read_source_info(path: str | Path) -> SourceInfo:
    """Read the shape and provenance of one image dataset.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        KeyError: if the file has no ``images`` dataset.
        ValueError: if ``images`` is not 4-D ``(N, B, H, W)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image dataset {path} does not exist; run the ingest rule for it first")
    with h5py.File(path, "r") as f:
        if "images" not in f:
            raise KeyError(f"{path}: no dataset 'images' (see docs/contracts.md, image dataset)")
        images = f["images"]
        if images.ndim != 4:
            raise ValueError(f"{path}: 'images' has shape {images.shape}; expected (N, bands, H, W)")
        n = int(images.shape[0])
        chunk_rows = int(images.chunks[0]) if images.chunks is not None else max(n, 1)
        bands = _bands(f.attrs.get("bands", ()))
        return SourceInfo(
            path=str(path),
            source=_as_str(f.attrs.get("source", path.stem)),
            kind=_as_str(f.attrs.get("kind", "")),
            n_images=n,
            image_shape=tuple(int(s) for s in images.shape[1:]),  # type: ignore[arg-type]
            bands=bands,
            chunk_rows=chunk_rows,
        )


def _blocks_of(info: SourceInfo, block_rows: int) -> list[Block]:
    # Round the block up to whole chunks, so that no chunk is read (decompressed) twice.
    rows = max(info.chunk_rows, math.ceil(block_rows / info.chunk_rows) * info.chunk_rows)
    return [
        Block(info.path, start, min(start + rows, info.n_images))
        for start in range(0, info.n_images, rows)
    ]


def split_blocks(
    infos: Sequence[SourceInfo],
    val_fraction: float,
    seed: int,
    block_rows: int = 64,
) -> tuple[list[Block], list[Block]]:
    """Cut the datasets into blocks and assign whole blocks to train or validation.

    Splitting whole blocks keeps the validation reads contiguous too.  Per source, a
    seeded random ``val_fraction`` of its blocks (at least one, at most all but one)
    goes to validation, so every source is represented in both parts.

    Args:
        infos: The training sources.
        val_fraction: Fraction of blocks held out, in ``(0, 1)``.
        seed: Seed of the split (independent of the training seed's other uses).
        block_rows: Images per block before rounding up to whole HDF5 chunks; smaller
            blocks give a finer split and a better shuffle, larger blocks fewer reads.

    Returns:
        ``(train_blocks, val_blocks)``.

    Raises:
        ValueError: if ``val_fraction`` is outside ``(0, 1)`` or a source has fewer
            than two blocks (lower ``block_rows`` or add images).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"embedding.val_fraction={val_fraction} must lie in (0, 1)")
    rng = np.random.default_rng([seed, 0x5EED])
    train: list[Block] = []
    val: list[Block] = []
    for info in infos:
        blocks = _blocks_of(info, block_rows)
        if len(blocks) < 2:
            raise ValueError(
                f"{info.path}: {info.n_images} images make {len(blocks)} block(s) of "
                f">= {max(block_rows, info.chunk_rows)} rows; a train/validation split needs at "
                "least two. Lower embedding.block_rows or write the dataset with smaller chunks."
            )
        n_val = min(len(blocks) - 1, max(1, round(val_fraction * len(blocks))))
        chosen = set(rng.choice(len(blocks), size=n_val, replace=False).tolist())
        for i, block in enumerate(blocks):
            (val if i in chosen else train).append(block)
    return train, val


def split_record(
    infos: Sequence[SourceInfo], train: Sequence[Block], val: Sequence[Block]
) -> dict[str, dict[str, list[list[int]]]]:
    """The train/validation split as JSON-able image ranges per source name.

    Stored with the model so that ``embed`` can say which images the VAE trained on
    (dataset ``vae_split``, docs/contracts.md).

    Returns:
        ``{source: {"train": [[start, stop], ...], "validation": [...]}}``.
    """
    by_path = {info.path: info.source for info in infos}
    record: dict[str, dict[str, list[list[int]]]] = {
        info.source: {"train": [], "validation": []} for info in infos
    }
    for part, blocks in (("train", train), ("validation", val)):
        for block in blocks:
            record[by_path[block.path]][part].append([block.start, block.stop])
    return record


class _FileCache:
    """Lazily opened read-only h5py handles, one set per process."""

    def __init__(self) -> None:
        self._files: dict[str, h5py.File] = {}

    def images(self, path: str) -> h5py.Dataset:
        f = self._files.get(path)
        if f is None:
            # rdcc: a 64 MiB chunk cache per file; blocks are chunk-aligned, so it mostly
            # avoids re-reading the metadata, not the data.
            f = h5py.File(path, "r", rdcc_nbytes=64 * 2**20)
            self._files[path] = f
        return f["images"]

    def close(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except Exception:  # noqa: BLE001 - closing on teardown must not raise
                pass
        self._files.clear()


class BlockShuffleDataset(IterableDataset):
    """Batches of images from chunk-aligned blocks, shuffled per epoch.

    Iterating yields ``(batch, B, H, W)`` float32 tensors.  Call :meth:`set_epoch`
    before each epoch: the order depends only on ``(seed, epoch, worker)``, so a rerun
    (or a resumed run) with the same settings sees the same batches.

    Args:
        blocks: The blocks to read.
        batch_size: Images per batch (the last batch of each worker may be smaller,
            unless ``drop_last``).
        shuffle: Shuffle blocks and images within the buffer; ``False`` reads in order.
        buffer_blocks: Blocks held and mixed in memory at once.
        seed: Seed of the shuffle.
        drop_last: Drop each worker's last incomplete batch.
    """

    def __init__(
        self,
        blocks: Sequence[Block],
        batch_size: int,
        shuffle: bool = True,
        buffer_blocks: int = 16,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.blocks = list(blocks)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.buffer_blocks = max(1, int(buffer_blocks))
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0
        self._cache: _FileCache | None = None

    def __getstate__(self) -> dict:
        # Never pickle an open h5py handle into a worker: each process opens its own.
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    @property
    def n_images(self) -> int:
        return sum(b.size for b in self.blocks)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch`` (0-based)."""
        self.epoch = int(epoch)

    def _read(self, block: Block) -> np.ndarray:
        if self._cache is None:
            self._cache = _FileCache()
        return np.asarray(self._cache.images(block.path)[block.start : block.stop], dtype=np.float32)

    def __iter__(self) -> Iterator[torch.Tensor]:
        worker = get_worker_info()
        worker_id, n_workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        order = np.arange(len(self.blocks))
        rng = np.random.default_rng([self.seed, self.epoch, worker_id])
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        mine = order[worker_id::n_workers]

        pending: np.ndarray | None = None  # images left over from the previous buffer
        for first in range(0, len(mine), self.buffer_blocks):
            arrays = [self._read(self.blocks[i]) for i in mine[first : first + self.buffer_blocks]]
            if pending is not None and len(pending):
                arrays.insert(0, pending)
            buffer = np.concatenate(arrays, axis=0)
            if self.shuffle:
                buffer = buffer[rng.permutation(len(buffer))]
            n_full = len(buffer) // self.batch_size * self.batch_size
            for start in range(0, n_full, self.batch_size):
                yield torch.from_numpy(buffer[start : start + self.batch_size])
            pending = buffer[n_full:]
        if pending is not None and len(pending) and not self.drop_last:
            yield torch.from_numpy(np.ascontiguousarray(pending))


def make_loader(dataset: BlockShuffleDataset, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A ``DataLoader`` over ready-made batches (``batch_size=None``).

    Workers are not persistent: each ``iter(loader)`` starts fresh workers that
    receive a copy of the dataset holding the epoch set by
    :meth:`BlockShuffleDataset.set_epoch` (a persistent worker would keep the epoch
    it was started with).  Starting them is cheap next to an epoch, and the files
    open lazily inside each worker.
    """
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers > 0 else None,
        persistent_workers=False,
    )


def iter_blocks_in_order(path: str | Path, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """Read ``images`` of one file in order, in chunk-aligned slices.

    Args:
        path: Image dataset.
        batch_size: Upper bound on images per slice (rounded down to whole chunks
            when that is at least one chunk).

    Yields:
        ``(start, images)`` with ``images`` of shape ``(n, B, H, W)`` float32.
    """
    info = read_source_info(path)
    rows = batch_size
    if info.chunk_rows <= batch_size:
        rows = batch_size // info.chunk_rows * info.chunk_rows
    with h5py.File(path, "r") as f:
        images = f["images"]
        for start in range(0, info.n_images, rows):
            yield start, np.asarray(images[start : start + rows], dtype=np.float32)
