"""Stage ``project``: a seeded UMAP of the embeddings of all sources.

The UMAP is fitted on a subsample (``fit_max_samples`` rows) either of all sources
(balanced per source, so that a large observed sample does not hide small
simulations) or of the observations only (then the simulations are placed into the
observed manifold, as the paper does); every row is then mapped with
``UMAP.transform`` in batches.  Fitting on 600k galaxies directly takes hours; fitting
on ~50k and transforming the rest takes minutes.

Reproducibility: ``random_state`` fixes UMAP's initialisation and sampling (UMAP then
runs single-threaded, which is the price of a bit-identical rerun).

Transform epochs: ``UMAP.transform`` optimises new rows for 100 epochs when a batch has
at most 10,000 rows and 30 above, so a source's last partial batch (and every small
source) was placed with another optimisation than the full batches.  Every batch gets
``transform_epochs`` (default 30, umap-learn's own choice for large batches).

JIT compilation: most of umap-learn's and pynndescent's numba kernels are compiled
without ``cache=True``, so every process used to pay ~60 s of compilation before its
first ``fit``/``transform`` (issue 16).  :func:`cache_umap_kernels` switches numba's
on-disk cache on for them, so the compilation is paid once per environment: the cache
lives beside the package (in ``site-packages/umap/__pycache__``) or, where that is
read-only, in numba's user-wide cache (``~/.cache/numba``); ``NUMBA_CACHE_DIR`` moves it.
pynndescent's ``nn_descent`` itself cannot be cached (numba: "uses dynamic globals"), so
a fit of more than 4,096 rows (NN-descent rather than exact neighbours) still compiles
it, ~14 s, in each process.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from simobs.comparison.embeddings import EmbeddingSet

__all__ = ["ProjectionSettings", "cache_umap_kernels", "fit_sample_indices", "project_embeddings"]

log = logging.getLogger(__name__)


@dataclass
class ProjectionSettings:
    """Config section ``projection`` (unknown keys are errors)."""

    fit_on: str = "all"  # "all" sources or "observations" only
    fit_max_samples: int = 50000
    transform_batch_size: int = 20000
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "euclidean"
    transform_epochs: int = 30
    seed: int = 0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> "ProjectionSettings":
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown projection setting(s) {unknown}; valid keys: {sorted(known)}")
        s = cls(**values)
        if s.fit_on not in ("all", "observations"):
            raise ValueError(f"projection.fit_on={s.fit_on!r}; choose 'all' or 'observations'")
        if s.transform_epochs < 1:
            raise ValueError(f"projection.transform_epochs={s.transform_epochs} must be >= 1")
        if s.fit_max_samples < s.n_neighbors + 2:
            raise ValueError(f"projection.fit_max_samples={s.fit_max_samples} must exceed n_neighbors={s.n_neighbors}")
        return s


_UMAP_KERNEL_MODULES = ("umap.umap_", "umap.layouts", "umap.utils", "umap.sparse", "umap.distances", "umap.spectral",
                        # NN-descent (fits of > 4,096 rows): measured 34 s of JIT per process before, 14 s after
                        "pynndescent.pynndescent_", "pynndescent.utils", "pynndescent.distances",
                        "pynndescent.rp_trees", "pynndescent.sparse", "pynndescent.sparse_nndescent")


def cache_umap_kernels() -> int:
    """Turn on numba's on-disk cache for umap-learn's not-yet-compiled kernels; returns how many.

    Call before the first UMAP ``fit`` of a process.  Kernels numba cannot cache still
    compile (numba warns and carries on), so the call is always safe.
    """
    import importlib

    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    enabled = 0
    for name in _UMAP_KERNEL_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # another pynndescent version lays its modules out differently
            continue
        for value in vars(module).values():
            if isinstance(value, Dispatcher) and isinstance(value._cache, NullCache) and not value.signatures:
                value.enable_caching()
                enabled += 1
    return enabled


def fit_sample_indices(sizes: Sequence[int], eligible: Sequence[bool], max_samples: int, seed: int) -> list[np.ndarray]:
    """Rows of each source used to fit UMAP.

    Eligible sources share ``max_samples`` equally; a source smaller than its share
    gives all its rows and the remainder goes to the others (water filling).

    Returns:
        One sorted index array per source (empty for ineligible sources).
    """
    rng = np.random.default_rng(seed)
    take = np.zeros(len(sizes), dtype=np.int64)
    remaining, open_ = int(max_samples), [i for i, e in enumerate(eligible) if e and sizes[i] > 0]
    if not open_:
        raise ValueError("no source is eligible to fit the UMAP (projection.fit_on='observations' with no observations?)")
    while open_ and remaining > 0:
        share = remaining // len(open_)
        if share == 0:  # fewer rows left than open sources: one more row each until exhausted
            for i in open_[:remaining]:
                take[i] += 1
            break
        nxt = []
        for i in open_:
            add = min(share, sizes[i] - take[i])
            take[i] += add
            remaining -= add
            if take[i] < sizes[i]:
                nxt.append(i)
        open_ = nxt
    return [np.sort(rng.choice(n, t, replace=False)) if t else np.zeros(0, np.int64) for n, t in zip(sizes, take)]


def project_embeddings(sets: Sequence[EmbeddingSet], settings: ProjectionSettings) -> pd.DataFrame:
    """2-D UMAP coordinates of every row of every source.

    Returns:
        DataFrame with columns ``source``, ``kind``, ``id``, ``galaxy_id``, ``umap_1``,
        ``umap_2`` and ``in_fit`` (whether the row was part of the fitting subsample).
    """
    import umap

    cache_umap_kernels()
    dims = {s.embedding.shape[1] for s in sets}
    if len(dims) != 1:
        raise ValueError(f"sources have different latent dimensions {sorted(dims)}; embed all with the same model")
    eligible = [settings.fit_on == "all" or s.is_observation for s in sets]
    fit_idx = fit_sample_indices([len(s) for s in sets], eligible, settings.fit_max_samples, settings.seed)
    x_fit = np.concatenate([s.embedding[i] for s, i in zip(sets, fit_idx)])
    log.info("UMAP: fitting on %d rows (%s), transforming %d", len(x_fit), settings.fit_on, sum(len(s) for s in sets))
    reducer = umap.UMAP(n_neighbors=settings.n_neighbors, min_dist=settings.min_dist, metric=settings.metric,
                        random_state=settings.seed, n_components=2, n_jobs=1)
    fit_coords = reducer.fit_transform(x_fit)
    # transform() runs n_epochs // 3 epochs when n_epochs is set (the fit is done: it no longer
    # reads it); unset, it runs 100 or 30 by batch size, so rows would be placed unevenly
    reducer.n_epochs = 3 * settings.transform_epochs
    frames, offset = [], 0
    for s, idx in zip(sets, fit_idx):
        coords = np.empty((len(s), 2), dtype=np.float32)
        # fitted rows keep their fitted position; the rest are transformed in batches
        coords[idx] = fit_coords[offset:offset + len(idx)]
        offset += len(idx)
        rest = np.setdiff1d(np.arange(len(s)), idx)
        for b in range(0, len(rest), settings.transform_batch_size):
            r = rest[b:b + settings.transform_batch_size]
            coords[r] = reducer.transform(s.embedding[r])
        in_fit = np.zeros(len(s), dtype=bool)
        in_fit[idx] = True
        frames.append(pd.DataFrame({"source": s.source, "kind": s.kind, "id": s.ids, "galaxy_id": s.galaxy_ids,
                                    "umap_1": coords[:, 0], "umap_2": coords[:, 1], "in_fit": in_fit}))
    return pd.concat(frames, ignore_index=True)
