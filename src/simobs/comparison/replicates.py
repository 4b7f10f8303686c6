"""The classifier's training variance: replicates trained on bootstrap resamples of the training galaxies.

Why the bootstrap over galaxies is not enough.  The aggregate log Bayes factor of N
observed galaxies is a sum of per-galaxy log-likelihood ratios that *one trained
classifier* estimates.  :func:`simobs.comparison.posterior.bootstrap_aggregate`
resamples the galaxies with that classifier held fixed; its s.d. grows as sqrt(N).  A
classifier trained on another draw of training galaxies (or with another seed) gives
every galaxy a slightly different ratio, and a shift shared by the galaxies does not
average out: 0.05 nats per galaxy is 140 nats over 2,800 galaxies, where the galaxy
bootstrap's s.d. is tens of nats.  At survey sizes this term dominates, and intervals
from the galaxy bootstrap alone are too narrow.

What is estimated.  ``R`` replicate classifiers, each trained like the main one (same
backend, settings, validation split for early stopping and temperature, same recalibration
rule) on a bootstrap resample of the training galaxies: within each model as many
galaxies as it has, drawn with replacement, every projection of a drawn galaxy with it
(projections of one galaxy are not independent draws), and seed ``seed + 1 + r``.  The
spread of a quantity across replicates estimates its spread across trainings (the
ordinary bootstrap estimate of an estimator's variance); the point estimate stays the
main classifier's.  The replicates never see the validation or test galaxies, so their
held-out logits are as honest as the main classifier's.

Shapes: replicate logits are (R, N, K).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simobs.comparison.classifier import ClassifierSettings, SimulationClassifier, classifier_from_document, fit_classifier
from simobs.comparison.splits import Split, balanced_class_weights
from simobs.comparison.training import calibrate_on_validation

__all__ = ["REPLICATES_FORMAT", "ClassifierReplicates", "bootstrap_training_rows", "load_replicates",
           "replicate_settings", "train_classifier_replicates"]

log = logging.getLogger(__name__)

REPLICATES_FORMAT = "simobs-classifier-replicates/1"


def bootstrap_training_rows(groups: np.ndarray, labels: np.ndarray, train_rows: np.ndarray,
                            rng: np.random.Generator) -> np.ndarray:
    """Rows of one bootstrap resample of the training galaxies.

    Within each model, as many galaxies as the model has in ``train_rows`` are drawn with
    replacement; each drawn galaxy brings all its training rows (a galaxy drawn twice
    brings them twice).

    Args:
        groups: (N,) galaxy id per pooled row.
        labels: (N,) model index per row.
        train_rows: row indices of the training split.
        rng: the resample's generator.

    Returns:
        Sorted row indices, with repetitions.
    """
    train_rows = np.asarray(train_rows)
    g = np.asarray(groups)[train_rows]
    y = np.asarray(labels)[train_rows]
    out = []
    for c in np.unique(y):
        rows_c = train_rows[y == c]
        uniq, inv = np.unique(g[y == c], return_inverse=True)
        members = [rows_c[inv == u] for u in range(len(uniq))]
        out.extend(members[i] for i in rng.integers(0, len(members), size=len(members)))
    return np.sort(np.concatenate(out))


@dataclass
class ClassifierReplicates:
    """Replicate classifiers of one main classifier (see the module docstring).

    Attributes:
        classifiers: the R replicates (possibly none: the training variance is then not
            estimated).
        classifier_digest: digest of the main classifier they replicate.
        vae_digest: of the embeddings they trained on.
    """

    classifiers: list[SimulationClassifier]
    classifier_digest: str | None
    vae_digest: str | None

    def __len__(self) -> int:
        return len(self.classifiers)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Calibrated logits of every replicate, (R, N, K)."""
        if not self.classifiers:
            return np.empty((0, len(x), 0))
        return np.stack([c.logits(x) for c in self.classifiers])

    def save(self, path: str | Path) -> None:
        """One JSON file: the main classifier's digest and a classifier document per replicate."""
        from simobs.io import atomic_path

        doc = {"format": REPLICATES_FORMAT, "classifier_digest": self.classifier_digest,
               "vae_digest": self.vae_digest, "n_replicates": len(self.classifiers),
               "replicates": [c.to_document() for c in self.classifiers]}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(doc))


