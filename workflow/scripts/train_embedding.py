"""Rule train_embedding: the k-sparse VAE on the observed images (resumes from its checkpoint)."""

import json
from pathlib import Path

import torch

from simobs.embedding.figures import write_training_figures
from simobs.embedding.settings import EmbeddingSettings
from simobs.embedding.train import train_embedding
from simobs.io import write_text_atomic
from simobs.tracking import job_run

p = snakemake.params
out = snakemake.output
torch.set_num_threads(snakemake.threads)
settings = EmbeddingSettings.from_config({**p.settings, "seed": p.seed})

with job_run(snakemake, params={**settings.to_dict(), "train_sources": p.sources}) as run, open(
    snakemake.log[0], "a"
) as progress:
    for path, source in zip(snakemake.input.datasets, p.sources):
        run.log_input_dataset(path, f"{source}-images")
    result = train_embedding(
        list(snakemake.input.datasets),
        out.model,
        settings,
        checkpoint_dir=p.checkpoint_dir,
        architecture_json=out.architecture,
        on_epoch=run.log_metrics,  # per epoch: loss, recon, kl, val_fve, l0, dead_fraction, lr, images/s
        progress_file=progress,
    )
    figures = write_training_figures(
        result.model, result.history, result.val_blocks, Path(out.loss_curves).parent, k=settings.k_inference
    )
    final = {**result.final_metrics, "resumed_from_epoch": result.resumed_from_epoch or 0}
    write_text_atomic(out.metrics, json.dumps(final, indent=2) + "\n")
    run.log_metrics({f"final_{k}": v for k, v in final.items()})
    run.set_tags({"simobs.vae_digest": result.model_digest})  # what its embeddings carry
    for path in figures.values():
        run.log_artifact(path, "figures")
    run.log_artifact(out.architecture, "model")
    run.log_artifact(out.metrics, "model")
    run.log_artifact(out.model, "model")
