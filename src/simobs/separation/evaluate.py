"""Evaluation of the diffusion posterior against the truth, the Wiener filter and the Gaussian-part sampler.

Per component (dust; CMB in standardised units ``(y − dust)/σ``):

* MSE of the posterior mean and its ratio to the Wiener estimate's MSE (< 1: better);
* binned power spectra of truth, posterior samples, posterior mean and Wiener estimate,
  relative errors per k bin with their standard errors over observations, and the
  largest error below half the Nyquist frequency;
* calibration per k bin, both sides unbiased estimates of the posterior variance V for
  an exact posterior sampled S times: ``posterior_variance`` = S/(S−1) × (mean over
  samples of |x_s − x̄|²) and ``posterior_variance_from_error`` = |x̄ − x|² / (1 + 1/S)
  (the S-sample mean x̄ misses the posterior mean by V/S on top of V);
* r(k) between the posterior mean (and the Wiener estimate) and the truth;
* empirical coverage of the pixel-wise central credible intervals, with the Wiener
  (Gaussian) posterior's coverage for reference.

**Deterministic methods** (``probability_flow``, ``tweedie``) give one estimate and no
spread: coverage, posterior std, calibration and the *sample* power errors are NaN
(they would describe a posterior that was not sampled); the power of the estimate is
reported as the posterior mean's (``power_posterior_mean``, ``..._posterior_mean``).

**Gaussian-part baseline** (``baseline`` given): the same sampler, method, steps,
samples and seeds with the closed-form Gaussian predictor alone (no network), whose
exact posterior is the Wiener posterior.  Its table columns (``..._gaussian_sampler``)
and metrics (``gaussian_sampler_...``) show what the discretisation alone does beside
what the model does; the exact per-mode discretisation error of its power at the configured steps
(:mod:`simobs.separation.discretisation`, no Monte Carlo) is
``{comp}_power_max_abs_discretisation_error_below_half_nyquist``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from scipy.stats import norm

from simobs.separation.dataset import FieldDataset
from simobs.separation.discretisation import gaussian_sampler_moments
from simobs.separation.figures import (
    coverage_figure,
    cross_correlation_figure,
    power_spectra_figure,
    separation_examples_figure,
)
from simobs.separation.metrics import (
    binned_mode_average,
    binned_power_spectrum,
    cross_correlation,
    interval_coverage,
    mse,
    power_relative_error,
    power_relative_error_stderr,
)
from simobs.separation.sample import STOCHASTIC_METHODS, PosteriorSummary, separate_observations
from simobs.separation.sde import LinearBetaSchedule
from simobs.separation.wiener import (
    GaussianNoisePredictor,
    estimate_power_2d,
    wiener_filter,
    wiener_posterior_variance,
)

__all__ = ["GaussianBaseline", "SeparationEvaluation", "evaluate_separation"]

HALF_NYQUIST = 0.25  # cycles per pixel
BASELINE = "_gaussian_sampler"  # suffix of the baseline's table columns; its metrics start with "gaussian_sampler_"


@dataclass
class GaussianBaseline:
    """How the model was sampled (``separation.sde`` / ``separation.sampling``), to repeat it without the network."""

    schedule: LinearBetaSchedule
    n_steps: int
    time_power: float = 1.0
    seed: int = 0
    batch_size: int = 40


@dataclass
class SeparationEvaluation:
    """Scalar metrics, per-k-bin tables and figures (keys are file names without folders)."""

    metrics: dict[str, float]
    tables: dict[str, pd.DataFrame]
    figures: dict[str, Figure]


def _largest_low_k(err: np.ndarray, stderr: np.ndarray, low_k: np.ndarray) -> tuple[float, float, float]:
    """(max |err|, its stderr, mean |err|) over the bins below half Nyquist; NaN without such bins."""
    low = np.where(low_k & np.isfinite(err), np.abs(err), -np.inf)
    worst = int(np.argmax(low))
    if not np.isfinite(low[worst]):
        return np.nan, np.nan, np.nan
    return float(low[worst]), float(stderr[worst]), float(np.mean(low[np.isfinite(low)]))


def _posterior_rows(
    comp: str, sfx: str, post: dict[str, np.ndarray], truth: np.ndarray, p_truth: np.ndarray, mse_wiener: float,
    levels: np.ndarray, n_samples: int, stochastic: bool, low_k: np.ndarray,
) -> tuple[dict[str, float], dict[str, np.ndarray], np.ndarray]:
    """Metrics, table columns (names ending in ``sfx``) and coverage (L,) of the model's or the baseline's posterior."""
    n_bins = p_truth.shape[-1]
    nan_bins = np.full(n_bins, np.nan)
    metrics = {f"{comp}_mse": mse(post["mean"], truth)}
    metrics[f"{comp}_mse_ratio_vs_wiener"] = metrics[f"{comp}_mse"] / mse_wiener
    _, p_mean = binned_power_spectrum(post["mean"], n_bins)
    _, p_residual = binned_power_spectrum(np.asarray(post["mean"], np.float64) - truth, n_bins)
    columns = {"power_posterior_mean": p_mean.mean(axis=0), "rel_error_posterior_mean": power_relative_error(p_mean,
                                                                                                          p_truth)}
    m_err, m_se, _ = _largest_low_k(columns["rel_error_posterior_mean"], power_relative_error_stderr(p_mean, p_truth),
                                    low_k)
    metrics[f"{comp}_power_max_abs_rel_error_below_half_nyquist_posterior_mean"] = m_err
    metrics[f"{comp}_power_max_abs_rel_error_below_half_nyquist_posterior_mean_stderr"] = m_se
    if stochastic and n_samples > 1:
        err = power_relative_error(post["sample_power"], p_truth)
        err_se = power_relative_error_stderr(post["sample_power"], p_truth)
        worst, worst_se, mean_err = _largest_low_k(err, err_se, low_k)
        columns.update({
            "power_posterior_samples": post["sample_power"].mean(axis=0),
            "rel_error_posterior_samples": err,
            "rel_error_posterior_samples_stderr": err_se,
            # Both unbiased for the posterior variance when the posterior is exact (module docstring).
            "posterior_variance": (post["sample_power"] - p_mean).mean(axis=0) * n_samples / (n_samples - 1),
            "posterior_variance_from_error": p_residual.mean(axis=0) / (1 + 1 / n_samples),
        })
        cov = np.array([interval_coverage(truth, post["lower"][:, j], post["upper"][:, j]) for j in range(len(levels))])
        mean_std = float(np.mean(post["std"]))
    else:  # one estimate, no spread: nothing to report about a sampled posterior
        columns.update({name: nan_bins for name in ("power_posterior_samples", "rel_error_posterior_samples",
                                                    "rel_error_posterior_samples_stderr", "posterior_variance",
                                                    "posterior_variance_from_error")})
        worst = worst_se = mean_err = np.nan
        cov = np.full(len(levels), np.nan)
        mean_std = np.nan
    metrics[f"{comp}_power_max_abs_rel_error_below_half_nyquist"] = worst
    metrics[f"{comp}_power_max_abs_rel_error_below_half_nyquist_stderr"] = worst_se
    metrics[f"{comp}_power_mean_abs_rel_error_below_half_nyquist"] = mean_err
    for j, level in enumerate(levels):
        metrics[f"{comp}_coverage_{round(100 * level)}"] = float(cov[j])
    metrics[f"{comp}_mean_posterior_std"] = mean_std
    _, columns["r_posterior_mean"] = cross_correlation(post["mean"], truth, n_bins)
    return metrics, {f"{name}{sfx}": value for name, value in columns.items()}, cov


def _discretisation_error(
    dust_power: np.ndarray, cmb_power: np.ndarray, sigma: np.ndarray, baseline: GaussianBaseline, method: str,
    n_bins: int,
) -> dict[str, np.ndarray]:
    """Exact relative error of the Gaussian-part sampler's power per k bin, averaged over the observations' σ."""
    got = {"dust": np.zeros(n_bins), "cmb": np.zeros(n_bins)}
    want = {"dust": np.zeros(n_bins), "cmb": np.zeros(n_bins)}
    for s in np.asarray(sigma, np.float64):
        if s <= 0:
            continue
        m = gaussian_sampler_moments(dust_power, cmb_power, float(s), baseline.schedule, method=method,
                                     n_steps=baseline.n_steps, time_power=baseline.time_power)
        got["dust"] += binned_mode_average(m.sample_power, n_bins)
        want["dust"] += binned_mode_average(m.exact_power, n_bins)
        # cmb = (y − x)/σ: per mode ((1 − gain)² (D + σ²C) + variance) / σ², exactly C.
        cmb_sample = ((1 - m.gain) ** 2 * (dust_power + s**2 * cmb_power) + m.variance) / s**2
        got["cmb"] += binned_mode_average(cmb_sample, n_bins)
        want["cmb"] += binned_mode_average(cmb_power, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {comp: got[comp] / want[comp] - 1 for comp in got}


def evaluate_separation(
    fields: FieldDataset, indices: np.ndarray, summary: PosteriorSummary, *, n_examples: int = 3,
    baseline: GaussianBaseline | None = None,
) -> SeparationEvaluation:
    """Compare posterior summaries with the truth, the Wiener filter and (optionally) the Gaussian-part sampler.

    Args:
        fields: the field dataset (training maps are used for the Wiener dust spectrum).
        indices: observation indices of ``summary`` rows, shape ``(n,)``.
        summary: merged posterior shards.
        n_examples: observations shown in the example figures.
        baseline: how the model was sampled; when given, the Gaussian part alone is
            sampled the same way (float64, CPU) and reported beside the model.
    """
    y = fields.observation[indices].astype(np.float64)
    sigma = fields.sigma[indices]
    truth = {"dust": fields.test_dust[indices].astype(np.float64), "cmb": fields.test_cmb[indices].astype(np.float64)}
    dust_mean, dust_power = estimate_power_2d(fields.train_dust)
    wiener_dust = wiener_filter(y, sigma, dust_power, fields.cmb_power, dust_mean)
    safe_sigma = np.where(sigma > 0, sigma, 1.0)[:, None, None]
    wiener = {"dust": wiener_dust, "cmb": (y - wiener_dust) / safe_sigma}
    _, wiener_pixel_var = wiener_posterior_variance(sigma, dust_power, fields.cmb_power)
    wiener_std = {"dust": np.sqrt(wiener_pixel_var), "cmb": np.sqrt(wiener_pixel_var) / safe_sigma[:, 0, 0]}
    n_bins = summary.k_centres.shape[0]
    k = summary.k_centres
    low_k = k < HALF_NYQUIST
    levels = summary.credible_levels
    stochastic = summary.method in STOCHASTIC_METHODS
    n_samples = int(summary.n_samples)
    posteriors = {"": summary}
    if baseline is not None:
        predictor = GaussianNoisePredictor(dust_power, fields.cmb_power, baseline.schedule, dust_mean)
        posteriors[BASELINE] = separate_observations(
            predictor, y, sigma, schedule=baseline.schedule, cmb_power=fields.cmb_power, n_samples=n_samples,
            batch_size=baseline.batch_size, method=summary.method, n_steps=baseline.n_steps,
            time_power=baseline.time_power, seed=baseline.seed, indices=indices, credible_levels=levels,
            n_saved_samples=0, n_bins=n_bins, dtype=torch.float64,
        )
        discretisation = (_discretisation_error(dust_power, fields.cmb_power, sigma, baseline, summary.method, n_bins)
                          if stochastic else None)
    metrics: dict[str, float] = {"n_observations": float(len(indices)), "n_posterior_samples": float(n_samples)}
    tables: dict[str, pd.DataFrame] = {}
    spectra: dict[str, dict[str, np.ndarray]] = {}
    stderrs: dict[str, dict[str, np.ndarray]] = {}
    r_curves: dict[str, dict[str, np.ndarray]] = {}
    coverage_curves: dict[str, np.ndarray] = {}
    figures: dict[str, Figure] = {}
    estimate_label = "posterior samples" if stochastic else {"tweedie": "Tweedie posterior mean"}.get(
        summary.method, f"{summary.method} estimate")
    for comp in ("dust", "cmb"):
        _, p_truth = binned_power_spectrum(truth[comp], n_bins)
        _, p_wiener = binned_power_spectrum(wiener[comp], n_bins)
        mse_wiener = mse(wiener[comp], truth[comp])
        metrics[f"{comp}_mse_wiener"] = mse_wiener
        columns: dict[str, np.ndarray] = {"k_cycles_per_pixel": k, "power_truth": p_truth.mean(axis=0),
                                          "power_wiener": p_wiener.mean(axis=0),
                                          "rel_error_wiener": power_relative_error(p_wiener, p_truth)}
        coverages = {}
        for sfx, s in posteriors.items():
            post = {"mean": getattr(s, f"{comp}_mean"), "std": getattr(s, f"{comp}_std"),
                    "lower": getattr(s, f"{comp}_lower"), "upper": getattr(s, f"{comp}_upper"),
                    "sample_power": getattr(s, f"{comp}_sample_power")}
            m, cols, coverages[sfx] = _posterior_rows(comp, sfx, post, truth[comp], p_truth, mse_wiener, levels,
                                                      n_samples, stochastic, low_k)
            metrics.update({(f"gaussian_sampler_{key}" if sfx else key): v for key, v in m.items()})
            columns.update(cols)
        if baseline is not None and discretisation is not None:
            columns["discretisation_error_gaussian_sampler"] = discretisation[comp]
            metrics[f"{comp}_power_max_abs_discretisation_error_below_half_nyquist"] = _largest_low_k(
                discretisation[comp], np.full(n_bins, np.nan), low_k)[0]
        _, columns["r_wiener"] = cross_correlation(wiener[comp], truth[comp], n_bins)
        z = norm.ppf(0.5 + levels / 2)
        wstd = wiener_std[comp][:, None, None]
        cov_w = np.array([interval_coverage(truth[comp], wiener[comp] - zz * wstd, wiener[comp] + zz * wstd)
                          for zz in z])
        for j, level in enumerate(levels):
            metrics[f"{comp}_coverage_{round(100 * level)}_wiener"] = float(cov_w[j])
        tables[f"{comp}_power_spectra.csv"] = pd.DataFrame(columns)
        main = columns["power_posterior_samples"] if stochastic else columns["power_posterior_mean"]
        main_err = columns["rel_error_posterior_samples_stderr"] if stochastic else power_relative_error_stderr(
            binned_power_spectrum(getattr(summary, f"{comp}_mean"), n_bins)[1], p_truth)
        spectra[comp] = {"truth": p_truth.mean(axis=0), estimate_label: main}
        stderrs[comp] = {estimate_label: main_err}
        if BASELINE in posteriors and stochastic:
            spectra[comp]["Gaussian part alone (same sampler)"] = columns[f"power_posterior_samples{BASELINE}"]
        spectra[comp]["Wiener estimate"] = p_wiener.mean(axis=0)
        r_curves[comp] = {"posterior mean": columns["r_posterior_mean"], "Wiener": columns["r_wiener"]}
        coverage_curves[f"{comp} (diffusion)"] = coverages[""]
        if BASELINE in posteriors:
            coverage_curves[f"{comp} (Gaussian part alone)"] = coverages[BASELINE]
        coverage_curves[f"{comp} (Wiener)"] = cov_w
        # cmb = (y − dust)/σ maps dust intervals onto CMB intervals: identical coverage.
        m = min(n_examples, len(indices))
        figures[f"{comp}_examples.png"] = separation_examples_figure(
            y[:m], truth[comp][:m], getattr(summary, f"{comp}_mean")[:m], getattr(summary, f"{comp}_std")[:m],
            getattr(summary, f"{comp}_samples")[:m], sigma[:m], comp,
        )
    tables["coverage.csv"] = pd.DataFrame({"nominal": levels, **coverage_curves})
    figures["power_spectra.png"] = power_spectra_figure(k, spectra, HALF_NYQUIST, stderrs)
    figures["cross_correlation.png"] = cross_correlation_figure(k, r_curves)
    curves = {"Wiener (Gaussian) posterior": coverage_curves["dust (Wiener)"]}
    if stochastic:
        curves = {"diffusion posterior": coverage_curves["dust (diffusion)"], **curves}
        if BASELINE in posteriors:
            curves["Gaussian part alone (same sampler)"] = coverage_curves["dust (Gaussian part alone)"]
    figures["coverage.png"] = coverage_figure(levels, curves)
    return SeparationEvaluation(metrics, tables, figures)
