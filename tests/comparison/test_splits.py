import numpy as np
import pytest

from simobs.comparison.embeddings import pool_simulations
from simobs.comparison.splits import balanced_class_weights, grouped_split


def test_grouped_split_keeps_galaxies_together(well_specified):
    x, y, groups, ids, names = pool_simulations(well_specified)
    split = grouped_split(groups, y, (0.6, 0.2, 0.2), seed=0)
    parts = [set(groups[s]) for s in (split.train, split.validation, split.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert len(split.train) + len(split.validation) + len(split.test) == len(y)
    for s in (split.train, split.validation, split.test):  # stratified: every model in every split
        assert set(y[s]) == set(range(len(names)))
    # reproducible with the seed, different with another
    again = grouped_split(groups, y, (0.6, 0.2, 0.2), seed=0)
    assert np.array_equal(again.test, split.test)
    assert not np.array_equal(grouped_split(groups, y, (0.6, 0.2, 0.2), seed=1).test, split.test)


def test_grouped_split_fractions_count_galaxies():
    groups = np.repeat(np.arange(100), 5).astype(str)
    y = np.zeros(500, dtype=int)
    split = grouped_split(groups, y, (0.7, 0.15, 0.15))
    assert len(set(groups[split.test])) == 15 and len(set(groups[split.train])) == 70


def test_grouped_split_errors():
    with pytest.raises(ValueError, match="two simulation models"):
        grouped_split(np.array(["a", "a", "b", "c"]), np.array([0, 1, 0, 0]))
    with pytest.raises(ValueError, match="distinct galaxies"):
        grouped_split(np.array(["a", "b", "c", "d"]), np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="sum"):
        grouped_split(np.array(["a"]), np.array([0]), (0.5, 0.5, 0.5))


def test_balanced_weights_equalise_class_totals():
    y = np.array([0] * 90 + [1] * 10)
    w = balanced_class_weights(y)
    assert w[y == 0].sum() == pytest.approx(w[y == 1].sum())
    assert w.mean() == pytest.approx(1.0)
