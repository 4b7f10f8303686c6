"""HDF5 image shards: what a pre-ingestion stage hands to the ingestion, and what
``ingest_shard`` hands to ``ingest_merge`` (the "prepared shards" contract,
docs/contracts.md).

One shard file holds

========================  ===========================================================
``images``                float32 (N, bands, H, W)
``ids``                   utf-8 (N,) image ids
``galaxy_ids``            utf-8 (N,) simulated galaxy ids (= ids for observations)
``projection_ids``        int32 (N,), -1 where a source has no projections
``files``                 utf-8 (N,) the raw file (or catalogue row) each image came from
``ivar``                  optional float32 (N, bands, H, W) inverse variance, flux unit⁻²
``params/<name>``         optional, one (N,) dataset per per-image parameter (float64 or utf-8)
attrs                     ``n_files`` (raw files the shard covered), ``bands`` (JSON list)
========================  ===========================================================

and beside a prepared shard ``<shard>.rejected.tsv`` lists the files the stage rejected
(columns ``file``, ``code``, ``reason``).  :class:`ShardWriter` writes the layout
(atomically, streaming blocks of images); :func:`iter_shard_blocks` reads it back in
blocks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from simobs.io import atomic_path

__all__ = ["MANIFEST_COLUMNS", "ShardWriter", "ShardBlock", "iter_shard_blocks", "shard_info",
           "read_manifest", "write_manifest", "write_params", "read_params"]

MANIFEST_COLUMNS = ["file", "code", "reason"]
STR = h5py.string_dtype(encoding="utf-8")
_META = ("ids", "galaxy_ids", "projection_ids", "files")


def write_manifest(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a rejected-files manifest (:data:`MANIFEST_COLUMNS`, tab-separated) atomically."""
    with atomic_path(path) as tmp:
        frame.reindex(columns=MANIFEST_COLUMNS).to_csv(tmp, sep="\t", index=False)


