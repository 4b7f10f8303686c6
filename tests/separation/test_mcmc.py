"""HMC (batched chains, reflecting bounds, dual averaging) and the R-hat / ESS diagnostics."""

from __future__ import annotations

import numpy as np
import torch

from simobs.separation.mcmc import HMCState, effective_sample_size, hmc_step, split_rhat, warmup


def _ar1(phi: float, m: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((m, n))
    e = rng.normal(size=(m, n))
    for t in range(1, n):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    return x


def test_ess_of_an_ar1_process_matches_its_integrated_autocorrelation() -> None:
    phi, m, n = 0.9, 4, 4000
    ess = effective_sample_size(_ar1(phi, m, n))
    expected = m * n * (1 - phi) / (1 + phi)  # 842
    assert 0.75 * expected < ess < 1.25 * expected, (ess, expected)
    assert effective_sample_size(np.random.default_rng(1).normal(size=(4, 1000))) > 3000


def test_rhat_is_one_for_mixed_chains_and_large_for_separated_ones() -> None:
    mixed = np.random.default_rng(2).normal(size=(4, 500))
    assert split_rhat(mixed) < 1.01
    stuck = mixed + np.array([0.0, 0.0, 0.0, 3.0])[:, None]
    assert split_rhat(stuck) > 1.3


def test_hmc_samples_a_correlated_gaussian_after_warmup() -> None:
    cov = torch.tensor([[1.0, 0.08], [0.08, 0.01]], dtype=torch.float64)  # correlation 0.8, scales 1 and 0.1
    prec = torch.linalg.inv(cov)
    log_prob = lambda th: -0.5 * ((th @ prec) * th).sum(-1)  # noqa: E731
    lo, hi = torch.full((2,), -10.0, dtype=torch.float64), torch.full((2,), 10.0, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    theta = 0.2 * torch.rand((8, 2), generator=gen, dtype=torch.float64)
    theta, state = warmup(theta, log_prob, lower=lo, upper=hi, generator=gen)
    # the mass matrix learnt the scales (inverse mass ~ variance)
    ratio = (state.inv_mass[:, 1] / state.inv_mass[:, 0]).median()
    assert 0.004 < float(ratio) < 0.03, ratio
    draws = []
    for _ in range(600):
        theta, _ = hmc_step(theta, log_prob, state, lower=lo, upper=hi, generator=gen)
        draws.append(theta)
    d = torch.stack(draws, 1).numpy()  # (chains, draws, 2)
    flat = d.reshape(-1, 2)
    ess = min(effective_sample_size(d[:, :, j]) for j in range(2))
    assert ess > 1000
    np.testing.assert_allclose(flat.std(0), [1.0, 0.1], rtol=0.08)
    assert abs(np.corrcoef(flat.T)[0, 1] - 0.8) < 0.05
    assert np.all(np.abs(flat.mean(0)) < 4 * np.array([1.0, 0.1]) / np.sqrt(ess))


def test_reflecting_bounds_keep_a_flat_target_uniform_on_the_box() -> None:
    flat = lambda th: th.sum(-1) * 0.0  # noqa: E731
    lo, hi = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    theta = torch.full((16, 1), 0.5, dtype=torch.float64)
    state = HMCState(torch.full((16,), 0.37, dtype=torch.float64), torch.ones(16, 1, dtype=torch.float64), 5)
    gen = torch.Generator().manual_seed(0)
    draws = []
    for _ in range(1500):
        theta, acc = hmc_step(theta, flat, state, lower=lo, upper=hi, generator=gen)
        assert torch.all(acc == 1.0)  # reflection conserves the energy of a flat target
        draws.append(theta)
    d = torch.stack(draws).numpy().ravel()
    assert d.min() >= 0 and d.max() <= 1
    counts = np.histogram(d, bins=5, range=(0, 1))[0]
    assert np.all(np.abs(counts / counts.mean() - 1) < 0.1), counts
