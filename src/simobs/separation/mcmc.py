r"""Hamiltonian Monte Carlo, batched over independent chains, and its convergence diagnostics.

Used by the blind (Gibbs diffusion) separation for the draw of the CMB parameters and the
noise level, ``(φ, σ) ~ p(φ, σ | y − x)``: a low-dimensional, smooth, bounded target whose
log density and gradient come from torch autograd.  Every chain (one per observation and
chain index) has its own step size and diagonal mass matrix; all of them move in one
batched tensor operation, so a GPU is used fully.

* **Leapfrog with reflecting bounds.**  A position that leaves the prior box
  ``[lower, upper]`` is reflected back into it and the momentum's component flipped; the map
  stays volume-preserving and reversible, so the Metropolis correction of the flat prior on
  the box is exact (Neal 2011, §5.1).
* **Step-size adaptation** by the dual averaging of Hoffman & Gelman (2014, Alg. 5) towards a
  target acceptance probability (0.65 by default, as the Gibbs-diffusion reference code).
* **Diagonal mass matrix** from the variance of warm-up draws (:func:`warmup`).
* **Diagnostics**: the rank-normalised split R̂ and the bulk effective sample size of
  Vehtari et al. (2021), from chains of shape ``(chains, draws)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "LogProbFn",
    "HMCState",
    "DualAveraging",
    "hmc_step",
    "warmup",
    "split_rhat",
    "effective_sample_size",
]

#: ``theta (C, D) -> log density (C,)``, differentiable in ``theta``; chains are independent.
LogProbFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class HMCState:
    """Per-chain tuning of the sampler: step sizes ``(C,)`` and inverse diagonal mass ``(C, D)``."""

    step_size: torch.Tensor
    inv_mass: torch.Tensor
    n_leapfrog: int = 10


def _value_and_grad(log_prob: LogProbFn, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        th = theta.detach().requires_grad_(True)
        lp = log_prob(th)
        (grad,) = torch.autograd.grad(lp.sum(), th)
    return lp.detach(), grad.detach()


def _reflect(theta: torch.Tensor, p: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor):
    # A few passes handle steps longer than the box (rare once the step size is adapted).
    for _ in range(4):
        above, below = theta > upper, theta < lower
        if not (above.any() or below.any()):
            break
        theta = torch.where(above, 2 * upper - theta, torch.where(below, 2 * lower - theta, theta))
        p = torch.where(above | below, -p, p)
    return theta.clamp(lower, upper), p


def hmc_step(
    theta: torch.Tensor,
    log_prob: LogProbFn,
    state: HMCState,
    *,
    lower: torch.Tensor,
    upper: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One HMC transition of every chain.

    Args:
        theta: current positions, shape ``(C, D)``, inside ``[lower, upper]``.
        log_prob: log density of each chain's target (flat prior on the box included or not:
            the reflection keeps the chains inside it).
        state: step sizes, inverse mass and number of leapfrog steps.
        lower, upper: box bounds, shape ``(D,)``.
        generator: torch generator for momenta and the accept decisions.

    Returns:
        ``(new theta (C, D), acceptance probability (C,))``.
    """
    c, d = theta.shape
    inv_m = state.inv_mass
    eps = state.step_size[:, None]
    p0 = torch.randn((c, d), generator=generator, dtype=theta.dtype, device=theta.device) / torch.sqrt(inv_m)
    lp0, g = _value_and_grad(log_prob, theta)
    q, p = theta, p0 + 0.5 * eps * g
    for i in range(state.n_leapfrog):
        q = q + eps * inv_m * p
        q, p = _reflect(q, p, lower, upper)
        lp1, g = _value_and_grad(log_prob, q)
        p = p + (eps if i < state.n_leapfrog - 1 else 0.5 * eps) * g
    h0 = -lp0 + 0.5 * (inv_m * p0**2).sum(-1)
    h1 = -lp1 + 0.5 * (inv_m * p**2).sum(-1)
    log_accept = torch.nan_to_num(h0 - h1, nan=-math.inf).clamp(max=0.0)
    accept_prob = log_accept.exp()
    u = torch.rand((c,), generator=generator, dtype=theta.dtype, device=theta.device)
    take = u < accept_prob
    return torch.where(take[:, None], q, theta), accept_prob


class DualAveraging:
    """Hoffman & Gelman (2014) dual averaging of ``log ε`` per chain towards ``target`` acceptance."""

    def __init__(self, step_size: torch.Tensor, target: float = 0.65, gamma: float = 0.05,
                 t0: float = 10.0, kappa: float = 0.75) -> None:
        self.mu = torch.log(10 * step_size)
        self.target, self.gamma, self.t0, self.kappa = target, gamma, t0, kappa
        self.h_bar = torch.zeros_like(step_size)
        self.log_eps_bar = torch.zeros_like(step_size)
        self.m = 0

    def update(self, accept_prob: torch.Tensor) -> torch.Tensor:
        """Record one transition's acceptance; return the step size for the next one."""
        self.m += 1
        m = self.m
        self.h_bar = (1 - 1 / (m + self.t0)) * self.h_bar + (self.target - accept_prob) / (m + self.t0)
        log_eps = self.mu - math.sqrt(m) / self.gamma * self.h_bar
        w = m ** (-self.kappa)
        self.log_eps_bar = w * log_eps + (1 - w) * self.log_eps_bar
        return log_eps.exp()

    @property
    def final_step_size(self) -> torch.Tensor:
        return self.log_eps_bar.exp()


