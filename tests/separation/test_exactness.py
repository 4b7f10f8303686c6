"""Exactness of the sampler with the closed-form score of Gaussian dust (no training).

With Gaussian dust of known power D, the optimal noise predictor is linear and known
(:class:`GaussianNoisePredictor`), and the posterior p(x | y) is the Wiener posterior.
Sampling it through the reverse SDE from t*(σ) must reproduce the Wiener mean and the
per-mode variance within Monte-Carlo error.  This pins down the t* mapping, the
colouring of the noise and the reverse-SDE discretisation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from simobs.separation.fields import gaussian_random_field
from simobs.separation.sample import sample_posterior
from simobs.separation.sde import ColouredNoise, LinearBetaSchedule
from simobs.separation.wiener import GaussianNoisePredictor, wiener_filter, wiener_posterior_variance

N_SAMPLES = 1024
N_STEPS = 100


def _independent_modes(npix: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the rfft modes that are independent: (complex modes, real self-conjugate modes)."""
    ky = np.arange(npix)[:, None]
    kx = np.arange(npix // 2 + 1)[None, :]
    real = ((kx == 0) | (kx == npix // 2)) & ((ky == 0) | (ky == npix // 2))
    # In the kx = 0 and kx = Nyquist columns, ky and -ky are conjugate: keep ky < npix/2 only.
    duplicate = ((kx == 0) | (kx == npix // 2)) & (ky > npix // 2)
    complex_ = ~real & ~duplicate
    return np.broadcast_to(complex_, (npix, npix // 2 + 1)), np.broadcast_to(real, (npix, npix // 2 + 1))


def _run(spectra, sigma: float, *, sampler_sigma: float | None = None, seed: int = 0):
    dust_power, cmb_power = spectra
    rng = np.random.default_rng(seed)
    x = gaussian_random_field(dust_power, 1, rng)
    y = x + sigma * gaussian_random_field(cmb_power, 1, rng)
    schedule = LinearBetaSchedule()
    predictor = GaussianNoisePredictor(dust_power, cmb_power, schedule)
    noise = ColouredNoise(cmb_power, dtype=torch.float64)
    ys = torch.as_tensor(np.repeat(y, N_SAMPLES, axis=0))
    gen = torch.Generator().manual_seed(seed)
    samples = sample_posterior(predictor, ys, sampler_sigma or sigma, schedule=schedule, noise=noise,
                               n_steps=N_STEPS, generator=gen).numpy()
    mean = wiener_filter(y, sigma, dust_power, cmb_power)[0]
    mode_var = wiener_posterior_variance(sigma, dust_power, cmb_power)[0][0][:, : dust_power.shape[0] // 2 + 1]
    return samples, mean, mode_var


def _mean_statistic(samples: np.ndarray, mean: np.ndarray, mode_var: np.ndarray) -> tuple[float, int]:
    """χ² of the sample mean's deviation from the Wiener mean over independent Fourier modes."""
    npix = mean.shape[0]
    err = np.fft.rfft2(samples.mean(axis=0) - mean, norm="ortho")
    complex_, real = _independent_modes(npix)
    keep = mode_var > 1e-12 * mode_var.max()
    scale = mode_var / N_SAMPLES
    stat = np.sum((np.abs(err[complex_ & keep]) ** 2) / (scale[complex_ & keep] / 2))
    stat += np.sum((err[real & keep].real ** 2) / scale[real & keep])
    dof = 2 * int((complex_ & keep).sum()) + int((real & keep).sum())
    return float(stat), dof


@pytest.mark.parametrize("sigma", [0.3, 1.0, 3.0])
def test_reverse_sde_reproduces_wiener_posterior(spectra16, sigma: float) -> None:
    samples, mean, mode_var = _run(spectra16, sigma)
    stat, dof = _mean_statistic(samples, mean, mode_var)
    # Mean: χ² with `dof` degrees of freedom under exactness; 1e-4 two-sided bounds.
    assert chi2.ppf(1e-4, dof) < stat < chi2.ppf(1 - 1e-4, dof), (stat, dof)
    # Per-mode variance around the sample mean: each ratio has relative MC error √(1/S) ≈ 3 %.
    spec = np.fft.rfft2(samples - samples.mean(axis=0), norm="ortho")
    emp_var = (np.abs(spec) ** 2).sum(axis=0) / (N_SAMPLES - 1)
    complex_, _ = _independent_modes(mean.shape[0])
    keep = complex_ & (mode_var > 1e-12 * mode_var.max())
    ratio = emp_var[keep] / mode_var[keep]
    assert abs(ratio.mean() - 1) < 0.02, ratio.mean()
    assert ratio.min() > 0.8 and ratio.max() < 1.2, (ratio.min(), ratio.max())


def test_exactness_check_detects_a_wrong_t_star(spectra16) -> None:
    """Negative control: a 10 % error in σ (hence in t* and in the state scaling) is caught."""
    samples, mean, mode_var = _run(spectra16, 1.0, sampler_sigma=1.1)
    stat, dof = _mean_statistic(samples, mean, mode_var)
    spec = np.fft.rfft2(samples - samples.mean(axis=0), norm="ortho")
    emp_var = (np.abs(spec) ** 2).sum(axis=0) / (N_SAMPLES - 1)
    complex_, _ = _independent_modes(mean.shape[0])
    keep = complex_ & (mode_var > 1e-12 * mode_var.max())
    mean_ok = chi2.ppf(1e-4, dof) < stat < chi2.ppf(1 - 1e-4, dof)
    var_ok = abs((emp_var[keep] / mode_var[keep]).mean() - 1) < 0.02
    assert not (mean_ok and var_ok)


def test_tweedie_step_is_the_wiener_mean(spectra16) -> None:
    dust_power, cmb_power = spectra16
    rng = np.random.default_rng(3)
    sigma = np.array([0.2, 1.0, 5.0])
    y = gaussian_random_field(dust_power, 3, rng) + sigma[:, None, None] * gaussian_random_field(cmb_power, 3, rng)
    schedule = LinearBetaSchedule()
    predictor = GaussianNoisePredictor(dust_power, cmb_power, schedule)
    got = sample_posterior(predictor, torch.as_tensor(y), torch.as_tensor(sigma), schedule=schedule,
                           noise=ColouredNoise(cmb_power, dtype=torch.float64), method="tweedie").numpy()
    np.testing.assert_allclose(got, wiener_filter(y, sigma, dust_power, cmb_power), atol=1e-10)


def test_probability_flow_is_the_gaussian_transport_map(spectra16) -> None:
    """For Gaussian dust the PF-ODE maps z_t* to x by √(D / (ᾱD + (1−ᾱ)C)) per mode."""
    dust_power, cmb_power = spectra16
    rng = np.random.default_rng(4)
    sigma = 1.0
    y = gaussian_random_field(dust_power, 1, rng) + sigma * gaussian_random_field(cmb_power, 1, rng)
    schedule = LinearBetaSchedule()
    predictor = GaussianNoisePredictor(dust_power, cmb_power, schedule)
    got = sample_posterior(predictor, torch.as_tensor(y), sigma, schedule=schedule,
                           noise=ColouredNoise(cmb_power, dtype=torch.float64), method="probability_flow",
                           n_steps=400).numpy()
    abar = 1.0 / (1.0 + sigma**2)
    z = y * np.sqrt(abar)
    gain = np.sqrt(dust_power / (abar * dust_power + (1 - abar) * cmb_power + 1e-300))
    expected = np.fft.ifft2(np.fft.fft2(z, norm="ortho") * gain, norm="ortho").real
    np.testing.assert_allclose(got, expected, atol=2e-3 * expected.std())
