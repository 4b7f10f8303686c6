"""Entry points of the rules ``project``, ``train_classifier`` and ``model_posterior``.

Each ``run_*`` function reads its inputs, computes, writes every output atomically and
returns a :class:`StageOutput` (metrics, tables and figure paths) for the rule's script to
log to MLflow.  Output names are the keys of the rule's ``output:`` block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from simobs.comparison import plots
from simobs.comparison.attribution import mean_abs_attributions, top_latent_features
from simobs.comparison.classifier import load_classifier
from simobs.comparison.embeddings import pool_simulations, read_embedding_sets
from simobs.comparison.posterior import bootstrap_aggregate, normalise_prior, posterior_model_probabilities
from simobs.comparison.projection import ProjectionSettings, project_embeddings
from simobs.comparison.replicates import ClassifierReplicates, load_replicates, replicate_settings, train_classifier_replicates
from simobs.comparison.selection import held_out_pass, observed_flags
from simobs.comparison.splits import HELD_OUT_SPLITS, Split
from simobs.comparison.survey_calibration import survey_calibration
from simobs.comparison.training import classifier_settings_from_config, train_simulation_classifier
from simobs.provenance import check_same_lineage, check_table_lineage, shared_digest
from simobs.stagekit import StageOutput, read_table, save_figure, write_json, write_table

__all__ = ["run_projection", "run_train_classifier", "run_classifier_replicates", "run_model_posterior"]

log = logging.getLogger(__name__)


# -- project ------------------------------------------------------------------------------
def run_projection(embedding_paths: Sequence[str | Path], outputs: Mapping[str, str | Path],
                   settings: Mapping[str, Any] | None) -> StageOutput:
    """UMAP of all sources; outputs ``table``, ``figure_all``, ``figure_panels``."""
    sets = read_embedding_sets(embedding_paths)
    table = project_embeddings(sets, ProjectionSettings.from_mapping(settings))
    write_table(table, outputs["table"])
    figs = [save_figure(plots.plot_projection(table), outputs["figure_all"]),
            save_figure(plots.plot_projection_panels(table), outputs["figure_panels"])]
    metrics = {f"n_{s.source}": float(len(s)) for s in sets}
    metrics["n_fit"] = float(table["in_fit"].sum())
    return StageOutput(metrics, {}, figs)


# -- train_classifier ---------------------------------------------------------------------
def _decode_traversals(embedding_model: str | Path, latents: list[int], steps: int, span: float,
                       vae_digest: str | None = None) -> dict[int, np.ndarray]:
    """Decoded traversals {latent: (S, B, H, W)} of the VAE, each latent moved across
    ±``span`` times its spread over the training images (the embedding stage's
    :func:`simobs.embedding.decode_latent_traversal`).  The VAE must be the one that made
    the embeddings (``vae_digest``): another model's latents mean other things."""
    from simobs.embedding import decode_latent_traversal, load_model

    model, info = load_model(embedding_model)
    check_same_lineage([(f"embedding model {embedding_model}", info["model_digest"]),
                        ("the classifier's training embeddings", vae_digest)], "vae_digest",
                       "Re-run rule `embed` with this model for every source, then `train_classifier`")
    images, _ = decode_latent_traversal(model, latents, n_steps=steps, n_sigma=span)
    return {j: images[i] for i, j in enumerate(latents)}


def _traversal_figure(top: pd.DataFrame, embedding_model: str | Path | None, n_latents: int, steps: int,
                      span: float, out: Path, vae_digest: str | None = None) -> Path | None:
    """Traversal figure of the most important latents (None when no VAE model is given)."""
    if embedding_model is None:
        return None
    # latents ranked by their best rank over models, then by importance
    best = top.sort_values(["rank", "mean_abs_shap"], ascending=[True, False]).drop_duplicates("latent")
    latents = [int(j) for j in best["latent"].head(n_latents)]
    imgs = _decode_traversals(embedding_model, latents, steps, span, vae_digest)
    used_by = {j: ", ".join(top.loc[top.latent == j, "model"]) for j in latents}
    values = list(np.linspace(-span, span, steps))  # in units of each latent's spread
    return save_figure(plots.plot_latent_traversals(imgs, values, {j: f"z{j}\n({used_by[j]})" for j in latents}), out)


