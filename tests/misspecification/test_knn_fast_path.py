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


# --------------------------------------------------------------------------- the IVF index (#16)
def _ivf_reference(ref: np.ndarray, n_groups: int, n_probe: int) -> KnnReference:
    knn = KnnReference.fit(ref, k=10, n_components=32, index="ivf", n_groups=n_groups, n_probe=n_probe)
    knn.min_work = 0  # serve every call through the index (the default waits for 10^9 pairs)
    return knn


def test_ivf_index_scores_and_flags_match_the_exact_score_on_clustered_embeddings() -> None:
    rng = np.random.default_rng(7)
    centres = rng.normal(0, 4, (12, 64))
    ref = _clustered_embeddings(rng, 6000, centres)
    held = _clustered_embeddings(rng, 1000, centres)
    observed = np.concatenate([_clustered_embeddings(rng, 3000, centres),
                               rng.normal(0, 4, (600, 64)).astype(np.float32) + 6.0])
    knn = _ivf_reference(ref, n_groups=48, n_probe=16)
    assert knn.index is not None and knn.index.offsets[-1] == 6000
    assert sorted(knn.index.order.tolist()) == list(range(6000))
    fast, exact = knn.score(observed), knn.score_exact(observed)
    check = knn.last_check
    assert check["method"] == "ivf" and not check["fell_back"], check
    assert check["n_checked"] == 2048
    # An index can only miss neighbours: never smaller, and here within 1 %, mostly exact.
    assert np.all(fast >= exact * (1 - 1e-6))
    np.testing.assert_allclose(fast, exact, rtol=1e-2)
    assert np.mean(fast == exact) > 0.9
    thr = np.quantile(knn.score_exact(held), 0.95)
    np.testing.assert_array_equal(fast > thr, exact > thr)
    # Scoring the reference itself: the point's own group is always probed.
    np.testing.assert_allclose(knn.score(ref[:500], exclude_self=True), knn.score_exact(ref[:500], exclude_self=True),
                               rtol=1e-2)


def test_ivf_index_falls_back_to_the_exact_score_when_its_check_fails(caplog) -> None:
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(3000, 64)).astype(np.float32)  # no clusters: one probed group of 64 misses most neighbours
    queries = rng.normal(size=(1000, 64)).astype(np.float32)
    knn = _ivf_reference(ref, n_groups=64, n_probe=1)
    with caplog.at_level("WARNING"):
        out = knn.score(queries)
    assert knn.last_check["fell_back"] and knn.last_check["max_rel_error"] > 0.01, knn.last_check
    np.testing.assert_array_equal(out, knn.score_exact(queries))
    assert "scoring all 1000 queries exactly" in caplog.text


def test_ivf_queries_with_fewer_than_k_candidates_are_scored_exactly() -> None:
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(400, 64)).astype(np.float32)
    knn = _ivf_reference(ref, n_groups=200, n_probe=2)  # ~2 points per group: 4 candidates for k = 10
    knn.tolerance = np.inf  # keep the index's result, whatever its error
    queries = rng.normal(size=(300, 64)).astype(np.float32)
    out = knn.score(queries)
    assert np.isfinite(out).all()
    assert np.all(out >= knn.score_exact(queries) * (1 - 1e-6))


def test_knn_index_choice(monkeypatch) -> None:
    import pytest

    from simobs.misspecification import scores

    rng = np.random.default_rng(1)
    ref = rng.normal(size=(600, 16)).astype(np.float32)
    assert KnnReference.fit(ref, k=5, n_components=8, index="auto").index is None
    monkeypatch.setattr(scores, "IVF_MIN_REFERENCE", 500)
    knn = KnnReference.fit(ref, k=5, n_components=8, index="auto", n_groups=8, n_probe=3)
    assert knn.index is not None and knn.index.n_probe == 3 and len(knn.index.centroids) == 8
    knn.score(ref[:50])  # 50 x 600 pairs: below min_work, exact
    assert knn.last_check == {"method": "exact"}
    assert KnnReference.fit(ref, k=5, index="exact").index is None
    with pytest.raises(ValueError, match="knn_index='faiss'"):
        KnnReference.fit(ref, k=5, index="faiss")


def test_ivf_flags_are_exact_with_the_threshold_even_where_the_index_errs() -> None:
    rng = np.random.default_rng(11)
    ref = rng.normal(size=(3000, 64)).astype(np.float32)
    queries = np.concatenate([rng.normal(size=(900, 64)), rng.normal(size=(100, 64)) * 1.6]).astype(np.float32)
    knn = _ivf_reference(ref, n_groups=64, n_probe=4)
    knn.tolerance = np.inf  # keep the index's result, whatever its error
    exact = knn.score_exact(queries)
    raw = knn.score(queries)
    thr = np.quantile(exact, 0.9)
    assert np.sum((raw > thr) != (exact > thr)) > 20  # the index alone would change flags
    out = knn.score(queries, threshold=thr)
    np.testing.assert_array_equal(out > thr, exact > thr)
    np.testing.assert_array_equal(out[exact > thr], exact[exact > thr])  # flagged scores are exact
    assert np.all(out >= exact * (1 - 1e-6))
    assert 0.1 <= knn.last_check["fraction_rescored"] < 1.0
