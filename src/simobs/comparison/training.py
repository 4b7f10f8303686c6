"""Stage ``train_classifier``: split, train, calibrate on held-out simulations, explain.

Nothing is said about the observations here: the classifier is judged only on
simulated galaxies it has never seen (the validation split selects the number of
trees / epochs and the temperature, the test split gives the reported numbers).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from simobs.comparison.calibration import CalibrationReport, calibration_report, expected_calibration_error, fit_temperature
from simobs.comparison.classifier import ClassifierSettings, SimulationClassifier, fit_classifier
from simobs.comparison.embeddings import EmbeddingSet, pool_simulations
from simobs.comparison.splits import Split, balanced_class_weights, grouped_split
from scipy.special import softmax

__all__ = ["TrainingResult", "calibrate_on_validation", "classifier_settings_from_config", "train_simulation_classifier"]

log = logging.getLogger(__name__)


def classifier_settings_from_config(section: Mapping[str, Any]) -> ClassifierSettings:
    """Settings from the config section ``classifier`` (keys ``backend``, ``xgboost``, ``mlp``)."""
    backend = section.get("backend", "xgboost")
    values: dict[str, Any] = {"backend": backend}
    values.update(section.get(backend, {}) or {})
    return ClassifierSettings.from_mapping(values)


def calibrate_on_validation(clf: SimulationClassifier, raw_val: np.ndarray, y_val: np.ndarray, max_ece: float,
                            n_bins: int) -> tuple[float, bool]:
    """Temperature-scale ``clf`` (in place) when its validation ECE exceeds ``max_ece``.

    Judged under the equal priors the balanced training estimates under: the ECE and the
    temperature's log loss weight the validation split with balanced class weights (see
    :mod:`simobs.comparison.calibration`).

    Returns:
        ``(validation ECE at temperature 1, whether the temperature was fitted)``.
    """
    w_va = balanced_class_weights(y_val, clf.n_classes)
    val_ece = expected_calibration_error(softmax(raw_val, axis=1), y_val, n_bins, w_va)
    recalibrated = val_ece > max_ece
    if recalibrated:
        clf.temperature = fit_temperature(raw_val, y_val, weights=w_va)
        log.info("validation ECE %.4f > %.4f: temperature scaling, T = %.3f", val_ece, max_ece, clf.temperature)
    return val_ece, recalibrated


@dataclass
class TrainingResult:
    """Everything the rule writes.

    Attributes:
        classifier: the trained (and possibly recalibrated) classifier.
        split: row indices of the pooled simulations.
        predictions: one row per simulated image: ``source``, ``id``, ``galaxy_id``,
            ``label``, ``split``, ``logit_<model>`` (calibrated) and ``prob_<model>``.
        report_raw: test-split calibration with temperature 1.
        report: test-split calibration of the final classifier.
        validation_ece_raw: validation ECE that decided recalibration.
        recalibrated: whether temperature scaling was applied.
    """

    classifier: SimulationClassifier
    split: Split
    predictions: pd.DataFrame
    report_raw: CalibrationReport
    report: CalibrationReport
    validation_ece_raw: float
    recalibrated: bool

    def metrics(self) -> dict[str, float]:
        names = self.classifier.class_names
        out = {"temperature": self.classifier.temperature, "recalibrated": float(self.recalibrated),
               "validation_ece_uncalibrated": self.validation_ece_raw,
               "n_train": float(len(self.split.train)), "n_validation": float(len(self.split.validation)),
               "n_test": float(len(self.split.test))}
        out.update(self.report_raw.metrics("test_uncalibrated_", names))
        out.update(self.report.metrics("test_", names))
        return out


def train_simulation_classifier(
    sets: Sequence[EmbeddingSet],
    settings: ClassifierSettings,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    max_ece: float = 0.02,
    n_bins: int = 15,
    seed: int = 0,
    on_epoch: Callable[[dict[str, float], int], None] | None = None,
) -> TrainingResult:
    """Train the simulation classifier on the simulation sources of ``sets``.

    Args:
        sets: embedding sets; observations among them are ignored (trained on simulations only).
        settings: backend hyper-parameters.
        split_fractions: train/validation/test fractions of *galaxies* per model.
        max_ece: recalibrate (temperature scaling fitted on the validation split) when
            the validation ECE of the raw classifier exceeds this.
        n_bins: confidence bins of the ECE and reliability diagram.
        seed: seed of the split and of the backend.
        on_epoch: optional training-curve callback ``(metrics, step)``.
    """
    x, y, groups, ids, names = pool_simulations(sets)
    split = grouped_split(groups, y, split_fractions, seed)
    w = balanced_class_weights(y, len(names))
    tr, va, te = split.train, split.validation, split.test
    # weights rebalanced within each split, so validation losses are balanced too
    clf = fit_classifier(x[tr], y[tr], balanced_class_weights(y[tr], len(names)),
                         x[va], y[va], balanced_class_weights(y[va], len(names)), names, settings, seed, on_epoch)
    raw = clf.raw_logits(x)
    w_te = balanced_class_weights(y[te], len(names))
    report_raw = calibration_report(raw[te], y[te], n_bins, w_te)
    val_ece, recalibrated = calibrate_on_validation(clf, raw[va], y[va], max_ece, n_bins)
    cal = raw / clf.temperature
    report = calibration_report(cal[te], y[te], n_bins, w_te)
    log.info("test split: accuracy %.3f, ECE %.4f (uncalibrated %.4f)", report.accuracy, report.ece, report_raw.ece)
    probs = softmax(cal, axis=1)
    src = np.array(names, dtype=object)[y]
    table = {"source": src, "id": ids, "galaxy_id": [g.split("/", 1)[1] for g in groups], "label": y,
             "split": split.labels(len(y)), "weight": w}
    table.update({f"logit_{n}": cal[:, k] for k, n in enumerate(names)})
    table.update({f"prob_{n}": probs[:, k] for k, n in enumerate(names)})
    return TrainingResult(clf, split, pd.DataFrame(table), report_raw, report, val_ece, recalibrated)
