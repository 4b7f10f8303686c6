"""Train/validation/test splits grouped by simulated galaxy, and class weights.

Simulations provide several projections (viewing angles) of one galaxy.  Projections of
one galaxy are near-duplicates, so if they sat on both sides of a split the held-out
accuracy and calibration would measure memorisation, not generalisation to new galaxies.
Splits therefore assign whole galaxies, separately within each model (stratified), so
that every model appears in every split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Split", "grouped_split", "balanced_class_weights", "HELD_OUT_SPLITS"]

HELD_OUT_SPLITS = ("validation", "test")  # splits the classifier's trees never saw


@dataclass(frozen=True)
class Split:
    """Row indices (into the pooled simulation arrays) of each split."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray

    def labels(self, n: int) -> np.ndarray:
        """(n,) array of split names ("train", "validation", "test") per row."""
        out = np.full(n, "", dtype=object)
        out[self.train], out[self.validation], out[self.test] = "train", "validation", "test"
        return out


def grouped_split(
    groups: np.ndarray,
    labels: np.ndarray,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> Split:
    """Split rows into train/validation/test so that no group straddles two splits.

    Within each class the groups are shuffled (seeded) and assigned to the splits so
    that the number of *groups* per split follows ``fractions``; every class with at
    least three groups gets at least one group in each split.

    Args:
        groups: (N,) group id per row (the simulated galaxy id); a group must not span
            two classes (one galaxy belongs to one simulation).
        labels: (N,) integer class per row.
        fractions: train, validation and test fractions; must be positive and sum to 1.
        seed: seed of the shuffle, so that a rerun gives the same split.

    Returns:
        :class:`Split` with sorted row indices.

    Raises:
        ValueError: if shapes differ, fractions are invalid, a group appears under two
            classes, or a class has fewer than three groups.
    """
    groups = np.asarray(groups)
    labels = np.asarray(labels)
    if groups.shape != labels.shape or groups.ndim != 1:
        raise ValueError(f"groups and labels must be 1-D of equal length, got {groups.shape} and {labels.shape}")
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or np.any(f <= 0) or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"split fractions must be three positive numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    uniq, inverse = np.unique(groups, return_inverse=True)
    group_class = np.full(len(uniq), -1, dtype=np.int64)
    group_class[inverse] = labels
    if np.any(group_class[inverse] != labels):
        bad = uniq[inverse[group_class[inverse] != labels][0]]
        raise ValueError(f"galaxy id {bad!r} appears under two simulation models; galaxy ids must be unique per "
                         "model (prefix them with the source name)")
    split_of_group = np.empty(len(uniq), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(group_class == c)
        if len(members) < 3:
            raise ValueError(f"class {c} has only {len(members)} distinct galaxies; need >= 3 for a "
                             "train/validation/test split (add galaxies or drop the source)")
        members = rng.permutation(members)
        n = len(members)
        n_val = max(1, int(round(f[1] * n)))
        n_test = max(1, int(round(f[2] * n)))
        n_train = n - n_val - n_test
        if n_train < 1:
            n_train, n_val, n_test = 1, max(1, (n - 1) // 2), n - 1 - max(1, (n - 1) // 2)
        split_of_group[members[:n_train]] = 0
        split_of_group[members[n_train:n_train + n_val]] = 1
        split_of_group[members[n_train + n_val:]] = 2
    row_split = split_of_group[inverse]
    return Split(*(np.flatnonzero(row_split == s) for s in range(3)))


def balanced_class_weights(labels: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """Per-row weights N / (K n_k) so that every class carries the same total weight.

    Trained with these weights, a classifier estimates the posterior model probability
    under *equal* model priors regardless of how many images each simulation has; other
    priors are applied afterwards (:func:`simobs.comparison.posterior.posterior_model_probabilities`).

    Returns:
        (N,) float64 weights with mean 1 over classes present.
    """
    y = np.asarray(labels, dtype=np.int64)
    k = int(n_classes if n_classes is not None else y.max() + 1)
    counts = np.bincount(y, minlength=k).astype(np.float64)
    present = counts > 0
    w_class = np.zeros(k)
    w_class[present] = len(y) / (present.sum() * counts[present])
    return w_class[y]
