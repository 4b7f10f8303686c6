"""How far the MMD verdict can be trusted: its power and its false-alarm rate.

A simulation is called *consistent* with an observed sample when the MMD test does not
reject.  That is evidence only if the test could have rejected: :func:`mmd_power`
measures, from held-out simulated galaxies, how often the test rejects a simulation
when the sample comes from *another* model (power against the nearest alternative, at
the sample size the held-out galaxies allow).  :func:`mmd_false_alarm` measures how often
it rejects a model against a survey drawn from that same model (well-specified by
construction: random halves of the model's galaxies, one projection each), which must
be the nominal ``alpha``; the verdict "no simulation is consistent" needs every test to
reject, so its false-alarm rate is at most the smallest of these.

Latents are standardised (:func:`standardise`) with the simulations' mean and spread per
latent, as the k-NN score does, so that no latent dominates the kernel by its scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simobs.misspecification.mmd import mmd_permutation_test

__all__ = ["Standardiser", "mmd_power", "mmd_false_alarm"]


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


def _rejects(x: np.ndarray, y: np.ndarray, alpha: float, n_permutations: int, seed: int,
             bandwidth_scales: Sequence[float]) -> bool:
    return mmd_permutation_test(x, y, n_permutations=n_permutations, max_samples=None,
                                bandwidth_scales=tuple(bandwidth_scales), seed=seed).rejects(alpha)


def mmd_power(sample: np.ndarray, alternatives: Sequence[np.ndarray], n: int, alpha: float = 0.05,
              replicates: int = 10, n_permutations: int = 200, bandwidth_scales: Sequence[float] = (1.0,),
              seed: int = 0) -> tuple[float, int]:
    """Smallest rejection rate over the alternatives: the power against the nearest one.

    Args:
        sample: (m, D) the simulation's sample as tested (standardised).
        alternatives: (n_j, D) held-out galaxies of each other model (one projection each).
        n: survey size (the observed sample's tested size); capped per alternative at n_j.
        replicates: subsamples of each alternative tested.

    Returns:
        ``(power, n_used)``: the rate, and the smallest survey size it was measured at
        (below ``n`` when the held-out galaxies are fewer: then a lower bound).
    """
    rng = np.random.default_rng(seed)
    rates, used = [], []
    for j, alt in enumerate(alternatives):
        size = int(min(n, len(alt)))
        if size < 2:
            continue
        hits = [_rejects(alt[rng.choice(len(alt), size, replace=False)], sample, alpha, n_permutations,
                         seed + 1000 * j + r, bandwidth_scales) for r in range(replicates)]
        rates.append(float(np.mean(hits)))
        used.append(size)
    if not rates:
        return float("nan"), 0
    return float(min(rates)), int(min(used))


def mmd_false_alarm(galaxies: np.ndarray, alpha: float = 0.05, replicates: int = 100, n_permutations: int = 200,
                    bandwidth_scales: Sequence[float] = (1.0,), seed: int = 0) -> float:
    """Rejection rate of the test of a model against surveys drawn from that model.

    Args:
        galaxies: (G, D) one standardised embedding per galaxy of the model; each replicate
            splits them at random into a "survey" half and a "simulation" half.
    """
    g = np.asarray(galaxies)
    if len(g) < 4:
        return float("nan")
    rng = np.random.default_rng(seed)
    half = len(g) // 2
    hits = []
    for r in range(replicates):
        perm = rng.permutation(len(g))
        hits.append(_rejects(g[perm[:half]], g[perm[half:2 * half]], alpha, n_permutations, seed + r, bandwidth_scales))
    return float(np.mean(hits))
