"""Prepared shards: images a pre-ingestion stage (e.g. the frame cutouts) hands to the ingestion.

A prepared shard is ``results/<stage>/<source>/<shard>.h5`` holding ``images``
(N, bands, H, W) float32 in the survey's flux unit (nanomaggies) at ``ingest.image_size``,
``ids``, ``galaxy_ids``, ``projection_ids`` (int32), ``files`` (the raw file or catalogue
row each image came from), optionally ``ivar`` (N, bands, H, W) and a group ``params``
of 1-D per-image columns; attrs ``n_files`` and ``bands`` (JSON); plus
``<shard>.rejected.tsv`` (file, code, reason).  See docs/contracts.md.

:func:`ingest_prepared_shard` validates and normalises one such shard into an ingestion
shard, exactly as :func:`simobs.data.ingest.ingest_shard` does for raw files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import h5py
import numpy as np
import pandas as pd

from simobs.data.fits_io import RejectedFile
from simobs.data.ingest import (
    MANIFEST_COLUMNS,
    IngestError,
    Normalisation,
    ShardResult,
    _append,
    _create_datasets,
    _reject_or_fail,
    write_manifest,
)
from simobs.io import atomic_path

__all__ = ["ingest_prepared_shard"]

_BLOCK = 256


def ingest_prepared_shard(
    prepared: str | os.PathLike[str],
    prepared_manifest: str | os.PathLike[str],
    *,
    source: str,
    bands: Sequence[str],
    image_shape: tuple[int, int],
    normalisation: Normalisation,
    out: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    on_bad_file: str = "skip",
    chunk_images: int = 64,
) -> ShardResult:
    """Normalise a prepared shard into an ingestion shard; its rejected rows carry over.

    Images with non-finite pixels or a duplicate id are rejected (or fail the job under
    ``on_bad_file='fail'``), as raw files are.

    Raises:
        IngestError: the shard's bands or image size differ from the source's config.
    """
    with h5py.File(prepared, "r") as src:
        have = json.loads(src.attrs["bands"])
        if list(have) != list(bands):
            raise IngestError(f"source {source!r}: prepared shard {prepared} holds bands {have}, the config "
                              f"says {list(bands)}; rerun the stage that made it")
        n, _, h, w = src["images"].shape
        if n and (h, w) != tuple(image_shape):
            raise IngestError(f"source {source!r}: prepared shard {prepared} holds {h}x{w} images, "
                              f"ingest.image_size is {list(image_shape)}; rerun the stage that made it")
        ids, gids = src["ids"].asstr()[:], src["galaxy_ids"].asstr()[:]
        files, projs = src["files"].asstr()[:], src["projection_ids"][:]
        rejected = pd.read_csv(prepared_manifest, sep="\t", dtype=str, keep_default_na=False).to_dict("records")
        seen: dict[str, str] = {}
        n_images = 0
        with atomic_path(out, suffix=".h5") as tmp, h5py.File(tmp, "w") as dst:
            _create_datasets(dst, len(bands), tuple(image_shape), chunk_images)
            for start in range(0, n, _BLOCK):
                block = src["images"][start : start + _BLOCK]
                keep: tuple[list, list, list, list, list] = ([], [], [], [], [])
                for k, pixels in enumerate(block):
                    i = start + k
                    try:
                        if not np.isfinite(pixels).all():
                            raise RejectedFile("non-finite pixels (NaN/inf)", "non_finite")
                        if ids[i] in seen:
                            raise RejectedFile(f"duplicate id {ids[i]!r} (first seen in {seen[ids[i]]})", "duplicate_id")
                    except RejectedFile as exc:
                        _reject_or_fail(on_bad_file, source, files[i], exc, rejected)
                        continue
                    seen[ids[i]] = files[i]
                    for lst, value in zip(keep, (normalisation.apply(pixels, bands), ids[i], gids[i], int(projs[i]),
                                                 files[i])):
                        lst.append(value)
                if keep[0]:
                    _append(dst, *keep)
                    n_images += len(keep[0])
            n_files = int(src.attrs["n_files"])
            dst.attrs["n_files"] = n_files
    frame = pd.DataFrame(rejected, columns=MANIFEST_COLUMNS)
    write_manifest(frame, manifest)
    return ShardResult(n_files=n_files, n_images=n_images, rejected=frame)
