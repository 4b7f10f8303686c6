"""Gibbs diffusion's parts: the Fourier likelihood is the pixel-space Gaussian, and HMC on the closed-form
posterior p(φ, σ | y) of Gaussian dust (y ~ N(0, D + σ² Σ_φ)) matches quadrature.

(The whole Gibbs chain against that posterior is not in the suite yet: in this family its
chains mix slowly in the damping parameter, split R-hat 1.17 after 250 iterations from
exact-posterior starts; see issue #15's notes.)

The CMB family here is a smooth synthetic one (a power law with a damping scale: two
parameters), so the test needs no camb; the sampler only sees ``phi -> Σ_φ``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from simobs.separation.fields import gaussian_random_field
from simobs.separation.gibbs import (
    gaussian_marginal_log_likelihood,
    residual_log_likelihood,
    sample_parameters,
)
from simobs.separation.mcmc import effective_sample_size, split_rhat

NPIX = 16
LOWER, UPPER = np.array([1.0, 0.1, 0.3]), np.array([3.0, 0.6, 3.0])
TRUTH = np.array([2.0, 0.3, 1.0])
# Dust below the CMB on most scales: the regime where the map informs the CMB parameters
# (and where the Gibbs chain mixes in tens of iterations, as the paper reports).
DUST_AMPLITUDE = 0.1


def _k(npix: int) -> np.ndarray:
    f = np.fft.fftfreq(npix)
    return np.hypot(f[:, None], f[None, :])


def _family(npix: int):
    kh = torch.as_tensor(_k(npix)[:, : npix // 2 + 1])
    safe = torch.where(kh > 0, kh, torch.ones_like(kh))

    def spectrum(phi: torch.Tensor) -> torch.Tensor:
        a, b = phi[:, 0, None, None], phi[:, 1, None, None]
        p = (safe / 0.1) ** (-a) * torch.exp(-((safe / b) ** 2)) / 10.0
        return torch.where(kh > 0, p, torch.zeros_like(p))

    return spectrum


def _full(half: np.ndarray, npix: int) -> np.ndarray:
    """Full FFT grid from the rfft half of a real-symmetric power."""
    full = np.zeros((npix, npix))
    full[:, : npix // 2 + 1] = half
    ky = (-np.arange(npix)) % npix
    for kx in range(npix // 2 + 1, npix):
        full[:, kx] = half[ky, npix - kx]
    return full


def _dust_power(npix: int) -> np.ndarray:
    k = _k(npix)
    return DUST_AMPLITUDE * np.where(k > 0, (np.where(k > 0, k, 1.0) / 0.1) ** (-2.5), 0.0)


def _pixel_covariance(power_full: np.ndarray) -> np.ndarray:
    n = power_full.shape[0]
    eye = np.eye(n * n).reshape(n * n, n, n)
    # columns: C e_j = ifft(P * fft(e_j)) (orthonormal FFT)
    return np.real(np.fft.ifft2(np.fft.fft2(eye, norm="ortho") * power_full, norm="ortho")).reshape(n * n, n * n)


def test_fourier_likelihood_equals_the_pixel_space_gaussian() -> None:
    npix = 6
    rng = np.random.default_rng(0)
    k = _k(npix)
    p1, p2 = 1.0 / (0.05 + k**2), np.exp(-k / 0.2) + 0.1 * (k < 0.3)  # positive everywhere, DC included
    r = rng.normal(size=(1, npix, npix))
    got, ref = [], []
    for p, s in ((p1, 0.7), (p2, 1.9)):
        half = torch.as_tensor(p[:, : npix // 2 + 1])[None]
        got.append(float(residual_log_likelihood(torch.as_tensor(r), torch.tensor([s]), half)[0]))
        ref.append(multivariate_normal(cov=s**2 * _pixel_covariance(p)).logpdf(r.ravel()))
    # equal up to the constant -N/2 log 2π, which cancels in differences
    assert got[0] - got[1] == pytest.approx(ref[0] - ref[1], rel=1e-6, abs=1e-6)
    assert got[0] - ref[0] == pytest.approx(0.5 * npix**2 * np.log(2 * np.pi), rel=1e-6)
    d = 0.3 * p1
    marg = gaussian_marginal_log_likelihood(torch.as_tensor(r), torch.tensor([0.7]),
                                            torch.as_tensor(p2[:, :4])[None], torch.as_tensor(d[:, :4])[None])
    ref_m = multivariate_normal(cov=_pixel_covariance(d + 0.49 * p2)).logpdf(r.ravel())
    assert float(marg[0]) - ref_m == pytest.approx(0.5 * npix**2 * np.log(2 * np.pi), rel=1e-6)


def _observation(seed: int = 3):
    rng = np.random.default_rng(seed)
    spectrum = _family(NPIX)
    cmb_half = spectrum(torch.as_tensor(TRUTH[None, :2]))[0].numpy()
    x = gaussian_random_field(_dust_power(NPIX), 1, rng)
    c = gaussian_random_field(_full(cmb_half, NPIX), 1, rng)
    return x + TRUTH[2] * c, spectrum


def _exact_moments(y: np.ndarray, spectrum, n: int = 48) -> tuple[np.ndarray, np.ndarray]:
    axes = [np.linspace(LOWER[i], UPPER[i], n) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    th = torch.as_tensor(grid)
    d_half = torch.as_tensor(_dust_power(NPIX)[:, : NPIX // 2 + 1])
    ll = gaussian_marginal_log_likelihood(torch.as_tensor(y).expand(len(th), NPIX, NPIX), th[:, 2],
                                          spectrum(th[:, :2]), d_half).numpy()
    w = np.exp(ll - ll.max())
    w /= w.sum()
    mean = (grid * w[:, None]).sum(0)
    return mean, np.sqrt(((grid - mean) ** 2 * w[:, None]).sum(0))


def test_hmc_on_the_closed_form_marginal_matches_quadrature() -> None:
    """The blind stage's Gaussian-dust baseline: HMC on the exact marginal likelihood."""
    y, spectrum = _observation()
    mean, sd = _exact_moments(y, spectrum)
    d_half = torch.as_tensor(_dust_power(NPIX)[:, : NPIX // 2 + 1])
    yt = torch.as_tensor(y)
    ll = lambda th: gaussian_marginal_log_likelihood(yt.expand(len(th), NPIX, NPIX), th[:, 2],  # noqa: E731
                                                     spectrum(th[:, :2]), d_half)
    draws = sample_parameters(ll, n_rows=1, lower=LOWER, upper=UPPER, n_chains=8, n_draws=400, seed=1)[0]
    ess = np.array([effective_sample_size(draws[:, :, j]) for j in range(3)])
    assert np.all(ess > 400), ess
    assert max(split_rhat(draws[:, :, j]) for j in range(3)) < 1.02
    flat = draws.reshape(-1, 3)
    assert np.all(np.abs(flat.mean(0) - mean) < 4 * sd / np.sqrt(ess)), (flat.mean(0), mean, sd)
    np.testing.assert_allclose(flat.std(0), sd, rtol=0.12)