def load_replicates(path: str | Path) -> ClassifierReplicates:
    """Read a file written by :meth:`ClassifierReplicates.save`.

    Raises:
        ValueError: if it is not a replicates file or a replicate was altered.
    """
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != REPLICATES_FORMAT:
        raise ValueError(f"{path}: not a simobs classifier-replicates file (format={doc.get('format')!r}); "
                         "rerun rule `classifier_replicates`")
    classifiers = [classifier_from_document(d, f"{path} (replicate {r})", writer="classifier_replicates")
                   for r, d in enumerate(doc["replicates"])]
    return ClassifierReplicates(classifiers, doc.get("classifier_digest"), doc.get("vae_digest"))


def train_classifier_replicates(x: np.ndarray, y: np.ndarray, groups: np.ndarray, split: Split,
                                class_names: list[str], settings: ClassifierSettings, n_replicates: int,
                                max_ece: float, n_bins: int = 15, seed: int = 0) -> tuple[list[SimulationClassifier], pd.DataFrame]:
    """Train ``n_replicates`` classifiers on bootstrap resamples of the training galaxies.

    Args:
        x, y, groups: pooled simulation embeddings (N, D), model index (N,), galaxy id (N,).
        split: the main classifier's split (its validation split serves every replicate).
        class_names: K model names.
        settings: the main classifier's backend settings.
        n_replicates: R >= 0.
        max_ece, n_bins: the main classifier's recalibration rule.
        seed: the main classifier's seed; replicate r uses ``seed + 1 + r``.

    Returns:
        The replicates and a table per replicate (``replicate``, ``n_train_rows``,
        ``n_train_galaxies_unique``, ``temperature``, ``test_accuracy``).
    """
    if n_replicates < 0:
        raise ValueError(f"classifier.replicates must be >= 0, got {n_replicates}")
    k = len(class_names)
    va, te = split.validation, split.test
    w_va = balanced_class_weights(y[va], k)
    out, rows = [], []
    for r in range(n_replicates):
        rng = np.random.default_rng([seed, 1 + r])
        tr = bootstrap_training_rows(groups, y, split.train, rng)
        clf = fit_classifier(x[tr], y[tr], balanced_class_weights(y[tr], k), x[va], y[va], w_va, class_names,
                             settings, seed + 1 + r)
        calibrate_on_validation(clf, clf.raw_logits(x[va]), y[va], max_ece, n_bins)
        acc = float(np.mean(clf.logits(x[te]).argmax(1) == y[te]))
        rows.append({"replicate": r, "n_train_rows": len(tr), "n_train_galaxies_unique": len(np.unique(groups[tr])),
                     "temperature": clf.temperature, "test_accuracy": acc})
        log.info("replicate %d/%d: %d training rows (%d distinct galaxies), T = %.3f, test accuracy %.3f",
                 r + 1, n_replicates, len(tr), rows[-1]["n_train_galaxies_unique"], clf.temperature, acc)
        out.append(clf)
    return out, pd.DataFrame(rows, columns=["replicate", "n_train_rows", "n_train_galaxies_unique", "temperature",
                                            "test_accuracy"])


def replicate_settings(section: Mapping[str, Any]) -> int:
    """Number of replicates from the config section ``classifier`` (key ``replicates``)."""
    n = int(section.get("replicates", 0) or 0)
    if n < 0 or n == 1:
        raise ValueError(f"classifier.replicates must be 0 (off) or >= 2 (a spread needs two), got {n}")
    return n