def run_train_classifier(embedding_paths: Sequence[str | Path], outputs: Mapping[str, str | Path],
                         settings: Mapping[str, Any], seed: int = 0, embedding_model: str | Path | None = None,
                         on_epoch: Callable[[dict[str, float], int], None] | None = None) -> StageOutput:
    """Train, calibrate and explain the simulation classifier.

    Outputs: ``model`` (classifier JSON), ``predictions`` (held-out predictions of every
    simulated image, CSV), ``metrics`` (JSON), ``shap`` (top latents CSV) and figures
    ``reliability``, ``confusion``, ``shap_figure``, ``traversals`` (a placeholder figure
    when no embedding model is given).  The classifier file and ``metrics`` record the
    ``vae_digest`` of the embeddings and the classifier's own ``classifier_digest``.

    Raises:
        LineageError: if the embeddings files (or the embedding model of the traversals)
            come from different VAEs.
    """
    sets = read_embedding_sets(embedding_paths)
    vae_digest = shared_digest([e.vae_digest for e in sets])  # read_embedding_sets checked they agree
    s = dict(settings)
    split = s.get("split", {})
    fractions = (split.get("train", 0.7), split.get("validation", 0.15), split.get("test", 0.15))
    cal = s.get("calibration", {})
    res = train_simulation_classifier(sets, classifier_settings_from_config(s), fractions,
                                      max_ece=cal.get("max_ece", 0.02), n_bins=cal.get("n_bins", 15),
                                      seed=seed, on_epoch=on_epoch)
    clf = res.classifier
    clf.extra["vae_digest"] = vae_digest
    clf.save(outputs["model"])
    # the held-out predictions are read beside the classifier file: the digest ties them to it
    write_table(res.predictions.assign(classifier_digest=clf.digest), outputs["predictions"])
    metrics = res.metrics()
    write_json({**metrics, "class_names": clf.class_names, "confusion": res.report.confusion.tolist(),
                "vae_digest": vae_digest, "classifier_digest": clf.digest}, outputs["metrics"])

    # SHAP on held-out galaxies (never on the training split: importance of what generalises)
    sims = [e for e in sets if not e.is_observation]
    x_all = np.concatenate([e.embedding for e in sims])
    held = np.concatenate([res.split.validation, res.split.test])
    shap_cfg = s.get("shap", {})
    max_rows = int(shap_cfg.get("max_samples", 20000))
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(held, min(max_rows, len(held)), replace=False))
    importance = mean_abs_attributions(clf.feature_attributions(x_all[rows]))
    top = top_latent_features(importance, clf.class_names, shap_cfg.get("n_top", 5))
    write_table(top, outputs["shap"])
    nb = cal.get("n_bins", 15)
    figs = [
        save_figure(plots.plot_reliability({"uncalibrated": res.report_raw.reliability, "calibrated": res.report.reliability},
                                           {"uncalibrated": res.report_raw.ece, "calibrated": res.report.ece}),
                    outputs["reliability"]),
        save_figure(plots.plot_confusion(res.report.confusion, clf.class_names), outputs["confusion"]),
        save_figure(plots.plot_feature_importance(importance, clf.class_names, shap_cfg.get("n_top", 5) * 2),
                    outputs["shap_figure"]),
    ]
    trav = _traversal_figure(top, embedding_model, int(shap_cfg.get("n_traversal_latents", 6)),
                             int(shap_cfg.get("traversal_steps", 7)), float(shap_cfg.get("traversal_span", 3.0)),
                             Path(outputs["traversals"]), vae_digest)
    if trav is None:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "latent traversals: no embedding model given", ha="center", va="center", fontsize=8)
        trav = save_figure(fig, outputs["traversals"])
    figs.append(trav)
    log.info("classifier: n_bins=%d, test accuracy %.3f, ECE %.4f", nb, res.report.accuracy, res.report.ece)
    return StageOutput(metrics, {"top_latents": top}, figs,
                       lineage={"vae_digest": vae_digest or "", "classifier_digest": clf.digest})


# -- classifier_replicates ----------------------------------------------------------------
def _split_from_predictions(pred: pd.DataFrame, sources: np.ndarray, ids: np.ndarray, path: str | Path) -> Split:
    """The main classifier's split of the pooled rows, read from its held-out predictions table."""
    key = pd.MultiIndex.from_arrays([pred["source"].astype(str), pred["id"].astype(str)])
    where = pd.Series(pred["split"].to_numpy(), index=key)
    rows = pd.MultiIndex.from_arrays([pd.Index(sources.astype(str)), pd.Index(ids.astype(str))])
    missing = ~rows.isin(key)
    if missing.any():
        first = rows[np.flatnonzero(missing)[0]]
        raise ValueError(f"{path}: {int(missing.sum())} simulated image(s) of the embeddings are not in the classifier's "
                         f"predictions (first: source {first[0]!r}, id {first[1]!r}); rerun rule `train_classifier` "
                         "with these embeddings")
    labels = where.reindex(rows).to_numpy()
    return Split(*(np.flatnonzero(labels == name) for name in ("train", "validation", "test")))


