"""Benchmark: the embedding's quality and cost on the demo's observed images, per setting.

Trains the k-sparse VAE through the library (``simobs.embedding.train_embedding``) on an
image dataset (default the demo's ``results/datasets/sdss_demo.h5``, build it with
``snakemake results/datasets/sdss_demo.h5``) with the settings of config/config.yaml plus
overrides, and prints one JSON line: validation FVE, dead-latent fraction, best epoch,
training wall time and the dead fraction per epoch.  Timings are only comparable as ratios
between runs made under the same load (run them side by side, same threads).

    .venv/bin/python benchmarks/embedding_objectives.py --set objective=infovae --threads 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import yaml

from simobs.embedding.settings import EmbeddingSettings
from simobs.embedding.train import train_embedding

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(REPO / "results/datasets/sdss_demo.h5"))
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE override of the embedding section")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    section = {k: v for k, v in config["embedding"].items() if k not in ("train_sources",)}
    for item in args.set:
        key, value = item.split("=", 1)
        section[key] = yaml.safe_load(value)
    known = set(EmbeddingSettings.__dataclass_fields__)
    settings = EmbeddingSettings.from_config({k: v for k, v in section.items() if k in known or k == "embed_batch_size"}
                                             | {"seed": config["seed"] + section.get("seed", 0), "device": "cpu"})
    with tempfile.TemporaryDirectory() as tmp:
        result = train_embedding([args.dataset], Path(tmp) / "model.pt", settings, show_progress=False)
    print(json.dumps({
        "label": args.label, "overrides": args.set, **result.final_metrics,
        "dead_fraction_per_epoch": [round(h["dead_fraction"], 4) for h in result.history],
        "val_fve_per_epoch": [round(h["val_fve"], 4) for h in result.history],
        "epoch_seconds": [round(h["epoch_seconds"], 1) for h in result.history],
    }))


if __name__ == "__main__":
    main()
