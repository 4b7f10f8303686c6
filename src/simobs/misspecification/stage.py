"""Entry point of the rule ``misspecification``.

Three complementary checks of whether the simulations can describe the observations:

1. logit OOD scores (does the classifier recognise an observed galaxy as coming from
   *any* simulation?) — the fraction of observed galaxies flagged, against the nominal
   1 - TPR that well-specified simulations would give;
2. VAE typicality (does a simulation produce images the observations do not contain?)
   — the fraction of each simulation's galaxies outside the observed typical set;
3. an MMD two-sample test per simulation against the observations in embedding space
   — is the *population* of embeddings the same?

Verdict logic reported in ``summary``: a simulation is *consistent* with an observed
sample when its MMD test does not reject at ``alpha``; when no simulation is consistent
the comparison is misspecified, and the posterior model probabilities only say which
wrong model is least wrong.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simobs.comparison.classifier import load_classifier
from simobs.comparison.stages import StageOutput, _read_all, save_figure, write_table
from simobs.io import atomic_path
from simobs.misspecification import plots
from simobs.misspecification.mmd import mmd_permutation_test, one_per_group
from simobs.misspecification.ood import HELD_OUT_SPLITS
from simobs.misspecification.scores import OODScorer, flag_all
from simobs.misspecification.typicality import atypical_mask, typical_set_threshold

__all__ = ["run_misspecification"]

log = logging.getLogger(__name__)


def _gallery(df: pd.DataFrame, score: str, n: int, dataset_paths: Mapping[str, str | Path], title: str):
    """Images of the ``n`` rows with the highest ``score`` (read from the image datasets by id)."""
    from simobs.data.dataset import read_images_by_id

    top = df.sort_values(score, ascending=False, kind="stable").head(n)
    images = {}
    for source, part in top.groupby("source", sort=False):
        if source not in dataset_paths:
            raise ValueError(f"no image dataset given for source {source!r}; add results/datasets/{source}.h5 "
                             "to the rule's inputs")
        for i, img in zip(part["id"], read_images_by_id(dataset_paths[source], [str(v) for v in part["id"]])):
            images[(source, i)] = img
    imgs = [images[(s, i)] for s, i in zip(top["source"], top["id"])]  # still sorted by score
    titles = [f"{s}\n{i}\n{score}={v:.3g}" for s, i, v in zip(top["source"], top["id"], top[score])]
    return plots.plot_gallery(np.stack(imgs) if imgs else np.zeros((0, 1, 1, 1)), titles, title)


def run_misspecification(embedding_paths: Sequence[str | Path], classifier_path: str | Path,
                         predictions_path: str | Path, dataset_paths: Mapping[str, str | Path],
                         outputs: Mapping[str, str | Path], settings: Mapping[str, Any], seed: int = 0) -> StageOutput:
    """OOD scores, typicality and MMD tests for every source.

    Outputs: ``scores`` (per image, CSV), ``summary`` (per source, CSV), ``mmd`` (per
    simulation x observation source, CSV), ``verdict`` (JSON) and figures ``figure_energy``,
    ``figure_max_softmax``, ``figure_typicality``, ``figure_mmd``, ``gallery_observed``,
    ``gallery_simulated``.
    """
    sets = _read_all(embedding_paths)
    obs_sets = [e for e in sets if e.is_observation]
    sim_sets = [e for e in sets if not e.is_observation]
    if not obs_sets or not sim_sets:
        raise ValueError("misspecification needs observation and simulation embeddings among its inputs")
    clf = load_classifier(classifier_path)
    ood_cfg, typ_cfg, mmd_cfg = settings.get("ood", {}), settings.get("typicality", {}), settings.get("mmd", {})
    method, tpr = ood_cfg.get("score", "knn"), float(ood_cfg.get("tpr", 0.95))
    predictions = pd.read_csv(predictions_path)
    scorer = OODScorer(clf, sim_sets, predictions, knn_k=int(ood_cfg.get("knn_k", 10)),
                       knn_components=int(ood_cfg.get("knn_components", 128)))
    # Simulations are compared with the pooled held-out simulations; each observed sample
    # with the held-out simulations weighted by its posterior model probabilities.
    logits = {e.source: clf.logits(e.embedding) for e in sets}
    thr = scorer.thresholds(tpr)
    thresholds = {e.source: thr for e in sim_sets}
    for o in obs_sets:
        thresholds[o.source] = scorer.thresholds(tpr, logits[o.source], ood_cfg.get("reference", "pooled"))
    stat, q = typ_cfg.get("statistic", "recon_error"), float(typ_cfg.get("quantile", 0.99))
    typ_thr = typical_set_threshold(np.concatenate([e.recon_error if stat == "recon_error" else e.elbo for e in obs_sets]),
                                    stat, q)

    # 1 + 2: per-image scores
    frames = []
    for e in sets:
        sc = scorer.scores(e.embedding, logits[e.source])
        flags = flag_all(sc, thresholds[e.source])
        values = e.recon_error if stat == "recon_error" else e.elbo
        frames.append(pd.DataFrame({
            "source": e.source, "kind": e.kind, "id": e.ids, "galaxy_id": e.galaxy_ids, **sc,
            **{f"flagged_{m}": f for m, f in flags.items()}, "ood_flagged": flags[method],
            "recon_error": e.recon_error, "elbo": e.elbo, "atypical": atypical_mask(values, typ_thr, stat)}))
    scores = pd.concat(frames, ignore_index=True)
    # held-out simulations are the in-distribution reference: mark them
    held = predictions[predictions.split.isin(HELD_OUT_SPLITS)]
    test_ids = set(zip(held["source"], held["id"].astype(str)))
    scores["heldout_test"] = [(s, str(i)) in test_ids for s, i in zip(scores.source, scores.id)]

    summary = scores.groupby(["source", "kind"], sort=False).agg(
        n=("id", "size"),
        flagged_fraction_knn=("flagged_knn", "mean"),
        flagged_fraction_energy=("flagged_energy", "mean"),
        flagged_fraction_max_softmax=("flagged_max_softmax", "mean"),
        atypical_fraction=("atypical", "mean")).reset_index()
    summary["nominal_flagged_fraction"] = 1.0 - tpr

    # 3: MMD per simulation and observation source
    alpha = float(mmd_cfg.get("alpha", 0.05))
    rows, results = [], {}
    for o in obs_sets:
        for k, s in enumerate(sim_sets):
            # one projection per galaxy: projections of one galaxy are not independent draws
            idx = one_per_group(s.galaxy_ids, seed + k) if mmd_cfg.get("one_projection_per_galaxy", True) else slice(None)
            r = mmd_permutation_test(o.embedding, s.embedding[idx], n_permutations=int(mmd_cfg.get("n_permutations", 1000)),
                                     max_samples=mmd_cfg.get("max_samples", 2000),
                                     bandwidth_scales=tuple(mmd_cfg.get("bandwidth_scales", [1.0])), seed=seed + k)
            results[s.source if len(obs_sets) == 1 else f"{s.source} / {o.source}"] = r
            rows.append({"observations": o.source, "simulation": s.source, "mmd2": r.mmd2, "p_value": r.p_value,
                         "rejected": r.rejects(alpha), "alpha": alpha, "n_observed": r.n_x, "n_simulated": r.n_y,
                         "bandwidth": r.bandwidths[0]})
    mmd = pd.DataFrame(rows)

    verdict = {}
    metrics: dict[str, float] = {f"ood_threshold_{m}": v for m, v in thr.items()}
    metrics["typical_set_threshold"] = typ_thr
    for o in obs_sets:
        metrics.update({f"{o.source}_ood_threshold_{m}": v for m, v in thresholds[o.source].items()})
    for o in obs_sets:
        m = mmd[mmd.observations == o.source]
        consistent = m.loc[~m.rejected, "simulation"].tolist()
        flagged = float(summary.loc[summary.source == o.source, f"flagged_fraction_{method}"].iloc[0])
        verdict[o.source] = {
            "consistent_simulations": consistent,
            "misspecified": not consistent,
            "flagged_fraction": flagged,
            "nominal_flagged_fraction": 1.0 - tpr,
            "statement": (f"No simulation is consistent with {o.source} (MMD test rejects all at alpha={alpha}); "
                          f"{flagged:.1%} of its galaxies are out of distribution (nominal {1 - tpr:.1%}). Posterior "
                          "model probabilities rank wrong models only.") if not consistent else
                         (f"Consistent with {o.source} at alpha={alpha}: {', '.join(consistent)}; "
                          f"{flagged:.1%} of its galaxies flagged out of distribution (nominal {1 - tpr:.1%})."),
        }
        metrics[f"{o.source}_flagged_fraction"] = flagged
        metrics[f"{o.source}_n_consistent_simulations"] = float(len(consistent))
    for r in rows:
        metrics[f"mmd_p_value_{r['simulation']}_{r['observations']}"] = r["p_value"]
    for _, r in summary.iterrows():
        metrics[f"atypical_fraction_{r['source']}"] = float(r["atypical_fraction"])
    for o, v in verdict.items():
        log.info("%s", v["statement"])

    write_table(scores, outputs["scores"])
    write_table(summary, outputs["summary"])
    write_table(mmd, outputs["mmd"])
    with atomic_path(outputs["verdict"]) as tmp:
        tmp.write_text(json.dumps(verdict, indent=2))

    by_source = {s: g for s, g in scores.groupby("source", sort=False)}
    # held-out simulated galaxies only: the training split would look more in-distribution than it is
    ref = {s: (g[g.heldout_test] if (g.kind == "simulation").all() else g) for s, g in by_source.items()}
    n_gal = int(settings.get("gallery", {}).get("n_images", 16))
    thr_obs = thresholds[obs_sets[0].source]  # the line drawn: the (first) observed sample's threshold
    figs = [
        save_figure(plots.plot_score_histograms({s: g["energy"].to_numpy() for s, g in ref.items()}, thr_obs["energy"],
                                                "energy score (higher = less like any simulation)",
                                                "Energy OOD score (simulations: held-out splits)"),
                    outputs["figure_energy"]),
        save_figure(plots.plot_score_histograms({s: g["max_softmax"].to_numpy() for s, g in ref.items()},
                                                thr_obs["max_softmax"], "1 - max softmax", "Max-softmax OOD score"),
                    outputs["figure_max_softmax"]),
        save_figure(plots.plot_score_histograms({s: g[stat].to_numpy() for s, g in by_source.items()}, typ_thr, stat,
                                                "VAE typicality (boundary: observed quantile)", log_x=stat == "recon_error"),
                    outputs["figure_typicality"]),
        save_figure(plots.plot_mmd_nulls(results, alpha), outputs["figure_mmd"]),
        save_figure(_gallery(scores[scores.kind == "observation"], method, n_gal, dataset_paths,
                             f"Most atypical observed galaxies (highest {method} score: unlike every simulation)"),
                    outputs["gallery_observed"]),
        save_figure(_gallery(scores[scores.kind == "simulation"].assign(
            typicality=lambda d: d[stat] if stat == "recon_error" else -d[stat]), "typicality", n_gal, dataset_paths,
            f"Most atypical simulated galaxies ({stat}: unlike the observations)"), outputs["gallery_simulated"]),
    ]
    return StageOutput(metrics, {"summary": summary, "mmd": mmd}, figs)
