"""Calibration of a probabilistic model classifier on held-out simulations.

A classifier's softmax output is only usable as posterior model probabilities if it is
calibrated: among galaxies given probability 0.8 for model M, 80 % must come from M.
This module measures that (accuracy, log loss, confusion matrix, expected calibration
error, reliability curves, per model as in BayesFlow's model-comparison calibration)
and repairs it with temperature scaling (Guo et al. 2017), which rescales all logits
by one scalar and so never changes the predicted model, only the confidence.

Shapes: ``logits`` and ``probs`` are (N, K) for N galaxies and K models; ``labels``
are integer model indices (N,) in ``[0, K)``; optional ``weights`` (N,) are per-galaxy
weights.

Which prior?  The classifier trains with balanced class weights, so its softmax is the
posterior under *equal* model priors.  A held-out split with 10:1:1 galaxies per model
is a sample under the prior 10:1:1, against which even the exact equal-prior posterior
looks miscalibrated (ECE 0.19) and a temperature fit sharpens it.  Every metric here
therefore takes the same balanced weights as the training (each model's galaxies carry
equal total weight): evaluated so, calibration is judged against the prior the
classifier estimates under.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

__all__ = [
    "softmax",
    "log_softmax",
    "accuracy",
    "log_loss",
    "confusion_matrix",
    "expected_calibration_error",
    "classwise_calibration_error",
    "reliability_curve",
    "fit_temperature",
    "apply_temperature",
    "CalibrationReport",
    "calibration_report",
]


def _weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    """(n,) non-negative finite weights; ``None`` gives ones."""
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"calibration weights must be ({n},) finite and >= 0, got shape {w.shape}")
    return w


def _check(probs_or_logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(probs_or_logits, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2:
        raise ValueError(f"expected a (N, K) array of probabilities or logits, got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},) to match the (N, K) array, got {y.shape}")
    if not np.all(np.isfinite(x)):
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise ValueError(f"{len(bad)} row(s) of the (N, K) array are NaN or infinite (first: row {bad[0]}); "
                         "the classifier produced non-finite output for these galaxies")
    if y.size and (y.min() < 0 or y.max() >= x.shape[1]):
        raise ValueError(f"labels must lie in [0, {x.shape[1]}), got range [{y.min()}, {y.max()}]")
    return x, y.astype(np.int64)


def accuracy(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """(Weighted) fraction of galaxies whose most probable model is the true one."""
    p, y = _check(probs, labels)
    return float(np.average(p.argmax(axis=1) == y, weights=_weights(weights, len(y))))


def log_loss(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """(Weighted) mean negative log-likelihood (nats) of the true model under softmax(logits)."""
    z, y = _check(logits, labels)
    return float(-np.average(log_softmax(z, axis=1)[np.arange(len(y)), y], weights=_weights(weights, len(y))))


def confusion_matrix(probs: np.ndarray, labels: np.ndarray, normalise: bool = True) -> np.ndarray:
    """(K, K) confusion matrix; row = true model, column = predicted model.

    Args:
        normalise: divide each row by its count, so rows sum to 1 (rows of models absent
            from ``labels`` stay zero).
    """
    p, y = _check(probs, labels)
    k = p.shape[1]
    cm = np.zeros((k, k), dtype=np.float64)
    np.add.at(cm, (y, p.argmax(axis=1)), 1.0)
    if normalise:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1.0)
    return cm


def _binned_gap(confidence: np.ndarray, correct: np.ndarray, n_bins: int,
                weights: np.ndarray | None = None) -> tuple[float, pd.DataFrame]:
    """Equal-width binning of confidences in [0, 1]; returns the (weighted) ECE and the
    per-bin table (``count`` is the number of galaxies, the means are weighted)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right-closed bins so that confidence 1.0 falls in the last bin
    idx = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    w = _weights(weights, len(confidence))
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    w_sum = np.bincount(idx, weights=w, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=w * confidence, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=w * correct.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = conf_sum / w_sum
        frac = acc_sum / w_sum
    total = max(float(w.sum()), 1e-300)
    ece = float(np.nansum(w_sum / total * np.abs(frac - mean_conf)))
    table = pd.DataFrame(
        {"bin_lower": edges[:-1], "bin_upper": edges[1:], "count": count.astype(np.int64),
         "mean_confidence": mean_conf, "observed_frequency": frac}
    )
    return ece, table


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15,
                               weights: np.ndarray | None = None) -> float:
    """Top-label expected calibration error (Guo et al. 2017).

    ECE = sum_b (n_b / N) |accuracy_b - confidence_b| over equal-width confidence bins
    of the most probable model.  0 is perfect; a value of 0.05 means the confidence is
    off by 5 percentage points on average.  With ``weights`` (N,) the bin counts,
    accuracies and confidences are weighted (balanced weights: calibration under equal priors).
    """
    p, y = _check(probs, labels)
    ece, _ = _binned_gap(p.max(axis=1), p.argmax(axis=1) == y, n_bins, weights)
    return ece


