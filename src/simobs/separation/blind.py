r"""The blind-separation stage (Gibbs diffusion, issue #15): spectra grid, observations, sampling, evaluation.

The sampler itself is :func:`simobs.separation.gibbs.gibbs_diffusion`; this module is the
stage around it, one function per rule of ``workflow/rules/blind.smk``:

* :func:`make_spectra_grid` (rule ``cmb_spectra_grid``): camb ``C_ℓ`` on a grid over the
  prior of φ = (H0, ω_b) and the interpolator's relative error on the study's patch at
  held-out camb spectra.
* :func:`regenerate_observations` / :func:`fields_observations` (rule ``blind_observations``):
  the observations and their truths θ = (H0, ω_b, σ).  Simulation-based calibration needs
  truths drawn from the prior, so by default every observation is *regenerated*: θ uniform
  in the prior box, a Gaussian CMB of power ``Σ_φ`` (the interpolated camb spectrum), added
  to a held-out test dust map of ``fields.h5``.  One random stream per observation
  (``numpy`` seeded by ``[seed, index]``), so an observation does not depend on how many
  there are or how they are sharded.
* :func:`separate_blind` (rule ``blind_separate``, one job per shard): the Gibbs chains and
  the two baselines of each observation, the **oracle** (HMC on the likelihood of the true
  CMB, ``y − x_true``: what φ and σ the data hold once the dust is known) and the
  **Gaussian-dust approximation** (HMC on the closed-form marginal of ``y`` for Gaussian
  dust with the training dust's power).
* :func:`evaluate_blind` (rule ``evaluate_blind``): split R̂ and bulk ESS per observation and
  parameter, SBC ranks with a χ² uniformity test, posterior widths against the baselines.

Parameters are ordered ``(H0, ombh2, sigma)`` throughout (:data:`THETA_NAMES`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch
from scipy import stats

from simobs.io import atomic_path
from simobs.separation.gibbs import (
    ConditionalPredictor,
    GaussianDustPredictor,
    SpectrumFn,
    gaussian_marginal_log_likelihood,
    gibbs_diffusion,
    residual_log_likelihood,
    sample_parameters,
)
from simobs.separation.mcmc import effective_sample_size, split_rhat
from simobs.separation.sde import LinearBetaSchedule
from simobs.separation.spectra import cmb_temperature_cl, multipoles_on_grid
from simobs.separation.spectra_grid import (
    PARAMETERS,
    SpectrumInterpolator,
    compute_cl_grid,
    interpolation_error,
    read_spectra_grid,
    write_spectra_grid,
)
from simobs.separation.wiener import estimate_power_2d

__all__ = [
    "THETA_NAMES",
    "prior_box",
    "make_spectra_grid",
    "BlindObservations",
    "regenerate_observations",
    "fields_observations",
    "write_observations",
    "read_observations",
    "gaussian_dust_predictor",
    "BlindShard",
    "separate_blind",
    "write_blind_shard",
    "read_blind_shards",
    "sbc_ranks",
    "rank_uniformity_pvalue",
    "chain_diagnostics",
    "BlindEvaluation",
    "evaluate_blind",
    "blind_figures",
    "predictor_path",
    "shard_seed",
    "load_predictor",
    "spectrum_from_grid",
]

#: Names of θ's components, in order: φ (camb's names) then the CMB amplitude σ.
THETA_NAMES = (*PARAMETERS, "sigma")
METHODS = ("blind", "gaussian_dust", "oracle")


def prior_box(prior: Mapping[str, Sequence[float] | None], sigma_range: float | Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The flat prior's box ``(lower, upper)`` of θ = (H0, ombh2, σ), shape ``(3,)`` each.

    Args:
        prior: config ``separation.blind.prior`` (``H0``, ``ombh2``, ``sigma`` as ``[low, high]``;
            ``sigma: null`` takes ``sigma_range``).
        sigma_range: config ``separation.fields.sigma``.

    Raises:
        ValueError: an empty interval, or σ's interval not > 0 (the message names the key).
    """
    sig = prior.get("sigma")
    if sig is None:
        sig = sigma_range if not isinstance(sigma_range, (int, float)) else [sigma_range]
        if len(sig) != 2 or sig[0] >= sig[1]:
            raise ValueError(f"separation.fields.sigma={sigma_range!r} is one value: set separation.blind.prior.sigma "
                             "to a range [low, high] for the blind prior")
    bounds = [prior["H0"], prior["ombh2"], sig]
    for name, (lo, hi) in zip(THETA_NAMES, bounds):
        if not lo < hi:
            raise ValueError(f"separation.blind.prior.{name}={[lo, hi]}: need low < high")
    if bounds[2][0] <= 0:
        raise ValueError(f"separation.blind.prior.sigma={list(bounds[2])}: the lower bound must be > 0")
    return np.array([b[0] for b in bounds], float), np.array([b[1] for b in bounds], float)