def run_classifier_replicates(embedding_paths: Sequence[str | Path], classifier_path: str | Path,
                              predictions_path: str | Path, outputs: Mapping[str, str | Path],
                              settings: Mapping[str, Any], seed: int = 0) -> StageOutput:
    """Replicates of the main classifier trained on bootstrap resamples of its training
    galaxies (:mod:`simobs.comparison.replicates`): the classifier's training variance
    that ``model_posterior`` adds to its intervals.

    Outputs: ``replicates`` (JSON: the main classifier's digest and one classifier per
    replicate), ``heldout_logits`` (CSV: ``replicate``, ``source``, ``id``, ``logit_<model>``
    of every held-out simulated image) and ``table`` (CSV, one row per replicate).

    Raises:
        LineageError: if the embeddings were made by another VAE than the classifier's.
        ValueError: if the classifier's predictions do not cover the embeddings.
    """
    clf = load_classifier(classifier_path)
    sets = read_embedding_sets(embedding_paths, (f"classifier {classifier_path}", clf.vae_digest))
    pred = read_table(predictions_path, ["source", "id", "split"], "classifier predictions", "train_classifier")
    check_table_lineage(pred, predictions_path, "classifier_digest", (f"classifier {classifier_path}", clf.digest),
                        "Re-run rule `train_classifier`: its predictions and classifier file come from one run")
    x, y, groups, ids, names = pool_simulations(sets)
    if names != clf.class_names:
        raise ValueError(f"embeddings of {names} given, but {classifier_path} classifies {clf.class_names}; "
                         "give the simulation sources it was trained on")
    sources = np.array(names, dtype=object)[y]
    split = _split_from_predictions(pred, sources, ids, predictions_path)
    s = dict(settings)
    cal = s.get("calibration", {})
    classifiers, table = train_classifier_replicates(
        x, y, groups, split, names, classifier_settings_from_config(s), replicate_settings(s),
        max_ece=cal.get("max_ece", 0.02), n_bins=cal.get("n_bins", 15), seed=seed)
    for c in classifiers:
        c.extra.update(vae_digest=clf.vae_digest, replicate_of=clf.digest)
    reps = ClassifierReplicates(classifiers, clf.digest, clf.vae_digest)
    reps.save(outputs["replicates"])
    held = np.sort(np.concatenate([split.validation, split.test]))
    frames = []
    for r, logits in enumerate(reps.logits(x[held])):
        t = pd.DataFrame({"replicate": r, "source": sources[held], "id": ids[held]})
        for k, n in enumerate(names):
            t[f"logit_{n}"] = logits[:, k]
        frames.append(t)
    cols = ["replicate", "source", "id", *(f"logit_{n}" for n in names)]
    write_table(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols), outputs["heldout_logits"])
    write_table(table.assign(classifier_digest=clf.digest), outputs["table"])
    metrics = {"n_replicates": float(len(classifiers))}
    if len(table):
        main_acc = float(np.mean(clf.logits(x[split.test]).argmax(1) == y[split.test]))
        metrics.update(test_accuracy_main=main_acc, test_accuracy_replicates_mean=float(table.test_accuracy.mean()),
                       test_accuracy_replicates_sd=float(table.test_accuracy.std(ddof=1)) if len(table) > 1 else 0.0)
    return StageOutput(metrics, {"replicates": table}, [],
                       lineage={"vae_digest": clf.vae_digest or "", "classifier_digest": clf.digest})


def _replicate_heldout_logits(path: str | Path | None, held: pd.DataFrame, names: list[str]) -> np.ndarray | None:
    """(R, M, K) replicate logits aligned with the rows of ``held`` (None: no file or no replicates)."""
    if path is None:
        return None
    t = read_table(path, ["replicate", "source", "id", *(f"logit_{n}" for n in names)], "replicate held-out logits",
                   "classifier_replicates")
    if t.empty:
        return None
    out = []
    key = pd.MultiIndex.from_arrays([held["source"].astype(str), held["id"].astype(str)])
    for r, g in t.groupby("replicate", sort=True):
        g = g.set_index([g["source"].astype(str), g["id"].astype(str)])
        if not key.isin(g.index).all():
            raise ValueError(f"{path}: replicate {r} lacks held-out images of the classifier's predictions; rerun rule "
                             "`classifier_replicates` after `train_classifier`")
        out.append(g.reindex(key)[[f"logit_{n}" for n in names]].to_numpy(np.float64))
    return np.stack(out)


