"""The exact per-mode discretisation error of the sampler, and the default steps chosen from it."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from simobs.separation.discretisation import gaussian_sampler_moments
from simobs.separation.fields import gaussian_random_field, power_law_power_2d
from simobs.separation.sample import sample_posterior, separate_observations
from simobs.separation.sde import ColouredNoise, LinearBetaSchedule
from simobs.separation.spectra import cmb_power_2d
from simobs.separation.wiener import GaussianNoisePredictor

from .conftest import cmb_like_power


@pytest.mark.parametrize("method", ["euler_maruyama", "heun"])
def test_moments_are_those_of_the_sampler(method: str) -> None:
    """Few coarse steps (a large bias) so that the comparison can fail: the recursion is the sampler."""
    npix, sigma, n_steps = 16, 2.0, 3
    dust_power, cmb_power = power_law_power_2d(npix, -2.5), cmb_like_power(npix)
    schedule = LinearBetaSchedule()
    y = gaussian_random_field(dust_power + sigma**2 * cmb_power, 1, np.random.default_rng(0))
    predictor = GaussianNoisePredictor(dust_power, cmb_power, schedule)
    samples = sample_posterior(predictor, torch.as_tensor(np.repeat(y, 4000, axis=0)), sigma, schedule=schedule,
                               noise=ColouredNoise(cmb_power, dtype=torch.float64), method=method, n_steps=n_steps,
                               generator=torch.Generator().manual_seed(1)).numpy()
    moments = gaussian_sampler_moments(dust_power, cmb_power, sigma, schedule, method=method, n_steps=n_steps)
    expected_mean = np.fft.ifft2(np.fft.fft2(y[0], norm="ortho") * moments.gain, norm="ortho").real
    np.testing.assert_allclose(samples.mean(axis=0), expected_mean, atol=4 * np.sqrt(moments.variance.mean() / 4000))
    spec = np.fft.fft2(samples - samples.mean(axis=0), norm="ortho")
    emp = (np.abs(spec) ** 2).mean(axis=0)
    keep = cmb_power > 0
    ratio = emp[keep] / moments.variance[keep]
    assert abs(ratio.mean() - 1) < 0.01 and 0.85 < ratio.min() and ratio.max() < 1.15
    # ... and the bias it reports at these steps is real and large.
    assert np.max(np.abs(moments.variance[keep] / moments.exact_variance[keep] - 1)) > 0.05


def test_default_steps_are_accurate_at_the_demo_setting() -> None:
    """Demo grid (32², 16' pixels, camb CMB, dust k^-2.5), largest σ 1.5: default < 1 % per mode, old default ~7 %."""
    cmb_power, _, _ = cmb_power_2d(32, 16.0)
    dust_power = power_law_power_2d(32, -2.5)
    defaults = inspect.signature(separate_observations).parameters
    keep = cmb_power > 0

    def worst(method: str, n_steps: int) -> float:
        m = gaussian_sampler_moments(dust_power, cmb_power, 1.5, LinearBetaSchedule(), method=method, n_steps=n_steps)
        return max(np.max(np.abs(m.gain[keep] / m.exact_gain[keep] - 1)),
                   np.max(np.abs(m.variance[keep] / m.exact_variance[keep] - 1)),
                   np.max(np.abs(m.sample_power[keep] / m.exact_power[keep] - 1)))

    assert worst(defaults["method"].default, defaults["n_steps"].default) < 0.01
    assert worst("euler_maruyama", 24) > 0.05  # the previous default
    with pytest.raises(ValueError, match="method"):
        gaussian_sampler_moments(dust_power, cmb_power, 1.0, LinearBetaSchedule(), method="tweedie")