def warmup(
    theta: torch.Tensor,
    log_prob: LogProbFn,
    *,
    lower: torch.Tensor,
    upper: torch.Tensor,
    n_warmup: int = 200,
    n_leapfrog: int = 10,
    target_accept: float = 0.65,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, HMCState]:
    """Adapt step sizes and a diagonal mass matrix per chain; return the last position and the tuning.

    Three windows: step size only (mass = prior width²/100), the mass matrix from the
    variance of the middle window's draws (regularised towards that scale as in Stan),
    then the step size again for the new mass.

    Returns:
        ``(theta (C, D), HMCState)`` ready for sampling with :func:`hmc_step`.
    """
    c, d = theta.shape
    width = (upper - lower).to(theta)
    state = HMCState(step_size=torch.full((c,), 0.1, dtype=theta.dtype, device=theta.device),
                     inv_mass=(width**2 / 100).expand(c, d).clone(), n_leapfrog=n_leapfrog)
    first, middle = max(n_warmup // 5, 1), max(n_warmup // 2, 2)
    adapt = DualAveraging(state.step_size, target_accept)
    draws = []
    for i in range(n_warmup):
        if i == first + middle:  # new mass matrix: restart the step-size adaptation
            var = torch.stack(draws).var(dim=0)
            n = len(draws)
            state.inv_mass = (n / (n + 5.0)) * var + 1e-3 * (5.0 / (n + 5.0)) * width**2 / 100
            state.inv_mass = state.inv_mass.clamp(min=1e-12 * width**2)
            adapt = DualAveraging(state.step_size, target_accept)
        theta, acc = hmc_step(theta, log_prob, state, lower=lower, upper=upper, generator=generator)
        state.step_size = adapt.update(acc)
        if first <= i < first + middle:
            draws.append(theta)
    state.step_size = adapt.final_step_size
    return theta, state


# --------------------------------------------------------------------------- diagnostics


def _rank_normalise(x: np.ndarray) -> np.ndarray:
    from scipy.special import ndtri
    from scipy.stats import rankdata

    ranks = rankdata(x, method="average").reshape(x.shape)
    return ndtri((ranks - 0.375) / (x.size + 0.25))


def _split(chains: np.ndarray) -> np.ndarray:
    chains = np.asarray(chains, dtype=np.float64)
    if chains.ndim != 2 or chains.shape[1] < 4:
        raise ValueError(f"chains must have shape (n_chains, n_draws >= 4), got {chains.shape}")
    half = chains.shape[1] // 2
    return np.concatenate([chains[:, :half], chains[:, -half:]])


def _rhat(chains: np.ndarray) -> float:
    m, n = chains.shape
    means = chains.mean(axis=1)
    w = chains.var(axis=1, ddof=1).mean()
    b = n * means.var(ddof=1)
    if w == 0:
        return float("nan") if b == 0 else float("inf")
    var_plus = (n - 1) / n * w + b / n
    return float(np.sqrt(var_plus / w))


def split_rhat(chains: np.ndarray) -> float:
    """Rank-normalised split R̂ (Vehtari et al. 2021): the max of the bulk and the folded (tail) value.

    Args:
        chains: draws of one scalar, shape ``(n_chains, n_draws)``.

    Returns:
        R̂; values above ~1.01 mean the chains have not mixed.
    """
    s = _split(chains)
    bulk = _rhat(_rank_normalise(s))
    folded = _rhat(_rank_normalise(np.abs(s - np.median(s))))
    return max(bulk, folded)


def effective_sample_size(chains: np.ndarray) -> float:
    """Bulk effective sample size of rank-normalised split chains (Geyer's initial monotone sequence).

    Args:
        chains: draws of one scalar, shape ``(n_chains, n_draws)``.

    Returns:
        ESS (at most ``n_chains * n_draws`` times a small factor for antithetic chains).
    """
    s = _rank_normalise(_split(chains))
    m, n = s.shape
    centred = s - s.mean(axis=1, keepdims=True)
    size = 2 ** int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(centred, n=size, axis=1)
    acov = np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :n] / n
    chain_var = acov[:, 0] * n / (n - 1)
    w = chain_var.mean()
    var_plus = w * (n - 1) / n + s.mean(axis=1).var(ddof=1)
    if var_plus <= 0:
        return float("nan")
    rho = 1 - (w - acov.mean(axis=0)) / var_plus
    rho[0] = 1.0
    # Geyer: sum pairs Γ_k = ρ_2k + ρ_2k+1 while positive, made monotone.
    total, prev = 0.0, np.inf
    for k in range(0, n - 1, 2):
        pair = rho[k] + rho[k + 1]
        if pair < 0:
            break
        pair = min(pair, prev)
        total += pair
        prev = pair
    tau = -1 + 2 * total
    return float(m * n / max(tau, 1.0 / np.log10(m * n)))
