"""Provenance digests (simobs.provenance): a stage given embeddings of two VAEs, or a
classifier trained on embeddings of another VAE, stops with an error naming every file
and its digest instead of computing a number; one lineage works and is recorded."""

import json
import logging

import h5py
import pandas as pd
import pytest
import torch

from conftest import make_universe, write_embedding_file
from simobs.comparison.classifier import load_classifier
from simobs.comparison.embeddings import read_embedding_sets
from simobs.comparison.stages import run_model_posterior, run_projection, run_train_classifier
from simobs.misspecification.ood_stage import run_ood_scores
from simobs.misspecification.stage import run_misspecification
from simobs.provenance import LineageError

torch.set_num_threads(1)
VAE_A, VAE_B = "a" * 64, "b" * 64
CLASSIFIER = {"backend": "xgboost", "xgboost": {"n_estimators": 5, "max_depth": 2, "n_threads": 1},
              "split": {"train": 0.6, "validation": 0.2, "test": 0.2}, "calibration": {"max_ece": 1.0, "n_bins": 5},
              "shap": {"n_top": 2, "max_samples": 50}}
OOD = {"score": "energy", "tpr": 0.95, "knn_components": 4}


def _write(tmp_path, digests):
    """The small universe's five embedding files, source i with vae_digest ``digests[i]``."""
    sets = make_universe(seed=3, n_galaxies=20, n_proj=2, n_obs=60)
    return [write_embedding_file(s, tmp_path / f"{s.source}.h5", d) for s, d in zip(sets, digests)]


def _classifier_outputs(tmp_path):
    names = {"model": "c.json", "predictions": "p.csv", "metrics": "m.json", "shap": "s.csv", "reliability": "r.png",
             "confusion": "cm.png", "shap_figure": "sh.png", "traversals": "t.png"}
    return {k: tmp_path / "classifier" / v for k, v in names.items()}


def _train(tmp_path, paths):
    out = _classifier_outputs(tmp_path)
    run_train_classifier(paths, out, CLASSIFIER, seed=0)
    return out


def _posterior_outputs(tmp_path):
    names = {"per_galaxy": "g.csv", "aggregate": "a.csv", "bayes_factors": "b.csv", "figure_bars": "b.png",
             "figure_per_galaxy": "g.png", "survey_calibration": "s.csv"}
    return {k: tmp_path / "posterior" / v for k, v in names.items()}


def _assert_names_both(err, files_and_digests):
    text = str(err.value)
    for path, digest in files_and_digests:
        assert f"{path}: vae_digest {digest}" in text, text
    assert "Re-run rule `embed`" in text


def test_embeddings_of_two_vaes_are_refused_by_every_consumer(tmp_path):
    paths = _write(tmp_path, [VAE_A, VAE_A, VAE_A, VAE_A, VAE_B])
    with pytest.raises(LineageError, match="different lineages") as err:
        read_embedding_sets(paths)
    _assert_names_both(err, [(paths[0], VAE_A), (paths[4], VAE_B)])
    assert isinstance(err.value, ValueError)  # the project's error type for bad input
    with pytest.raises(LineageError) as err:
        run_train_classifier(paths, _classifier_outputs(tmp_path), CLASSIFIER)
    _assert_names_both(err, [(paths[1], VAE_A), (paths[4], VAE_B)])
    assert not (tmp_path / "classifier" / "c.json").exists()  # stopped before computing anything
    with pytest.raises(LineageError):
        run_projection(paths, {"table": tmp_path / "u.csv", "figure_all": tmp_path / "u.png",
                               "figure_panels": tmp_path / "up.png"}, {"seed": 0})
    with pytest.raises(LineageError):
        run_misspecification(paths, tmp_path / "none.csv", tmp_path / "none.csv", {}, {}, {})


def test_one_lineage_is_recorded_in_the_classifier_ood_tables_and_posterior(tmp_path):
    paths = _write(tmp_path, [VAE_A] * 5)
    out = _train(tmp_path, paths)
    clf = load_classifier(out["model"])
    assert clf.vae_digest == VAE_A and len(clf.digest) == 64
    metrics = json.loads(out["metrics"].read_text())
    assert metrics["vae_digest"] == VAE_A and metrics["classifier_digest"] == clf.digest
    assert set(pd.read_csv(out["predictions"])["classifier_digest"]) == {clf.digest}
    tags = {"simobs.vae_digest": VAE_A, "simobs.classifier_digest": clf.digest}  # the scripts' MLflow tags
    assert run_train_classifier(paths, _classifier_outputs(tmp_path / "again"), CLASSIFIER, seed=0).lineage_tags() == tags
    ood = {"scores": tmp_path / "ood" / "scores.csv", "thresholds": tmp_path / "ood" / "thresholds.csv"}
    assert run_ood_scores(paths, out["model"], out["predictions"], ood, OOD, seed=0).lineage_tags() == tags
    thr = pd.read_csv(ood["thresholds"])
    assert set(thr["classifier_digest"]) == {clf.digest} and set(thr["vae_digest"]) == {VAE_A}
    post = _posterior_outputs(tmp_path)
    result = run_model_posterior([paths[4]], out["model"], out["predictions"], ood["scores"], ood["thresholds"], post,
                                 {"n_bootstrap": 10, "survey_calibration": {"n_surveys": 5, "survey_size": 10,
                                                                           "n_bootstrap": 5}}, OOD, seed=0)
    assert result.lineage_tags() == tags
    agg = pd.read_csv(post["aggregate"])
    assert set(agg["classifier_digest"]) == {clf.digest} and set(agg["vae_digest"]) == {VAE_A}


