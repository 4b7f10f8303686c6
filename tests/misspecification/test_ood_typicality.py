import numpy as np
import pytest
from scipy.special import logsumexp

from simobs.misspecification.ood import (
    energy_score, flag_ood, flagged_fraction, max_softmax_score, ood_score, ood_threshold,
)
from simobs.misspecification.typicality import atypical_fraction, atypical_mask, typical_set_threshold


def test_energy_and_max_softmax_rank_confident_inputs_as_typical():
    confident = np.array([[8.0, 0.0, 0.0]])
    vague = np.array([[0.1, 0.0, 0.05]])
    assert energy_score(confident)[0] < energy_score(vague)[0]
    assert max_softmax_score(confident)[0] < max_softmax_score(vague)[0]
    assert energy_score(confident)[0] == pytest.approx(-logsumexp(confident))
    assert 0.0 <= max_softmax_score(vague)[0] <= 2 / 3
    assert np.array_equal(ood_score(vague, "energy"), energy_score(vague))
    with pytest.raises(ValueError, match="energy"):
        ood_score(vague, "entropy")


def test_threshold_gives_nominal_rate_on_in_distribution_scores():
    rng = np.random.default_rng(0)
    held_out, new = rng.normal(size=5000), rng.normal(size=20000)
    thr = ood_threshold(held_out, tpr=0.95)
    assert flagged_fraction(held_out, thr) <= 0.05
    assert flagged_fraction(new, thr) == pytest.approx(0.05, abs=0.01)
    assert flagged_fraction(new + 3.0, thr) > 0.5  # shifted = out of distribution
    assert flag_ood(np.array([thr, thr + 1e-9]), thr).tolist() == [False, True]
    with pytest.raises(ValueError, match="true-positive rate"):
        ood_threshold(held_out, tpr=1.5)


def test_typical_set_directions():
    rng = np.random.default_rng(1)
    obs = rng.gamma(4.0, 0.01, size=10000)
    thr = typical_set_threshold(obs, "recon_error", 0.99)
    assert atypical_fraction(obs, thr, "recon_error") == pytest.approx(0.01, abs=0.002)
    assert atypical_fraction(obs * 3, thr, "recon_error") > 0.5
    loss = obs * 100  # typicality_loss: lower = more typical, like the reconstruction error
    thr_e = typical_set_threshold(loss, "typicality_loss", 0.99)
    assert atypical_fraction(loss, thr_e, "typicality_loss") == pytest.approx(0.01, abs=0.002)
    assert atypical_fraction(loss + 10, thr_e, "typicality_loss") > 0.5
    with pytest.raises(ValueError, match="statistic"):
        typical_set_threshold(obs, "elbo")  # renamed: not a bound
    assert atypical_mask(np.array([np.nan]), thr, "recon_error")[0]  # a failed reconstruction is atypical
    with pytest.raises(ValueError, match="statistic"):
        typical_set_threshold(obs, "kl")


def test_weighted_threshold_matches_the_chosen_models_quantile():
    from simobs.misspecification.ood import ood_threshold

    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 4000), rng.normal(3, 1, 4000)
    scores = np.concatenate([a, b])
    only_a = ood_threshold(scores, 0.95, weights=np.r_[np.ones(4000), np.zeros(4000)])
    assert only_a == pytest.approx(np.quantile(a, 0.95), abs=0.05)
    pooled = ood_threshold(scores, 0.95)
    assert pooled > only_a + 1.0  # pooling with a noisier model moves the threshold a lot


def test_posterior_reference_concentrates_on_the_model_the_sample_favours():
    from simobs.misspecification.ood import reference_model_weights

    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1, (300, 3))
    logits[:, 1] += 0.3  # every galaxy mildly favours model 1
    w = reference_model_weights(logits, 3, "posterior")
    assert w.sum() == pytest.approx(1.0) and w[1] > 0.99
    np.testing.assert_allclose(reference_model_weights(logits, 3, "pooled"), [1 / 3] * 3)
    with pytest.raises(ValueError, match="unknown OOD reference"):
        reference_model_weights(logits, 3, "nearest")


def test_knn_distance_flags_points_far_from_every_reference_cluster():
    from simobs.misspecification.scores import KnnReference

    rng = np.random.default_rng(2)
    centres = rng.normal(0, 5, (4, 20))
    ref = np.concatenate([c + rng.normal(0, 1, (200, 20)) for c in centres])
    knn = KnnReference.fit(ref, k=5, n_components=10)
    inside = centres[1] + rng.normal(0, 1, (50, 20))
    outside = rng.normal(0, 5, (50, 20)) + 12.0
    thr = np.quantile(knn.score(ref, exclude_self=True), 0.95)
    assert (knn.score(inside) > thr).mean() < 0.2
    assert (knn.score(outside) > thr).mean() > 0.9
    # batched and unbatched agree
    np.testing.assert_allclose(knn.score(outside, batch=7), knn.score(outside, batch=4096), rtol=1e-5)


def test_gen_score_is_largest_for_flat_posteriors_and_nan_is_flagged():
    from simobs.misspecification.ood import flag_ood, gen_score, ood_threshold

    z = np.array([[10.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
    g = gen_score(z)
    assert g[0] < g[1] < g[2]  # confident < uncertain < flat
    p = np.full(3, 1 / 3)
    assert g[2] == pytest.approx(3 * (p[0] ** 0.1 * (1 - p[0]) ** 0.1))
    assert gen_score(z, n_top=1)[0] < gen_score(z)[0]
    assert flag_ood(np.array([0.1, np.nan, np.inf]), 0.5).tolist() == [False, True, True]
    with pytest.raises(ValueError, match="NaN or infinite"):
        ood_threshold(np.array([0.1, np.nan]), 0.95)
