"""Rule train_score_model: denoising score matching of the dust prior (resumes from its checkpoint)."""

import pandas as pd
import torch

from simobs.io import atomic_path
from simobs.separation.dataset import read_field_dataset
from simobs.separation.figures import denoising_examples_figure
from simobs.separation.train import TrainSettings, denoising_examples, train_score_model
from simobs.tracking import job_run

p = snakemake.params
out = snakemake.output
torch.set_num_threads(snakemake.threads)
settings, device = TrainSettings.from_rule_config(p.settings, seed=p.seed, sigma_max=p.sigma_max)

with job_run(snakemake, params={**vars(settings), "device": device, "sigma_max": p.sigma_max}) as run:
    run.log_input_dataset(snakemake.input.fields, "separation-fields")
    fields = read_field_dataset(snakemake.input.fields)
    result = train_score_model(fields.train_dust, fields.cmb_power, settings, model_path=out.model,
                               checkpoint_path=p.checkpoint, device=device, on_epoch=run.log_metrics)
    run.log_metrics({"n_parameters": result.n_parameters, "train_seconds": result.seconds,
                     "resumed_from_epoch": result.resumed_from_epoch})
    run.set_tags({"simobs.device": result.device})
    with atomic_path(out.history) as tmp:
        pd.DataFrame(result.history).rename_axis("epoch").to_csv(tmp)
    examples = denoising_examples(result.model, fields.test_dust[0], fields.cmb_power, sigmas=tuple(round(p.sigma_max * f, 3) for f in (0.25, 0.5, 1.0)),
                                  seed=p.seed)
    fig = denoising_examples_figure(*examples)
    with atomic_path(out.denoising) as tmp:
        fig.savefig(tmp, dpi=110)
    run.log_artifact(out.denoising, "figures")
    run.log_artifact(out.history, "tables")
    run.log_artifact(out.model, "model")
