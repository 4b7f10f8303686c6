"""Evaluation of the diffusion posterior against the truth and the Wiener-filter baseline.

Per component (dust; CMB in standardised units ``(y − dust)/σ``):

* MSE of the posterior mean and its ratio to the Wiener estimate's MSE (< 1: better);
* binned power spectra of truth, posterior samples and Wiener estimate, relative errors
  per k bin with their standard errors over observations, and the largest error below
  half the Nyquist frequency;
* calibration per k bin: the posterior variance (sample power minus the power of the
  posterior mean) against the squared error of the posterior mean; for an exact
  posterior the two agree in expectation, and together they add up to the true power;
* r(k) between the posterior mean (and the Wiener estimate) and the truth;
* empirical coverage of the pixel-wise central credible intervals, with the Wiener
  (Gaussian) posterior's coverage for reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import norm

from simobs.separation.dataset import FieldDataset
from simobs.separation.figures import (
    coverage_figure,
    cross_correlation_figure,
    power_spectra_figure,
    separation_examples_figure,
)
from simobs.separation.metrics import (
    binned_power_spectrum,
    cross_correlation,
    interval_coverage,
    mse,
    power_relative_error,
    power_relative_error_stderr,
)
from simobs.separation.sample import PosteriorSummary
from simobs.separation.wiener import estimate_power_2d, wiener_filter, wiener_posterior_variance

__all__ = ["SeparationEvaluation", "evaluate_separation"]

HALF_NYQUIST = 0.25  # cycles per pixel


@dataclass
class SeparationEvaluation:
    """Scalar metrics, per-k-bin tables and figures (keys are file names without folders)."""

    metrics: dict[str, float]
    tables: dict[str, pd.DataFrame]
    figures: dict[str, Figure]


def evaluate_separation(
    fields: FieldDataset, indices: np.ndarray, summary: PosteriorSummary, *, n_examples: int = 3
) -> SeparationEvaluation:
    """Compare posterior summaries with the truth and with the Wiener filter.

    Args:
        fields: the field dataset (training maps are used for the Wiener dust spectrum).
        indices: observation indices of ``summary`` rows, shape ``(n,)``.
        summary: merged posterior shards.
        n_examples: observations shown in the example figures.
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
    post = {
        "dust": (summary.dust_mean, summary.dust_std, summary.dust_lower, summary.dust_upper,
                 summary.dust_sample_power, summary.dust_samples),
        "cmb": (summary.cmb_mean, summary.cmb_std, summary.cmb_lower, summary.cmb_upper,
                summary.cmb_sample_power, summary.cmb_samples),
    }
    n_bins = summary.k_centres.shape[0]
    k = summary.k_centres
    low_k = k < HALF_NYQUIST
    metrics: dict[str, float] = {"n_observations": float(len(indices))}
    tables: dict[str, pd.DataFrame] = {}
    spectra: dict[str, dict[str, np.ndarray]] = {}
    stderrs: dict[str, dict[str, np.ndarray]] = {}
    r_curves: dict[str, dict[str, np.ndarray]] = {}
    coverage_curves: dict[str, np.ndarray] = {}
    figures: dict[str, Figure] = {}
    levels = summary.credible_levels
    for comp in ("dust", "cmb"):
        mean, std, lower, upper, sample_power, samples = post[comp]
        metrics[f"{comp}_mse"] = mse(mean, truth[comp])
        metrics[f"{comp}_mse_wiener"] = mse(wiener[comp], truth[comp])
        metrics[f"{comp}_mse_ratio_vs_wiener"] = metrics[f"{comp}_mse"] / metrics[f"{comp}_mse_wiener"]
        _, p_truth = binned_power_spectrum(truth[comp], n_bins)
        _, p_wiener = binned_power_spectrum(wiener[comp], n_bins)
        err_samples = power_relative_error(sample_power, p_truth)
        err_wiener = power_relative_error(p_wiener, p_truth)
        err_stderr = power_relative_error_stderr(sample_power, p_truth)
        _, p_mean = binned_power_spectrum(mean, n_bins)
        _, p_residual = binned_power_spectrum(np.asarray(mean, np.float64) - truth[comp], n_bins)
        posterior_variance = sample_power - p_mean  # mean over samples of |x_s − x̄|², per bin
        low_err = np.where(low_k & np.isfinite(err_samples), np.abs(err_samples), -np.inf)
        worst = int(np.argmax(low_err))
        found = bool(np.isfinite(low_err[worst]))  # no bin below half Nyquist with modes: NaN
        metrics[f"{comp}_power_max_abs_rel_error_below_half_nyquist"] = float(low_err[worst]) if found else np.nan
        metrics[f"{comp}_power_max_abs_rel_error_below_half_nyquist_stderr"] = (
            float(err_stderr[worst]) if found else np.nan)
        metrics[f"{comp}_power_mean_abs_rel_error_below_half_nyquist"] = (
            float(np.mean(low_err[np.isfinite(low_err)])) if found else np.nan)
        _, r_post = cross_correlation(mean, truth[comp], n_bins)
        _, r_wien = cross_correlation(wiener[comp], truth[comp], n_bins)
        cov = np.array([interval_coverage(truth[comp], lower[:, j], upper[:, j]) for j in range(len(levels))])
        z = norm.ppf(0.5 + levels / 2)
        wstd = wiener_std[comp][:, None, None]
        cov_w = np.array([interval_coverage(truth[comp], wiener[comp] - zz * wstd, wiener[comp] + zz * wstd)
                          for zz in z])
        for j, level in enumerate(levels):
            metrics[f"{comp}_coverage_{round(100 * level)}"] = float(cov[j])
            metrics[f"{comp}_coverage_{round(100 * level)}_wiener"] = float(cov_w[j])
        metrics[f"{comp}_mean_posterior_std"] = float(np.mean(std))
        tables[f"{comp}_power_spectra.csv"] = pd.DataFrame({
            "k_cycles_per_pixel": k,
            "power_truth": p_truth.mean(axis=0),
            "power_posterior_samples": sample_power.mean(axis=0),
            "power_wiener": p_wiener.mean(axis=0),
            "rel_error_posterior_samples": err_samples,
            "rel_error_posterior_samples_stderr": err_stderr,
            "rel_error_wiener": err_wiener,
            "posterior_variance": posterior_variance.mean(axis=0),
            "squared_error_posterior_mean": p_residual.mean(axis=0),
            "r_posterior_mean": r_post,
            "r_wiener": r_wien,
        })
        spectra[comp] = {"truth": p_truth.mean(axis=0), "posterior samples": sample_power.mean(axis=0),
                         "Wiener estimate": p_wiener.mean(axis=0)}
        stderrs[comp] = {"posterior samples": err_stderr}
        r_curves[comp] = {"posterior mean": r_post, "Wiener": r_wien}
        coverage_curves[f"{comp} (diffusion)"] = cov
        coverage_curves[f"{comp} (Wiener)"] = cov_w
        # cmb = (y − dust)/σ maps dust intervals onto CMB intervals: identical coverage.
        m = min(n_examples, len(indices))
        figures[f"{comp}_examples.png"] = separation_examples_figure(
            y[:m], truth[comp][:m], mean[:m], std[:m], samples[:m], sigma[:m], comp
        )
    tables["coverage.csv"] = pd.DataFrame({"nominal": levels, **coverage_curves})
    figures["power_spectra.png"] = power_spectra_figure(k, spectra, HALF_NYQUIST, stderrs)
    figures["cross_correlation.png"] = cross_correlation_figure(k, r_curves)
    figures["coverage.png"] = coverage_figure(levels, {
        "diffusion posterior": coverage_curves["dust (diffusion)"],
        "Wiener (Gaussian) posterior": coverage_curves["dust (Wiener)"],
    })
    return SeparationEvaluation(metrics, tables, figures)
