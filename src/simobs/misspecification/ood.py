"""Logit-based out-of-distribution scores for the simulation classifier.

Convention: every score here is *larger for more atypical* galaxies.

* energy score (Liu et al. 2020): E(x) = -T logsumexp(f(x) / T).  The logsumexp of the
  logits tracks how much evidence the classifier sees for *any* of the models, so
  galaxies unlike all training simulations get a high energy.
* max-softmax score (Hendrycks & Gimpel 2017), as a second opinion: 1 - max_k p(M_k | x).

The threshold is set on held-out simulations (in-distribution by construction) so that
a chosen fraction of them (the true-positive rate, e.g. 95 %) pass; the fraction of
observed galaxies above it is then compared with the nominal 1 - TPR.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import logsumexp, softmax

__all__ = ["energy_score", "max_softmax_score", "ood_score", "ood_threshold", "flag_ood", "flagged_fraction", "threshold_from_predictions"]


def _logits(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be (N, K) with K >= 2, got shape {z.shape}")
    return z


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Energy -T logsumexp(logits / T), (N,); larger = more out-of-distribution."""
    return -temperature * logsumexp(_logits(logits) / temperature, axis=1)


def max_softmax_score(logits: np.ndarray) -> np.ndarray:
    """1 - max softmax probability, (N,) in [0, 1 - 1/K]; larger = more out-of-distribution."""
    return 1.0 - softmax(_logits(logits), axis=1).max(axis=1)


def ood_score(logits: np.ndarray, method: str = "energy") -> np.ndarray:
    """Dispatch on ``method`` ("energy" or "max_softmax")."""
    if method == "energy":
        return energy_score(logits)
    if method == "max_softmax":
        return max_softmax_score(logits)
    raise ValueError(f"unknown OOD score {method!r}; choose 'energy' or 'max_softmax'")


def ood_threshold(in_distribution_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Score below or at which a fraction ``tpr`` of in-distribution galaxies lie.

    Args:
        in_distribution_scores: (M,) scores of held-out simulated galaxies.
        tpr: true-positive rate in (0, 1]: fraction of in-distribution galaxies kept.
    """
    s = np.asarray(in_distribution_scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError("need a non-empty 1-D array of held-out simulation scores to set the OOD threshold")
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"OOD true-positive rate must be in (0, 1], got {tpr}")
    return float(np.quantile(s, tpr, method="higher"))


def flag_ood(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean (N,) mask: True where the score exceeds the threshold (out of distribution)."""
    return np.asarray(scores, dtype=np.float64) > threshold


def flagged_fraction(scores: np.ndarray, threshold: float) -> float:
    """Fraction of galaxies flagged; about 1 - TPR when they resemble the simulations."""
    s = np.asarray(scores)
    return float(np.mean(flag_ood(s, threshold))) if s.size else float("nan")


def threshold_from_predictions(predictions: pd.DataFrame, class_names: list[str], method: str = "energy",
                               tpr: float = 0.95, split: str = "test") -> float:
    """OOD threshold from the classifier's held-out predictions table.

    Args:
        predictions: the ``train_classifier`` table with columns ``split`` and
            ``logit_<model>`` (calibrated logits).
        class_names: model names in the classifier's order.
        method: "energy" or "max_softmax".
        tpr: fraction of held-out simulated galaxies that must pass.
        split: which held-out split sets the threshold (the test split: neither the trees
            nor the temperature were fitted on it).
    """
    cols = [f"logit_{n}" for n in class_names]
    missing = [c for c in cols + ["split"] if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions table lacks columns {missing}; rerun rule `train_classifier`")
    held = predictions.loc[predictions["split"] == split, cols].to_numpy()
    return ood_threshold(ood_score(held, method), tpr)