def classwise_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15,
                                weights: np.ndarray | None = None) -> np.ndarray:
    """One-vs-rest ECE per model (K,), the per-model calibration BayesFlow reports.

    For model k, bins the predicted p(M_k | x) of *all* galaxies and compares it with the
    frequency of model k in each bin, so that under- or over-confidence in one model is
    visible even when the top-label ECE averages it away.
    """
    p, y = _check(probs, labels)
    return np.array([_binned_gap(p[:, k], y == k, n_bins, weights)[0] for k in range(p.shape[1])])


def reliability_curve(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15,
                      weights: np.ndarray | None = None) -> pd.DataFrame:
    """Per-bin table of the top-label reliability diagram.

    Returns:
        DataFrame with columns ``bin_lower``, ``bin_upper``, ``count``,
        ``mean_confidence`` and ``observed_frequency`` (accuracy in the bin; NaN where empty).
    """
    p, y = _check(probs, labels)
    return _binned_gap(p.max(axis=1), p.argmax(axis=1) == y, n_bins, weights)[1]


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0),
                    weights: np.ndarray | None = None) -> float:
    """Temperature T minimising the (weighted) log loss of softmax(logits / T) on a validation set.

    The search runs over log T (the loss is smooth and unimodal in it for practical
    cases) with a bounded scalar minimiser.  Fit T on a split the classifier was not
    trained on and evaluate on another one, otherwise the ECE is optimistic.

    Returns:
        T > 0 (T > 1 softens over-confident logits, T < 1 sharpens).
    """
    z, y = _check(logits, labels)
    if len(y) == 0:
        raise ValueError("cannot fit a temperature on an empty validation set")
    rows = np.arange(len(y))
    w = _weights(weights, len(y))

    def nll(log_t: float) -> float:
        return float(-np.average(log_softmax(z / np.exp(log_t), axis=1)[rows, y], weights=w))

    res = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-5})
    return float(np.exp(res.x))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Logits divided by the temperature, (N, K)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return np.asarray(logits, dtype=np.float64) / float(temperature)


@dataclass(frozen=True)
class CalibrationReport:
    """Classifier quality on one held-out split."""

    accuracy: float
    log_loss: float
    ece: float
    classwise_ece: np.ndarray  # (K,)
    confusion: np.ndarray  # (K, K), rows normalised
    reliability: pd.DataFrame

    def metrics(self, prefix: str = "", class_names: list[str] | None = None) -> dict[str, float]:
        """Flat mapping for MLflow (``{prefix}accuracy``, ``{prefix}ece``, per-model ECE...)."""
        names = class_names or [str(k) for k in range(len(self.classwise_ece))]
        out = {f"{prefix}accuracy": self.accuracy, f"{prefix}log_loss": self.log_loss, f"{prefix}ece": self.ece}
        out.update({f"{prefix}ece_{n}": float(v) for n, v in zip(names, self.classwise_ece)})
        return out


def calibration_report(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15,
                       weights: np.ndarray | None = None) -> CalibrationReport:
    """All calibration diagnostics of softmax(logits) against the true labels.

    ``weights`` (N,): per-galaxy weights of every metric (the confusion matrix is row
    normalised, so per-class weights do not change it).
    """
    z, y = _check(logits, labels)
    p = softmax(z, axis=1)
    return CalibrationReport(
        accuracy=accuracy(p, y, weights),
        log_loss=log_loss(z, y, weights),
        ece=expected_calibration_error(p, y, n_bins, weights),
        classwise_ece=classwise_calibration_error(p, y, n_bins, weights),
        confusion=confusion_matrix(p, y),
        reliability=reliability_curve(p, y, n_bins, weights),
    )
