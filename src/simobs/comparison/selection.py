"""The OOD selection as ``model_posterior`` sees it, read from the ``ood_scores`` tables.

For one observed sample: which of its galaxies are flagged (they do not count in the
aggregate), and, per model, the pass flags of the held-out simulated images under the
same threshold, from which the aggregate's selection term -n_kept log P_k(pass) is
estimated and bootstrapped (:func:`simobs.comparison.posterior.bootstrap_aggregate`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from simobs.comparison.splits import HELD_OUT_SPLITS

__all__ = ["observed_flags", "held_out_pass"]


def observed_flags(scores: pd.DataFrame, source: str, ids: np.ndarray, column: str = "ood_flagged") -> np.ndarray:
    """(N,) bool flags of the observed galaxies ``ids`` of ``source``, in that order.

    Raises:
        ValueError: if the scores table lacks some of the galaxies (rerun ``ood_scores``).
    """
    part = scores[scores.source == source].set_index("id")[column]
    missing = pd.Index(ids).difference(part.index)
    if len(missing):
        raise ValueError(f"the OOD scores table has no row for {len(missing)} galaxies of {source!r} (first: id "
                         f"{missing[0]!r}); rerun rule `ood_scores`")
    return part.loc[list(ids)].to_numpy(dtype=bool)


def held_out_pass(scores: pd.DataFrame, thresholds: pd.DataFrame, reference: str, score: str,
                  class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pass flags (M,) and model index (M,) of the held-out simulated images under the
    threshold of ``reference`` (an observed source) for ``score``."""
    row = thresholds[(thresholds.reference == reference) & (thresholds.score == score)]
    if len(row) != 1:
        raise ValueError(f"the OOD thresholds table has {len(row)} rows for reference {reference!r}, score {score!r} "
                         "(expected 1); rerun rule `ood_scores`")
    thr = float(row["threshold"].iloc[0])
    held = scores[(scores.kind == "simulation") & scores.split.isin(HELD_OUT_SPLITS)]
    held = held[held.source.isin(list(class_names))]  # sources the classifier does not know take no part
    labels = held.source.map({n: k for k, n in enumerate(class_names)}).to_numpy(dtype=np.int64)
    values = held[score].to_numpy(dtype=np.float64)
    return ~(values > thr) & np.isfinite(values), labels