# --------------------------------------------------------------------------- rule cmb_spectra_grid


def make_spectra_grid(
    out_path: str | os.PathLike[str],
    *,
    lower: Sequence[float],
    upper: Sequence[float],
    n_grid: Sequence[int],
    cosmology: Mapping[str, Any],
    npix: int,
    pixel_size_arcmin: float,
    n_heldout: int,
    seed: int,
    on_point: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, float], pd.DataFrame]:
    """camb spectra on an evenly spaced (H0, ombh2) grid, written to ``out_path``; the interpolator's accuracy.

    Args:
        lower, upper: the box of φ = (H0, ombh2), shape ``(2,)`` each.
        n_grid: grid points per axis.
        cosmology: the other camb parameters (``separation.fields.cosmology``); its H0 and
            ombh2 are the fiducial φ that normalises the interpolated power.
        npix, pixel_size_arcmin: the study's patch (the error is measured on its modes).
        n_heldout: φ drawn uniformly in the box (seeded) at which camb is compared with the
            interpolation.

    Returns:
        ``(metrics, table)``: worst and median over the held-out points of the largest relative
        error per point, and one row per held-out point.
    """
    lmax = int(np.ceil(multipoles_on_grid(npix, pixel_size_arcmin).max())) + 2
    grid = compute_cl_grid(np.linspace(lower[0], upper[0], n_grid[0]), np.linspace(lower[1], upper[1], n_grid[1]),
                           lmax, cosmology, on_point=on_point)
    interp = SpectrumInterpolator(grid, npix, pixel_size_arcmin)
    rng = np.random.default_rng(seed)
    phis = np.asarray(lower)[:2] + (np.asarray(upper)[:2] - np.asarray(lower)[:2]) * rng.random((n_heldout, 2))
    errors = []
    for phi in phis:
        cl = cmb_temperature_cl(lmax, {**grid.cosmology, "H0": float(phi[0]), "ombh2": float(phi[1])})
        errors.append(interpolation_error(interp, phi[None], cl[None], pixel_size_arcmin))
    errors = np.asarray(errors)
    write_spectra_grid(grid, out_path, npix=npix, pixel_size_arcmin=pixel_size_arcmin)
    table = pd.DataFrame({"H0": phis[:, 0], "ombh2": phis[:, 1], "max_relative_error": errors})
    metrics = {"interpolation_error_worst": float(errors.max()) if len(errors) else float("nan"),
               "interpolation_error_median": float(np.median(errors)) if len(errors) else float("nan"),
               "n_grid_points": int(np.prod(n_grid)), "n_heldout": int(n_heldout), "lmax": lmax}
    return metrics, table


# --------------------------------------------------------------------------- rule blind_observations


@dataclass
class BlindObservations:
    """Observations ``y = dust + σ·c_φ`` of the blind stage and their truths.

    Shapes: ``n`` observations, ``npix`` map side.
    """

    observation: np.ndarray  #: (n, npix, npix) float64
    dust: np.ndarray  #: (n, npix, npix) the true dust
    cmb: np.ndarray  #: (n, npix, npix) the true CMB at unit amplitude (``y = dust + σ cmb``)
    theta: np.ndarray  #: (n, 3) the truths (H0, ombh2, σ)
    dust_index: np.ndarray  #: (n,) index of the dust map in ``fields.h5``'s ``test/dust``
    source: str  #: ``prior`` (regenerated, truths from the prior) or ``fields`` (fields.h5's observations)
    attrs: dict[str, Any] = field(default_factory=dict)

    def rows(self, indices: np.ndarray) -> BlindObservations:
        """The observations ``indices`` (a shard), truths and attributes alike."""
        i = np.asarray(indices)
        return BlindObservations(self.observation[i], self.dust[i], self.cmb[i], self.theta[i], self.dust_index[i],
                                 self.source, dict(self.attrs))


