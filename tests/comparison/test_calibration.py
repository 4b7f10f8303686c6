import numpy as np
import pytest
from scipy.special import softmax

from simobs.comparison.calibration import (
    accuracy, apply_temperature, calibration_report, classwise_calibration_error, confusion_matrix,
    expected_calibration_error, fit_temperature, log_loss, reliability_curve,
)


def _calibrated_logits(n: int, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true label distribution (calibrated by construction)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, k))
    p = softmax(z, axis=1)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return z, y


def test_ece_zero_for_perfect_and_large_for_overconfident():
    y = np.array([0, 1, 2, 0])
    perfect = np.eye(3)[y]
    assert expected_calibration_error(perfect, y) == pytest.approx(0.0)
    wrong = np.eye(3)[(y + 1) % 3]
    assert expected_calibration_error(wrong, y) == pytest.approx(1.0)
    assert accuracy(wrong, y) == 0.0


def test_ece_small_for_calibrated_logits():
    z, y = _calibrated_logits(20000)
    assert expected_calibration_error(softmax(z, 1), y) < 0.02
    assert np.all(classwise_calibration_error(softmax(z, 1), y) < 0.02)


def test_temperature_scaling_repairs_overconfidence():
    z, y = _calibrated_logits(8000, seed=3)
    over = 3.0 * z  # over-confident classifier
    val, test = slice(0, 4000), slice(4000, None)
    assert expected_calibration_error(softmax(over[test], 1), y[test]) > 0.1
    t = fit_temperature(over[val], y[val])
    assert t == pytest.approx(3.0, rel=0.1)
    fixed = apply_temperature(over[test], t)
    assert expected_calibration_error(softmax(fixed, 1), y[test]) < 0.05
    assert log_loss(fixed, y[test]) < log_loss(over[test], y[test])
    # temperature never changes the predicted model
    assert np.array_equal(fixed.argmax(1), over[test].argmax(1))


def test_confusion_matrix_rows_and_reliability_table():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    cm = confusion_matrix(p, y)
    assert np.allclose(cm, [[0.5, 0.5], [1 / 3, 2 / 3]])
    assert np.allclose(confusion_matrix(p, y, normalise=False).sum(), 5)
    table = reliability_curve(p, y, n_bins=5)
    assert table["count"].sum() == 5 and len(table) == 5
    rep = calibration_report(np.log(p), y, n_bins=5)
    assert rep.accuracy == pytest.approx(0.6)
    assert set(rep.metrics("test_", ["a", "b"])) >= {"test_accuracy", "test_ece", "test_ece_a", "test_log_loss"}


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="labels must lie"):
        expected_calibration_error(np.ones((2, 2)) / 2, np.array([0, 2]))
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(np.zeros((1, 2)), 0.0)


def _exact_equal_prior_posterior(counts=(100000, 10000, 10000), seed=0):
    """1-D Gaussian models N(mu_k, 1) with imbalanced counts; logits log p(x | M_k) are the
    exact posterior under *equal* priors (what a balanced-weight classifier estimates)."""
    rng = np.random.default_rng(seed)
    mu = np.array([0.0, 1.5, 3.0])
    y = np.repeat(np.arange(3), counts)
    x = mu[y] + rng.normal(size=len(y))
    return -0.5 * (x[:, None] - mu[None, :]) ** 2, y


def test_imbalanced_split_calibration_is_judged_under_equal_priors():
    """Issue #13 defect 1: with counts 10:1:1 the exact equal-prior posterior looks
    miscalibrated (ECE ~0.19) and would be sharpened (T ~0.86) when the split is used
    unweighted; with the balanced weights the training uses it is calibrated (ECE ~0, T ~1)."""
    from simobs.comparison.splits import balanced_class_weights

    z, y = _exact_equal_prior_posterior()
    w = balanced_class_weights(y, 3)
    p = softmax(z, 1)
    assert expected_calibration_error(p, y) > 0.1  # the defect, measured unweighted
    assert fit_temperature(z, y) < 0.92
    assert expected_calibration_error(p, y, weights=w) < 0.01
    assert fit_temperature(z, y, weights=w) == pytest.approx(1.0, abs=0.03)
    rep = calibration_report(z, y, 15, weights=w)
    assert rep.ece < 0.01 and np.all(rep.classwise_ece < 0.015)


def test_calibration_rejects_non_finite_logits():
    z, y = _exact_equal_prior_posterior((50, 50, 50))
    z[7, 1] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        calibration_report(z, y)
