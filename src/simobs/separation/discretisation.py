r"""The sampler's discretisation error for Gaussian dust, computed exactly per Fourier mode.

With the closed-form predictor of Gaussian dust (:class:`~simobs.separation.wiener.GaussianNoisePredictor`)
every step of :func:`~simobs.separation.sample.sample_posterior` is linear and diagonal
in Fourier space: per mode, ``u ← M_k u + N_k √(e^{ΔB} − 1) Σ^{1/2} ξ`` for the centred
state ``u = z − √ᾱ μ``, with ``h(t) = C / (ᾱ D + (1 − ᾱ) C)`` and ``G = e^{ΔB/2}``:

* Euler–Maruyama: ``M = G − 2 (G − 1) h(t)``, ``N = 1``;
* Heun: ``M = G − (G − 1)(h(t) + h(t') M_Euler)``, ``N = 1 − (G − 1) h(t')`` (Euler on the last step).

So the sampler's mean gain on ``y`` and its variance follow from products over the
steps, without Monte Carlo, and can be compared with the exact Wiener posterior
(gain ``W = D / (D + σ² C)``, variance ``W σ² C``).  This is how the default
``separation.sampling`` (method, ``n_steps``) was chosen; the model-free baseline of
:func:`~simobs.separation.evaluate.evaluate_separation` shows the same error by sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from simobs.separation.sample import STOCHASTIC_METHODS, time_grid
from simobs.separation.sde import LinearBetaSchedule

__all__ = ["SamplerMoments", "gaussian_sampler_moments"]


@dataclass
class SamplerMoments:
    """Per-mode moments of the discretised sampler and of the exact posterior, shape ``(npix, npix)`` each.

    The sample power of mode k, averaged over observations ``y``, is
    ``gain² (D + σ² C) + variance`` (exact: ``D``).
    """

    gain: np.ndarray  #: mean of the samples = μ + gain · (y − μ), per mode
    variance: np.ndarray  #: variance of the samples given y
    exact_gain: np.ndarray  #: the Wiener gain D / (D + σ² C) (1 where C = 0)
    exact_variance: np.ndarray  #: the Wiener posterior variance
    sample_power: np.ndarray  #: E_y |x_k|² of the samples
    exact_power: np.ndarray  #: D


def gaussian_sampler_moments(
    dust_power: np.ndarray, cmb_power: np.ndarray, sigma: float, schedule: LinearBetaSchedule, *,
    method: str = "heun", n_steps: int = 16, time_power: float = 1.0,
) -> SamplerMoments:
    """Exact per-mode mean gain and variance of ``sample_posterior`` with the Gaussian predictor.

    Args:
        dust_power, cmb_power: ``D`` and ``C``, shape ``(npix, npix)`` (orthonormal FFT).
        sigma: the observation's σ (> 0).
        schedule: the β schedule.
        method: ``heun`` or ``euler_maruyama``.
        n_steps, time_power: the sampler's time grid.
    """
    if method not in STOCHASTIC_METHODS:
        raise ValueError(f"method={method!r}: the moments are computed for {STOCHASTIC_METHODS}")
    if sigma <= 0:
        raise ValueError(f"sigma={sigma} must be > 0")
    d, c = np.asarray(dust_power, np.float64), np.asarray(cmb_power, np.float64)
    t_star = schedule.t_star(torch.tensor([float(sigma)], dtype=torch.float64))
    grid = [float(t[0]) for t in time_grid(t_star, n_steps, time_power)]
    integral = lambda t: float(schedule.integral(torch.tensor(t, dtype=torch.float64)))  # noqa: E731

    def h(t: float) -> np.ndarray:
        a = np.exp(-integral(t))
        denom = a * d + (1 - a) * c
        return np.where(c > 0, c / np.where(denom > 0, denom, 1.0), 0.0)

    mult, var = np.ones_like(d), np.zeros_like(d)
    for k in range(n_steps):
        t, t_next = grid[k], grid[k + 1]
        delta_b = integral(t) - integral(t_next)
        growth = np.exp(0.5 * delta_b)
        step = growth - 2.0 * (growth - 1.0) * h(t)
        kick = 1.0
        if method == "heun" and k < n_steps - 1:
            step, kick = growth - (growth - 1.0) * (h(t) + h(t_next) * step), 1.0 - (growth - 1.0) * h(t_next)
        mult = step * mult
        var = step**2 * var + kick**2 * np.expm1(delta_b) * c
    gain = mult / np.sqrt(1.0 + sigma**2)  # z_{t*} = y / √(1 + σ²)
    s2 = sigma**2
    with np.errstate(invalid="ignore", divide="ignore"):
        exact_gain = np.where(c > 0, d / np.where(d + s2 * c > 0, d + s2 * c, 1.0), 1.0)
    return SamplerMoments(gain, var, exact_gain, exact_gain * s2 * c, gain**2 * (d + s2 * c) + var, d)
