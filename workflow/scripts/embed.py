"""Rule embed: embeddings, reconstruction error, typicality loss and VAE split of one source."""

import torch

from simobs.embedding.encode import embed_dataset
from simobs.tracking import job_run

p = snakemake.params
torch.set_num_threads(snakemake.threads)
with job_run(snakemake, params={"alpha": p.alpha, "batch_size": p.batch_size, "device": p.device}) as run:
    run.log_input_dataset(snakemake.input.dataset, f"{snakemake.wildcards.source}-images")
    summary = embed_dataset(
        snakemake.input.model,
        snakemake.input.dataset,
        snakemake.output.embeddings,
        alpha=p.alpha,
        batch_size=p.batch_size,
        device=p.device,
    )
    run.set_tags({"simobs.source_kind": summary.kind, "simobs.vae_digest": summary.vae_digest})
    run.log_metrics(summary.metrics())
    run.log_input_dataset(
        snakemake.output.embeddings, f"{snakemake.wildcards.source}-embeddings", context="output"
    )
