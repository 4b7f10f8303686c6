"""Rule train_blind_score_model: the φ-conditioned dust prior of the blind stage (resumes from its checkpoint)."""

import pandas as pd
import torch

from simobs.io import atomic_path
from simobs.separation.dataset import read_field_dataset
from simobs.separation.spectra_grid import PARAMETERS, SpectrumInterpolator, read_spectra_grid
from simobs.separation.train import ConditionalTrainSettings, train_conditional_score_model
from simobs.tracking import job_run

p = snakemake.params
out = snakemake.output
torch.set_num_threads(snakemake.threads)
settings, device = ConditionalTrainSettings.from_rule_config(p.settings, seed=p.seed, sigma_max=p.sigma_max)

with job_run(snakemake, params={**vars(settings), "device": device, "sigma_max": p.sigma_max}) as run:
    run.log_input_dataset(snakemake.input.fields, "separation-fields")
    run.log_input_dataset(snakemake.input.spectra_grid, "cmb-spectra-grid")
    fields = read_field_dataset(snakemake.input.fields)
    grid = read_spectra_grid(snakemake.input.spectra_grid)
    # Σ_φ normalised by the grid's base cosmology (SpectrumInterpolator's default, as the blind rules use it).
    spectrum = SpectrumInterpolator(grid, int(fields.attrs["npix"]), float(fields.attrs["pixel_size_arcmin"]))
    result = train_conditional_score_model(
        fields.train_dust, spectrum, grid.lower, grid.upper, settings, model_path=out.model,
        checkpoint_path=p.checkpoint, device=device, on_epoch=run.log_metrics,
        extra={"parameters": list(PARAMETERS), "pixel_size_arcmin": float(fields.attrs["pixel_size_arcmin"]),
               "fiducial": {k: grid.cosmology[k] for k in PARAMETERS}, "sigma_max": p.sigma_max},
    )
    run.log_metrics({"n_parameters": result.n_parameters, "train_seconds": result.seconds,
                     "resumed_from_epoch": result.resumed_from_epoch})
    run.set_tags({"simobs.device": result.device})
    with atomic_path(out.history) as tmp:
        pd.DataFrame(result.history).rename_axis("epoch").to_csv(tmp)
    run.log_artifact(out.history, "tables")
    run.log_artifact(out.model, "model")
