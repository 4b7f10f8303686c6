"""Entry point of the rule ``misspecification``.

Three complementary checks of whether the simulations can describe the observations:

1. OOD scores (rule ``ood_scores``: does an observed galaxy resemble *any* simulation?)
   — the fraction of observed galaxies flagged, against the nominal 1 - TPR that
   well-specified simulations give; the simulations' own rows use their *held-out*
   images only (training images scored against themselves would sit below nominal);
2. VAE typicality (does a simulation produce images the observations do not contain?)
   — the fraction of each simulation's galaxies outside the observed typical set, whose
   boundary comes from the observed images the VAE did *not* train on (the simulated
   images are all unseen too); the train/unseen gap of the observed images is reported;
3. an MMD two-sample test per simulation against the VAE-unseen observed galaxies in
   standardised embedding space — is the *population* of embeddings the same?  With
   each test its power against the nearest other model, and per model the false-alarm
   rate on surveys drawn from that model (:mod:`simobs.misspecification.verdict`).

Verdict reported in ``verdict``: a simulation is *consistent* with an observed sample
when its MMD test does not reject at ``alpha``; that is called *conclusive* only when the
test's power is at least ``mmd.min_power``.  When no simulation is consistent the
comparison is misspecified, and the posterior model probabilities only say which wrong
model is least wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simobs.comparison.embeddings import read_embedding_sets
from simobs.misspecification import plots
from simobs.misspecification.mmd import mmd_permutation_test, one_per_group
from simobs.misspecification.ood import HELD_OUT_SPLITS
from simobs.misspecification.ood_stage import SIMULATIONS_REFERENCE
from simobs.misspecification.scores import OOD_METHODS
from simobs.misspecification.typicality import STATISTICS, atypical_mask, generalisation_gap, typical_set_threshold
from simobs.misspecification.verdict import (
    Standardiser,
    binomial_interval,
    mmd_power,
    verdict_rates,
    verdict_survey_sizes,
)
from simobs.provenance import check_table_lineage, shared_digest
from simobs.stagekit import StageOutput, read_table, save_figure, write_json, write_table

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


def _summary(scores: pd.DataFrame, stat: str, tpr: float) -> pd.DataFrame:
    """Per source: flagged fractions (simulations: held-out images only) and atypical fraction."""
    rows = []
    for (source, kind), g in scores.groupby(["source", "kind"], sort=False):
        ref = g[g.split.isin(HELD_OUT_SPLITS)] if kind == "simulation" else g
        typ = g if kind == "simulation" else g[g.vae_split != "train"]
        row = {"source": source, "kind": kind, "n": len(g), "n_ood_sample": len(ref),
               "ood_sample": "held-out" if kind == "simulation" else "all"}
        row.update({f"flagged_fraction_{m}": float(ref[f"flagged_{m}"].mean()) if len(ref) else float("nan")
                    for m in OOD_METHODS})
        row["atypical_fraction"] = float(typ["atypical"].mean()) if len(typ) else float("nan")
        row["typicality_sample"] = "all" if kind == "simulation" else "vae-unseen"
        row[f"{stat}_gap_unseen_minus_train"] = (generalisation_gap(g[stat].to_numpy(), (g.vae_split == "train").to_numpy())
                                                 if kind == "observation" else float("nan"))
        rows.append(row)
    out = pd.DataFrame(rows)
    out["nominal_flagged_fraction"] = 1.0 - tpr
    return out


def run_misspecification(embedding_paths: Sequence[str | Path], ood_scores_path: str | Path,
                         ood_thresholds_path: str | Path, dataset_paths: Mapping[str, str | Path],
                         outputs: Mapping[str, str | Path], settings: Mapping[str, Any], seed: int = 0) -> StageOutput:
    """OOD summaries, typicality and MMD tests for every source.

    Outputs: ``scores`` (per image, CSV), ``summary`` (per source, CSV), ``mmd`` (per
    simulation x observation source, CSV), ``verdict`` (JSON) and figures ``figure_energy``,
    ``figure_max_softmax``, ``figure_typicality``, ``figure_mmd``, ``gallery_observed``,
    ``gallery_simulated``.

    Raises:
        LineageError: if the embeddings were made by two VAEs, or the OOD tables scored
            embeddings of another VAE (their ``vae_digest``).
    """
    sets = read_embedding_sets(embedding_paths)
    obs_sets = [e for e in sets if e.is_observation]
    sim_sets = [e for e in sets if not e.is_observation]
    if not obs_sets or not sim_sets:
        raise ValueError("misspecification needs observation and simulation embeddings among its inputs")
    ood_cfg, typ_cfg, mmd_cfg = settings.get("ood", {}), settings.get("typicality", {}), settings.get("mmd", {})
    method, tpr = ood_cfg.get("score", "knn"), float(ood_cfg.get("tpr", 0.95))
    ood = read_table(ood_scores_path, ["source", "kind", "id", "split", "ood_flagged",
                                       *OOD_METHODS, *(f"flagged_{m}" for m in OOD_METHODS)], "OOD scores", "ood_scores")
    thr_table = read_table(ood_thresholds_path, ["reference", "score", "threshold"], "OOD thresholds", "ood_scores")
    check_table_lineage(thr_table, ood_thresholds_path, "vae_digest",
                        ("the embeddings files", shared_digest([e.vae_digest for e in sets])),
                        "Re-run rule `ood_scores` on these embeddings")
    stat, q = typ_cfg.get("statistic", "recon_error"), float(typ_cfg.get("quantile", 0.99))
    if stat not in STATISTICS:
        raise ValueError(f"misspecification.typicality.statistic={stat!r}; choose one of {list(STATISTICS)}")
    unseen = [getattr(e, stat)[e.unseen_by_vae] for e in obs_sets]
    if sum(len(u) for u in unseen) == 0:
        raise ValueError("every observed image was a VAE training image (vae_split == 'train'); the typical set "
                         "needs images the VAE did not train on: give embedding training a validation fraction > 0")
    typ_thr = typical_set_threshold(np.concatenate(unseen), stat, q)

    frames = []
    for e in sets:
        values = getattr(e, stat)
        frames.append(pd.DataFrame({"source": e.source, "id": e.ids, "recon_error": e.recon_error,
                                    "typicality_loss": e.typicality_loss, "vae_split": e.vae_split,
                                    "atypical": atypical_mask(values, typ_thr, stat)}))
    scores = ood.merge(pd.concat(frames, ignore_index=True), on=["source", "id"], how="inner", validate="one_to_one")
    if len(scores) != sum(len(e) for e in sets):
        raise ValueError(f"{ood_scores_path}: the OOD scores table does not list every image of the embedding "
                         "files; rerun rule `ood_scores`")
    scores["heldout_test"] = scores.split.isin(HELD_OUT_SPLITS)
    summary = _summary(scores, stat, tpr)

    # 3: MMD per simulation and observation source, in standardised latents
    alpha = float(mmd_cfg.get("alpha", 0.05))
    n_perm, max_n = int(mmd_cfg.get("n_permutations", 1000)), mmd_cfg.get("max_samples", 2000)
    scales = tuple(mmd_cfg.get("bandwidth_scales", [1.0]))
    reps, p_perm = int(mmd_cfg.get("power_replicates", 10)), int(mmd_cfg.get("power_permutations", 200))
    per_galaxy = bool(mmd_cfg.get("one_projection_per_galaxy", True))
    std = Standardiser(np.concatenate([s.embedding for s in sim_sets]))
    sim_samples = {}
    for k, s in enumerate(sim_sets):
        # one projection per galaxy: projections of one galaxy are not independent draws
        idx = one_per_group(s.galaxy_ids, seed + k) if per_galaxy else np.arange(len(s))
        sim_samples[s.source] = std(s.embedding[idx])
    # the verdict on simulated surveys (well-specified: false alarms) of half of each model's galaxies
    n_fa = int(mmd_cfg.get("false_alarm_replicates", 100))
    survey_n = verdict_survey_sizes(sim_samples, max_n)
    fa = {s.source: verdict_rates(sim_samples[s.source], sim_samples, survey_n[s.source], s.source, alpha, n_fa, p_perm,
                                  scales, seed + k, max_n) for k, s in enumerate(sim_sets)}
    false_alarm = {n: v[0] for n, v in fa.items()}
    rows, results = [], {}
    for o in obs_sets:
        x = std(o.embedding[o.unseen_by_vae])  # the VAE-unseen observed galaxies, like the simulated ones
        for k, s in enumerate(sim_sets):
            r = mmd_permutation_test(x, sim_samples[s.source], n_permutations=n_perm, max_samples=max_n,
                                     bandwidth_scales=scales, seed=seed + k)
            power, n_pow = mmd_power(sim_samples[s.source], [sim_samples[t.source] for t in sim_sets if t is not s],
                                     r.n_x, alpha, reps, p_perm, scales, seed + k)
            results[s.source if len(obs_sets) == 1 else f"{s.source} / {o.source}"] = r
            rows.append({"observations": o.source, "simulation": s.source, "mmd2": r.mmd2, "p_value": r.p_value,
                         "rejected": r.rejects(alpha), "alpha": alpha, "n_observed": r.n_x, "n_simulated": r.n_y,
                         "bandwidth": r.bandwidths[0], "power_nearest_other_model": power, "power_n_observed": n_pow,
                         "false_alarm_rate": false_alarm[s.source]})
    mmd = pd.DataFrame(rows)

    min_power = float(mmd_cfg.get("min_power", 0.8))
    verdict = {}
    thr_sim = thr_table[thr_table.reference == SIMULATIONS_REFERENCE].set_index("score")["threshold"]
    metrics: dict[str, float] = {f"ood_threshold_{m}": float(v) for m, v in thr_sim.items()}
    metrics["typical_set_threshold"] = typ_thr
    metrics.update({f"mmd_false_alarm_rate_{n}": v for n, v in false_alarm.items()})
    for o in obs_sets:
        m = mmd[mmd.observations == o.source]
        consistent = m.loc[~m.rejected, "simulation"].tolist()
        weak = m.loc[~m.rejected & ~(m.power_nearest_other_model >= min_power), "simulation"].tolist()
        flagged = float(summary.loc[summary.source == o.source, f"flagged_fraction_{method}"].iloc[0])
        # the same verdict on surveys of the observed galaxies, of the largest simulated surveys' size
        x_obs = std(o.embedding[o.unseen_by_vae])
        obs_n = max(2, min(max(survey_n.values()), len(x_obs) // 2))
        _, rate_obs = verdict_rates(x_obs, sim_samples, obs_n, None, alpha, n_fa, p_perm, scales, seed, max_n)
        power_note = (f" The test's power against the nearest other model is below {min_power:.0%} for "
                      f"{', '.join(weak)}: not rejecting is weak evidence there." if weak else "")
        verdict[o.source] = {
            "consistent_simulations": consistent,
            "inconclusive_simulations": weak,
            "misspecified": not consistent,
            "flagged_fraction": flagged,
            "nominal_flagged_fraction": 1.0 - tpr,
            "survey_size": survey_n,  # per model: its simulated surveys' size (false-alarm rates)
            "observed_survey_size": obs_n,  # the observed sub-surveys' size
            "verdict_false_alarm_rate": {n: v[1] for n, v in fa.items()},  # surveys of each model: nominal <= alpha
            "test_false_alarm_rate": false_alarm,  # the test of a survey's own model rejects: nominal alpha
            # 95 % Wilson intervals of both rates: n_fa surveys resolve alpha only to a few points
            "false_alarm_replicates": n_fa,
            "verdict_false_alarm_interval": {n: binomial_interval(v[1], n_fa) for n, v in fa.items()},
            "test_false_alarm_interval": {n: binomial_interval(v, n_fa) for n, v in false_alarm.items()},
            "misspecified_rate_on_observed_surveys": rate_obs,  # power if the universe is misspecified
            "statement": (f"No simulation is consistent with {o.source} (MMD test rejects all at alpha={alpha}); "
                          f"{flagged:.1%} of its galaxies are out of distribution (nominal {1 - tpr:.1%}). Posterior "
                          "model probabilities rank wrong models only.") if not consistent else
                         (f"Consistent with {o.source} at alpha={alpha}: {', '.join(consistent)}; "
                          f"{flagged:.1%} of its galaxies flagged out of distribution (nominal {1 - tpr:.1%})."
                          + power_note),
        }
        metrics[f"{o.source}_flagged_fraction"] = flagged
        metrics[f"{o.source}_n_consistent_simulations"] = float(len(consistent))
    for r in rows:
        metrics[f"mmd_p_value_{r['simulation']}_{r['observations']}"] = r["p_value"]
        metrics[f"mmd_power_{r['simulation']}_{r['observations']}"] = r["power_nearest_other_model"]
    for _, r in summary.iterrows():
        metrics[f"atypical_fraction_{r['source']}"] = float(r["atypical_fraction"])
    for o, v in verdict.items():
        log.info("%s", v["statement"])

    write_table(scores, outputs["scores"])
    write_table(summary, outputs["summary"])
    write_table(mmd, outputs["mmd"])
    write_json(verdict, outputs["verdict"])

    by_source = {s: g for s, g in scores.groupby("source", sort=False)}
    # held-out simulated galaxies only: the training split would look more in-distribution than it is
    ref = {s: (g[g.heldout_test] if (g.kind == "simulation").all() else g) for s, g in by_source.items()}
    n_gal = int(settings.get("gallery", {}).get("n_images", 16))
    thr_obs = thr_table[thr_table.reference == obs_sets[0].source].set_index("score")["threshold"]  # the line drawn
    figs = [
        save_figure(plots.plot_score_histograms({s: g["energy"].to_numpy() for s, g in ref.items()}, thr_obs["energy"],
                                                "energy score (higher = less like any simulation)",
                                                "Energy OOD score (simulations: held-out splits)"),
                    outputs["figure_energy"]),
        save_figure(plots.plot_score_histograms({s: g["max_softmax"].to_numpy() for s, g in ref.items()},
                                                thr_obs["max_softmax"], "1 - max softmax", "Max-softmax OOD score"),
                    outputs["figure_max_softmax"]),
        save_figure(plots.plot_score_histograms({s: g[stat].to_numpy() for s, g in by_source.items()}, typ_thr, stat,
                                                "VAE typicality (boundary: VAE-unseen observed quantile)",
                                                log_x=stat == "recon_error"),
                    outputs["figure_typicality"]),
        save_figure(plots.plot_mmd_nulls(results, alpha), outputs["figure_mmd"]),
        save_figure(_gallery(scores[scores.kind == "observation"], method, n_gal, dataset_paths,
                             f"Most atypical observed galaxies (highest {method} score: unlike every simulation)"),
                    outputs["gallery_observed"]),
        save_figure(_gallery(scores[scores.kind == "simulation"].assign(typicality=lambda d: d[stat]), "typicality",
                             n_gal, dataset_paths, f"Most atypical simulated galaxies ({stat}: unlike the observations)"),
                    outputs["gallery_simulated"]),
    ]
    return StageOutput(metrics, {"summary": summary, "mmd": mmd}, figs,
                       lineage={"vae_digest": shared_digest([e.vae_digest for e in sets]) or ""})
