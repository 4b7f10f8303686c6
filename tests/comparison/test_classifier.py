import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from simobs.comparison.attribution import mean_abs_attributions, top_latent_features
from simobs.comparison.classifier import ClassifierSettings, load_classifier
from simobs.comparison.posterior import aggregate_log_posterior
from simobs.comparison.training import classifier_settings_from_config, train_simulation_classifier
from simobs.misspecification.ood import energy_score, flagged_fraction, ood_threshold

torch.set_num_threads(1)
FAST_XGB = {"backend": "xgboost", "xgboost": {"n_estimators": 60, "max_depth": 3, "n_threads": 1}}


@pytest.fixture(scope="module")
def trained(well_specified):
    settings = classifier_settings_from_config(FAST_XGB)
    return train_simulation_classifier(well_specified, settings, (0.6, 0.2, 0.2), max_ece=0.0, seed=0)


def test_xgboost_held_out_quality_and_calibration(trained):
    assert trained.report.accuracy > 0.8
    assert trained.recalibrated  # max_ece=0 forces temperature scaling
    assert trained.report.ece < 0.1  # a few hundred test galaxies: ECE is noisy at this size
    p = trained.predictions
    assert set(p["split"]) == {"train", "validation", "test"}
    assert not set(p.loc[p.split == "train", "galaxy_id"] + p.loc[p.split == "train", "source"]) & set(
        p.loc[p.split == "test", "galaxy_id"] + p.loc[p.split == "test", "source"])
    assert np.allclose(p.filter(like="prob_").sum(axis=1), 1.0)


def test_save_load_roundtrip_and_shap_additivity(trained, well_specified, tmp_path):
    clf = trained.classifier
    clf.save(tmp_path / "clf.json")
    back = load_classifier(tmp_path / "clf.json")
    x = well_specified[-1].embedding[:50]
    assert np.allclose(back.logits(x), clf.logits(x), atol=1e-5)
    assert back.temperature == clf.temperature and back.class_names == clf.class_names
    shap = clf.feature_attributions(x)
    assert shap.shape == (50, 4, x.shape[1])
    # TreeSHAP is additive: contributions + bias = raw margin; differences between rows are bias-free
    raw = clf.raw_logits(x)
    assert np.allclose((shap[1] - shap[0]).sum(-1), raw[1] - raw[0], atol=1e-3)
    top = top_latent_features(mean_abs_attributions(shap), clf.class_names, n_top=3)
    assert len(top) == 12 and set(top["rank"]) == {1, 2, 3}


def test_well_specified_decision(trained, well_specified):
    clf, obs = trained.classifier, well_specified[-1]
    pred = trained.predictions
    test = pred[pred.split == "test"]
    thr = ood_threshold(energy_score(test.filter(like="logit_").to_numpy()), tpr=0.95)
    z = clf.logits(obs.embedding)
    flagged = flagged_fraction(energy_score(z), thr)
    assert flagged < 0.15  # nominal 0.05
    keep = energy_score(z) <= thr
    post = np.exp(aggregate_log_posterior(z[keep]))
    assert post[2] >= 0.99


def test_misspecified_observations_are_flagged(trained, misspecified):
    pred = trained.predictions
    test = pred[pred.split == "test"]
    thr = ood_threshold(energy_score(test.filter(like="logit_").to_numpy()), tpr=0.95)
    z = trained.classifier.logits(misspecified[-1].embedding)
    assert flagged_fraction(energy_score(z), thr) > 0.3


def test_mlp_backend_trains_and_integrated_gradients_are_complete(well_specified, tmp_path):
    cfg = {"backend": "mlp", "mlp": {"hidden": [32], "epochs": 40, "patience": 5, "batch_size": 128, "ig_steps": 64}}
    res = train_simulation_classifier(well_specified, classifier_settings_from_config(cfg), seed=0)
    assert res.report.accuracy > 0.8
    clf = res.classifier
    clf.save(tmp_path / "mlp.json")
    back = load_classifier(tmp_path / "mlp.json")
    x = well_specified[0].embedding[:20]
    assert np.allclose(back.logits(x), clf.logits(x), atol=1e-5)
    ig = clf.feature_attributions(x)
    base = np.asarray(clf.extra["feature_mean"], np.float32)[None]
    delta = clf.raw_logits(x) - clf.raw_logits(base)
    assert np.allclose(ig.sum(-1), delta, atol=0.05 * np.abs(delta).max())


def test_settings_reject_unknown_keys():
    with pytest.raises(ValueError, match="unknown classifier setting"):
        ClassifierSettings.from_mapping({"n_trees": 3})
    with pytest.raises(ValueError, match="backend"):
        ClassifierSettings.from_mapping({"backend": "svm"})
