"""Which latent features the classifier looks at (SHAP summaries).

Per-galaxy attributions (N, K, D) come from
:meth:`simobs.comparison.classifier.SimulationClassifier.feature_attributions`
(TreeSHAP for XGBoost).  Their mean absolute value over held-out galaxies ranks the
latent dimensions per model; decoding traversals of the top dimensions with the VAE
(``simobs.embedding.decode_latent_traversal``) shows what those dimensions mean in
image space.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["mean_abs_attributions", "top_latent_features"]


def mean_abs_attributions(attributions: np.ndarray) -> np.ndarray:
    """Global importance (K, D): mean |attribution| of each latent to each model's logit."""
    a = np.asarray(attributions)
    if a.ndim != 3:
        raise ValueError(f"attributions must be (N, K, D), got shape {a.shape}")
    return np.abs(a).mean(axis=0)


def top_latent_features(importance: np.ndarray, class_names: Sequence[str], n_top: int = 5) -> pd.DataFrame:
    """The ``n_top`` most important latent dimensions per model.

    Args:
        importance: (K, D) from :func:`mean_abs_attributions`.
        class_names: K model names.
        n_top: features per model (capped at D).

    Returns:
        DataFrame with columns ``model``, ``rank`` (1 = most important), ``latent``
        (index into the embedding) and ``mean_abs_shap``.
    """
    imp = np.asarray(importance)
    if imp.ndim != 2 or imp.shape[0] != len(class_names):
        raise ValueError(f"importance must be (K={len(class_names)}, D), got {imp.shape}")
    n_top = min(int(n_top), imp.shape[1])
    rows = []
    for k, name in enumerate(class_names):
        order = np.argsort(-imp[k], kind="stable")[:n_top]
        rows += [{"model": name, "rank": r + 1, "latent": int(j), "mean_abs_shap": float(imp[k, j])}
                 for r, j in enumerate(order)]
    return pd.DataFrame(rows)
