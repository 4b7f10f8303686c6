import numpy as np
import pytest
from scipy.special import log_softmax

from simobs.comparison.posterior import (
    aggregate_log_bayes_factors, aggregate_log_posterior, bootstrap_aggregate, normalise_prior,
    posterior_model_probabilities,
)


def test_prior_reweighting_matches_bayes_rule():
    logits = np.log(np.array([[0.5, 0.5], [0.8, 0.2]]))
    post = posterior_model_probabilities(logits, prior=[0.2, 0.8])
    # p(M|x) ∝ pi(M) q(M|x): first row 0.2*0.5 : 0.8*0.5
    assert post[0] == pytest.approx([0.2, 0.8])
    assert post[1] == pytest.approx([0.16 / 0.32, 0.16 / 0.32])
    assert np.allclose(posterior_model_probabilities(logits), np.exp(logits))


def test_aggregate_sums_evidence_and_prior_enters_once():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 3))
    lq = log_softmax(logits, 1)
    bf = aggregate_log_bayes_factors(logits)
    assert bf[0, 1] == pytest.approx(lq[:, 0].sum() - lq[:, 1].sum())
    assert np.allclose(bf, -bf.T)
    prior = np.array([0.5, 0.25, 0.25])
    lp = aggregate_log_posterior(logits, prior)
    assert lp[0] - lp[1] == pytest.approx(bf[0, 1] + np.log(2.0))  # prior ratio once, not 50 times
    assert np.exp(lp).sum() == pytest.approx(1.0)


def test_weak_per_galaxy_evidence_accumulates():
    # each galaxy favours model 1 only slightly (55 %); 400 galaxies make it decisive
    logits = np.tile(np.log([0.45, 0.55]), (400, 1))
    assert np.exp(aggregate_log_posterior(logits))[1] > 0.99


def test_bootstrap_intervals_cover_point_and_reproduce():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(200, 3)) + np.array([0.3, 0.0, 0.0])
    a = bootstrap_aggregate(logits, n_bootstrap=200, seed=5)
    b = bootstrap_aggregate(logits, n_bootstrap=200, seed=5)
    assert np.array_equal(a.log_bayes_factor_samples, b.log_bayes_factor_samples)
    t = a.bayes_factor_table(["a", "b", "c"], interval=0.95)
    assert len(t) == 3
    assert np.all(t["log_bayes_factor_lo"] <= t["log_bayes_factor"]) and np.all(t["log_bayes_factor"] <= t["log_bayes_factor_hi"])
    assert np.all(t["log_bayes_factor_sd"] > 0)
    p = a.posterior_table(["a", "b", "c"])
    assert p["posterior"].sum() == pytest.approx(1.0)


def test_prior_errors():
    with pytest.raises(ValueError, match="one prior weight per simulation"):
        normalise_prior([1, 2], 3)
    with pytest.raises(ValueError, match="> 0"):
        normalise_prior([1, 0, 1], 3)
    with pytest.raises(ValueError, match="OOD check"):
        bootstrap_aggregate(np.zeros((0, 3)))
