"""Benchmark: cost of one training step of the embedding with the AuxK loss, as ratios.

Times, in one process and interleaved (so that the load of a shared machine affects
every variant alike), a full optimisation step (forward, backward, AdamW) of the demo's
network (config/config.yaml) on batches of the demo's observed images for:

- ``main``: the main loss alone (no dead latents);
- ``previous``: the auxiliary pass of simobs before issue 18, ``dec(stopgrad(z_active) +
  mu * m_dead)`` through the whole trainable decoder, weight 0.25, 64 dead units;
- ``published``: :func:`simobs.embedding.train.auxiliary_loss` (Gao et al. 2024) with
  the configured ``aux_k``.

and prints the median step time of each relative to ``previous``.  Training time on the
demo is dominated by these steps, so the ratio is that of the training time.

    .venv/bin/python benchmarks/embedding_auxk_cost.py [--steps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import h5py
import torch
import yaml

from simobs.embedding.model import KSparseVAE
from simobs.embedding.settings import EmbeddingSettings
from simobs.embedding.train import _normaliser, auxiliary_loss, objective_loss

REPO = Path(__file__).resolve().parents[1]


def previous_auxiliary_loss(model: KSparseVAE, x, out, dead, aux_k: int, beta: float):
    """The form replaced in issue 18, kept here only as the benchmark's baseline."""
    candidates = dead.unsqueeze(0) & (out.mask == 0)
    scores = out.mu.detach().abs().masked_fill(~candidates, -1.0)
    idx = torch.topk(scores, aux_k, dim=-1).indices
    aux_mask = torch.zeros_like(out.mu).scatter_(-1, idx, 1.0) * candidates
    x_aux = model.decode(out.z.detach() + out.mu * aux_mask)
    return ((x - x_aux).flatten(1).square().sum(dim=1) / (2.0 * beta**2)).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(REPO / "results/datasets/sdss_demo.h5"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dead-fraction", type=float, default=0.45)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    section = yaml.safe_load((REPO / "config/config.yaml").read_text())["embedding"]
    settings = EmbeddingSettings.from_config({**section, "device": "cpu"})
    with h5py.File(args.dataset, "r") as f:
        images = torch.as_tensor(f["images"][: settings.batch_size * 4])
    bands, size = images.shape[1], images.shape[-1]
    torch.manual_seed(0)
    model = KSparseVAE(settings.architecture(bands, size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    dead = torch.rand(settings.latent_dim) < args.dead_fraction

    def step(variant: str, x) -> float:
        t0 = time.perf_counter()
        out, _, loss, _ = objective_loss(model, x, settings.k, settings)
        if variant == "previous":
            loss = loss + 0.25 * previous_auxiliary_loss(model, x, out, dead, 64, settings.beta)
        elif variant == "published":
            aux = auxiliary_loss(model, x, out, dead, settings.aux_k)
            loss = loss + settings.aux_coef * _normaliser(x, settings.beta) * aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0

    variants = ("previous", "main", "published")
    times: dict[str, list[float]] = {v: [] for v in variants}
    batches = images.split(settings.batch_size)
    for i in range(args.steps + 2):
        for v in variants:
            t = step(v, batches[i % len(batches)])
            if i >= 2:  # warm-up
                times[v].append(t)
    ref = statistics.median(times["previous"])
    print("variant     median_step_s  ratio_vs_previous")
    for v in variants:
        med = statistics.median(times[v])
        print(f"{v:<11} {med:13.4f}  {med / ref:17.2f}")


if __name__ == "__main__":
    main()
