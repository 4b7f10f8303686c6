"""Posterior summaries (sharded) and the evaluation against the Wiener filter, on Gaussian dust."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simobs.separation.dataset import FieldDataset, read_posterior_shards, shard_indices, write_posterior_shard
from simobs.separation.evaluate import GaussianBaseline, evaluate_separation
from simobs.separation.fields import gaussian_random_field
from simobs.separation.sample import separate_observations
from simobs.separation.sde import LinearBetaSchedule
from simobs.separation.wiener import GaussianNoisePredictor, estimate_power_2d


@pytest.fixture(scope="module")
def gaussian_fields() -> FieldDataset:
    from .conftest import cmb_like_power
    from simobs.separation.fields import power_law_power_2d

    rng = np.random.default_rng(0)
    dust_power, cmb_power = power_law_power_2d(16, -2.5), cmb_like_power(16)
    train = gaussian_random_field(dust_power, 2000, rng)
    dust, cmb = gaussian_random_field(dust_power, 6, rng), gaussian_random_field(cmb_power, 6, rng)
    sigma = np.linspace(0.5, 2.0, 6)
    return FieldDataset(train, dust, cmb, sigma, dust + sigma[:, None, None] * cmb, cmb_power, {})


def _separate(fields: FieldDataset, idx: np.ndarray, **kw):
    mean, power = estimate_power_2d(fields.train_dust)
    schedule = LinearBetaSchedule()
    predictor = GaussianNoisePredictor(power, fields.cmb_power, schedule, mean)
    args = dict(schedule=schedule, cmb_power=fields.cmb_power, n_samples=200, batch_size=100, n_steps=30,
                seed=5, indices=idx, credible_levels=(0.5, 0.68, 0.95), n_saved_samples=2, n_bins=4)
    return separate_observations(predictor, fields.observation[idx], fields.sigma[idx], **{**args, **kw})


def test_sharding_does_not_change_results_and_evaluation(gaussian_fields, tmp_path) -> None:
    paths = []
    for shard in range(2):
        idx = shard_indices(6, 2, shard)
        paths.append(tmp_path / f"shard{shard}.h5")
        write_posterior_shard(paths[-1], idx, _separate(gaussian_fields, idx), {"seed": 5})
    indices, merged = read_posterior_shards(paths[::-1])
    np.testing.assert_array_equal(indices, np.arange(6))
    whole = _separate(gaussian_fields, np.arange(6))
    np.testing.assert_allclose(merged.dust_mean, whole.dust_mean, atol=1e-6)
    assert merged.dust_lower.shape == (6, 3, 16, 16) and merged.dust_samples.shape == (6, 2, 16, 16)
    np.testing.assert_allclose(merged.cmb_mean * gaussian_fields.sigma[:, None, None],
                               gaussian_fields.observation - merged.dust_mean, atol=1e-4)

    result = evaluate_separation(gaussian_fields, indices, merged)
    m = result.metrics
    # Exact score ⇒ the diffusion posterior is the Wiener posterior: same MSE (up to 1/S), nominal coverage.
    assert abs(m["dust_mse_ratio_vs_wiener"] - 1) < 0.05 and abs(m["cmb_mse_ratio_vs_wiener"] - 1) < 0.05
    for level in (50, 68, 95):
        assert abs(m[f"dust_coverage_{level}"] - level / 100) < 0.06, (level, m[f"dust_coverage_{level}"])
        assert abs(m[f"dust_coverage_{level}_wiener"] - level / 100) < 0.06
    # Six maps: the lowest bins carry ~20 % sample variance of the truth's own spectrum.
    assert m["dust_power_max_abs_rel_error_below_half_nyquist"] < 0.5
    assert {"power_spectra.png", "coverage.png", "cross_correlation.png", "dust_examples.png",
            "cmb_examples.png"} <= set(result.figures)
    table = result.tables["dust_power_spectra.csv"]
    assert len(table) == 4 and np.all(table["r_posterior_mean"] > 0.5)
    # The exact posterior's power errors are noise: within a few of their standard errors.
    assert np.all(np.abs(table["rel_error_posterior_samples"]) < 4 * table["rel_error_posterior_samples_stderr"])
    assert m["dust_power_max_abs_rel_error_below_half_nyquist_stderr"] > 0
    # Calibration per k: the posterior variance is the expected squared error of the
    # posterior mean (six maps: ~20 % scatter in the lowest bin).
    ratio = table["posterior_variance"] / table["posterior_variance_from_error"]
    assert np.all((ratio > 0.6) & (ratio < 1.5)), ratio.to_numpy()


@pytest.fixture(scope="module")
def many_gaussian_fields(gaussian_fields) -> FieldDataset:
    """300 observations of Gaussian dust (for statistics over observations)."""
    rng = np.random.default_rng(1)
    from simobs.separation.fields import power_law_power_2d

    dust = gaussian_random_field(power_law_power_2d(16, -2.5), 300, rng)
    cmb = gaussian_random_field(gaussian_fields.cmb_power, 300, rng)
    sigma = rng.uniform(0.5, 2.0, 300)
    return FieldDataset(gaussian_fields.train_dust, dust, cmb, sigma, dust + sigma[:, None, None] * cmb,
                        gaussian_fields.cmb_power, {})


def test_calibration_columns_agree_for_an_exact_posterior_with_few_samples(many_gaussian_fields) -> None:
    """S = 4: unscaled, the sample variance ((S−1)/S V) and the squared error ((1+1/S) V) differ by 0.6×."""
    idx = np.arange(300)
    summary = _separate(many_gaussian_fields, idx, n_samples=4, batch_size=4, n_steps=20)
    table = evaluate_separation(many_gaussian_fields, idx, summary).tables["dust_power_spectra.csv"]
    ratio = (table["posterior_variance"] / table["posterior_variance_from_error"]).to_numpy()
    assert np.all(np.abs(ratio - 1) < 0.15), ratio  # 300 maps x 4 samples: ~5 % scatter per bin
    assert abs(ratio.mean() - 1) < 0.07, ratio


def test_gaussian_part_baseline_shows_the_discretisation_error(gaussian_fields) -> None:
    """The baseline repeats the sampling with the Gaussian part alone: here that is the model itself."""
    idx = np.arange(6)
    schedule = LinearBetaSchedule()
    for method, n_steps, bound in (("euler_maruyama", 4, (0.05, np.inf)), ("heun", 20, (0.0, 0.01))):
        summary = _separate(gaussian_fields, idx, method=method, n_steps=n_steps, dtype=torch.float64)
        m = evaluate_separation(gaussian_fields, idx, summary,
                                baseline=GaussianBaseline(schedule, n_steps, seed=5, batch_size=100)).metrics
        err = m["dust_power_max_abs_discretisation_error_below_half_nyquist"]
        assert bound[0] < err < bound[1], (method, err)
        # same predictor, sampler, steps, seeds and dtype: the same numbers
        assert abs(m["gaussian_sampler_dust_mse_ratio_vs_wiener"] - m["dust_mse_ratio_vs_wiener"]) < 1e-9
        assert m["gaussian_sampler_dust_coverage_68"] == m["dust_coverage_68"]
        assert np.isfinite(m["cmb_power_max_abs_discretisation_error_below_half_nyquist"])


@pytest.mark.parametrize("method", ["tweedie", "probability_flow"])
def test_deterministic_methods_report_no_posterior_spread(gaussian_fields, method: str) -> None:
    idx = np.arange(4)
    s = _separate(gaussian_fields, idx, method=method)
    assert s.dust_samples.shape[1] == 1 and np.all(s.dust_std == 0) and s.n_samples == 1 and s.method == method
    result = evaluate_separation(gaussian_fields, idx, s,
                                 baseline=GaussianBaseline(LinearBetaSchedule(), 30, seed=5, batch_size=100))
    m, table = result.metrics, result.tables["dust_power_spectra.csv"]
    for key in ("dust_coverage_68", "dust_coverage_95", "dust_mean_posterior_std", "cmb_coverage_50",
                "dust_power_max_abs_rel_error_below_half_nyquist", "gaussian_sampler_dust_coverage_68"):
        assert np.isnan(m[key]), key
    assert np.all(np.isnan(table["posterior_variance"])) and np.all(np.isnan(table["rel_error_posterior_samples"]))
    # The estimate's power is reported as the posterior mean's (the Tweedie mean is smooth: too little power).
    assert np.isfinite(m["dust_power_max_abs_rel_error_below_half_nyquist_posterior_mean"])
    if method == "tweedie":
        assert np.all(table["rel_error_posterior_mean"] < 0)
    assert np.isfinite(m["dust_mse_ratio_vs_wiener"])
    assert result.tables["coverage.csv"]["dust (diffusion)"].isna().all()


def test_power_error_below_half_nyquist_is_nan_without_such_a_bin(gaussian_fields) -> None:
    idx = np.arange(2)
    one_bin = _separate(gaussian_fields, idx, n_samples=4, batch_size=4, n_bins=1)  # its centre is Nyquist/2
    m = evaluate_separation(gaussian_fields, idx, one_bin).metrics
    assert np.isnan(m["dust_power_max_abs_rel_error_below_half_nyquist"])
    assert np.isnan(m["dust_power_max_abs_rel_error_below_half_nyquist_stderr"])
    assert np.isfinite(m["dust_mse_ratio_vs_wiener"])
