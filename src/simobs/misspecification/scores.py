"""Per-galaxy OOD scores against the simulations, and their thresholds, in one place.

Four scores, every one *larger for more atypical* galaxies:

* ``energy``, ``max_softmax`` and ``gen`` (the paper's generalized entropy): logit-based
  (see :mod:`simobs.misspecification.ood`).
* ``knn``: mean distance to the k nearest *training* simulated galaxies in the embedding
  space (standardised, PCA-reduced), after Sun et al. (2022, "Out-of-distribution
  detection with deep nearest neighbors"), against a reference balanced over models.

Why a third score, and why it is the default for flagging: gradient-boosted trees do not
extrapolate.  A galaxy far from every simulation in embedding space falls into some leaf
region and gets the logits of that region, often confident ones, so its energy looks
in-distribution.  On the tiny demo universe's misspecified case (observations from the
hidden ``clumpy`` model, whose giant star-forming clumps no simulation has), the energy
score flagged 3 % of the observed galaxies and max-softmax 13 %, against 51 % for the
k-NN distance, which flags 7.6 % (nominal 5 %) in the demo's well-specified case.  The
logit scores are still computed, thresholded and reported for every source.

Thresholds come from the held-out simulated galaxies (validation and test splits, never
seen by the classifier's trees), each model's galaxies weighted equally (``reference:
pooled``) or by the observed sample's posterior model probabilities (``posterior``; see
:mod:`simobs.misspecification.ood`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from simobs.misspecification.ood import (
    HELD_OUT_SPLITS,
    energy_score,
    flag_ood,
    gen_score,
    max_softmax_score,
    ood_threshold,
    reference_model_weights,
)

__all__ = ["IvfIndex", "KnnReference", "OODScorer", "OOD_METHODS", "balanced_subsample", "flag_all"]

OOD_METHODS = ("knn", "energy", "max_softmax", "gen")

log = logging.getLogger(__name__)

_CHUNK = 8192  # rows per chunk when standardising/accumulating (bounds float64 temporaries)

KNN_INDEXES = ("exact", "ivf", "auto")
#: ``auto`` builds the inverted-file index for references of at least this many points ...
IVF_MIN_REFERENCE = 20_000
#: ... and uses it for a call whose queries x reference points reach this (20k x 50k):
#: below it the exact product takes seconds and the index saves nothing.
IVF_MIN_WORK = 10**9


def _standardise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(N, D) float32 ``(x - mean) / scale``, computed in row chunks (no float64 copy of ``x``)."""
    out = np.empty(x.shape, dtype=np.float32)
    m32, s32 = mean.astype(np.float32), scale.astype(np.float32)
    for start in range(0, len(x), _CHUNK):
        np.divide(np.subtract(x[start:start + _CHUNK], m32, dtype=np.float32), s32, out=out[start:start + _CHUNK])
    return out


def _nearest(x: torch.Tensor, centroids: torch.Tensor, n: int = 1, chunk: int = 65536) -> torch.Tensor:
    """(N, n) indices of the ``n`` nearest centroids of each row, in row chunks."""
    import torch

    return torch.cat([torch.cdist(x[s:s + chunk], centroids).topk(n, dim=1, largest=False).indices
                      for s in range(0, len(x), chunk)]) if len(x) else torch.zeros((0, n), dtype=torch.long)


