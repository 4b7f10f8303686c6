"""The float32 k-NN score (issue 16's fast path) flags the same galaxies as an exact float64 computation."""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

from simobs.misspecification.scores import KnnReference


def _exact_float64_scores(ref: np.ndarray, queries: np.ndarray, k: int, n_comp: int, exclude_self: bool) -> np.ndarray:
    """The definition, computed the slow way: float64 standardisation, SVD PCA, all pairwise distances."""
    ref64 = ref.astype(np.float64)
    mean, scale = ref64.mean(0), ref64.std(0)
    scale[scale < 1e-8] = 1.0
    z = (ref64 - mean) / scale
    _, _, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
    comps = vt[:n_comp].T
    d = cdist(((queries.astype(np.float64) - mean) / scale) @ comps, z @ comps)
    d.sort(axis=1)
    return d[:, 1:k + 1].mean(1) if exclude_self else d[:, :k].mean(1)


def _clustered_embeddings(rng: np.random.Generator, n: int, centres: np.ndarray) -> np.ndarray:
    """Galaxy-like embeddings: a mixture of anisotropic clusters in 64 dims, float32, one dead latent."""
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 1, (n, centres.shape[1])) * np.linspace(0.2, 2.0, 64)
    x[:, 5] = 0.25  # a dead latent: constant over the reference
    return x.astype(np.float32)


def test_float32_knn_scores_and_flags_match_the_exact_float64_computation() -> None:
    rng = np.random.default_rng(16)
    centres = rng.normal(0, 4, (6, 64))
    ref = _clustered_embeddings(rng, 3000, centres)
    held = _clustered_embeddings(rng, 800, centres)
    observed = np.concatenate([_clustered_embeddings(rng, 1500, centres),
                               rng.normal(0, 4, (500, 64)).astype(np.float32) + 6.0])  # a quarter far from all
    knn = KnnReference.fit(ref, k=10, n_components=32)
    assert knn.points.dtype == np.float32 and knn.points.shape == (3000, 32)

    exact_held = _exact_float64_scores(ref, held, 10, 32, exclude_self=False)
    exact_obs = _exact_float64_scores(ref, observed, 10, 32, exclude_self=False)
    fast_held, fast_obs = knn.score(held, batch=333), knn.score(observed, batch=333)
    np.testing.assert_allclose(fast_obs, exact_obs, rtol=2e-5)
    np.testing.assert_allclose(fast_held, exact_held, rtol=2e-5)
    np.testing.assert_allclose(knn.score(ref[:400], exclude_self=True),
                               _exact_float64_scores(ref, ref[:400], 10, 32, exclude_self=True), rtol=2e-5)

    thr_exact, thr_fast = np.quantile(exact_held, 0.95), np.quantile(fast_held, 0.95)
    flagged_exact, flagged_fast = exact_obs > thr_exact, fast_obs > thr_fast
    assert 0.2 < flagged_exact.mean() < 0.6  # the check has flagged and unflagged galaxies to disagree on
    np.testing.assert_array_equal(flagged_fast, flagged_exact)


def test_knn_fit_rejects_too_few_reference_points() -> None:
    import pytest

    with pytest.raises(ValueError, match="more than k=10"):
        KnnReference.fit(np.zeros((10, 4), np.float32), k=10)
