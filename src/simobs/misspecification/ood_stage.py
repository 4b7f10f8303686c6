"""Entry point of the rule ``ood_scores``: every OOD score of every image, once.

``model_posterior`` (which galaxies count in the aggregate, and the selection term) and
``misspecification`` (flagged fractions, galleries, verdict) both read its two tables,
so the k-NN reference is fitted and every observed galaxy scored once, and both stages
flag exactly the same galaxies.

Outputs:

* ``scores`` (CSV, one row per image of every source): ``source``, ``kind``, ``id``,
  ``galaxy_id``, ``split`` (``train`` / ``validation`` / ``test`` of the classifier for
  simulated images, ``observed`` for observed ones), the scores ``knn``, ``energy``,
  ``max_softmax``, ``gen`` (larger = more atypical), ``flagged_<score>`` (against the
  threshold of the image's own reference: its observed sample's, or the pooled
  simulations' for simulated images) and ``ood_flagged`` (the configured score).
* ``thresholds`` (CSV, one row per reference x score): ``reference`` (an observed
  source, or ``simulations``), ``score``, ``threshold``, ``tpr``, and per model
  ``pass_rate_<model>`` and ``n_heldout_<model>``: the fraction of that model's
  held-out images at or below the threshold (P_k(pass), the selection term's input),
  and the lineage of the scores: ``classifier_digest`` (of the classifier used) and
  ``vae_digest`` (of the VAE that made the embeddings scored).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simobs.comparison.classifier import load_classifier
from simobs.comparison.embeddings import read_embedding_sets
from simobs.misspecification.scores import OOD_METHODS, OODScorer, flag_all
from simobs.provenance import check_table_lineage, shared_digest
from simobs.stagekit import StageOutput, read_table, write_table

__all__ = ["run_ood_scores", "SIMULATIONS_REFERENCE"]

log = logging.getLogger(__name__)

SIMULATIONS_REFERENCE = "simulations"


def run_ood_scores(embedding_paths: Sequence[str | Path], classifier_path: str | Path, predictions_path: str | Path,
                   outputs: Mapping[str, str | Path], settings: Mapping[str, Any], seed: int = 0) -> StageOutput:
    """Score every image of every source and set the thresholds (config ``misspecification.ood``).

    Raises:
        LineageError: if the embeddings were made by another VAE than the embeddings the
            classifier trained on (or by two VAEs), naming each file and its digest.
    """
    clf = load_classifier(classifier_path)
    sets = read_embedding_sets(embedding_paths, (f"classifier {classifier_path}", clf.vae_digest))
    obs_sets = [e for e in sets if e.is_observation]
    sim_sets = [e for e in sets if not e.is_observation]
    if not sim_sets:
        raise ValueError("ood_scores needs the simulations' embeddings among its inputs (the OOD reference)")
    method = settings.get("score", "knn")
    if method not in OOD_METHODS:
        raise ValueError(f"misspecification.ood.score={method!r}; choose one of {list(OOD_METHODS)}")
    tpr = float(settings.get("tpr", 0.95))
    names = clf.class_names
    predictions = read_table(predictions_path, ["source", "id", "split"], "classifier predictions", "train_classifier")
    check_table_lineage(predictions, predictions_path, "classifier_digest",
                        (f"classifier {classifier_path}", clf.digest),
                        "Re-run rule `train_classifier`: its predictions and classifier file come from one run")
    scorer = OODScorer(clf, sim_sets, predictions, knn_k=int(settings.get("knn_k", 10)),
                       knn_components=int(settings.get("knn_components", 128)),
                       knn_index=str(settings.get("knn_index", "auto")), knn_groups=int(settings.get("knn_groups", 256)),
                       knn_probe=int(settings.get("knn_probe", 32)), seed=seed)
    split_of = dict(zip(zip(predictions["source"], predictions["id"]), predictions["split"]))
    logits = {e.source: clf.logits(e.embedding) for e in sets}
    thresholds = {SIMULATIONS_REFERENCE: scorer.thresholds(tpr)}
    for o in obs_sets:
        thresholds[o.source] = scorer.thresholds(tpr, logits[o.source], settings.get("reference", "pooled"))

    frames, knn_checks = [], {}
    for e in sets:
        ref = e.source if e.is_observation else SIMULATIONS_REFERENCE
        sc = scorer.scores(e.embedding, logits[e.source], knn_threshold=thresholds[ref]["knn"])
        knn_checks[e.source] = dict(scorer.knn.last_check)
        flags = flag_all(sc, thresholds[ref])
        split = (np.full(len(e), "observed", dtype=object) if e.is_observation
                 else np.array([split_of.get((e.source, i), "unused") for i in e.ids], dtype=object))
        frames.append(pd.DataFrame({"source": e.source, "kind": e.kind, "id": e.ids, "galaxy_id": e.galaxy_ids,
                                    "split": split, **sc, **{f"flagged_{m}": f for m, f in flags.items()},
                                    "ood_flagged": flags[method]}))
    scores = pd.concat(frames, ignore_index=True)
    n_held = np.bincount(scorer.held_labels, minlength=len(names))
    vae_digest = shared_digest([clf.vae_digest, *(e.vae_digest for e in sets)])
    rows = []
    for ref, thr in thresholds.items():
        rates = scorer.pass_rates(thr)
        for m in OOD_METHODS:
            row = {"reference": ref, "score": m, "threshold": thr[m], "tpr": tpr}
            row.update({f"pass_rate_{n}": float(rates[m][k]) for k, n in enumerate(names)})
            row.update({f"n_heldout_{n}": int(n_held[k]) for k, n in enumerate(names)})
            row.update(classifier_digest=clf.digest, vae_digest=vae_digest)
            rows.append(row)
    table = pd.DataFrame(rows)
    write_table(scores, outputs["scores"])
    write_table(table, outputs["thresholds"])
    metrics = {f"{r['reference']}_threshold_{r['score']}": float(r["threshold"]) for r in rows}
    for o in obs_sets:
        part = scores[scores.source == o.source]
        metrics.update({f"{o.source}_flagged_fraction_{m}": float(part[f"flagged_{m}"].mean()) for m in OOD_METHODS})
    for source, check in knn_checks.items():  # the k-NN index's exactness check, where it was used
        if check.get("method") == "ivf":
            metrics.update({f"{source}_knn_index_max_rel_error": check["max_rel_error"],
                            f"{source}_knn_index_fraction_inexact": check["fraction_inexact"],
                            f"{source}_knn_index_fell_back": float(check["fell_back"]),
                            f"{source}_knn_index_fraction_rescored": check.get("fraction_rescored", 1.0)})
    log.info("OOD scores of %d images from %d sources; thresholds at TPR %.2f", len(scores), len(sets), tpr)
    return StageOutput(metrics, {"scores": scores, "thresholds": table}, [],
                       lineage={"vae_digest": vae_digest or "", "classifier_digest": clf.digest})
