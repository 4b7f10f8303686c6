"""Calibration of the aggregate posterior at the scale of whole surveys.

The per-galaxy calibration (:mod:`simobs.comparison.calibration`) does not guarantee
that the *aggregate* over a survey is calibrated: small per-galaxy biases add up over N
galaxies, and correlations (several projections of one galaxy) make the bootstrap over
galaxies too narrow.  BayesFlow's advice before trusting aggregated model probabilities
is to check them on synthetic data sets whose true model is known.  Here the synthetic
"surveys" are drawn from the held-out simulated galaxies (never seen by the classifier):
for each model, ``n_surveys`` surveys of ``survey_size`` galaxies (galaxies drawn with
replacement, one random projection each), aggregated exactly as the observations are.

Reported per model (and for 50/50 mixtures of two models, where no single model is right):

* ``win_rate``: how often the true model has the largest aggregate posterior;
* ``mean_posterior_true``: mean aggregate posterior of the true model;
* ``aggregate_ece``: top-label ECE of the aggregate posteriors over all pure surveys
  (in the summary row ``all``);
* ``log_bf_sd_across_surveys`` against ``log_bf_sd_bootstrap`` (median over surveys of the
  bootstrap s.d. the stage reports), for the true model against the closest other one,
  and ``bootstrap_coverage``: how often the survey's bootstrap interval contains the mean
  log Bayes factor over surveys (nominal: the interval's probability);
* for mixtures, ``overconfident_rate``: how often one model gets posterior > 0.99.

The classifier's own training variance is in neither spread (the surveys come from one
trained classifier).  Given replicate classifiers (:mod:`simobs.comparison.replicates`,
trained on bootstrap resamples of the training galaxies; their held-out logits), each
model's row also gives ``log_bf_sd_across_classifiers``, the median over surveys of the
s.d. of the survey's log Bayes factor across replicates, and ``log_bf_sd_with_classifiers``,
the median s.d. of the intervals the stage reports with them (galaxies and trainings
together): where the first rivals ``log_bf_sd_bootstrap``, intervals from the galaxy
bootstrap alone are too narrow by the ratio of the last to it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import log_softmax, softmax

from simobs.comparison.calibration import expected_calibration_error
from simobs.comparison.posterior import bootstrap_aggregate

__all__ = ["draw_survey", "survey_calibration"]


def draw_survey(rows_by_galaxy: list[np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices of a survey: ``size`` galaxies drawn with replacement, one random projection each."""
    pick = rng.integers(0, len(rows_by_galaxy), size=size)
    return np.array([rows_by_galaxy[g][rng.integers(0, len(rows_by_galaxy[g]))] for g in pick])


