"""Reading the image datasets written by the ingestion stage (see docs/contracts.md)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

__all__ = ["DatasetInfo", "read_info", "read_images_by_id", "read_ivar_by_id", "read_params"]


@dataclass(frozen=True)
class DatasetInfo:
    """Provenance of one source's dataset."""

    path: Path
    source: str
    kind: str
    bands: tuple[str, ...]
    pixel_scale_arcsec: float
    normalisation: dict[str, Any]
    n_images: int
    n_rejected: int
    config_digest: str
    params: tuple[str, ...] = ()  # names of the per-image parameters (group ``params``)
    has_ivar: bool = False  # whether an ``ivar`` dataset is stored

    @property
    def is_observation(self) -> bool:
        return self.kind == "observation"


def read_info(path: str | os.PathLike[str]) -> DatasetInfo:
    """Read a dataset's provenance attributes without loading its images."""
    with h5py.File(path, "r") as h5:
        a = h5.attrs
        return DatasetInfo(
            path=Path(path),
            source=str(a["source"]),
            kind=str(a["kind"]),
            bands=tuple(json.loads(a["bands"])),
            pixel_scale_arcsec=float(a["pixel_scale_arcsec"]),
            normalisation=json.loads(a["normalisation"]),
            n_images=int(a["n_images"]),
            n_rejected=int(a["n_rejected"]),
            config_digest=str(a["config_digest"]),
            params=tuple(sorted(h5["params"])) if "params" in h5 else (),
            has_ivar="ivar" in h5,
        )


def read_images_by_id(path: str | os.PathLike[str], ids: Sequence[str], *, name: str = "images") -> np.ndarray:
    """Images (len(ids), bands, H, W) for the given image ids, in the order asked.

    ``name='ivar'`` reads the inverse variances instead (see :func:`read_ivar_by_id`).

    Raises:
        KeyError: an id is not in the dataset (the message names it and the file), or
            the dataset has no ``name``.
    """
    with h5py.File(path, "r") as h5:
        if name not in h5:
            raise KeyError(f"{path} has no {name!r} dataset")
        all_ids = h5["ids"].asstr()[:]
        index = {v: i for i, v in enumerate(all_ids)}
        missing = [i for i in ids if i not in index]
        if missing:
            raise KeyError(f"ids {missing[:5]} not found in {path}")
        rows = np.asarray([index[i] for i in ids], dtype=np.int64)
        order = np.argsort(rows)
        out = np.empty((len(rows), *h5[name].shape[1:]), dtype=np.float32)
        if len(rows):
            out[order] = h5[name][rows[order]]  # h5py needs increasing indices
        return out


def read_ivar_by_id(path: str | os.PathLike[str], ids: Sequence[str]) -> np.ndarray:
    """Inverse variances (len(ids), bands, H, W) in (flux unit)^-2 of the raw, un-normalised pixels."""
    return read_images_by_id(path, ids, name="ivar")


def read_params(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The per-image parameters (e.g. the realism stage's seeing and sky per band), one row
    per image in dataset order, indexed by image id; no columns when the source has none."""
    from simobs.data.shards import read_params as _read

    with h5py.File(path, "r") as h5:
        ids = h5["ids"].asstr()[:]
        return pd.DataFrame(_read(h5.get("params")), index=pd.Index(ids, name="id"))
