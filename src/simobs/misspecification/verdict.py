"""How far the MMD verdict can be trusted: its power and its false-alarm rate.

A simulation is called *consistent* with an observed sample when the MMD test does not
reject.  That is evidence only if the test could have rejected: :func:`mmd_power`
measures, from simulated galaxies, how often the test rejects a simulation when the
sample comes from *another* model (power against the nearest alternative, at the
observed sample's size or half the alternative's galaxies, whichever is smaller).  :func:`verdict_rates` measures, on surveys
drawn from one model's galaxies (well-specified by construction; one projection each),
how often the test of that model rejects (its false-alarm rate, nominally ``alpha``) and
how often the verdict "no simulation is consistent" (every test rejects) is reached (the
verdict's false-alarm rate, at most the former); on surveys drawn from the observed
galaxies of a misspecified universe the latter rate is the verdict's power.

Latents are standardised (:func:`standardise`) with the simulations' mean and spread per
latent, as the k-NN score does, so that no latent dominates the kernel by its scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from simobs.misspecification.mmd import mmd_permutation_test

__all__ = ["Standardiser", "binomial_interval", "mmd_power", "verdict_rates", "verdict_survey_sizes"]


class Standardiser:
    """Per-latent (x - mean) / scale fitted on (M, D) reference embeddings (dead latents: scale 1)."""

    def __init__(self, reference: np.ndarray) -> None:
        x = np.asarray(reference, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"need (M >= 2, D) reference embeddings to standardise, got shape {x.shape}")
        self.mean, self.scale = x.mean(0), x.std(0)
        self.scale[self.scale < 1e-8] = 1.0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.scale


def binomial_interval(rate: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a rate measured as ``rate`` over ``n`` Bernoulli trials.

    A false-alarm rate from 100 simulated surveys resolves the nominal 0.05 only to
    about ±4 points (95 %); the interval says so beside the number.  NaN for ``n = 0``
    or a NaN rate.
    """
    from scipy.stats import norm

    if n <= 0 or not np.isfinite(rate):
        return float("nan"), float("nan")
    z = float(norm.ppf(0.5 + level / 2))
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def _rejects(x: np.ndarray, y: np.ndarray, alpha: float, n_permutations: int, seed: int,
             bandwidth_scales: Sequence[float], max_samples: int | None = None) -> bool:
    return mmd_permutation_test(x, y, n_permutations=n_permutations, max_samples=max_samples,
                                bandwidth_scales=tuple(bandwidth_scales), seed=seed).rejects(alpha)


def mmd_power(sample: np.ndarray, alternatives: Sequence[np.ndarray], n: int, alpha: float = 0.05,
              replicates: int = 10, n_permutations: int = 200, bandwidth_scales: Sequence[float] = (1.0,),
              seed: int = 0) -> tuple[float, int]:
    """Smallest rejection rate over the alternatives: the power against the nearest one.

    Args:
        sample: (m, D) the simulation's sample as tested (standardised).
        alternatives: (n_j, D) galaxies of each other model (one projection each; no
            model's images were seen by the VAE, and none is in ``sample``, so all of them
            serve, not only the classifier's held-out split).
        n: survey size (the observed sample's tested size); capped per alternative at
            n_j // 2, so that the replicates draw different galaxies.
        replicates: subsamples of each alternative tested.

    Returns:
        ``(power, n_used)``: the rate, and the smallest survey size it was measured at
        (below ``n`` when an alternative has fewer than 2n galaxies: then a lower bound).
    """
    rng = np.random.default_rng(seed)
    rates, used = [], []
    for j, alt in enumerate(alternatives):
        size = int(min(n, len(alt) // 2))
        if size < 2:
            continue
        hits = [_rejects(alt[rng.choice(len(alt), size, replace=False)], sample, alpha, n_permutations,
                         seed + 1000 * j + r, bandwidth_scales) for r in range(replicates)]
        rates.append(float(np.mean(hits)))
        used.append(size)
    if not rates:
        return float("nan"), 0
    return float(min(rates)), int(min(used))


def verdict_rates(pool: np.ndarray, samples: Mapping[str, np.ndarray], n: int, own: str | None = None,
                  alpha: float = 0.05, replicates: int = 100, n_permutations: int = 200,
                  bandwidth_scales: Sequence[float] = (1.0,), seed: int = 0,
                  max_samples: int | None = None) -> tuple[float, float]:
    """Rates of the verdict on surveys of ``n`` galaxies drawn from ``pool``.

    Each replicate draws a survey (without replacement) from ``pool`` and tests it against
    every model's sample; for the model ``own`` (the survey's own model, when the pool is a
    simulation's galaxies) the rest of the pool is that model's sample, so survey and
    simulation never share a galaxy.

    Args:
        pool: (G, D) standardised embeddings, one per galaxy.
        samples: model name -> (m, D) the sample each model is tested with.
        n: survey size (< G when ``own`` is given).
        max_samples: each test subsamples both sides to at most this many (as the observed
            sample's test does; bounds the cost for models of many galaxies).

    Returns:
        ``(own_rejected, misspecified)``: the rate at which the test of ``own`` rejects
        (its false-alarm rate, nominally ``alpha``; NaN without ``own``) and the rate at
        which every test rejects (the verdict "no simulation is consistent": a false alarm
        for a simulated survey, the power on a misspecified universe's galaxies).
    """
    g = np.asarray(pool)
    n = int(n)
    if n < 2 or (own is not None and len(g) - n < 2) or n > len(g):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    own_hits, all_hits = [], []
    for r in range(replicates):
        perm = rng.permutation(len(g))
        survey, rest = g[perm[:n]], g[perm[n:]]
        hits = {name: _rejects(survey, rest if name == own else ref, alpha, n_permutations, seed + r, bandwidth_scales,
                               max_samples)
                for name, ref in samples.items()}
        if own is not None:
            own_hits.append(hits[own])
        all_hits.append(all(hits.values()))
    return (float(np.mean(own_hits)) if own_hits else float("nan")), float(np.mean(all_hits))


def verdict_survey_sizes(samples: Mapping[str, np.ndarray], cap: int | None = None) -> dict[str, int]:
    """Size of each model's simulated surveys: half its galaxies (the rest is the model's sample), at most ``cap // 2``.

    Per model, not the smallest model's half for all: with imbalanced models (600 galaxies
    of one, 30 of another) a common size would measure every false-alarm rate on surveys
    of 15 galaxies, far below the observed sample the verdict is about.  The test is a
    permutation test, so each rate is valid at its own size.
    """
    sizes = {name: max(2, len(v) // 2) for name, v in samples.items()}
    return {name: (max(2, min(n, int(cap) // 2)) if cap else n) for name, n in sizes.items()}