# -- model_posterior ----------------------------------------------------------------------
def run_model_posterior(embedding_paths: Sequence[str | Path], classifier_path: str | Path,
                        predictions_path: str | Path, ood_scores_path: str | Path, ood_thresholds_path: str | Path,
                        outputs: Mapping[str, str | Path], settings: Mapping[str, Any],
                        ood_settings: Mapping[str, Any], seed: int = 0,
                        replicates_path: str | Path | None = None,
                        replicate_heldout_path: str | Path | None = None) -> StageOutput:
    """Posterior model probabilities per observed galaxy and for each observed sample.

    Galaxies flagged by rule ``ood_scores`` (score ``ood_settings['score']``) are excluded
    from the aggregate, whose likelihood is truncated accordingly: the selection term
    -n_kept log P_k(pass), P_k from the held-out simulated images, bootstrapped with them
    (see :mod:`simobs.comparison.posterior`); per-galaxy values are reported for all.
    Given the classifier's replicates (``replicates_path``, rule ``classifier_replicates``)
    the intervals also hold the classifier's training variance, and the Bayes-factor
    table gives both parts of the spread.

    Outputs: ``per_galaxy`` (CSV), ``aggregate`` (CSV, with the ``classifier_digest`` and
    ``vae_digest`` used), ``bayes_factors`` (CSV), ``survey_calibration`` (CSV,
    :mod:`simobs.comparison.survey_calibration` on the held-out simulated galaxies of
    ``predictions_path``), figures ``figure_bars`` and ``figure_per_galaxy``.

    Raises:
        LineageError: if the observed embeddings were made by another VAE than the
            classifier's training embeddings, or the OOD tables by another classifier.
    """
    clf = load_classifier(classifier_path)
    sets = [e for e in read_embedding_sets(embedding_paths, (f"classifier {classifier_path}", clf.vae_digest))
            if e.is_observation]
    if not sets:
        raise ValueError("model_posterior needs at least one observation source among its embedding inputs")
    names = clf.class_names
    prior_cfg = settings.get("prior")
    prior = None
    if prior_cfg:
        missing = sorted(set(names) - set(prior_cfg))
        if missing:
            raise ValueError(f"model_posterior.prior lacks a weight for {missing}; give one per simulation: {names}")
        prior = normalise_prior([prior_cfg[n] for n in names], len(names))
    method = ood_settings.get("score", "knn")
    scores = read_table(ood_scores_path, ["source", "kind", "id", "split", method, "ood_flagged"], "OOD scores",
                        "ood_scores")
    thresholds = read_table(ood_thresholds_path, ["reference", "score", "threshold"], "OOD thresholds", "ood_scores")
    check_table_lineage(thresholds, ood_thresholds_path, "classifier_digest",
                        (f"classifier {classifier_path}", clf.digest), "Re-run rule `ood_scores` with this classifier")
    pred = read_table(predictions_path, ["source", "galaxy_id", "label", "split"], "classifier predictions",
                      "train_classifier")
    check_table_lineage(pred, predictions_path, "classifier_digest", (f"classifier {classifier_path}", clf.digest),
                        "Re-run rule `train_classifier`: its predictions and classifier file come from one run")
    reps = ClassifierReplicates([], None, None)
    if replicates_path is not None:
        reps = load_replicates(replicates_path)
        check_same_lineage([(f"classifier {classifier_path}", clf.digest),
                            (f"classifier replicates {replicates_path}", reps.classifier_digest)], "classifier_digest",
                           "Re-run rule `classifier_replicates` after `train_classifier`")
    interval = float(settings.get("interval", 0.68))
    per_galaxy, aggregates, bfs, metrics, figs = [], [], [], {}, []
    for i, e in enumerate(sets):
        z = clf.logits(e.embedding)
        finite = np.isfinite(z).all(axis=1)  # a non-finite logit row is flagged, never aggregated
        flagged = observed_flags(scores, e.source, e.ids) | ~finite
        passed, labels = held_out_pass(scores, thresholds, e.source, method, names)
        rates = np.bincount(labels, weights=passed, minlength=len(names)) / np.maximum(np.bincount(labels, minlength=len(names)), 1)
        metrics.update({f"{e.source}_pass_rate_{n}": float(r) for n, r in zip(names, rates)})
        probs = np.full(z.shape, np.nan)
        probs[finite] = posterior_model_probabilities(z[finite], prior)
        t = pd.DataFrame({"source": e.source, "id": e.ids, "ood_flagged": flagged})
        for k, n in enumerate(names):
            t[f"p_{n}"] = probs[:, k]
        t["map_model"] = [names[k] if ok else "" for k, ok in zip(np.nan_to_num(probs).argmax(1), finite)]
        per_galaxy.append(t)
        keep = ~flagged
        metrics[f"{e.source}_n_galaxies"] = float(len(e))
        metrics[f"{e.source}_n_counted"] = float(keep.sum())
        if keep.sum() == 0:
            log.warning("%s: every observed galaxy is out of distribution; no aggregate posterior", e.source)
            continue
        z_rep = reps.logits(e.embedding[keep]) if len(reps) else None
        boot = bootstrap_aggregate(z[keep], prior, int(settings.get("n_bootstrap", 1000)), seed, (passed, labels), z_rep)
        agg = boot.posterior_table(names, interval)
        agg.insert(0, "observations", e.source)
        agg["n_counted"], agg["n_excluded_ood"] = int(keep.sum()), int(flagged.sum())
        agg["pass_rate"] = rates
        agg["classifier_digest"], agg["vae_digest"] = clf.digest, clf.vae_digest
        aggregates.append(agg)
        bf = boot.bayes_factor_table(names, interval)
        bf.insert(0, "observations", e.source)
        bf["mean_log_bayes_factor_per_galaxy"] = bf["log_bayes_factor"] / keep.sum()
        bf["n_classifier_replicates"] = len(reps)
        bfs.append(bf)
        metrics.update({f"{e.source}_posterior_{n}": float(p) for n, p in zip(names, agg["posterior"])})
        metrics[f"{e.source}_ood_fraction"] = float(flagged.mean())
        sfx = "" if i == 0 else f"_{e.source}"
        figs.append(save_figure(plots.plot_posterior_bars(agg), _suffixed(outputs["figure_bars"], sfx)))
        figs.append(save_figure(plots.plot_per_galaxy_posteriors(np.nan_to_num(probs, nan=1.0 / len(names)), names,
                                                                 flagged), _suffixed(outputs["figure_per_galaxy"], sfx)))
    write_table(pd.concat(per_galaxy, ignore_index=True), outputs["per_galaxy"])
    held = pred[pred.split.isin(HELD_OUT_SPLITS)]
    sc = settings.get("survey_calibration", {}) or {}
    surveys = survey_calibration(held[[f"logit_{n}" for n in names]].to_numpy(), held["label"].to_numpy(),
                                 (held["source"] + "/" + held["galaxy_id"]).to_numpy(), names,
                                 int(sc.get("survey_size", 100)), int(sc.get("n_surveys", 200)),
                                 int(sc.get("n_bootstrap", 100)), interval, seed=seed,
                                 replicate_logits=_replicate_heldout_logits(replicate_heldout_path, held, names))
    write_table(surveys, outputs["survey_calibration"])
    overall = surveys[surveys.survey_of == "all"].iloc[0]
    metrics.update({"survey_win_rate": float(overall["win_rate"]), "survey_aggregate_ece": float(overall["aggregate_ece"])})
    cols_a = ["observations", "model", "posterior", "posterior_lo", "posterior_hi", "log_posterior", "log_posterior_lo",
              "log_posterior_hi", "n_counted", "n_excluded_ood", "pass_rate", "classifier_digest", "vae_digest"]
    write_table(pd.concat(aggregates, ignore_index=True) if aggregates else pd.DataFrame(columns=cols_a),
                outputs["aggregate"])
    write_table(pd.concat(bfs, ignore_index=True) if bfs else pd.DataFrame(columns=["observations", "model_a", "model_b"]),
                outputs["bayes_factors"])
    for key in ("figure_bars", "figure_per_galaxy"):  # declared outputs must exist even without an aggregate
        if not Path(outputs[key]).exists():
            fig, ax = plt.subplots(figsize=(4, 1))
            ax.axis("off")
            ax.text(0.5, 0.5, "no galaxy passed the OOD check", ha="center", va="center")
            figs.append(save_figure(fig, outputs[key]))
    return StageOutput(metrics, {}, figs,
                       lineage={"vae_digest": clf.vae_digest or "", "classifier_digest": clf.digest})


def _suffixed(path: str | Path, suffix: str) -> Path:
    """The first observation source writes the declared path; others get ``_<source>`` suffixes."""
    p = Path(path)
    return p if not suffix else p.with_name(p.stem + suffix + p.suffix)
