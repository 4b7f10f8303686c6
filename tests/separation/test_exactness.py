"""Exactness of the sampler with the closed-form score of Gaussian dust (no training).

With Gaussian dust of known power D, the optimal noise predictor is linear and known
(:class:`GaussianNoisePredictor`), and the posterior p(x | y) is the Wiener posterior.
Sampling it through the reverse SDE from t*(σ) must reproduce the Wiener mean and the
per-mode variance within Monte-Carlo error.  This pins down the t* mapping, the
colouring of the noise and the reverse-SDE discretisation.

Tolerances: the mean by a χ² test at 1e-4; the per-mode variance ratio averaged over
modes within 2 % (Monte-Carlo error ≈ 0.4 % at 1024 samples; the exact per-mode
discretisation bias at the default Heun steps is below 1 %, Euler–Maruyama at 100
steps below 1 % for these spectra, :mod:`simobs.separation.discretisation`), each mode
within 20 %.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from simobs.separation.fields import gaussian_random_field
from simobs.separation.sample import sample_posterior, separate_observations
from simobs.separation.sde import ColouredNoise, LinearBetaSchedule
from simobs.separation.wiener import GaussianNoisePredictor, wiener_filter, wiener_posterior_variance

N_SAMPLES = 1024
N_STEPS = 100
DEFAULT_STEPS = int(inspect.signature(separate_observations).parameters["n_steps"].default)
DEFAULT_METHOD = inspect.signature(separate_observations).parameters["method"].default


def _independent_modes(npix: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the rfft modes that are independent: (complex modes, real self-conjugate modes)."""
    ky = np.arange(npix)[:, None]
    kx = np.arange(npix // 2 + 1)[None, :]
    real = ((kx == 0) | (kx == npix // 2)) & ((ky == 0) | (ky == npix // 2))
    # In the kx = 0 and kx = Nyquist columns, ky and -ky are conjugate: keep ky < npix/2 only.
    duplicate = ((kx == 0) | (kx == npix // 2)) & (ky > npix // 2)
    complex_ = ~real & ~duplicate
    return np.broadcast_to(complex_, (npix, npix // 2 + 1)), np.broadcast_to(real, (npix, npix // 2 + 1))


def _run(spectra, sigma: float, *, sampler_sigma: float | None = None, seed: int = 0, method: str = "euler_maruyama",
         n_steps: int = N_STEPS, dust_mean: float = 0.0, predictor_power: np.ndarray | None = None):
    dust_power, cmb_power = spectra
    rng = np.random.default_rng(seed)
    x = dust_mean + gaussian_random_field(dust_power, 1, rng)
    y = x + sigma * gaussian_random_field(cmb_power, 1, rng)
    schedule = LinearBetaSchedule()
    predictor = GaussianNoisePredictor(dust_power if predictor_power is None else predictor_power, cmb_power,
                                       schedule, dust_mean)
    noise = ColouredNoise(cmb_power, dtype=torch.float64)
    ys = torch.as_tensor(np.repeat(y, N_SAMPLES, axis=0))
    gen = torch.Generator().manual_seed(seed)
    samples = sample_posterior(predictor, ys, sampler_sigma or sigma, schedule=schedule, noise=noise,
                               n_steps=n_steps, generator=gen, method=method).numpy()
    mean = wiener_filter(y, sigma, dust_power, cmb_power, dust_mean)[0]
    mode_var = wiener_posterior_variance(sigma, dust_power, cmb_power)[0][0][:, : dust_power.shape[0] // 2 + 1]
    return samples, mean, mode_var


def _anisotropic_spectra(npix: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Dust stretched along axis 0 and a CMB-like power stretched along axis 1: transposing either shows."""
    f = np.fft.fftfreq(npix)
    k_dust = np.hypot(3.0 * f[:, None], f[None, :])
    dust = np.where(k_dust > 0, k_dust, 1.0) ** -2.5 * (k_dust > 0)
    k_cmb = np.hypot(f[:, None], 2.5 * f[None, :])
    cmb = np.where(k_cmb > 0, np.exp(-((k_cmb / 0.3) ** 2)) / (k_cmb + 0.05), 0.0)
    return dust / dust.mean(), cmb / cmb.mean()


def _checks(samples: np.ndarray, mean: np.ndarray, mode_var: np.ndarray) -> tuple[bool, float, float, float]:
    """(mean passes the χ² test, mean variance ratio, min and max per-mode ratio)."""
    stat, dof = _mean_statistic(samples, mean, mode_var)
    spec = np.fft.rfft2(samples - samples.mean(axis=0), norm="ortho")
    emp_var = (np.abs(spec) ** 2).sum(axis=0) / (samples.shape[0] - 1)
    complex_, _ = _independent_modes(mean.shape[0])
    keep = complex_ & (mode_var > 1e-12 * mode_var.max())
    ratio = emp_var[keep] / mode_var[keep]
    return bool(chi2.ppf(1e-4, dof) < stat < chi2.ppf(1 - 1e-4, dof)), ratio.mean(), ratio.min(), ratio.max()


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


@pytest.mark.parametrize("method,n_steps", [("euler_maruyama", N_STEPS), (DEFAULT_METHOD, DEFAULT_STEPS)])
@pytest.mark.parametrize("sigma", [0.3, 1.0, 3.0])
def test_reverse_sde_reproduces_wiener_posterior(spectra16, sigma: float, method: str, n_steps: int) -> None:
    samples, mean, mode_var = _run(spectra16, sigma, method=method, n_steps=n_steps)
    mean_ok, ratio, low, high = _checks(samples, mean, mode_var)
    assert mean_ok
    assert abs(ratio - 1) < 0.02, ratio
    assert low > 0.8 and high < 1.2, (low, high)


@pytest.mark.parametrize("method,n_steps", [("euler_maruyama", N_STEPS), (DEFAULT_METHOD, DEFAULT_STEPS)])
def test_anisotropic_spectra_a_mean_and_mixed_sigmas_in_one_batch(method: str, n_steps: int) -> None:
    """Anisotropic D and C (an axis-order slip in the half-plane would show), μ ≠ 0, one σ per row."""
    dust_power, cmb_power = _anisotropic_spectra()
    rng = np.random.default_rng(11)
    sigmas, mu = np.array([0.4, 1.2, 2.5]), 0.7
    x = mu + gaussian_random_field(dust_power, 3, rng)
    y = x + sigmas[:, None, None] * gaussian_random_field(cmb_power, 3, rng)
    schedule = LinearBetaSchedule()
    predictor = GaussianNoisePredictor(dust_power, cmb_power, schedule, mu)
    rows = np.repeat(np.arange(3), N_SAMPLES)
    samples = sample_posterior(predictor, torch.as_tensor(y[rows]), torch.as_tensor(sigmas[rows]), schedule=schedule,
                               noise=ColouredNoise(cmb_power, dtype=torch.float64), method=method, n_steps=n_steps,
                               generator=torch.Generator().manual_seed(2)).numpy()
    mode_vars, _ = wiener_posterior_variance(sigmas, dust_power, cmb_power)
    means = wiener_filter(y, sigmas, dust_power, cmb_power, mu)
    for i in range(3):
        mean_ok, ratio, low, high = _checks(samples[rows == i], means[i], mode_vars[i][:, :9])
        assert mean_ok and abs(ratio - 1) < 0.02 and low > 0.8 and high < 1.2, (i, mean_ok, ratio, low, high)
        assert abs(samples[rows == i].mean() - means[i].mean()) < 1e-6  # the mean passes through exactly


def test_exactness_check_detects_transposed_spectra() -> None:
    """Negative control for the test above: the predictor built with Dᵀ is caught."""
    spectra = _anisotropic_spectra()
    samples, mean, mode_var = _run(spectra, 1.2, predictor_power=spectra[0].T.copy())
    mean_ok, ratio, low, high = _checks(samples, mean, mode_var)
    assert not (mean_ok and abs(ratio - 1) < 0.02 and low > 0.8 and high < 1.2)


def test_exactness_check_detects_a_wrong_t_star(spectra16) -> None:
    """Negative control: a 10 % error in σ (hence in t* and in the state scaling) is caught."""
    mean_ok, ratio, _, _ = _checks(*_run(spectra16, 1.0, sampler_sigma=1.1))
    assert not (mean_ok and abs(ratio - 1) < 0.02)


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