def read_manifest(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A rejected-files manifest as strings (empty values stay empty strings)."""
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False).reindex(columns=MANIFEST_COLUMNS)


def write_params(group: h5py.Group, params: Mapping[str, Sequence[Any]]) -> None:
    """One (N,) dataset per parameter: numbers as float64, anything else as utf-8 strings."""
    for name, values in params.items():
        values = list(values)
        if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values):
            group.create_dataset(name, data=np.asarray(values, dtype=np.float64))
        else:
            group.create_dataset(name, data=np.asarray([str(v) for v in values], dtype=object), dtype=STR)


def read_params(group: h5py.Group | None, index: np.ndarray | slice = slice(None)) -> dict[str, np.ndarray]:
    """Parameters of a ``params`` group (None: no parameters), strings decoded."""
    if group is None:
        return {}
    out = {}
    for name, ds in group.items():
        out[name] = ds.asstr()[:][index] if h5py.check_string_dtype(ds.dtype) else ds[:][index]
    return out


class ShardWriter:
    """Stream images into a shard file; nothing appears at ``out`` unless :meth:`close` succeeds.

    Use as a context manager::

        with ShardWriter(out, bands=("g", "r", "i"), image_shape=(64, 64), manifest=m) as w:
            w.add(pixels, image_id="a", galaxy_id="a", projection_id=-1, file=path,
                  params={"seeing_fwhm_r": 1.3})
            w.reject(path, "wrong_unit", "...")
            w.n_files = 10

    Every image must carry the same parameter names (and all or none an ``ivar``).
    """

    def __init__(self, out: str | os.PathLike[str], *, bands: Sequence[str], image_shape: Sequence[int],
                 manifest: str | os.PathLike[str] | None = None, chunk_images: int = 64, block: int = 256,
                 with_ivar: bool = False, rejected: pd.DataFrame | None = None) -> None:
        self.out, self.manifest = Path(out), manifest
        self.bands = tuple(bands)
        self.shape = (len(self.bands), int(image_shape[0]), int(image_shape[1]))
        self.chunk, self.block_size, self.with_ivar = chunk_images, block, with_ivar
        self.n_files = 0
        self.n_images = 0
        self._rejected: list[dict] = [] if rejected is None else rejected.to_dict("records")
        self._block: dict[str, list] = {k: [] for k in ("images", "ivar", *_META)}
        self._params: dict[str, list] | None = None
        self._ctx = atomic_path(self.out, suffix=".h5")
        self._h5: h5py.File | None = None

    def __enter__(self) -> ShardWriter:
        tmp = self._ctx.__enter__()
        self._h5 = h5py.File(tmp, "w")
        shape = self.shape
        for name in ("images", "ivar") if self.with_ivar else ("images",):
            self._h5.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype="f4",
                                    chunks=(self.chunk, *shape))
        for name in _META:
            dtype = "i4" if name == "projection_ids" else STR
            self._h5.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(4096,))
        return self

    @property
    def rejected(self) -> pd.DataFrame:
        return pd.DataFrame(self._rejected, columns=MANIFEST_COLUMNS)

    def reject(self, file: str, code: str, reason: str) -> None:
        """List a file (or catalogue row) the stage could not turn into an image."""
        self._rejected.append({"file": str(file), "code": code, "reason": reason})

    def add(self, pixels: np.ndarray, *, image_id: str, galaxy_id: str, projection_id: int, file: str,
            params: Mapping[str, Any] | None = None, ivar: np.ndarray | None = None) -> None:
        """Append one image (bands, H, W); ``params`` are its per-image parameters."""
        if tuple(pixels.shape) != self.shape:
            raise ValueError(f"image {image_id!r}: shape {pixels.shape} differs from the shard's {self.shape}")
        if (ivar is not None) != self.with_ivar:
            raise ValueError(f"image {image_id!r}: ivar {'missing' if self.with_ivar else 'given'}, but the shard "
                             f"was opened with with_ivar={self.with_ivar}")
        params = dict(params or {})
        if self._params is None:
            self._params = {k: [] for k in params}
        if set(params) != set(self._params):
            raise ValueError(f"image {image_id!r}: parameters {sorted(params)} differ from the shard's "
                             f"{sorted(self._params)}")
        for k, v in params.items():
            self._params[k].append(v)
        b = self._block
        b["images"].append(np.asarray(pixels, np.float32))
        if ivar is not None:
            b["ivar"].append(np.asarray(ivar, np.float32))
        for k, v in zip(_META, (image_id, galaxy_id, projection_id, file)):
            b[k].append(v)
        if len(b["images"]) >= self.block_size:
            self._flush()

    def _flush(self) -> None:
        b, h5 = self._block, self._h5
        if not b["images"]:
            return
        n0, n1 = self.n_images, self.n_images + len(b["images"])
        for name, values in b.items():
            if name == "ivar" and not self.with_ivar:
                continue
            data = np.stack(values) if name in ("images", "ivar") else (
                np.asarray(values, np.int32) if name == "projection_ids" else values)
            h5[name].resize(n1, axis=0)
            h5[name][n0:n1] = data
        self.n_images = n1
        self._block = {k: [] for k in b}

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._flush()
                if self._params:
                    write_params(self._h5.create_group("params"), self._params)
                self._h5.attrs["n_files"] = int(self.n_files)
                self._h5.attrs["bands"] = json.dumps(list(self.bands))
        finally:
            self._h5.close()
        self._ctx.__exit__(exc_type, exc, tb)
        if exc_type is None and self.manifest is not None:
            write_manifest(self.rejected, self.manifest)


@dataclass
class ShardBlock:
    """A contiguous block of a shard: arrays of one length N."""

    images: np.ndarray  # (N, bands, H, W) float32
    ids: np.ndarray
    galaxy_ids: np.ndarray
    projection_ids: np.ndarray
    files: np.ndarray
    ivar: np.ndarray | None
    params: dict[str, np.ndarray]


def shard_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``n_files``, ``bands`` (list or None in shards written before the contract), ``n_images``,
    ``image_shape`` (bands, H, W), ``has_ivar`` and ``params`` (names) of a shard."""
    with h5py.File(path, "r") as h5:
        bands = h5.attrs.get("bands")
        return {
            "n_files": int(h5.attrs["n_files"]),
            "bands": json.loads(bands) if bands is not None else None,
            "n_images": int(h5["images"].shape[0]),
            "image_shape": tuple(h5["images"].shape[1:]),
            "has_ivar": "ivar" in h5,
            "params": sorted(h5["params"]) if "params" in h5 else [],
        }


def iter_shard_blocks(path: str | os.PathLike[str], block: int = 1024) -> Iterator[ShardBlock]:
    """Read a shard in blocks of at most ``block`` images."""
    with h5py.File(path, "r") as h5:
        n = h5["images"].shape[0]
        meta = {"ids": h5["ids"].asstr()[:], "galaxy_ids": h5["galaxy_ids"].asstr()[:],
                "projection_ids": h5["projection_ids"][:], "files": h5["files"].asstr()[:]}
        params = read_params(h5.get("params"))
        for start in range(0, n, block):
            sl = slice(start, min(start + block, n))
            yield ShardBlock(
                images=h5["images"][sl], ivar=h5["ivar"][sl] if "ivar" in h5 else None,
                params={k: v[sl] for k, v in params.items()}, **{k: v[sl] for k, v in meta.items()},
            )
