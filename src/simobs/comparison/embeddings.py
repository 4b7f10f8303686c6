"""Reading the per-source embedding files (contract: docs/contracts.md, rule ``embed``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

__all__ = ["EmbeddingSet", "read_embeddings", "pool_simulations"]


def _strings(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


@dataclass
class EmbeddingSet:
    """The embeddings of one source.

    Attributes:
        source: source name (e.g. ``sdss`` or ``tng50``).
        kind: ``observation`` or ``simulation``.
        embedding: (N, D) float32 latent posterior means.
        recon_error: (N,) per-image reconstruction MSE (normalised flux units squared).
        elbo: (N,) per-image ELBO (nats; higher = more typical of the observations).
        ids: (N,) image ids, unique within the source.
        galaxy_ids: (N,) simulated galaxy id (equals ``ids`` for observations).
        projection_ids: (N,) projection index, -1 for observations.
    """

    source: str
    kind: str
    embedding: np.ndarray
    recon_error: np.ndarray
    elbo: np.ndarray
    ids: np.ndarray
    galaxy_ids: np.ndarray
    projection_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.embedding.shape[0])

    @property
    def is_observation(self) -> bool:
        return self.kind == "observation"


def read_embeddings(path: str | Path) -> EmbeddingSet:
    """Read ``results/embeddings/{source}.h5``.

    Raises:
        ValueError: if a dataset or attribute of the contract is missing or the kind is unknown.
    """
    path = Path(path)
    required = ("embedding", "recon_error", "elbo", "ids", "galaxy_ids", "projection_ids")
    with h5py.File(path, "r") as f:
        missing = [k for k in required if k not in f]
        if missing or "source" not in f.attrs or "kind" not in f.attrs:
            raise ValueError(f"{path}: not an embedding file of the contract (missing {missing or 'attrs source/kind'}); "
                             "rerun rule `embed` for this source")
        kind = str(f.attrs["kind"])
        if kind not in ("observation", "simulation"):
            raise ValueError(f"{path}: attribute kind={kind!r}, expected 'observation' or 'simulation'")
        out = EmbeddingSet(
            source=str(f.attrs["source"]),
            kind=kind,
            embedding=np.asarray(f["embedding"][...], dtype=np.float32),
            recon_error=np.asarray(f["recon_error"][...], dtype=np.float64),
            elbo=np.asarray(f["elbo"][...], dtype=np.float64),
            ids=_strings(f["ids"][...]),
            galaxy_ids=_strings(f["galaxy_ids"][...]),
            projection_ids=np.asarray(f["projection_ids"][...], dtype=np.int64),
        )
    n = len(out)
    if out.embedding.ndim != 2 or any(len(a) != n for a in (out.recon_error, out.elbo, out.ids, out.galaxy_ids)):
        raise ValueError(f"{path}: datasets have inconsistent lengths (embedding {out.embedding.shape})")
    return out


def pool_simulations(sets: Sequence[EmbeddingSet]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Stack the simulation sources into one labelled training set.

    Returns:
        ``(X, y, groups, ids, class_names)``: X (N, D) embeddings, y (N,) model index in
        ``class_names`` order (the order of ``sets``), groups (N,) ``"{source}/{galaxy_id}"``
        (so equal galaxy ids of two simulations stay distinct), ids (N,) image ids.
    """
    sims = [s for s in sets if not s.is_observation]
    if len(sims) < 2:
        raise ValueError(f"model comparison needs >= 2 simulation sources, got {[s.source for s in sims]}")
    dims = {s.embedding.shape[1] for s in sims}
    if len(dims) != 1:
        raise ValueError(f"simulation embeddings have different latent dimensions {sorted(dims)}; "
                         "embed all sources with the same model")
    x = np.concatenate([s.embedding for s in sims])
    y = np.concatenate([np.full(len(s), k, dtype=np.int64) for k, s in enumerate(sims)])
    groups = np.concatenate([np.array([f"{s.source}/{g}" for g in s.galaxy_ids], dtype=object) for s in sims])
    ids = np.concatenate([s.ids for s in sims])
    return x, y, groups, ids, [s.source for s in sims]
