r"""Blind separation by Gibbs diffusion (Heurtel-Depeiges, Margossian, Ohana & Régaldo-Saint Blancard, ICML 2024).

The observation is ``y = x + σ c_φ``: dust ``x`` (prior learned by a diffusion model) plus a
Gaussian CMB ``c_φ`` whose 2-D power ``Σ_φ`` depends on cosmological parameters
φ = (H0, ω_b), with σ unknown too.  A Gibbs sampler alternates

1. ``x ~ p(x | y, φ, σ)``: the reverse coloured diffusion from ``t*(σ)`` to 0 with noise
   coloured by ``Σ_φ`` (:func:`simobs.separation.sample.sample_posterior`, with a noise
   predictor conditioned on φ);
2. ``(φ, σ) ~ p(φ, σ | y − x)``: HMC (:mod:`simobs.separation.mcmc`) on the exact Gaussian
   likelihood of the residual ``r = y − x`` in Fourier space,

   .. math:: \log p(r | φ, σ) = −\tfrac12 \sum_k w_k \Big[\frac{|r_k|^2}{σ^2 Σ_{φ,k}}
             + \log(σ^2 Σ_{φ,k})\Big] + \text{const},

   over the rfft half-plane modes with ``Σ_{φ,k} > 0`` (``w_k`` = 2, or 1 in the self-conjugate
   columns), with a flat prior on a box (reflecting bounds).

Several chains per observation run batched (chains × observations in one tensor); the HMC
step size is adapted by dual averaging and the diagonal mass matrix estimated in a warm-up
in the first Gibbs iteration, then both are frozen (the chain is then an exact Markov chain
for the joint posterior).  Chains start from prior draws, never from the truth.

:class:`GaussianDustPredictor` is the exact noise predictor for Gaussian dust of known
power: with it the sampler targets ``p(φ, σ | y)`` for ``y ~ N(0, D + σ² Σ_φ)`` in closed
form (the exactness test), and with the training dust's power it is the "Gaussian-dust
approximation" baseline of the blind stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from simobs.separation.mcmc import HMCState, hmc_step, warmup
from simobs.separation.sample import sample_posterior
from simobs.separation.sde import LinearBetaSchedule
from simobs.separation.spectra import half_plane_weights

__all__ = [
    "SpectrumFn",
    "ConditionalPredictor",
    "residual_log_likelihood",
    "gaussian_marginal_log_likelihood",
    "RowColouredNoise",
    "GaussianDustPredictor",
    "GibbsResult",
    "gibbs_diffusion",
    "sample_parameters",
]

#: ``phi (B, P) -> Σ_φ`` on the rfft half plane, shape ``(B, npix, npix // 2 + 1)``; differentiable.
SpectrumFn = Callable[[torch.Tensor], torch.Tensor]
#: ``(z (B, n, n), t (B,), phi (B, P), power_half (B, n, n//2+1)) -> η̂ (B, n, n)``.
ConditionalPredictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def residual_log_likelihood(residual: torch.Tensor, sigma: torch.Tensor, power_half: torch.Tensor) -> torch.Tensor:
    """``log N(r; 0, σ² Σ)`` up to a constant, per row.

    Args:
        residual: ``r = y − x``, shape ``(B, npix, npix)``.
        sigma: σ per row, shape ``(B,)``.
        power_half: ``Σ`` on the rfft half, shape ``(B, npix, npix // 2 + 1)``.

    Returns:
        Log likelihood, shape ``(B,)`` (modes with ``Σ = 0`` — the monopole — carry no CMB and are left out).
    """
    npix = residual.shape[-1]
    r2 = torch.fft.rfft2(residual.to(power_half.dtype), norm="ortho").abs() ** 2
    w = half_plane_weights(npix, power_half.dtype, power_half.device)
    live = power_half > 0
    var = (sigma.to(power_half.dtype)[:, None, None] ** 2) * torch.where(live, power_half, 1.0)
    terms = torch.where(live, r2 / var + torch.log(var), 0.0)
    return -0.5 * (w * terms).sum(dim=(-2, -1))


def gaussian_marginal_log_likelihood(y: torch.Tensor, sigma: torch.Tensor, power_half: torch.Tensor,
                                     dust_power_half: torch.Tensor) -> torch.Tensor:
    """``log N(y; 0, D + σ² Σ)`` per row: the exact blind likelihood when the dust is Gaussian of power ``D``."""
    npix = y.shape[-1]
    y2 = torch.fft.rfft2(y.to(power_half.dtype), norm="ortho").abs() ** 2
    w = half_plane_weights(npix, power_half.dtype, power_half.device)
    var = dust_power_half + (sigma.to(power_half.dtype)[:, None, None] ** 2) * power_half
    live = var > 0
    terms = torch.where(live, y2 / torch.where(live, var, 1.0) + torch.log(torch.where(live, var, 1.0)), 0.0)
    return -0.5 * (w * terms).sum(dim=(-2, -1))


class RowColouredNoise:
    """``Σ^{1/2} ε`` with one power per row (the noise of a batch of chains at different φ)."""

    def __init__(self, power_half: torch.Tensor) -> None:
        self.sqrt_half = torch.sqrt(power_half.clamp(min=0))
        self.npix = int(power_half.shape[-2])

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        if shape[0] != self.sqrt_half.shape[0]:
            raise ValueError(f"asked for {shape[0]} rows of noise, the power has {self.sqrt_half.shape[0]}")
        white = torch.randn((shape[0], self.npix, self.npix), generator=generator,
                            dtype=self.sqrt_half.dtype, device=self.sqrt_half.device)
        return self.colour(white)

    def colour(self, white: torch.Tensor) -> torch.Tensor:
        """``Σ_row^{1/2} w`` for white fields ``w`` of shape ``(B, npix, npix)`` (row ``i`` with power ``i``)."""
        spec = torch.fft.rfft2(white.to(self.sqrt_half.dtype), norm="ortho") * self.sqrt_half
        return torch.fft.irfft2(spec, s=(self.npix, self.npix), norm="ortho")


class GaussianDustPredictor:
    """Exact ``E[η | z_t]`` for Gaussian dust of power ``D`` (and mean ``μ``) and noise power ``Σ_φ`` per row.

    ``η̂_k = √(1−ᾱ) Σ_k / (ᾱ D_k + (1−ᾱ) Σ_k) · (z − √ᾱ μ)_k`` (cf.
    :class:`simobs.separation.wiener.GaussianNoisePredictor`, which has one fixed ``Σ``).
    """

    def __init__(self, dust_power_half: torch.Tensor, schedule: LinearBetaSchedule, dust_mean: float = 0.0) -> None:
        self.dust_half = dust_power_half
        self.schedule = schedule
        self.dust_mean = float(dust_mean)

    def __call__(self, z: torch.Tensor, t: torch.Tensor, phi: torch.Tensor, power_half: torch.Tensor) -> torch.Tensor:
        npix = z.shape[-1]
        a = self.schedule.alpha_bar(t.to(torch.float64)).reshape(-1, 1, 1).to(power_half.dtype)
        denom = a * self.dust_half + (1 - a) * power_half
        gain = torch.where(denom > 0, torch.sqrt(1 - a) * power_half / torch.where(denom > 0, denom, 1.0), 0.0)
        centred = z.to(power_half.dtype) - torch.sqrt(a) * self.dust_mean
        spec = torch.fft.rfft2(centred, norm="ortho") * gain
        return torch.fft.irfft2(spec, s=(npix, npix), norm="ortho").to(z.dtype)


def _prior_draws(lower: torch.Tensor, upper: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` uniform draws from the prior box, shape ``(n, P + 1)``: chains start here, never at the truth."""
    u = torch.rand((n, lower.numel()), generator=generator, dtype=lower.dtype, device=lower.device)
    return lower + (upper - lower) * u


@dataclass
class GibbsResult:
    """Chains of the blind sampler.

    Shapes: ``n`` observations, ``C`` chains each, ``T`` kept Gibbs iterations, ``P + 1``
    parameters (φ then σ), ``npix`` map side.
    """

    theta: np.ndarray  #: (n, C, T, P + 1) parameter draws after each Gibbs iteration
    accept: np.ndarray  #: (n, C, T) mean HMC acceptance probability per iteration
    step_size: np.ndarray  #: (n, C) adapted HMC step sizes
    inv_mass: np.ndarray  #: (n, C, P + 1) adapted inverse diagonal mass
    dust_mean: np.ndarray  #: (n, npix, npix) mean of the dust draws over chains and kept iterations
    dust_last: np.ndarray  #: (n, C, npix, npix) the last dust draw of every chain


def gibbs_diffusion(
    y: np.ndarray | torch.Tensor,
    *,
    spectrum: SpectrumFn,
    predictor: ConditionalPredictor,
    schedule: LinearBetaSchedule,
    lower: np.ndarray,
    upper: np.ndarray,
    n_chains: int = 4,
    n_iterations: int = 50,
    n_burn: int = 10,
    n_steps: int = 50,
    method: str = "euler_maruyama",
    n_warmup: int = 200,
    n_hmc: int = 2,
    n_leapfrog: int = 10,
    target_accept: float = 0.65,
    seed: int = 0,
    init: np.ndarray | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    on_iteration: Callable[[int], None] | None = None,
) -> GibbsResult:
    """Joint posterior draws of (φ, σ) and the dust for each observation.

    Args:
        y: observations, shape ``(n, npix, npix)``.
        spectrum: ``φ → Σ_φ`` (rfft half), e.g. :class:`~simobs.separation.spectra_grid.SpectrumInterpolator`.
        predictor: φ-conditioned noise predictor (a trained model, or :class:`GaussianDustPredictor`).
        schedule: the diffusion's β schedule (σ must stay below its maximum).
        lower, upper: prior box of ``(φ..., σ)``, shape ``(P + 1,)``; σ's lower bound > 0.
        n_chains: chains per observation.
        n_iterations: Gibbs iterations kept after ``n_burn`` burn-in iterations.
        n_steps: reverse-diffusion steps of each dust draw.
        method: the reverse-diffusion integrator (a stochastic method of :func:`~simobs.separation.sample.sample_posterior`).
        n_warmup: HMC warm-up transitions (first iteration: step size and mass matrix).
        n_hmc: HMC transitions per Gibbs iteration.
        n_leapfrog: leapfrog steps per transition.
        target_accept: dual-averaging target.
        seed: seeds the prior draws, the HMC and the diffusion noise.
        init: starting points, shape ``(n, n_chains, P + 1)``; default prior draws.  Chains
            from the prior can sit for many iterations in a self-consistent trap (a CMB too
            smooth makes the dust draw take the small scales, whose residual then confirms
            the smooth CMB); R̂ shows it.  Draws from a cheap pilot posterior, e.g. the
            Gaussian-dust approximation (:func:`sample_parameters`), start the chains where
            the data put them without using the truth.
        dtype, device: of the integration.
        on_iteration: called with the iteration index (progress, MLflow).
    """
    dev = torch.device(device)
    y = torch.as_tensor(y, dtype=dtype, device=dev)
    n, npix = y.shape[0], y.shape[-1]
    lo = torch.as_tensor(lower, dtype=dtype, device=dev)
    hi = torch.as_tensor(upper, dtype=dtype, device=dev)
    if lo.shape != hi.shape or lo.ndim != 1 or torch.any(hi <= lo):
        raise ValueError(f"prior bounds must be 1-D with upper > lower, got {lower} and {upper}")
    if float(lo[-1]) <= 0:
        raise ValueError(f"the lower prior bound of sigma must be > 0, got {float(lo[-1])}")
    schedule.t_star(float(hi[-1]))  # raises when σ_max is beyond the diffusion's range
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    b = n * n_chains
    y_rep = y.repeat_interleave(n_chains, dim=0)  # row = observation * C + chain
    theta = _prior_draws(lo, hi, b, gen)
    if init is not None:
        start = torch.as_tensor(np.asarray(init), dtype=dtype, device=dev).reshape(b, lo.numel())
        if torch.any(start < lo) or torch.any(start > hi):
            raise ValueError("init: starting points must lie inside the prior box [lower, upper]")
        theta = start

    def draw_dust(theta: torch.Tensor) -> torch.Tensor:
        phi, sig = theta[:, :-1], theta[:, -1]
        with torch.no_grad():
            power = spectrum(phi).to(dtype)
        noise = RowColouredNoise(power)
        fn = lambda z, t: predictor(z, t, phi, power)  # noqa: E731
        return sample_posterior(fn, y_rep, sig, schedule=schedule, noise=noise, n_steps=n_steps,
                                method=method, generator=gen)

    def target(residual: torch.Tensor):
        return lambda th: residual_log_likelihood(residual, th[:, -1], spectrum(th[:, :-1]).to(dtype))

    dust = draw_dust(theta)
    theta, state = warmup(theta, target(y_rep - dust), lower=lo, upper=hi, n_warmup=n_warmup,
                          n_leapfrog=n_leapfrog, target_accept=target_accept, generator=gen)
    state = HMCState(step_size=state.step_size, inv_mass=state.inv_mass, n_leapfrog=n_leapfrog)
    kept, accepts = [], []
    dust_sum = torch.zeros_like(y_rep)
    for it in range(n_burn + n_iterations):
        dust = draw_dust(theta)
        logp = target(y_rep - dust)
        acc = torch.zeros(b, dtype=dtype, device=dev)
        for _ in range(n_hmc):
            theta, a = hmc_step(theta, logp, state, lower=lo, upper=hi, generator=gen)
            acc = acc + a / n_hmc
        if it >= n_burn:
            kept.append(theta.clone())
            accepts.append(acc)
            dust_sum += dust
        if on_iteration is not None:
            on_iteration(it)
    p = lo.numel()
    chains = torch.stack(kept, dim=1).reshape(n, n_chains, n_iterations, p)
    return GibbsResult(
        theta=chains.cpu().numpy(),
        accept=torch.stack(accepts, dim=1).reshape(n, n_chains, n_iterations).cpu().numpy(),
        step_size=state.step_size.reshape(n, n_chains).cpu().numpy(),
        inv_mass=state.inv_mass.reshape(n, n_chains, p).cpu().numpy(),
        dust_mean=(dust_sum / n_iterations).reshape(n, n_chains, npix, npix).mean(dim=1).cpu().numpy(),
        dust_last=dust.reshape(n, n_chains, npix, npix).cpu().numpy(),
    )


def sample_parameters(
    log_likelihood: Callable[[torch.Tensor], torch.Tensor],
    *,
    n_rows: int,
    lower: np.ndarray,
    upper: np.ndarray,
    n_chains: int = 4,
    n_draws: int = 500,
    n_warmup: int = 300,
    n_leapfrog: int = 10,
    target_accept: float = 0.65,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """HMC draws of ``(φ, σ)`` under a fixed likelihood, flat prior on the box: the blind stage's baselines.

    * the **oracle**: ``residual_log_likelihood(y − x_true, ...)``, the parameters' posterior had
      the dust been known (the CMB alone);
    * the **Gaussian-dust approximation**: ``gaussian_marginal_log_likelihood(y, ..., D)`` with the
      training dust's power ``D``, exact when the dust is Gaussian.

    Args:
        log_likelihood: ``theta (n_rows * n_chains, P + 1) -> (n_rows * n_chains,)``, rows ordered
            observation-major (row = observation * n_chains + chain).
        n_rows: observations.

    Returns:
        Draws, shape ``(n_rows, n_chains, n_draws, P + 1)``.
    """
    dev = torch.device(device)
    lo = torch.as_tensor(lower, dtype=dtype, device=dev)
    hi = torch.as_tensor(upper, dtype=dtype, device=dev)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    theta = _prior_draws(lo, hi, n_rows * n_chains, gen)
    theta, state = warmup(theta, log_likelihood, lower=lo, upper=hi, n_warmup=n_warmup, n_leapfrog=n_leapfrog,
                          target_accept=target_accept, generator=gen)
    draws = []
    for _ in range(n_draws):
        theta, _ = hmc_step(theta, log_likelihood, state, lower=lo, upper=hi, generator=gen)
        draws.append(theta)
    return torch.stack(draws, dim=1).reshape(n_rows, n_chains, n_draws, lo.numel()).cpu().numpy()