def regenerate_observations(test_dust: np.ndarray, spectrum: SpectrumFn, lower: np.ndarray, upper: np.ndarray,
                            n: int, seed: int) -> BlindObservations:
    """Observations with truths from the prior: θ uniform in the box, a Gaussian CMB of power ``Σ_φ``.

    Observation ``i`` takes the test dust map ``i mod len(test_dust)`` and the random stream
    ``numpy.random.default_rng([seed, i])`` (θ, then the CMB's white noise), so it is the same
    whatever ``n``.

    Args:
        test_dust: held-out dust maps, shape ``(m, npix, npix)`` (never the training maps).
        spectrum: φ → ``Σ_φ`` on the rfft half (the interpolated camb power).
        lower, upper: the prior box of θ, shape ``(3,)``.
        n: observations.
    """
    if len(test_dust) == 0:
        raise ValueError("no test dust maps to build blind observations from")
    npix = test_dust.shape[-1]
    theta = np.zeros((n, 3))
    white = np.zeros((n, npix, npix))
    for i in range(n):
        rng = np.random.default_rng([int(seed), i])
        theta[i] = lower + (upper - lower) * rng.random(3)
        white[i] = rng.standard_normal((npix, npix))
    with torch.no_grad():
        power = spectrum(torch.as_tensor(theta[:, :2])).double().numpy()
    cmb = np.fft.irfft2(np.sqrt(np.clip(power, 0, None)) * np.fft.rfft2(white, norm="ortho"), s=(npix, npix),
                        norm="ortho")
    index = np.arange(n) % len(test_dust)
    dust = np.asarray(test_dust[index], float)
    return BlindObservations(dust + theta[:, 2, None, None] * cmb, dust, cmb, theta, index, "prior",
                             {"seed": int(seed)})


def fields_observations(fields: Any, n: int | None = None) -> BlindObservations:
    """``fields.h5``'s own test observations; the truth φ is the fields' cosmology (the same for all)."""
    cosmology = json.loads(fields.attrs["cosmology"]) if isinstance(fields.attrs["cosmology"], str) \
        else dict(fields.attrs["cosmology"])
    m = len(fields.sigma) if n is None else min(int(n), len(fields.sigma))
    phi = np.array([cosmology["H0"], cosmology["ombh2"]], float)
    theta = np.column_stack([np.tile(phi, (m, 1)), fields.sigma[:m]])
    return BlindObservations(np.asarray(fields.observation[:m], float), np.asarray(fields.test_dust[:m], float),
                             np.asarray(fields.test_cmb[:m], float), theta, np.arange(m), "fields")


def write_observations(obs: BlindObservations, path: str | os.PathLike[str], **attrs: Any) -> None:
    """``observations.h5``: datasets ``observation``, ``dust``, ``cmb``, ``theta`` (columns :data:`THETA_NAMES`),
    ``dust_index``; attributes ``source``, ``theta_names`` (JSON) and ``attrs``."""
    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        for name in ("observation", "dust", "cmb", "theta", "dust_index"):
            f[name] = getattr(obs, name)
        f.attrs["source"] = obs.source
        f.attrs["theta_names"] = json.dumps(list(THETA_NAMES))
        for key, value in {**obs.attrs, **attrs}.items():
            f.attrs[key] = value if isinstance(value, (int, float, str)) else json.dumps(value)


def read_observations(path: str | os.PathLike[str], indices: np.ndarray | None = None) -> BlindObservations:
    """Read :func:`write_observations`'s file (rows ``indices`` only when given)."""
    with h5py.File(path, "r") as f:
        if "theta" not in f:
            raise ValueError(f"{path}: not a blind observation file (no 'theta'); rerun rule blind_observations")
        arrays = {name: f[name][...] for name in ("observation", "dust", "cmb", "theta", "dust_index")}
        source = str(f.attrs["source"])
        attrs = {k: v for k, v in f.attrs.items() if k != "source"}
    obs = BlindObservations(**arrays, source=source, attrs=attrs)
    return obs if indices is None else obs.rows(indices)


# --------------------------------------------------------------------------- rule blind_separate


