"""Misspecification diagnostics: where no simulation resembles the observations.

``ood`` (energy, max-softmax and GEN scores, thresholds at a true-positive rate),
``scores`` (the k-NN score and the scorer of every OOD score), ``ood_stage`` (rule
``ood_scores``), ``typicality`` (VAE reconstruction error / typicality loss against the
observed typical set), ``mmd`` (kernel two-sample permutation test), ``verdict`` (its
power and false-alarm rate), ``plots`` and ``stage`` (rule ``misspecification``).
"""

from simobs.misspecification.mmd import mmd_permutation_test
from simobs.misspecification.ood import energy_score, max_softmax_score, ood_threshold
from simobs.misspecification.typicality import atypical_fraction, typical_set_threshold

__all__ = ["energy_score", "max_softmax_score", "ood_threshold", "mmd_permutation_test", "typical_set_threshold",
           "atypical_fraction"]
