"""Posterior model probabilities for observed galaxies and their i.i.d. aggregate.

The classifier is trained with balanced class weights, so its calibrated softmax output
q(M | x) estimates the posterior model probability under *equal* priors, which is
proportional to the marginal likelihood p(x | M).  Hence, for priors pi(M):

* per galaxy:  p(M | x_i)  ∝ pi(M) q(M | x_i);
* for the whole sample D = {x_1..x_N}, assuming galaxies are independent draws from
  the same model:  log p(M | D) = log pi(M) + sum_i log q(M | x_i) - log Z,
  and the log Bayes factor of M_j against M_k is sum_i [log q(M_j|x_i) - log q(M_k|x_i)].
  The prior enters the aggregate once, not once per galaxy.

Why only galaxies that pass the out-of-distribution check count in the aggregate:
the classifier answers "which of the K simulations produced this galaxy?" and assumes
that one of them did (closed world).  For a galaxy unlike every simulation its logits
are an extrapolation, often extreme, and because the aggregate is a *sum* over galaxies
a handful of such galaxies can decide the comparison on their own.  Their evidence says
"none of the models", which the misspecification stage reports separately (flagged
fraction, typicality, MMD tests); the Bayes factors are computed on the galaxies for
which a comparison among the K models is meaningful, and the number excluded is always
reported next to them.

The selection term.  Dropping flagged galaxies is a selection, and the likelihood of the
galaxies kept is the *truncated* one, p(x | M_k, pass) = p(x | M_k) / P_k(pass) for each
kept x, where P_k(pass) is the probability that a galaxy of model k passes the check.
The P_k differ between models (a model the check's reference fits more tightly passes
more often), so the aggregate log likelihood gets -n_kept log P_k(pass), with P_k
estimated from model k's held-out simulated galaxies (``log_pass``).  Without it a
10:1 imbalance (pass rates 0.984 and 0.917) shifts the log Bayes factor by 0.07 nats per
galaxy, 40,000 nats for 600,000 galaxies.  The bootstrap resamples the held-out pass
flags too, so the uncertainty of the P_k estimate (multiplied by n_kept) is in the
intervals.

Shapes: ``log_q`` is (N, K) log probabilities per galaxy and model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import log_softmax, logsumexp

__all__ = [
    "normalise_prior",
    "posterior_model_probabilities",
    "aggregate_log_posterior",
    "aggregate_log_bayes_factors",
    "BootstrapResult",
    "bootstrap_aggregate",
]


def normalise_prior(prior: Sequence[float] | np.ndarray | None, n_models: int) -> np.ndarray:
    """Prior model probabilities (K,), summing to 1; ``None`` means equal priors.

    Raises:
        ValueError: if the length differs from K or a value is not positive.
    """
    if prior is None:
        return np.full(n_models, 1.0 / n_models)
    p = np.asarray(prior, dtype=np.float64)
    if p.shape != (n_models,):
        raise ValueError(f"model prior has {p.size} values but there are {n_models} models; give one "
                         "prior weight per simulation source (model_posterior.prior in the config)")
    if np.any(~np.isfinite(p)) or np.any(p <= 0):
        raise ValueError(f"model prior weights must be finite and > 0, got {p.tolist()}")
    return p / p.sum()


def posterior_model_probabilities(logits: np.ndarray, prior: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Per-galaxy posterior model probabilities (N, K) under ``prior``.

    Args:
        logits: (N, K) calibrated classifier logits (trained with balanced class
            weights, i.e. posterior under equal priors).
        prior: (K,) prior model probabilities or ``None`` for equal priors; reweighting
            by prior ratios is adding log pi(M) to the logits.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be (N, K), got shape {z.shape}")
    log_pi = np.log(normalise_prior(prior, z.shape[1]))
    return np.exp(log_softmax(z + log_pi, axis=1))


def _finite_logits(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be (N, K), got shape {z.shape}")
    bad = ~np.isfinite(z).all(axis=1)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} galaxy logit row(s) are NaN or infinite (first: row "
                         f"{int(np.flatnonzero(bad)[0])}); they cannot enter the aggregate. Flag them "
                         "(the OOD check flags non-finite scores) or fix the embeddings")
    return z


def _log_pass(log_pass: np.ndarray | None, k: int) -> np.ndarray:
    if log_pass is None:
        return np.zeros(k)
    lp = np.asarray(log_pass, dtype=np.float64)
    if lp.shape != (k,) or not np.all(np.isfinite(lp)) or np.any(lp > 0):
        raise ValueError(f"log pass probabilities must be (K={k},) finite and <= 0, got {lp.tolist()}; "
                         "a model none of whose held-out galaxies pass the OOD check has P(pass) = 0")
    return lp


def _sum_log_q(logits: np.ndarray, weights: np.ndarray | None = None, log_pass: np.ndarray | None = None) -> np.ndarray:
    """sum_i w_i log q(M | x_i) - n log P(pass | M), (K,): the equal-prior log likelihood
    of the kept galaxies (truncated to the OOD selection) up to a constant."""
    z = _finite_logits(logits)
    log_q = log_softmax(z, axis=1)
    total = log_q.sum(axis=0) if weights is None else weights @ log_q
    n = len(z) if weights is None else float(np.sum(weights))
    return total - n * _log_pass(log_pass, z.shape[1])


def aggregate_log_posterior(logits: np.ndarray, prior: Sequence[float] | np.ndarray | None = None,
                            log_pass: np.ndarray | None = None) -> np.ndarray:
    """log p(M | D) for the whole sample (K,), normalised so that logsumexp = 0.

    Args:
        logits: (N, K) calibrated logits of the galaxies that count (see module docstring).
        prior: (K,) prior model probabilities or ``None``.
        log_pass: (K,) log P_k(pass) of the OOD selection the galaxies survived, or
            ``None`` (no selection).
    """
    z = _finite_logits(logits)
    s = _sum_log_q(z, log_pass=log_pass) + np.log(normalise_prior(prior, z.shape[1]))
    return s - logsumexp(s)


def aggregate_log_bayes_factors(logits: np.ndarray, log_pass: np.ndarray | None = None) -> np.ndarray:
    """Pairwise log Bayes factors (K, K) of the whole sample; entry [j, k] = log B_jk.

    log B_jk = sum_i [log q(M_j | x_i) - log q(M_k | x_i)] - n [log P_j(pass) - log P_k(pass)]
    (natural log), positive when the sample favours M_j.  Independent of the prior.
    """
    s = _sum_log_q(logits, log_pass=log_pass)
    return s[:, None] - s[None, :]


@dataclass(frozen=True)
class BootstrapResult:
    """Bootstrap over galaxies (and, with replicates, over classifier trainings) of the
    aggregate quantities.

    Attributes:
        log_posterior: (K,) point estimate of log p(M | D).
        log_posterior_samples: (B, K) bootstrap replicates.
        log_bayes_factors: (K, K) point estimate.
        log_bayes_factor_samples: (B, K, K) replicates.
        log_bayes_factor_sd_galaxies: (K, K) s.d. of the log Bayes factors over the
            resampled galaxies alone (the classifier fixed).
        log_bayes_factor_sd_classifiers: (K, K) s.d. across classifier replicates on the
            same galaxies (``None``: no replicates, the training variance is not included).
    """

    log_posterior: np.ndarray
    log_posterior_samples: np.ndarray
    log_bayes_factors: np.ndarray
    log_bayes_factor_samples: np.ndarray
    log_bayes_factor_sd_galaxies: np.ndarray | None = None
    log_bayes_factor_sd_classifiers: np.ndarray | None = None

    def posterior_table(self, class_names: Sequence[str], interval: float = 0.68) -> pd.DataFrame:
        """Per model: posterior probability and log posterior with percentile intervals."""
        lo, hi = 50 * (1 - interval), 50 * (1 + interval)
        post = np.exp(self.log_posterior_samples)
        return pd.DataFrame({
            "model": list(class_names),
            "posterior": np.exp(self.log_posterior),
            "posterior_lo": np.percentile(post, lo, axis=0),
            "posterior_hi": np.percentile(post, hi, axis=0),
            "log_posterior": self.log_posterior,
            "log_posterior_lo": np.percentile(self.log_posterior_samples, lo, axis=0),
            "log_posterior_hi": np.percentile(self.log_posterior_samples, hi, axis=0),
        })

    def bayes_factor_table(self, class_names: Sequence[str], interval: float = 0.68) -> pd.DataFrame:
        """Long table of pairwise log Bayes factors (j < k) with percentile intervals and s.d."""
        lo, hi = 50 * (1 - interval), 50 * (1 + interval)
        rows = []
        k = len(class_names)
        for j in range(k):
            for m in range(j + 1, k):
                s = self.log_bayes_factor_samples[:, j, m]
                rows.append({"model_a": class_names[j], "model_b": class_names[m],
                             "log_bayes_factor": self.log_bayes_factors[j, m],
                             "log_bayes_factor_lo": np.percentile(s, lo), "log_bayes_factor_hi": np.percentile(s, hi),
                             "log_bayes_factor_sd": np.std(s, ddof=1) if len(s) > 1 else np.nan,
                             "log_bayes_factor_sd_galaxies": _entry(self.log_bayes_factor_sd_galaxies, j, m),
                             "log_bayes_factor_sd_classifier_training": _entry(self.log_bayes_factor_sd_classifiers,
                                                                              j, m)})
        return pd.DataFrame(rows)


def _entry(a: np.ndarray | None, j: int, m: int) -> float:
    return float(a[j, m]) if a is not None else np.nan


def bootstrap_aggregate(
    logits: np.ndarray,
    prior: Sequence[float] | np.ndarray | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    held_out_pass: tuple[np.ndarray, np.ndarray] | None = None,
    replicate_logits: np.ndarray | None = None,
) -> BootstrapResult:
    """Aggregate log posterior and log Bayes factors with a bootstrap over galaxies and,
    given replicate classifiers, over the classifier's training.

    Each bootstrap draw resamples the N galaxies with replacement and sums their log q;
    memory is O(N K) regardless of ``n_bootstrap`` (600k galaxies x 1000 draws take
    seconds).  With ``replicate_logits`` (R >= 2 classifiers trained on bootstrap
    resamples of the training galaxies, :mod:`simobs.comparison.replicates`), draw b also
    adds replicate r = b mod R's deviation from the replicates' mean aggregate, scaled to
    the unbiased variance: the intervals then hold the spread across trainings, which a
    shift shared by all galaxies makes grow as N, not sqrt(N).  The point estimate stays
    the main classifier's.

    Args:
        logits: (N, K) calibrated logits of the galaxies that count.
        prior: (K,) model prior or ``None``.
        n_bootstrap: number of replicates B (>= 1).
        seed: seed of the resampling.
        held_out_pass: ``(passed, labels)``, (M,) bool and (M,) model index of the held-out
            simulated images that estimate P_k(pass) of the OOD selection; each replicate
            resamples them within each model too.  ``None``: no selection term.
        replicate_logits: (R, N, K) calibrated logits of the replicate classifiers on the
            same galaxies, or ``None`` (the classifier's training variance left out).
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"need a non-empty (N, K) logits array for the aggregate, got shape {z.shape}; "
                         "did every observed galaxy fail the OOD check?")
    z = _finite_logits(z)
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    n, k = z.shape
    log_q = log_softmax(z, axis=1)
    log_pi = np.log(normalise_prior(prior, k))
    rng = np.random.default_rng(seed)
    point_log_pass, sel = None, None
    if held_out_pass is not None:
        passed, labels = (np.asarray(a) for a in held_out_pass)
        sel = [passed[labels == j].astype(np.float64) for j in range(k)]
        if any(len(v) == 0 for v in sel):
            raise ValueError("every model needs held-out simulated images to estimate its OOD pass rate")
        point_log_pass = np.log([v.mean() for v in sel])
        _log_pass(point_log_pass, k)  # P_k(pass) = 0 is an error
    dev, sd_classifiers = _replicate_deviations(replicate_logits, z.shape)
    sums = np.empty((n_bootstrap, k))
    for b in range(n_bootstrap):
        sums[b] = log_q[rng.integers(0, n, size=n)].sum(axis=0)
        if sel is not None:
            rate = np.array([v[rng.integers(0, len(v), size=len(v))].mean() for v in sel])
            sums[b] -= n * np.log(np.maximum(rate, 0.5 / np.array([len(v) for v in sel])))
    galaxy_bf = sums[:, :, None] - sums[:, None, :]
    if dev is not None:
        sums += dev[np.arange(n_bootstrap) % len(dev)]
    lp = sums + log_pi
    lp_samples = lp - logsumexp(lp, axis=1, keepdims=True)
    return BootstrapResult(
        log_posterior=aggregate_log_posterior(z, prior, point_log_pass),
        log_posterior_samples=lp_samples,
        log_bayes_factors=aggregate_log_bayes_factors(z, point_log_pass),
        log_bayes_factor_samples=sums[:, :, None] - sums[:, None, :],
        log_bayes_factor_sd_galaxies=galaxy_bf.std(axis=0, ddof=1) if n_bootstrap > 1 else None,
        log_bayes_factor_sd_classifiers=sd_classifiers,
    )


def _replicate_deviations(replicate_logits: np.ndarray | None, shape: tuple[int, int]) -> tuple[np.ndarray | None,
                                                                                                np.ndarray | None]:
    """(R, K) centred, variance-scaled deviations of the replicates' summed log q, and the
    (K, K) s.d. of their log Bayes factors; ``(None, None)`` without (enough) replicates."""
    if replicate_logits is None or len(replicate_logits) == 0:
        return None, None
    zr = np.asarray(replicate_logits, dtype=np.float64)
    if zr.ndim != 3 or zr.shape[1:] != shape:
        raise ValueError(f"replicate logits must be (R, N, K) with (N, K) = {shape}, got {zr.shape}")
    if len(zr) < 2:
        raise ValueError("the classifier's training variance needs >= 2 replicates, got 1")
    s = np.stack([log_softmax(_finite_logits(r), axis=1).sum(axis=0) for r in zr])  # (R, K)
    dev = np.sqrt(len(s) / (len(s) - 1)) * (s - s.mean(axis=0))
    bf = s[:, :, None] - s[:, None, :]
    return dev, bf.std(axis=0, ddof=1)
