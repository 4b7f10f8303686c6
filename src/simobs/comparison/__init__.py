"""Model comparison from embeddings (Zhou et al. 2025): UMAP projection, a calibrated
simulation classifier, and posterior model probabilities for observed galaxies.

Modules: ``embeddings`` (reading the embed stage's files), ``splits`` (grouped splits,
class weights), ``classifier`` (XGBoost / MLP backends), ``calibration`` (ECE,
temperature scaling), ``training`` (the train_classifier stage logic), ``attribution``
(SHAP summaries), ``posterior`` (posterior model probabilities, Bayes factors,
bootstrap, the OOD selection term), ``selection`` (reading the OOD tables),
``survey_calibration`` (synthetic surveys), ``projection`` (UMAP), ``plots`` and
``stages`` (rule entry points).
"""

from simobs.comparison.calibration import expected_calibration_error, fit_temperature
from simobs.comparison.posterior import (
    aggregate_log_bayes_factors,
    aggregate_log_posterior,
    bootstrap_aggregate,
    posterior_model_probabilities,
)
from simobs.comparison.splits import balanced_class_weights, grouped_split

__all__ = [
    "expected_calibration_error",
    "fit_temperature",
    "grouped_split",
    "balanced_class_weights",
    "posterior_model_probabilities",
    "aggregate_log_posterior",
    "aggregate_log_bayes_factors",
    "bootstrap_aggregate",
]
