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
    elbo = -obs * 100
    thr_e = typical_set_threshold(elbo, "elbo", 0.99)
    assert atypical_fraction(elbo, thr_e, "elbo") == pytest.approx(0.01, abs=0.002)
    assert atypical_fraction(elbo - 10, thr_e, "elbo") > 0.5
    assert atypical_mask(np.array([np.nan]), thr, "recon_error")[0]  # a failed reconstruction is atypical
    with pytest.raises(ValueError, match="statistic"):
        typical_set_threshold(obs, "kl")
