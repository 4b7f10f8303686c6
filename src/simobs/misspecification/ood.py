"""Logit-based out-of-distribution scores for the simulation classifier.

Convention: every score here is *larger for more atypical* galaxies.

* energy score (Liu et al. 2020): E(x) = -T logsumexp(f(x) / T).  The logsumexp of the
  logits tracks how much evidence the classifier sees for *any* of the models, so
  galaxies unlike all training simulations get a high energy.
* max-softmax score (Hendrycks & Gimpel 2017), as a second opinion: 1 - max_k p(M_k | x).
* GEN, the generalized entropy score Zhou et al. (2025) flag galaxies with (Liu et al.,
  CVPR 2023): G(p) = sum over the M largest class probabilities of p^gamma (1 - p)^gamma,
  gamma = 0.1, M = the number of models; large for flat (uncertain) posteriors.  The
  paper thresholds -G at the 5th percentile of held-out simulations, which is our
  threshold on G at TPR = 0.95.

Non-finite scores (a NaN logit, an infinite distance) are always flagged: such a galaxy
never passes silently into the aggregate.

The threshold is set on held-out simulations (in-distribution by construction) so that
a chosen fraction of them (the true-positive rate, e.g. 95 %) pass; the fraction of
observed galaxies above it is then compared with the nominal 1 - TPR.

Which held-out simulations?  The simulation models differ in how confidently the
classifier recognises them (a model "in the middle" of the others gets higher energies),
so one threshold pooled over all models flags more than 1 - TPR of the galaxies of some
models and fewer of others.  With ``reference="posterior"`` the held-out
galaxies of each model are weighted by the aggregate posterior probability of that model
given the observed sample: the threshold is then the TPR quantile of the score under the
posterior predictive distribution of the simulations.  When one simulation is right
(well-specified case) the posterior concentrates on it and the observed flagged fraction
is nominal; when none is, the observations are atypical of every model and more than
1 - TPR of them are flagged (but the threshold then follows the best, not always the
tightest, model).  ``reference="pooled"`` (the workflow's default) weights every model
equally.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp, softmax

from simobs.comparison.posterior import aggregate_log_posterior
from simobs.comparison.splits import HELD_OUT_SPLITS  # noqa: F401  (re-exported for the stages)

__all__ = [
    "energy_score",
    "max_softmax_score",
    "gen_score",
    "ood_score",
    "ood_threshold",
    "flag_ood",
    "flagged_fraction",
    "reference_model_weights",
]



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


def gen_score(logits: np.ndarray, gamma: float = 0.1, n_top: int | None = None) -> np.ndarray:
    """Generalized entropy G = sum_{top M} p^gamma (1 - p)^gamma, (N,); larger = more OOD.

    Args:
        logits: (N, K) calibrated logits.
        gamma: exponent in (0, 1) (Liu et al. 2023 and Zhou et al. 2025 use 0.1).
        n_top: M, the number of largest probabilities summed; ``None`` = K (all models).
    """
    z = _logits(logits)
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"GEN gamma must be in (0, 1), got {gamma}")
    m = z.shape[1] if n_top is None else int(n_top)
    if not 1 <= m <= z.shape[1]:
        raise ValueError(f"GEN n_top must be in [1, {z.shape[1]}], got {n_top}")
    p = -np.sort(-softmax(z, axis=1), axis=1)[:, :m]
    return (p**gamma * (1.0 - p) ** gamma).sum(axis=1)


def ood_score(logits: np.ndarray, method: str = "energy") -> np.ndarray:
    """Dispatch on ``method`` ("energy", "max_softmax" or "gen")."""
    if method == "energy":
        return energy_score(logits)
    if method == "max_softmax":
        return max_softmax_score(logits)
    if method == "gen":
        return gen_score(logits)
    raise ValueError(f"unknown OOD score {method!r}; choose 'energy', 'max_softmax' or 'gen'")


def ood_threshold(in_distribution_scores: np.ndarray, tpr: float = 0.95, weights: np.ndarray | None = None) -> float:
    """Score below or at which a (weighted) fraction ``tpr`` of in-distribution galaxies lie.

    Args:
        in_distribution_scores: (M,) scores of held-out simulated galaxies.
        tpr: true-positive rate in (0, 1]: fraction of in-distribution galaxies kept.
        weights: optional (M,) non-negative weights (e.g. per-model reweighting).
    """
    s = np.asarray(in_distribution_scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError("need a non-empty 1-D array of held-out simulation scores to set the OOD threshold")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{int((~np.isfinite(s)).sum())} held-out simulation score(s) are NaN or infinite; "
                         "the threshold would be undefined (check the embeddings and the classifier)")
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"OOD true-positive rate must be in (0, 1], got {tpr}")
    if weights is None:
        return float(np.quantile(s, tpr, method="higher"))
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != s.shape or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be non-negative, not all zero, and match the scores' shape")
    order = np.argsort(s)
    cdf = np.cumsum(w[order]) / w.sum()
    return float(s[order][min(np.searchsorted(cdf, tpr - 1e-12), s.size - 1)])


def flag_ood(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean (N,) mask: True where the score exceeds the threshold or is not finite."""
    return ~(np.asarray(scores, dtype=np.float64) <= threshold)


def flagged_fraction(scores: np.ndarray, threshold: float) -> float:
    """Fraction of galaxies flagged; about 1 - TPR when they resemble the simulations."""
    s = np.asarray(scores)
    return float(np.mean(flag_ood(s, threshold))) if s.size else float("nan")


def reference_model_weights(observed_logits: np.ndarray | None, n_models: int, reference: str = "posterior") -> np.ndarray:
    """Weights of the simulation models in the OOD reference distribution, (K,), summing to 1.

    Args:
        observed_logits: (N, K) calibrated logits of the observed galaxies (needed for
            ``posterior``), the classifier being trained with balanced classes so that
            softmax(logits) is the per-galaxy posterior under equal priors.
        n_models: K.
        reference: ``posterior`` (aggregate posterior model probabilities of the whole
            observed sample, i.i.d. galaxies, equal priors) or ``pooled`` (equal weights).
    """
    if reference == "pooled" or observed_logits is None or len(observed_logits) == 0:
        return np.full(n_models, 1.0 / n_models)
    if reference != "posterior":
        raise ValueError(f"unknown OOD reference {reference!r}; choose 'posterior' or 'pooled'")
    return np.exp(aggregate_log_posterior(_logits(observed_logits)))
