"""The β schedule, t*(σ), the observation → state map and the coloured noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simobs.separation.sde import ColouredNoise, LinearBetaSchedule, observation_to_state


def test_t_star_inverts_the_noise_level() -> None:
    schedule = LinearBetaSchedule(0.1, 20.0)
    sigma = torch.tensor([0.0, 1e-4, 0.1, 1.0, 10.0, 100.0], dtype=torch.float64)
    t = schedule.t_star(sigma)
    assert t[0] == 0 and torch.all(torch.diff(t) > 0) and t[-1] <= 1
    torch.testing.assert_close(schedule.sigma(t), sigma, rtol=1e-9, atol=1e-12)
    # σ² = e^{B(t*)} − 1 ⇔ ᾱ(t*) = 1 / (1 + σ²)
    torch.testing.assert_close(schedule.alpha_bar(t), 1 / (1 + sigma**2))


def test_t_star_rejects_noise_beyond_the_schedule() -> None:
    with pytest.raises(ValueError, match="beta_max"):
        LinearBetaSchedule(0.1, 20.0).t_star(1e3)
    with pytest.raises(ValueError, match=">= 0"):
        LinearBetaSchedule().t_star(-1.0)


def test_observation_maps_to_vp_state() -> None:
    """y = x + σ c ⇒ z_{t*} = y / √(1+σ²) = √ᾱ x + √(1−ᾱ) c."""
    schedule = LinearBetaSchedule()
    x, c = torch.randn(2, 8, 8, dtype=torch.float64), torch.randn(2, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.5, 3.0], dtype=torch.float64)
    z, t = observation_to_state(x + sigma[:, None, None] * c, sigma, schedule)
    abar = schedule.alpha_bar(t)[:, None, None]
    torch.testing.assert_close(z, abar.sqrt() * x + (1 - abar).sqrt() * c)


def test_coloured_noise_has_the_requested_power() -> None:
    npix = 16
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(npix), np.fft.fftfreq(npix), indexing="ij"))
    power = np.zeros_like(k)
    power[k > 0] = k[k > 0] ** -2.0
    power /= power.mean()
    noise = ColouredNoise(power, dtype=torch.float64)
    draws = noise.sample((4000,), generator=torch.Generator().manual_seed(0)).numpy()
    emp = (np.abs(np.fft.fft2(draws, norm="ortho")) ** 2).mean(axis=0)
    keep = power > 0
    ratio = emp[keep] / power[keep]
    assert abs(ratio.mean() - 1) < 0.01 and ratio.min() > 0.85 and ratio.max() < 1.15
    assert emp[0, 0] < 1e-20  # no monopole
    assert abs(draws.var() - 1) < 0.05  # mean(P) = 1 ⇒ unit pixel variance
