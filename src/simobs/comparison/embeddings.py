"""Reading the per-source embedding files (contract: docs/contracts.md, rule ``embed``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from simobs.provenance import check_same_lineage

__all__ = ["EmbeddingSet", "read_embeddings", "read_embedding_sets", "pool_simulations", "VAE_SPLITS"]

VAE_SPLITS = ("train", "validation", "unused")


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
        typicality_loss: (N,) per-image VAE typicality loss (nats; lower = more typical of
            the observations; not a bound).
        ids: (N,) image ids, unique within the source.
        galaxy_ids: (N,) simulated galaxy id (equals ``ids`` for observations).
        projection_ids: (N,) projection index, -1 for observations.
        vae_split: (N,) ``train`` / ``validation`` (the VAE trained, or validated, on the
            image) or ``unused``; ``None`` is all ``unused``.
        vae_digest: ``model_digest`` of the VAE that made the embeddings (attr
            ``vae_digest``); ``None`` for a file written before it was recorded.
        path: The file read (named in lineage errors); ``None`` for sets built in memory.
    """

    source: str
    kind: str
    embedding: np.ndarray
    recon_error: np.ndarray
    typicality_loss: np.ndarray
    ids: np.ndarray
    galaxy_ids: np.ndarray
    projection_ids: np.ndarray
    vae_split: np.ndarray | None = None
    vae_digest: str | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if self.vae_split is None:
            self.vae_split = np.full(len(self), "unused", dtype=object)

    def __len__(self) -> int:
        return int(self.embedding.shape[0])

    @property
    def is_observation(self) -> bool:
        return self.kind == "observation"

    @property
    def unseen_by_vae(self) -> np.ndarray:
        """(N,) bool: images the VAE did not train on (its validation images and unused ones)."""
        return np.asarray(self.vae_split) != "train"


def read_embeddings(path: str | Path) -> EmbeddingSet:
    """Read ``results/embeddings/{source}.h5``.

    Files written before ``vae_split`` existed: simulations read as all ``unused`` (the
    VAE trains on observations only); observations are an error (rerun rule ``embed``),
    since which of them the VAE trained on decides the typicality and MMD references.
    A file with the former ``elbo`` instead of ``typicality_loss`` reads it as
    ``typicality_loss = -elbo``.

    Raises:
        ValueError: if a dataset or attribute of the contract is missing, the kind is
            unknown, lengths differ, a split value is unknown or an embedding is not finite.
    """
    path = Path(path)
    required = ("embedding", "recon_error", "ids", "galaxy_ids", "projection_ids")
    with h5py.File(path, "r") as f:
        missing = [k for k in required if k not in f]
        if "typicality_loss" not in f and "elbo" not in f:
            missing.append("typicality_loss")
        if missing or "source" not in f.attrs or "kind" not in f.attrs:
            raise ValueError(f"{path}: not an embedding file of the contract (missing {missing or 'attrs source/kind'}); "
                             "rerun rule `embed` for this source")
        kind = str(f.attrs["kind"])
        if kind not in ("observation", "simulation"):
            raise ValueError(f"{path}: attribute kind={kind!r}, expected 'observation' or 'simulation'")
        if "vae_split" in f:
            vae_split = _strings(f["vae_split"][...])
        elif kind == "simulation":
            vae_split = None
        else:
            raise ValueError(f"{path}: observation embeddings lack the dataset 'vae_split' (which images the VAE "
                             "trained on); rerun rules `train_embedding` and `embed` with this version")
        loss = (np.asarray(f["typicality_loss"][...], dtype=np.float64) if "typicality_loss" in f
                else -np.asarray(f["elbo"][...], dtype=np.float64))
        out = EmbeddingSet(
            source=str(f.attrs["source"]),
            kind=kind,
            embedding=np.asarray(f["embedding"][...], dtype=np.float32),
            recon_error=np.asarray(f["recon_error"][...], dtype=np.float64),
            typicality_loss=loss,
            ids=_strings(f["ids"][...]),
            galaxy_ids=_strings(f["galaxy_ids"][...]),
            projection_ids=np.asarray(f["projection_ids"][...], dtype=np.int64),
            vae_split=vae_split,
            vae_digest=str(f.attrs["vae_digest"]) if "vae_digest" in f.attrs else None,
            path=str(path),
        )
    n = len(out)
    if out.embedding.ndim != 2 or any(len(a) != n for a in (out.recon_error, out.typicality_loss, out.ids,
                                                            out.galaxy_ids, out.vae_split)):
        raise ValueError(f"{path}: datasets have inconsistent lengths (embedding {out.embedding.shape})")
    bad_split = sorted(set(out.vae_split) - set(VAE_SPLITS))
    if bad_split:
        raise ValueError(f"{path}: vae_split has value(s) {bad_split}; expected one of {list(VAE_SPLITS)}")
    bad = ~np.isfinite(out.embedding).all(axis=1)
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} embedding row(s) are NaN or infinite (first: id "
                         f"{out.ids[np.flatnonzero(bad)[0]]!r}); rerun rule `embed` or drop the image at ingestion")
    return out


def read_embedding_sets(paths: Sequence[str | Path],
                        lineage: tuple[str, str | None] | None = None) -> list[EmbeddingSet]:
    """Read several embedding files made by one VAE; source names must be distinct.

    Args:
        paths: The embeddings files.
        lineage: ``(name, vae_digest)`` of a further input the embeddings must match,
            e.g. ``("classifier <path>", classifier.vae_digest)``: the VAE whose
            embeddings a classifier trained on.

    Raises:
        LineageError: (a ValueError) if two files, or a file and ``lineage``, carry
            different ``vae_digest`` values, naming each with its digest. Files without
            one (written before it was recorded) are accepted with a warning.
    """
    sets = [read_embeddings(p) for p in paths]
    names = [s.source for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate source names among the embedding files: {names}")
    inputs = [(str(s.path), s.vae_digest) for s in sets] + ([lineage] if lineage is not None else [])
    fix = ("Re-run rule `embed` for the stale sources (those whose vae_digest is not the current model's: "
           "snakemake --forcerun embed)" + (f"; if {lineage[0]} is the stale input, re-run the rule that wrote it"
                                            if lineage is not None else ""))
    check_same_lineage(inputs, "vae_digest", fix)
    return sets


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