def test_predictions_of_another_classifier_are_refused(tmp_path):
    """The held-out predictions (OOD thresholds, survey calibration) must come from the classifier used."""
    paths = _write(tmp_path, [VAE_A] * 5)
    out = _train(tmp_path, paths)
    other = _classifier_outputs(tmp_path / "other")
    run_train_classifier(paths, other, {**CLASSIFIER, "xgboost": {**CLASSIFIER["xgboost"], "n_estimators": 6}}, seed=1)
    mine, theirs = load_classifier(out["model"]).digest, load_classifier(other["model"]).digest
    assert mine != theirs
    ood = {"scores": tmp_path / "ood" / "scores.csv", "thresholds": tmp_path / "ood" / "thresholds.csv"}
    with pytest.raises(LineageError, match="Re-run rule `train_classifier`") as err:
        run_ood_scores(paths, out["model"], other["predictions"], ood, OOD, seed=0)
    assert mine in str(err.value) and theirs in str(err.value) and str(other["predictions"]) in str(err.value)
    assert not ood["scores"].exists()
    run_ood_scores(paths, out["model"], out["predictions"], ood, OOD, seed=0)
    post = _posterior_outputs(tmp_path)
    with pytest.raises(LineageError, match="Re-run rule `train_classifier`") as err:
        run_model_posterior([paths[4]], out["model"], other["predictions"], ood["scores"], ood["thresholds"], post,
                            {"n_bootstrap": 10}, OOD, seed=0)
    assert mine in str(err.value) and theirs in str(err.value)
    assert not post["aggregate"].exists()


def test_posterior_and_ood_refuse_embeddings_of_another_vae_than_the_classifiers(tmp_path):
    paths = _write(tmp_path, [VAE_A] * 5)
    out = _train(tmp_path, paths)
    restamped = tmp_path / "obs_new.h5"  # the observations re-embedded by a retrained VAE
    restamped.write_bytes(paths[4].read_bytes())
    with h5py.File(restamped, "a") as f:
        f.attrs["vae_digest"] = VAE_B
    ood = {"scores": tmp_path / "ood" / "scores.csv", "thresholds": tmp_path / "ood" / "thresholds.csv"}
    with pytest.raises(LineageError) as err:
        run_ood_scores([*paths[:4], restamped], out["model"], out["predictions"], ood, OOD, seed=0)
    _assert_names_both(err, [(paths[0], VAE_A), (restamped, VAE_B), (f"classifier {out['model']}", VAE_A)])
    assert not ood["thresholds"].exists()
    run_ood_scores(paths, out["model"], out["predictions"], ood, OOD, seed=0)
    with pytest.raises(LineageError) as err:
        run_model_posterior([restamped], out["model"], out["predictions"], ood["scores"], ood["thresholds"],
                            _posterior_outputs(tmp_path), {"n_bootstrap": 10}, OOD, seed=0)
    _assert_names_both(err, [(restamped, VAE_B), (f"classifier {out['model']}", VAE_A)])
    assert "re-run the rule that wrote it" in str(err.value)
    assert not (tmp_path / "posterior" / "a.csv").exists()


def test_ood_tables_of_another_classifier_or_vae_are_refused(tmp_path):
    paths = _write(tmp_path, [VAE_A] * 5)
    out = _train(tmp_path, paths)
    ood = {"scores": tmp_path / "ood" / "scores.csv", "thresholds": tmp_path / "ood" / "thresholds.csv"}
    run_ood_scores(paths, out["model"], out["predictions"], ood, OOD, seed=0)
    thr = pd.read_csv(ood["thresholds"])
    thr.assign(classifier_digest="c" * 64).to_csv(ood["thresholds"], index=False)
    with pytest.raises(LineageError, match="Re-run rule `ood_scores` with this classifier") as err:
        run_model_posterior([paths[4]], out["model"], out["predictions"], ood["scores"], ood["thresholds"],
                            _posterior_outputs(tmp_path), {"n_bootstrap": 10}, OOD, seed=0)
    assert "c" * 64 in str(err.value) and load_classifier(out["model"]).digest in str(err.value)
    thr.assign(vae_digest=VAE_B).to_csv(ood["thresholds"], index=False)
    with pytest.raises(LineageError, match="Re-run rule `ood_scores` on these embeddings") as err:
        run_misspecification(paths, ood["scores"], ood["thresholds"], {}, {}, {})
    assert VAE_A in str(err.value) and VAE_B in str(err.value)


def test_files_without_a_digest_are_accepted_with_a_warning(tmp_path, caplog):
    paths = _write(tmp_path, [None, VAE_A, VAE_A, VAE_A, VAE_A])
    with caplog.at_level(logging.WARNING, logger="simobs.provenance"):
        sets = read_embedding_sets(paths)
    assert [s.vae_digest for s in sets] == [None, VAE_A, VAE_A, VAE_A, VAE_A]
    assert f"vae_digest unknown for {paths[0]}" in caplog.text and "Re-run rule `embed`" in caplog.text
    out = _train(tmp_path, paths)
    assert load_classifier(out["model"]).vae_digest == VAE_A


def test_a_classifier_file_altered_after_training_is_refused(tmp_path):
    paths = _write(tmp_path, [VAE_A] * 5)
    out = _train(tmp_path, paths)
    doc = json.loads(out["model"].read_text())
    doc["temperature"] *= 2
    out["model"].write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="altered after train_classifier"):
        load_classifier(out["model"])
    del doc["digest"]  # a file from before digests: its digest is computed from the content
    out["model"].write_text(json.dumps(doc))
    assert len(load_classifier(out["model"]).digest) == 64
