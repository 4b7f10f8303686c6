"""Issue #13: the classifier's training variance in the aggregate's intervals.

The bootstrap over galaxies holds the trained classifier fixed.  A classifier trained on
another draw of training galaxies shifts every galaxy's log-likelihood ratio a little in
the same direction, and that shift grows as N in the aggregate while the galaxy
bootstrap's spread grows as sqrt(N): at survey sizes the intervals from galaxies alone
miss the quantity they claim to bracket."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import log_softmax

from conftest import make_universe, write_embedding_file
from simobs.comparison.posterior import bootstrap_aggregate
from simobs.comparison.replicates import bootstrap_training_rows, load_replicates
from simobs.comparison.splits import grouped_split
from simobs.comparison.stages import run_classifier_replicates, run_model_posterior, run_train_classifier
from simobs.misspecification.ood_stage import run_ood_scores
from simobs.provenance import LineageError

CLASSIFIER = {"backend": "xgboost", "xgboost": {"n_estimators": 40, "max_depth": 3, "n_threads": 1},
              "split": {"train": 0.6, "validation": 0.2, "test": 0.2}, "calibration": {"max_ece": 0.02, "n_bins": 10},
              "shap": {"n_top": 2, "max_samples": 100}, "replicates": 4}


def _coverage(n_galaxies: int, tau: float, n_replicates: int | None, trials: int = 300, interval: float = 0.68):
    """How often the 68 % interval of log B_01 holds its expectation over galaxy samples and
    trainings.  Per-galaxy log ratio a_i ~ N(0.05, 1) (the truth); a trained classifier
    adds an offset delta ~ N(0, tau^2) shared by every galaxy (its training error).  The
    replicates, as bootstrap-trained classifiers do, scatter around the main classifier's
    offset with the same spread."""
    rng = np.random.default_rng(7)
    truth = 0.05 * n_galaxies
    lo, hi = 50 * (1 - interval), 50 * (1 + interval)
    hits = []
    for t in range(trials):
        a = rng.normal(0.05, 1.0, size=n_galaxies)
        delta = rng.normal(0.0, tau)
        logits = np.stack([a + delta, np.zeros(n_galaxies)], axis=1)
        reps = None
        if n_replicates:
            shifts = delta + rng.normal(0.0, tau, size=n_replicates)
            reps = np.stack([np.stack([a + s, np.zeros(n_galaxies)], axis=1) for s in shifts])
        boot = bootstrap_aggregate(logits, n_bootstrap=200, seed=t, replicate_logits=reps)
        # logits are log-likelihood ratios here: log B_01 = sum_i [log q_0 - log q_1] = sum of the logit gap
        b = boot.log_bayes_factor_samples[:, 0, 1]
        hits.append(np.percentile(b, lo) <= truth <= np.percentile(b, hi))
    return float(np.mean(hits))


def test_galaxy_bootstrap_alone_undercovers_and_replicates_restore_nominal_coverage():
    # 1,000 galaxies, a training offset of 0.05 nats per galaxy: 50 nats shared, against a
    # galaxy-bootstrap s.d. of ~32 nats
    old = _coverage(1000, tau=0.05, n_replicates=None)
    new = _coverage(1000, tau=0.05, n_replicates=20)
    assert old < 0.5, old  # the defect: intervals from the galaxies alone are too narrow
    assert new == pytest.approx(0.68, abs=0.08), new


def test_training_variance_enters_the_bayes_factor_table_and_spares_the_point_estimate():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 3))
    reps = z[None] + rng.normal(scale=0.05, size=(6, 1, 3))  # offsets shared by the galaxies
    plain = bootstrap_aggregate(z, n_bootstrap=300, seed=1)
    wide = bootstrap_aggregate(z, n_bootstrap=300, seed=1, replicate_logits=reps)
    np.testing.assert_allclose(wide.log_bayes_factors, plain.log_bayes_factors)
    np.testing.assert_allclose(wide.log_posterior, plain.log_posterior)
    sums = log_softmax(reps, axis=2).sum(axis=1)
    expected_sd = np.std(sums[:, 0] - sums[:, 1], ddof=1)
    t = wide.bayes_factor_table(["a", "b", "c"]).set_index(["model_a", "model_b"])
    assert t.loc[("a", "b"), "log_bayes_factor_sd_classifier_training"] == pytest.approx(expected_sd)
    total, galaxies = t.loc[("a", "b"), "log_bayes_factor_sd"], t.loc[("a", "b"), "log_bayes_factor_sd_galaxies"]
    assert total == pytest.approx(np.hypot(galaxies, expected_sd), rel=0.15)
    assert np.isnan(plain.bayes_factor_table(["a", "b", "c"])["log_bayes_factor_sd_classifier_training"]).all()
    with pytest.raises(ValueError, match=">= 2 replicates"):
        bootstrap_aggregate(z, replicate_logits=reps[:1])
    with pytest.raises(ValueError, match=r"\(R, N, K\)"):
        bootstrap_aggregate(z, replicate_logits=reps[:, :10])


def test_bootstrap_resample_keeps_galaxies_whole_and_models_their_size():
    groups = np.repeat([f"g{i}" for i in range(30)], 4)  # 30 galaxies x 4 projections
    labels = np.repeat(np.arange(3), 40)  # 10 galaxies per model
    split = grouped_split(groups, labels, (0.6, 0.2, 0.2), seed=0)
    rows = bootstrap_training_rows(groups, labels, split.train, np.random.default_rng(3))
    assert set(rows) <= set(split.train)
    for c in range(3):
        train_c = split.train[labels[split.train] == c]
        drawn = rows[labels[rows] == c]
        assert len(drawn) == len(train_c)  # as many galaxies as the model has, each with its 4 projections
        counts = pd.Series(groups[drawn]).value_counts()
        assert (counts % 4 == 0).all()
    assert len(np.unique(groups[rows])) < len(np.unique(groups[split.train]))  # with replacement


def _stage(tmp_path):
    sets = make_universe(seed=4, n_galaxies=40, n_proj=2, n_obs=300, obs_model=1)
    emb = [write_embedding_file(s, tmp_path / f"{s.source}.h5", vae_digest="vae-a") for s in sets]
    out = {k: tmp_path / "classifier" / v for k, v in {
        "model": "classifier.json", "predictions": "predictions.csv", "metrics": "metrics.json", "shap": "shap.csv",
        "reliability": "reliability.png", "confusion": "confusion.png", "shap_figure": "shap.png",
        "traversals": "traversals.png"}.items()}
    run_train_classifier(emb, out, CLASSIFIER, seed=0)
    rep_out = {"replicates": tmp_path / "classifier" / "replicates.json",
               "heldout_logits": tmp_path / "classifier" / "replicate_heldout_logits.csv",
               "table": tmp_path / "classifier" / "replicates.csv"}
    sims = [p for p in emb if "obs" not in p.name]
    res = run_classifier_replicates(sims, out["model"], out["predictions"], rep_out, CLASSIFIER, seed=0)
    ood_out = {"scores": tmp_path / "ood" / "scores.csv", "thresholds": tmp_path / "ood" / "thresholds.csv"}
    run_ood_scores(emb, out["model"], out["predictions"], ood_out, {"score": "knn", "tpr": 0.95}, seed=0)
    return emb, out, rep_out, ood_out, res


def test_replicates_stage_feeds_the_posterior_intervals(tmp_path):
    emb, out, rep_out, ood_out, res = _stage(tmp_path)
    reps = load_replicates(rep_out["replicates"])
    main = json.loads(out["model"].read_text())["digest"]
    assert len(reps) == 4 and reps.classifier_digest == main and res.metrics["n_replicates"] == 4
    table = pd.read_csv(rep_out["table"])
    assert (table["n_train_galaxies_unique"] < 4 * 24).all() and table["test_accuracy"].gt(0.5).all()
    held = pd.read_csv(rep_out["heldout_logits"], dtype={"id": str})
    pred = pd.read_csv(out["predictions"], dtype={"id": str})
    assert len(held) == 4 * pred.split.isin(["validation", "test"]).sum()
    post_out = {k: tmp_path / "posterior" / v for k, v in {
        "per_galaxy": "per_galaxy.csv", "aggregate": "aggregate.csv", "bayes_factors": "bayes_factors.csv",
        "figure_bars": "bars.png", "figure_per_galaxy": "per_galaxy.png", "survey_calibration": "surveys.csv"}.items()}
    obs = [p for p in emb if "obs" in p.name]
    settings = {"n_bootstrap": 200, "survey_calibration": {"n_surveys": 20, "survey_size": 40, "n_bootstrap": 40}}
    run_model_posterior(obs, out["model"], out["predictions"], ood_out["scores"], ood_out["thresholds"], post_out,
                        settings, {"score": "knn"}, seed=0, replicates_path=rep_out["replicates"],
                        replicate_heldout_path=rep_out["heldout_logits"])
    bf = pd.read_csv(post_out["bayes_factors"])
    assert (bf["n_classifier_replicates"] == 4).all()
    assert (bf["log_bayes_factor_sd_classifier_training"] > 0).all()
    assert (bf["log_bayes_factor_sd"] > bf["log_bayes_factor_sd_galaxies"]).all()
    surveys = pd.read_csv(post_out["survey_calibration"])
    pure = surveys[surveys.survey_of.isin(["m0", "m1", "m2", "m3"])]
    assert (pure["n_classifier_replicates"] == 4).all() and (pure["log_bf_sd_across_classifiers"] > 0).all()
    assert (pure["log_bf_sd_with_classifiers"] > pure["log_bf_sd_bootstrap"]).all()

    # replicates of another classifier are refused, naming both digests
    doc = json.loads(rep_out["replicates"].read_text())
    doc["classifier_digest"] = "another-classifier"
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(doc))
    with pytest.raises(LineageError, match="another-classifier"):
        run_model_posterior(obs, out["model"], out["predictions"], ood_out["scores"], ood_out["thresholds"], post_out,
                            settings, {"score": "knn"}, seed=0, replicates_path=stale,
                            replicate_heldout_path=rep_out["heldout_logits"])


def test_replicates_need_the_classifiers_predictions_for_every_image(tmp_path):
    emb, out, rep_out, _, _ = _stage(tmp_path)
    pred = pd.read_csv(out["predictions"], dtype={"id": str})
    pred.iloc[1:].to_csv(out["predictions"], index=False)
    with pytest.raises(ValueError, match="not in the classifier's predictions"):
        run_classifier_replicates([p for p in emb if "obs" not in p.name], out["model"], out["predictions"], rep_out,
                                  CLASSIFIER, seed=0)
