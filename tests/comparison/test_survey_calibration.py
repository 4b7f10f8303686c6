"""Survey-level calibration on exact posteriors: the true model wins at survey scale, the
bootstrap intervals cover at their nominal rate for independent galaxies, and mixtures
of two models are called with overconfidence (no single model is right)."""

import numpy as np
import pytest

from simobs.comparison.survey_calibration import survey_calibration


def _held_out(n_gal=300, n_proj=1, seed=0):
    rng = np.random.default_rng(seed)
    mu = np.array([0.0, 0.5, 1.0])
    y = np.repeat(np.arange(3), n_gal * n_proj)
    centre = np.repeat(mu[np.repeat(np.arange(3), n_gal)] + rng.normal(size=3 * n_gal), n_proj)
    x = centre  # projections of a galaxy identical: the most correlated case
    z = -0.5 * (x[:, None] - mu[None]) ** 2 / 1.0
    gal = np.repeat([f"{k}/{i}" for k in range(3) for i in range(n_gal)], n_proj)
    return z, y, gal


def test_exact_posteriors_are_calibrated_at_survey_scale():
    z, y, g = _held_out()
    t = survey_calibration(z, y, g, ["a", "b", "c"], survey_size=60, n_surveys=200, n_bootstrap=100, seed=1)
    pure = t[t.survey_of.isin(["a", "b", "c"])]
    assert (pure.win_rate > 0.7).all()
    assert float(t.loc[t.survey_of == "all", "aggregate_ece"].iloc[0]) < 0.08
    # one image per galaxy: the bootstrap over galaxies is the right width
    assert pure.bootstrap_coverage.between(0.55, 0.8).all(), pure.bootstrap_coverage.tolist()
    assert np.allclose(pure.log_bf_sd_bootstrap / pure.log_bf_sd_across_surveys, 1.0, atol=0.25)
    mix = t[t.survey_of.str.contains("\\+")]
    assert len(mix) == 3 and (mix.overconfident_rate >= 0).all()


def test_survey_calibration_needs_every_model():
    z, y, g = _held_out(20)
    with pytest.raises(ValueError, match="no held-out images"):
        survey_calibration(z[y != 2], y[y != 2], g[y != 2], ["a", "b", "c"], 10, 5, 5)