def survey_calibration(logits: np.ndarray, labels: np.ndarray, galaxies: np.ndarray, class_names: list[str],
                       survey_size: int = 100, n_surveys: int = 200, n_bootstrap: int = 100,
                       interval: float = 0.68, mixtures: bool = True, seed: int = 0,
                       replicate_logits: np.ndarray | None = None) -> pd.DataFrame:
    """Survey-level calibration table (see the module docstring for the columns).

    Args:
        logits: (M, K) calibrated logits of held-out simulated images.
        labels: (M,) model index of each image.
        galaxies: (M,) galaxy id of each image (unique across models).
        class_names: K model names.
        replicate_logits: (R, M, K) calibrated logits of replicate classifiers on the same
            images, or ``None``.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    g = np.asarray(galaxies)
    k = len(class_names)
    if z.shape != (len(y), k):
        raise ValueError(f"held-out logits must be (M, K={k}), got {z.shape}")
    zr = None if replicate_logits is None or len(replicate_logits) == 0 else np.asarray(replicate_logits, np.float64)
    if zr is not None and zr.shape[1:] != z.shape:
        raise ValueError(f"replicate held-out logits must be (R, M, K) with (M, K) = {z.shape}, got {zr.shape}")
    rng = np.random.default_rng(seed)
    log_q = log_softmax(z, axis=1)
    by_model = []
    for j in range(k):
        rows = np.flatnonzero(y == j)
        if len(rows) == 0:
            raise ValueError(f"model {class_names[j]!r} has no held-out images for the survey calibration")
        _, inv = np.unique(g[rows], return_inverse=True)
        by_model.append([rows[inv == u] for u in range(inv.max() + 1)])
    lo, hi = 50 * (1 - interval), 50 * (1 + interval)
    out, all_p, all_true = [], [], []
    for j in range(k):
        post, lbf, sd_boot, inside, sd_cls, sd_total = [], [], [], [], [], []
        surveys = [draw_survey(by_model[j], survey_size, rng) for _ in range(n_surveys)]
        sums = np.array([log_q[s].sum(0) for s in surveys])  # (S, K)
        p = softmax(sums, axis=1)
        other = int(np.argsort(-(sums.mean(0) - np.where(np.arange(k) == j, np.inf, 0)))[0])  # closest other model
        for si, s in enumerate(surveys):
            boot = bootstrap_aggregate(z[s], None, n_bootstrap, seed + si)
            b = boot.log_bayes_factor_samples[:, j, other]
            lbf.append(sums[si, j] - sums[si, other])
            sd_boot.append(np.std(b, ddof=1))
            inside.append((np.percentile(b, lo), np.percentile(b, hi)))
            if zr is not None:
                nested = bootstrap_aggregate(z[s], None, n_bootstrap, seed + si, replicate_logits=zr[:, s])
                sd_cls.append(nested.log_bayes_factor_sd_classifiers[j, other])
                sd_total.append(np.std(nested.log_bayes_factor_samples[:, j, other], ddof=1))
        lbf = np.array(lbf)
        mean_lbf = lbf.mean()
        post = p[:, j]
        all_p.append(p)
        all_true.append(np.full(n_surveys, j))
        out.append({"survey_of": class_names[j], "survey_size": survey_size, "n_surveys": n_surveys,
                    "win_rate": float(np.mean(p.argmax(1) == j)), "mean_posterior_true": float(post.mean()),
                    "closest_other_model": class_names[other], "mean_log_bf_vs_closest": float(mean_lbf),
                    "log_bf_sd_across_surveys": float(lbf.std(ddof=1)),
                    "log_bf_sd_bootstrap": float(np.median(sd_boot)),
                    "bootstrap_coverage": float(np.mean([a <= mean_lbf <= b for a, b in inside])),
                    "nominal_coverage": interval,
                    "n_classifier_replicates": 0 if zr is None else len(zr),
                    "log_bf_sd_across_classifiers": float(np.median(sd_cls)) if sd_cls else np.nan,
                    "log_bf_sd_with_classifiers": float(np.median(sd_total)) if sd_total else np.nan})
    pa, ta = np.concatenate(all_p), np.concatenate(all_true)
    out.append({"survey_of": "all", "survey_size": survey_size, "n_surveys": n_surveys * k,
                "win_rate": float(np.mean(pa.argmax(1) == ta)),
                "mean_posterior_true": float(pa[np.arange(len(ta)), ta].mean()),
                "aggregate_ece": expected_calibration_error(pa, ta, n_bins=10), "nominal_coverage": interval})
    if mixtures and k >= 2:
        for a in range(k):
            for b in range(a + 1, k):
                half = survey_size // 2
                sums = np.array([log_q[np.concatenate([draw_survey(by_model[a], half, rng),
                                                       draw_survey(by_model[b], survey_size - half, rng)])].sum(0)
                                 for _ in range(n_surveys)])
                p = softmax(sums, axis=1)
                out.append({"survey_of": f"{class_names[a]}+{class_names[b]}", "survey_size": survey_size,
                            "n_surveys": n_surveys, "overconfident_rate": float(np.mean(p.max(1) > 0.99)),
                            "mean_posterior_true": float((p[:, a] + p[:, b]).mean())})
    return pd.DataFrame(out)