@dataclass
class IvfIndex:
    """Inverted-file index of the reference points: k-means groups, each query scanning the
    ``n_probe`` groups whose centres are nearest to it (FAISS's ``IndexIVFFlat`` scheme).

    Approximate: a true neighbour in a group that is not probed is missed, so a score can
    only come out too large.  :meth:`KnnReference.score` rescores exactly every query above
    the flagging threshold (so the flags are exact), checks each call against the exact
    score on a seeded subsample of its queries and falls back to the exact score when the
    check fails.

    Attributes:
        centroids: (G, C) float32 group centres.
        order: (M,) reference rows sorted by group.
        offsets: (G + 1,) group g holds ``order[offsets[g]:offsets[g + 1]]``.
        n_probe: groups scanned per query.
    """

    centroids: np.ndarray
    order: np.ndarray
    offsets: np.ndarray
    n_probe: int

    @classmethod
    def build(cls, points: np.ndarray, n_groups: int = 256, n_probe: int = 32, *, iterations: int = 10,
              seed: int = 0) -> IvfIndex:
        """Lloyd's k-means on (M, C) points, started from ``n_groups`` seeded distinct points."""
        import torch

        p = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
        g = max(1, min(int(n_groups), len(p)))
        start = np.random.default_rng(seed).choice(len(p), size=g, replace=False)
        c = p[torch.from_numpy(np.sort(start))].clone()
        for _ in range(iterations):
            a = _nearest(p, c)[:, 0]
            sums = torch.zeros_like(c).index_add_(0, a, p)
            n = torch.bincount(a, minlength=g)
            c = torch.where(n[:, None] > 0, sums / n.clamp_min(1)[:, None].to(sums.dtype), c)  # empty: kept
        a = _nearest(p, c)[:, 0].numpy()
        order = np.argsort(a, kind="stable")
        offsets = np.zeros(g + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(np.bincount(a, minlength=g))
        return cls(centroids=c.numpy(), order=order, offsets=offsets, n_probe=max(1, min(int(n_probe), g)))


@dataclass
class KnnReference:
    """Reference points for the k-NN distance score.

    Attributes:
        mean, scale: (D,) standardisation of the embedding (from the reference points).
        components: (D, C) PCA projection.
        points: (M, C) projected reference embeddings.
        k: neighbours averaged.
        index: an :class:`IvfIndex` of ``points`` for large calls (``None``: always exact).
        check, tolerance: with the index, each call also scores ``check`` of its queries
            (seeded) exactly; if any of them comes out more than ``tolerance`` (relative) too
            large, the whole call is recomputed exactly.
        min_work: the index serves calls of at least this many query x reference pairs.
        last_check: what the last call did (``method``, and for the index ``n_checked``,
            ``max_rel_error``, ``fraction_inexact``, ``fell_back``, ``fraction_rescored``).
    """

    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray
    points: np.ndarray
    k: int = 10
    index: IvfIndex | None = None
    check: int = 2048
    tolerance: float = 0.01
    min_work: int = IVF_MIN_WORK
    last_check: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, embeddings: np.ndarray, k: int = 10, n_components: int = 32, *, index: str = "exact",
            n_groups: int = 256, n_probe: int = 32, seed: int = 0) -> KnnReference:
        """Fit on (M, D) reference embeddings (the simulations' training split).

        Memory: one float32 (M, D) standardised copy at most (no float64 copy of the
        reference); the principal axes come from the (D, D) covariance, accumulated in
        float64 over row chunks, not from an SVD of the (M, D) matrix.

        ``index``: ``exact`` (every call multiplies against the whole reference), ``ivf``
        (an :class:`IvfIndex` of ``n_groups`` groups, ``n_probe`` scanned per query, used for
        calls of at least :data:`IVF_MIN_WORK` query x reference pairs) or ``auto`` (``ivf``
        for references of at least :data:`IVF_MIN_REFERENCE` points, else ``exact``).
        """
        if index not in KNN_INDEXES:
            raise ValueError(f"misspecification.ood.knn_index={index!r}; choose one of {list(KNN_INDEXES)}")
        x = np.asarray(embeddings)
        if x.ndim != 2 or len(x) <= k:
            raise ValueError(f"need more than k={k} reference embeddings of shape (M, D), got {x.shape}")
        x = x.astype(np.float32, copy=False)
        mean = x.mean(0, dtype=np.float64)
        scale = x.std(0, dtype=np.float64)
        scale[scale < 1e-8] = 1.0  # dead latents: constant, carry no distance
        z = _standardise(x, mean, scale)
        n_comp = max(1, min(n_components, z.shape[1], len(z) - 1))
        cov = np.zeros((z.shape[1], z.shape[1]))
        for start in range(0, len(z), _CHUNK):
            zc = z[start:start + _CHUNK].astype(np.float64)
            cov += zc.T @ zc
        zbar = z.mean(0, dtype=np.float64)
        cov -= len(z) * np.outer(zbar, zbar)
        _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
        comps = np.ascontiguousarray(vecs[:, ::-1][:, :n_comp])
        points = z @ comps.astype(np.float32)
        use_ivf = index == "ivf" or (index == "auto" and len(points) >= IVF_MIN_REFERENCE)
        ivf = IvfIndex.build(points, n_groups, n_probe, seed=seed) if use_ivf else None
        return cls(mean=mean, scale=scale, components=comps, points=points, k=k, index=ivf)

    def project(self, x: np.ndarray) -> np.ndarray:
        """(N, C) float32 projections of (N, D) embeddings."""
        return _standardise(np.asarray(x), self.mean, self.scale) @ self.components.astype(np.float32)

    def score(self, x: np.ndarray, *, exclude_self: bool = False, threshold: float | None = None,
              batch: int = 2048) -> np.ndarray:
        """(N,) mean Euclidean distance to the k nearest reference points.

        Exact (:meth:`score_exact`) unless the reference has an :class:`IvfIndex` and the
        call holds at least :attr:`min_work` query x reference pairs.  Then:

        * The index can only miss neighbours, so its score is never below the exact one.
          With a flagging ``threshold``, every query the index scores above it is rescored
          exactly: a query at or below it is at or below it exactly too, so the flags
          (score > threshold) are those of the exact score, and every flagged score is exact.
        * :attr:`check` seeded queries are scored both ways first; if one that the index
          would leave unflagged (all of them, without ``threshold``) is more than
          :attr:`tolerance` (relative) too large, the call is scored exactly (logged); so is
          a call whose check finds most queries above the threshold (a misspecified sample:
          nearly all would be rescored).

        :attr:`last_check` records what happened.
        """
        q = np.ascontiguousarray(self.project(x))
        if self.index is None or len(q) * len(self.points) < self.min_work:
            self.last_check = {"method": "exact"}
            return self._exact(q, exclude_self, batch)
        limit = np.inf if threshold is None else float(threshold)
        # The check first: a failed one costs the exact score plus `check` queries, not twice.
        pick = np.sort(np.random.default_rng(len(q)).choice(len(q), size=min(self.check, len(q)), replace=False))
        exact = self._exact(q[pick], exclude_self, batch)
        approx = self._ivf(q[pick], exclude_self)
        kept = approx <= limit  # the index's values that the call would return
        if np.mean(~kept) > 0.5:  # most would be rescored exactly anyway: the index saves nothing
            self.last_check = {"method": "exact", "fraction_above_threshold": float(np.mean(~kept))}
            return self._exact(q, exclude_self, batch)
        rel = np.where(kept, approx / np.maximum(exact, np.finfo(np.float64).tiny) - 1.0, 0.0)
        fell_back = bool(np.max(rel) > self.tolerance)
        self.last_check = {"method": "ivf", "n_checked": int(len(pick)), "max_rel_error": float(np.max(rel)),
                           "fraction_inexact": float(np.mean(rel > 1e-6)), "fell_back": fell_back}
        if fell_back:
            log.warning("k-NN index: %d of %d checked scores off by up to %.2g (tolerance %.2g); scoring all %d "
                        "queries exactly (raise misspecification.ood.knn_probe or set knn_index: exact)",
                        int(np.sum(rel > self.tolerance)), len(pick), float(np.max(rel)), self.tolerance, len(q))
            return self._exact(q, exclude_self, batch)
        out = self._ivf(q, exclude_self)
        above = np.flatnonzero(~(out <= limit))
        if len(above):
            out[above] = self._exact(q[above], exclude_self, batch)
        self.last_check["fraction_rescored"] = float(len(above) / len(q))
        return out

    def score_exact(self, x: np.ndarray, *, exclude_self: bool = False, batch: int = 2048) -> np.ndarray:
        """(N,) the exact score, whatever the index."""
        return self._exact(np.ascontiguousarray(self.project(x)), exclude_self, batch)

    def _exact(self, projected: np.ndarray, exclude_self: bool, batch: int) -> np.ndarray:
        """Exact float32 score of projected queries.

        Each batch of ``batch`` queries costs one float32 matrix product against the
        reference and a top-k selection (torch's, ~10x faster than ``np.partition``);
        the k selected distances are then recomputed directly from the coordinates, so
        the score carries no cancellation error of the ``|q|^2 + |r|^2 - 2 q.r``
        expansion.  ``exclude_self`` drops the nearest neighbour (for scoring the
        reference points themselves).
        """
        import torch

        q = torch.from_numpy(projected)
        ref = torch.from_numpy(np.ascontiguousarray(self.points, dtype=np.float32))
        ref_sq = (ref * ref).sum(1)
        k = self.k + (1 if exclude_self else 0)
        out = np.empty(len(q), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(q), batch):
                qb = q[start:start + batch]
                d2 = torch.addmm(ref_sq[None, :], qb, ref.T, alpha=-2.0)  # |r|^2 - 2 q.r: same order as |q-r|^2
                idx = torch.topk(d2, k, dim=1, largest=False, sorted=False).indices
                out[start:start + len(qb)] = _mean_distance(ref, qb, idx, exclude_self)
        return out

    def _ivf(self, projected: np.ndarray, exclude_self: bool, batch: int = 16384) -> np.ndarray:
        """Score of projected queries through :attr:`index` (group-major: each probed group's
        points multiply all the batch's queries that probe it at once)."""
        import torch

        ivf = self.index
        k = self.k + (1 if exclude_self else 0)
        order = torch.from_numpy(ivf.order)
        ref = torch.from_numpy(np.ascontiguousarray(self.points, dtype=np.float32))[order].contiguous()
        ref_sq = (ref * ref).sum(1)
        cents = torch.from_numpy(ivf.centroids)
        off = ivf.offsets
        n_groups, n_probe = len(cents), ivf.n_probe
        q_all = torch.from_numpy(projected)
        out = np.empty(len(q_all), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(q_all), batch):
                qb = q_all[start:start + batch]
                nb = len(qb)
                probe = _nearest(qb, cents, n_probe).reshape(-1)  # (nb * n_probe,) group of each (query, slot)
                by_group = torch.argsort(probe, stable=True)
                bounds = np.zeros(n_groups + 1, dtype=np.int64)
                bounds[1:] = np.cumsum(torch.bincount(probe, minlength=n_groups).numpy())
                cand_d = torch.full((nb * n_probe, k), float("inf"))
                cand_i = torch.zeros((nb * n_probe, k), dtype=torch.long)
                for g in range(n_groups):
                    lo, hi = int(off[g]), int(off[g + 1])
                    if hi == lo or bounds[g + 1] == bounds[g]:
                        continue
                    rows = by_group[bounds[g]:bounds[g + 1]]  # (query, slot) pairs that probe group g
                    d2 = torch.addmm(ref_sq[None, lo:hi], qb[rows // n_probe], ref[lo:hi].T, alpha=-2.0)
                    kk = min(k, hi - lo)
                    v, i = torch.topk(d2, kk, dim=1, largest=False, sorted=False)
                    cand_d[rows, :kk] = v
                    cand_i[rows, :kk] = i + lo
                best = torch.topk(cand_d.reshape(nb, -1), k, dim=1, largest=False, sorted=False)
                idx = cand_i.reshape(nb, -1).gather(1, best.indices)
                res = _mean_distance(ref, qb, idx, exclude_self)
                short = np.flatnonzero(~torch.isfinite(best.values).all(1).numpy())
                if len(short):  # fewer than k points in the probed groups: exact for those
                    res[short] = self._exact(projected[start + short], exclude_self, 2048)
                out[start:start + nb] = res
        return out


def _mean_distance(ref, qb, idx, exclude_self: bool) -> np.ndarray:
    """Mean of the distances from queries ``qb`` to the reference rows ``idx`` (recomputed from
    the coordinates in float32, averaged in float64), the nearest dropped with ``exclude_self``."""
    import torch

    dist = torch.linalg.vector_norm(ref[idx] - qb[:, None, :], dim=2).double()
    dist = dist.sort(dim=1).values
    if exclude_self:
        dist = dist[:, 1:]
    return dist.mean(1).numpy()


class OODScorer:
    """Scores galaxies against the simulations and sets thresholds on held-out simulations.

    The k-NN reference is *balanced*: the same number of training images from every model
    (a seeded subsample of each model's training split, the size of the smallest one).
    A pooled reference would give a model with 10x the galaxies 10x the reference density,
    so its galaxies would have shorter k-NN distances and pass more often (pass rates
    0.984 against 0.917 at 10:1), and dropping flagged galaxies would bias the aggregate
    towards it.  What remains of that difference is measured by :meth:`pass_rates` and
    corrected in the aggregate by the selection term (:mod:`simobs.comparison.posterior`).

    Args:
        classifier: the calibrated simulation classifier (``logits(x)``, ``class_names``).
        simulations: embedding sets of the simulation sources (``source``, ``ids``, ``embedding``).
        predictions: ``train_classifier``'s table (``source``, ``id`` as strings, ``split``).
        knn_k, knn_components: k-NN score settings.
        knn_index, knn_groups, knn_probe: the k-NN reference's index (:meth:`KnnReference.fit`).
        seed: seed of the balanced subsample (and of the index's k-means).
    """

    def __init__(self, classifier, simulations: Sequence, predictions: pd.DataFrame, *,
                 knn_k: int = 10, knn_components: int = 128, knn_index: str = "exact", knn_groups: int = 256,
                 knn_probe: int = 32, seed: int = 0) -> None:
        self.classifier = classifier
        names = list(classifier.class_names)
        split_of = {(s, str(i)): sp for s, i, sp in zip(predictions["source"], predictions["id"].astype(str),
                                                        predictions["split"])}
        train, held, labels = [], [], []
        for sim in simulations:
            if sim.source not in names:
                continue
            splits = np.array([split_of.get((sim.source, str(i)), "") for i in sim.ids])
            if (splits == "").any():
                first = sim.ids[np.flatnonzero(splits == "")[0]]
                raise ValueError(f"simulation {sim.source!r} has images the classifier's predictions table does not "
                                 f"list (first: id {first!r}); rerun rule `train_classifier`")
            train.append(sim.embedding[splits == "train"])
            mask = np.isin(splits, HELD_OUT_SPLITS)
            held.append(sim.embedding[mask])
            labels.append(np.full(mask.sum(), names.index(sim.source)))
        if not held or sum(len(h) for h in held) == 0:
            raise ValueError("no held-out simulated galaxies to set OOD thresholds on; rerun rule `train_classifier`")
        self.knn = KnnReference.fit(balanced_subsample(train, seed), k=knn_k, n_components=knn_components,
                                    index=knn_index, n_groups=knn_groups, n_probe=knn_probe, seed=seed)
        self.held_labels = np.concatenate(labels)
        held = np.concatenate(held)
        # the thresholds come from these scores: the k-NN one exact, whatever the index
        self.held_scores = {"knn": self.knn.score_exact(held), **_logit_scores(self.classifier.logits(held))}

    def scores(self, embedding: np.ndarray, logits: np.ndarray | None = None,
               knn_threshold: float | None = None) -> dict[str, np.ndarray]:
        """Every OOD score of (N, D) embeddings (``logits``: their classifier logits, when already
        computed; ``knn_threshold``: the k-NN threshold they will be flagged at, which makes the
        k-NN index's flags exact, see :meth:`KnnReference.score`)."""
        z = self.classifier.logits(embedding) if logits is None else logits
        return {"knn": self.knn.score(embedding, threshold=knn_threshold), **_logit_scores(z)}

    def thresholds(self, tpr: float = 0.95, observed_logits: np.ndarray | None = None,
                   reference: str = "pooled") -> dict[str, float]:
        """Threshold per score: the weighted TPR quantile of the held-out simulations' scores.

        With ``observed_logits`` (the classifier's logits of an observed sample) and
        ``reference='posterior'`` each model's held-out galaxies are weighted by the
        observed sample's aggregate posterior probability of that model; otherwise every
        model weighs the same.
        """
        k = len(self.classifier.class_names)
        w_model = reference_model_weights(observed_logits, k, reference if observed_logits is not None else "pooled")
        counts = np.bincount(self.held_labels, minlength=k).astype(np.float64)
        weights = w_model[self.held_labels] / np.maximum(counts[self.held_labels], 1.0)
        return {m: ood_threshold(s, tpr, weights=weights) for m, s in self.held_scores.items()}

    def pass_rates(self, thresholds: Mapping[str, float]) -> dict[str, np.ndarray]:
        """P_k(pass) per score: (K,) fraction of model k's held-out images at or below the threshold."""
        k = len(self.classifier.class_names)
        counts = np.maximum(np.bincount(self.held_labels, minlength=k), 1)
        return {m: np.bincount(self.held_labels, weights=~flag_ood(s, thresholds[m]), minlength=k) / counts
                for m, s in self.held_scores.items()}


def _logit_scores(z: np.ndarray) -> dict[str, np.ndarray]:
    """The logit-based scores of (N, K) classifier logits."""
    return {"energy": energy_score(z), "max_softmax": max_softmax_score(z), "gen": gen_score(z)}


def balanced_subsample(per_model: Sequence[np.ndarray], seed: int = 0) -> np.ndarray:
    """Stack the same number of rows of every model's (M_k, D) array: a seeded subsample of
    each, of the smallest M_k, so that every model owns an equal share of the reference."""
    n = min(len(a) for a in per_model)
    if n == 0:
        raise ValueError("a simulation model has no training images for the k-NN reference; rerun rule "
                         "`train_classifier` (every model needs galaxies in every split)")
    rng = np.random.default_rng(seed)
    return np.concatenate([a[np.sort(rng.choice(len(a), n, replace=False))] for a in per_model])


def flag_all(scores: Mapping[str, np.ndarray], thresholds: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Boolean flags per score (non-finite scores are flagged)."""
    return {m: flag_ood(scores[m], thresholds[m]) for m in scores}
