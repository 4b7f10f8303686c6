"""Misspecification diagnostics: where no simulation resembles the observations.

``ood`` (energy and max-softmax scores, thresholds at a true-positive rate),
``typicality`` (VAE reconstruction error / ELBO against the observed typical set),
``mmd`` (kernel two-sample permutation test), ``plots`` and ``stage`` (rule entry point).
"""

from simobs.misspecification.mmd import mmd_permutation_test
from simobs.misspecification.ood import energy_score, max_softmax_score, ood_threshold
from simobs.misspecification.typicality import atypical_fraction, typical_set_threshold

__all__ = ["energy_score", "max_softmax_score", "ood_threshold", "mmd_permutation_test", "typical_set_threshold",
           "atypical_fraction"]