def gaussian_dust_predictor(train_dust: np.ndarray, schedule: LinearBetaSchedule,
                            dtype: torch.dtype = torch.float64) -> GaussianDustPredictor:
    """:class:`GaussianDustPredictor` with the training dust's mean and mean 2-D power (the Gaussian-dust approximation)."""
    mean, power = estimate_power_2d(train_dust)
    half = torch.as_tensor(power[:, : power.shape[-1] // 2 + 1], dtype=dtype)
    return GaussianDustPredictor(half, schedule, dust_mean=mean)


@dataclass
class BlindShard:
    """One shard's chains and baselines.  ``n`` observations, ``C`` chains, ``T`` kept iterations, 3 parameters."""

    indices: np.ndarray  #: (n,) rows of ``observations.h5``
    chains: np.ndarray  #: (n, C, T, 3) Gibbs draws of θ
    accept: np.ndarray  #: (n, C, T) mean HMC acceptance probability per Gibbs iteration
    step_size: np.ndarray  #: (n, C)
    dust_mean: np.ndarray  #: (n, npix, npix) posterior mean of the dust
    oracle: np.ndarray  #: (n, C', D, 3) HMC draws given the true CMB
    gaussian_dust: np.ndarray  #: (n, C', D, 3) HMC draws of the Gaussian-dust approximation
    attrs: dict[str, Any] = field(default_factory=dict)


def separate_blind(
    obs: BlindObservations,
    indices: np.ndarray,
    *,
    spectrum: SpectrumFn,
    predictor: ConditionalPredictor,
    schedule: LinearBetaSchedule,
    gaussian: GaussianDustPredictor,
    lower: np.ndarray,
    upper: np.ndarray,
    gibbs: Mapping[str, Any],
    baselines: Mapping[str, Any],
    seed: int,
    device: str | torch.device = "cpu",
    on_iteration: Callable[[int], None] | None = None,
) -> BlindShard:
    """Gibbs diffusion and the two baselines for the observations ``obs`` (rows ``indices`` of the file).

    Args:
        obs: this shard's observations.
        indices: their rows in ``observations.h5`` (stored with the results).
        spectrum: φ → ``Σ_φ`` (:class:`SpectrumInterpolator`).
        predictor: the dust's φ-conditioned noise predictor for the Gibbs chain (learned, or
            ``gaussian`` itself for the analytic Gaussian-dust sampler).
        schedule: the predictor's diffusion schedule.
        gaussian: the Gaussian-dust predictor; its dust power and mean define the Gaussian-dust
            baseline's likelihood.
        lower, upper: the prior box of θ.
        gibbs: keyword arguments of :func:`gibbs_diffusion` (``n_chains``, ``n_iterations``,
            ``n_burn``, ``n_steps``, ``method``, ``n_warmup``, ``n_hmc``, ``n_leapfrog``,
            ``target_accept``) and ``init``: ``prior`` (chains start at prior draws) or
            ``gaussian_dust`` (at draws of the Gaussian-dust posterior of the same data, as
            :func:`gibbs_diffusion` advises against self-consistent traps; the baselines run first).
        baselines: keyword arguments of :func:`sample_parameters` (``n_chains``, ``n_draws``, ``n_warmup``).
        seed: the shard's seed (Gibbs: ``seed``; oracle ``seed + 1``; Gaussian dust ``seed + 2``).
    """
    dtype = torch.float64
    dev = torch.device(device)
    y = torch.as_tensor(obs.observation, dtype=dtype, device=dev)
    n, npix = y.shape[0], y.shape[-1]
    c = int(baselines.get("n_chains", 4))
    residual = torch.as_tensor(obs.observation - obs.dust, dtype=dtype, device=dev).repeat_interleave(c, dim=0)
    centred = (y - gaussian.dust_mean).repeat_interleave(c, dim=0)
    d_half = gaussian.dust_half.to(dtype=dtype, device=dev)

    def oracle(th: torch.Tensor) -> torch.Tensor:
        return residual_log_likelihood(residual, th[:, -1], spectrum(th[:, :-1]).to(dtype))

    def marginal(th: torch.Tensor) -> torch.Tensor:
        return gaussian_marginal_log_likelihood(centred, th[:, -1], spectrum(th[:, :-1]).to(dtype), d_half)

    draws = {}
    for offset, (name, fn) in enumerate((("oracle", oracle), ("gaussian_dust", marginal)), start=1):
        draws[name] = sample_parameters(fn, n_rows=n, lower=lower, upper=upper, seed=seed + offset, dtype=dtype,
                                        device=dev, **dict(baselines))
    settings = dict(gibbs)
    start = None
    if settings.pop("init", "prior") == "gaussian_dust":
        # the cheap pilot posterior of the data alone (never the truth): random draws of it start the chains
        pool = draws["gaussian_dust"].reshape(n, -1, 3)
        pick = np.random.default_rng(seed + 3).choice(pool.shape[1], size=settings["n_chains"], replace=False)
        start = pool[:, pick]
    result = gibbs_diffusion(y, spectrum=spectrum, predictor=predictor, schedule=schedule, lower=lower, upper=upper,
                             seed=seed, dtype=dtype, device=dev, on_iteration=on_iteration, init=start, **settings)
    return BlindShard(np.asarray(indices), result.theta, result.accept, result.step_size, result.dust_mean,
                      draws["oracle"], draws["gaussian_dust"], {"seed": int(seed), "npix": int(npix)})


_SHARD_ARRAYS = ("indices", "chains", "accept", "step_size", "dust_mean", "oracle", "gaussian_dust")


def write_blind_shard(chains: BlindShard, path: str | os.PathLike[str], **attrs: Any) -> None:
    """One shard's HDF5: the arrays of :class:`BlindShard` as datasets, ``theta_names`` and ``attrs`` as attributes."""
    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        for name in _SHARD_ARRAYS:
            f[name] = getattr(chains, name)
        f.attrs["theta_names"] = json.dumps(list(THETA_NAMES))
        for key, value in {**chains.attrs, **attrs}.items():
            f.attrs[key] = value if isinstance(value, (int, float, str)) else json.dumps(value)


def read_blind_shards(paths: Sequence[str | os.PathLike[str]]) -> BlindShard:
    """Concatenate shards, ordered by observation index.

    Raises:
        ValueError: no paths, or shards with different chain shapes (rerun ``blind_separate`` for all).
    """
    if not paths:
        raise ValueError("no blind shards given")
    parts = []
    for p in paths:
        with h5py.File(p, "r") as f:
            parts.append({name: f[name][...] for name in _SHARD_ARRAYS})
    shapes = {(p["chains"].shape[1:], p["oracle"].shape[1:]) for p in parts}
    if len(shapes) > 1:
        raise ValueError(f"blind shards {list(map(str, paths))} have different chain shapes {sorted(shapes)}; "
                         "rerun rule blind_separate for all shards")
    merged = {name: np.concatenate([p[name] for p in parts]) for name in _SHARD_ARRAYS}
    order = np.argsort(merged["indices"])
    return BlindShard(**{name: value[order] for name, value in merged.items()})


# --------------------------------------------------------------------------- rule evaluate_blind


def sbc_ranks(truth: np.ndarray, draws: np.ndarray, thin: int = 1) -> np.ndarray:
    """Rank of each truth among its posterior draws (simulation-based calibration, Talts et al. 2018).

    Args:
        truth: shape ``(n, P)``.
        draws: shape ``(n, C, T, P)`` (chains × iterations, thinned along T by ``thin`` to cut the
            autocorrelation) or ``(n, S, P)``.
        thin: keep every ``thin``-th iteration.

    Returns:
        Ranks in ``0..L`` (``L`` thinned draws per observation), shape ``(n, P)``, int.  For a
        calibrated posterior with truths from the prior they are uniform on ``0..L``.
    """
    draws = np.asarray(draws)
    if draws.ndim == 4:
        draws = draws[:, :, ::thin].reshape(draws.shape[0], -1, draws.shape[-1])
    return (draws < np.asarray(truth)[:, None, :]).sum(axis=1)


def rank_uniformity_pvalue(ranks: np.ndarray, n_draws: int, n_bins: int) -> float:
    """χ² test that ranks in ``0..n_draws`` are uniform, on ``n_bins`` bins of (nearly) equal width.

    The expected count of each bin is proportional to the number of rank values it holds,
    so bins need not divide ``n_draws + 1`` evenly.  Returns the p-value (small = miscalibrated).
    """
    ranks = np.asarray(ranks).ravel()
    edges = np.linspace(0, n_draws + 1, n_bins + 1).round().astype(int)
    counts = np.histogram(ranks, bins=edges)[0]
    expected = len(ranks) * np.diff(edges) / (n_draws + 1)
    return float(stats.chisquare(counts, expected).pvalue)


def chain_diagnostics(chains: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split R̂ and bulk ESS per observation and parameter of chains ``(n, C, T, P)``: two arrays ``(n, P)``."""
    n, _, _, p = chains.shape
    rhat = np.array([[split_rhat(chains[i, :, :, j]) for j in range(p)] for i in range(n)])
    ess = np.array([[effective_sample_size(chains[i, :, :, j]) for j in range(p)] for i in range(n)])
    return rhat, ess


@dataclass
class BlindEvaluation:
    """Metrics (flat, JSON-ready), tables and the numbers the figures need."""

    metrics: dict[str, float]
    tables: dict[str, pd.DataFrame]
    ranks: dict[str, np.ndarray]  #: method -> (n, 3) SBC ranks
    n_ranks: dict[str, int]  #: method -> the ranks' maximum L


def _pooled(draws: np.ndarray, thin: int) -> np.ndarray:
    return draws[:, :, ::thin].reshape(draws.shape[0], -1, draws.shape[-1])


def evaluate_blind(obs: BlindObservations, shard: BlindShard, *, thin: int = 5, n_bins: int = 4,
                   baseline_thin: int | None = None) -> BlindEvaluation:
    """Convergence, calibration and posterior widths of the blind chains and the two baselines.

    Args:
        obs: all observations (rows ``shard.indices`` are evaluated).
        shard: the merged shards (:func:`read_blind_shards`).
        thin: thinning of the Gibbs chains for the SBC ranks.
        n_bins: bins of the rank χ² test (keep ≥ 5 expected counts per bin: n_obs / n_bins ≥ 5).
        baseline_thin: thinning of the baselines' HMC draws; default: so that they give about
            as many ranks as the Gibbs chains.

    Metrics (per parameter ``p`` of :data:`THETA_NAMES`): ``rhat_median_p``, ``rhat_max_p``,
    ``ess_median_p``, ``ess_min_p`` (Gibbs chains, over observations); ``sbc_pvalue_<method>_p``;
    ``width_ratio_blind_to_oracle_p`` and ``width_ratio_gaussian_dust_to_blind_p`` (medians over
    observations of the ratio of posterior standard deviations); ``zscore_rms_<method>_p`` (RMS of
    (mean − truth)/sd, ≈ 1 when calibrated); ``dust_rmse_blind`` (posterior-mean dust against the truth).
    """
    truth = obs.theta[shard.indices]
    rhat, ess = chain_diagnostics(shard.chains)
    pooled = {"blind": _pooled(shard.chains, thin)}
    n_blind = pooled["blind"].shape[1]
    for name in ("oracle", "gaussian_dust"):
        draws = getattr(shard, name)
        step = baseline_thin or max(1, int(round(draws.shape[1] * draws.shape[2] / max(n_blind, 1))))
        pooled[name] = _pooled(draws, step)
    metrics: dict[str, float] = {"n_observations": float(len(truth)), "n_chains": float(shard.chains.shape[1]),
                                 "n_iterations": float(shard.chains.shape[2]),
                                 "hmc_accept_mean": float(shard.accept.mean())}
    ranks, n_ranks, rows = {}, {}, []
    sd = {m: d.std(axis=1) for m, d in pooled.items()}
    mean = {m: d.mean(axis=1) for m, d in pooled.items()}
    for m, d in pooled.items():
        ranks[m] = sbc_ranks(truth, d)
        n_ranks[m] = d.shape[1]
    for j, p in enumerate(THETA_NAMES):
        metrics[f"rhat_median_{p}"] = float(np.median(rhat[:, j]))
        metrics[f"rhat_max_{p}"] = float(np.max(rhat[:, j]))
        metrics[f"ess_median_{p}"] = float(np.median(ess[:, j]))
        metrics[f"ess_min_{p}"] = float(np.min(ess[:, j]))
        for m in pooled:
            metrics[f"sbc_pvalue_{m}_{p}"] = rank_uniformity_pvalue(ranks[m][:, j], n_ranks[m], n_bins)
            z = (mean[m][:, j] - truth[:, j]) / sd[m][:, j]
            metrics[f"zscore_rms_{m}_{p}"] = float(np.sqrt(np.mean(z**2)))
        metrics[f"width_ratio_blind_to_oracle_{p}"] = float(np.median(sd["blind"][:, j] / sd["oracle"][:, j]))
        metrics[f"width_ratio_gaussian_dust_to_blind_{p}"] = float(
            np.median(sd["gaussian_dust"][:, j] / sd["blind"][:, j]))
    metrics["dust_rmse_blind"] = float(np.sqrt(np.mean((shard.dust_mean - obs.dust[shard.indices]) ** 2)))
    for i, index in enumerate(shard.indices):
        row: dict[str, Any] = {"observation": int(index)}
        for j, p in enumerate(THETA_NAMES):
            row[f"truth_{p}"] = truth[i, j]
            row[f"rhat_{p}"], row[f"ess_{p}"] = rhat[i, j], ess[i, j]
            for m in pooled:
                row[f"{m}_mean_{p}"], row[f"{m}_sd_{p}"] = mean[m][i, j], sd[m][i, j]
                row[f"{m}_rank_{p}"] = int(ranks[m][i, j])
        rows.append(row)
    return BlindEvaluation(metrics, {"blind_observations.csv": pd.DataFrame(rows)}, ranks, n_ranks)


def predictor_path(settings: Mapping[str, Any], model_path: str) -> list[str]:
    """The checkpoint ``blind_separate`` reads: ``[model_path]`` for ``predictor: learned``, none for ``gaussian``."""
    kind = settings["predictor"]
    if kind not in ("learned", "gaussian"):
        raise ValueError(f"separation.blind.predictor={kind!r}; choose learned or gaussian")
    return [model_path] if kind == "learned" else []


def shard_seed(seed: int, shard: int) -> int:
    """A shard's seed (distinct streams per shard; the draws depend on the sharding, the truths do not)."""
    return int(seed) * 1000 + 10 * int(shard)


def load_predictor(kind: str, model_path: str | None, gaussian: GaussianDustPredictor,
                   device: torch.device) -> tuple[ConditionalPredictor, LinearBetaSchedule]:
    """The Gibbs chain's predictor and its schedule: the learned φ-conditioned model, or ``gaussian`` itself."""
    if kind == "gaussian":
        return gaussian, gaussian.schedule
    if not model_path or not Path(model_path).exists():
        raise FileNotFoundError(f"{model_path}: the φ-conditioned score model is missing; run rule "
                                "train_blind_score_model or set separation.blind.predictor: gaussian")
    from simobs.separation.model import load_conditional_predictor  # the learned model's module (issue #15)

    model = load_conditional_predictor(model_path, device)
    return model, model.schedule


def blind_figures(obs: BlindObservations, shard: BlindShard, evaluation: BlindEvaluation, *, n_corner: int = 2,
                  thin: int = 5, n_bins: int = 4) -> dict[str, Any]:
    """The stage's figures by file name: ``blind_traces.png`` (the first observation's chains),
    ``blind_corner.png`` (blind, Gaussian-dust and oracle draws against the truth for the first
    ``n_corner`` observations) and ``sbc_ranks.png`` (rank histograms per method and parameter)."""
    from simobs.separation.figures import blind_corner_figure, blind_trace_figure, sbc_rank_figure

    truth = obs.theta[shard.indices]
    panels = []
    for k in range(min(n_corner, len(truth))):
        draws = {"blind": shard.chains[k, :, ::thin].reshape(-1, 3),
                 "gaussian_dust": shard.gaussian_dust[k].reshape(-1, 3), "oracle": shard.oracle[k].reshape(-1, 3)}
        panels.append((f"observation {int(shard.indices[k])}", draws, truth[k]))
    pvalues = {m: [evaluation.metrics[f"sbc_pvalue_{m}_{p}"] for p in THETA_NAMES] for m in evaluation.ranks}
    return {
        "blind_traces.png": blind_trace_figure(shard.chains[0], truth[0], THETA_NAMES,
                                               f"observation {int(shard.indices[0])}: Gibbs chains"),
        "blind_corner.png": blind_corner_figure(panels, THETA_NAMES),
        "sbc_ranks.png": sbc_rank_figure(evaluation.ranks, evaluation.n_ranks, THETA_NAMES, n_bins, pvalues),
    }


def spectrum_from_grid(path: str | os.PathLike[str], npix: int, pixel_size_arcmin: float,
                       device: str | torch.device = "cpu") -> SpectrumInterpolator:
    """The interpolated ``Σ_φ`` of the patch from rule ``cmb_spectra_grid``'s file (normalised at the grid's cosmology)."""
    return SpectrumInterpolator(read_spectra_grid(path), int(npix), float(pixel_size_arcmin)).to(device)
