"""Wiener baseline, power estimation and the separation metrics."""

from __future__ import annotations

import numpy as np
import pytest

from simobs.separation.fields import gaussian_random_field, power_law_power_2d
from simobs.separation.metrics import (
    binned_power_spectrum,
    cross_correlation,
    interval_coverage,
    k_bin_edges,
    mse,
    power_relative_error,
    power_relative_error_stderr,
)
from simobs.separation.wiener import estimate_power_2d, wiener_filter, wiener_posterior_variance


def test_estimate_power_recovers_a_known_spectrum() -> None:
    power = power_law_power_2d(16, -2.0)
    maps = 0.7 + gaussian_random_field(power, 4000, np.random.default_rng(0))
    mean, est = estimate_power_2d(maps, chunk=512)
    assert abs(mean - 0.7) < 0.01
    keep = power > 0
    assert abs((est[keep] / power[keep]).mean() - 1) < 0.01


def test_wiener_filter_is_the_gaussian_posterior(spectra16) -> None:
    dust_power, cmb_power = spectra16
    rng = np.random.default_rng(1)
    n, sigma = 2000, 1.5
    x = gaussian_random_field(dust_power, n, rng)
    y = x + sigma * gaussian_random_field(cmb_power, n, rng)
    est = wiener_filter(y, sigma, dust_power, cmb_power)
    _, pixel_var = wiener_posterior_variance(sigma, dust_power, cmb_power)
    # Its error variance is the posterior variance, smaller than the prior's and than y's.
    assert abs(mse(est, x) / pixel_var[0] - 1) < 0.03
    assert mse(est, x) < min(mse(y, x), mse(np.zeros_like(x), x))
    # Errors are uncorrelated with the estimate (orthogonality of the best linear estimator).
    assert abs(np.mean((est - x) * est)) < 0.02 * np.mean(est**2)


def test_wiener_limits(spectra16) -> None:
    dust_power, cmb_power = spectra16
    y = gaussian_random_field(dust_power, 2, np.random.default_rng(2))
    np.testing.assert_allclose(wiener_filter(y, 0.0, dust_power, cmb_power), y, atol=1e-12)
    assert np.abs(wiener_filter(y, 1e6, dust_power, cmb_power)).max() < 1e-3 * np.abs(y).max()


def test_binned_power_of_white_noise_is_flat() -> None:
    maps = np.random.default_rng(3).standard_normal((500, 32, 32))
    k, p = binned_power_spectrum(maps, 8)
    assert p.shape == (500, 8) and np.allclose(k, 0.5 * (k_bin_edges(8)[1:] + k_bin_edges(8)[:-1]))
    assert np.all(np.abs(p.mean(axis=0) - 1) < 0.05)


def test_cross_correlation_and_relative_error() -> None:
    rng = np.random.default_rng(4)
    truth = rng.standard_normal((50, 16, 16))
    _, r_same = cross_correlation(2.0 * truth, truth, 4)
    np.testing.assert_allclose(r_same, 1.0)
    _, r_noisy = cross_correlation(truth + rng.standard_normal(truth.shape), truth, 4)
    assert np.all(np.abs(r_noisy - 1 / np.sqrt(2)) < 0.05)
    _, p = binned_power_spectrum(truth, 4)
    np.testing.assert_allclose(power_relative_error(1.1 * p, p), 0.1)


def test_power_error_stderr_matches_the_scatter_of_independent_test_sets() -> None:
    # An estimate that is the truth plus an independent draw of the same field: the
    # error is zero in expectation, and the reported standard error must match how
    # much the relative error actually scatters between independent test sets.
    rng = np.random.default_rng(6)
    power = power_law_power_2d(16, -2.5)
    errors, stderrs = [], []
    for _ in range(200):
        _, p_true = binned_power_spectrum(gaussian_random_field(power, 20, rng), 4)
        _, p_est = binned_power_spectrum(gaussian_random_field(power, 20, rng), 4)
        errors.append(power_relative_error(p_est, p_true))
        stderrs.append(power_relative_error_stderr(p_est, p_true))
    scatter, typical = np.std(errors, axis=0), np.median(stderrs, axis=0)
    assert np.all(np.abs(np.mean(errors, axis=0)) < 3 * scatter / np.sqrt(200))
    np.testing.assert_allclose(typical, scatter, rtol=0.2)
    assert typical[0] > 2 * typical[-1]  # the lowest bin has the fewest modes

    _, p = binned_power_spectrum(rng.standard_normal((5, 16, 16)), 4)
    np.testing.assert_allclose(power_relative_error_stderr(p + 1.0, p), 0.0, atol=1e-12)  # a constant offset
    assert np.all(np.isnan(power_relative_error_stderr(p[:1], p[:1])))
    with pytest.raises(ValueError, match="equal shape"):
        power_relative_error_stderr(p, p[:2])


def test_interval_coverage() -> None:
    truth = np.random.default_rng(5).standard_normal(100000)
    assert abs(interval_coverage(truth, -np.ones_like(truth), np.ones_like(truth)) - 0.6827) < 0.01
    assert interval_coverage(truth, truth + 1, truth + 2) == 0.0
