"""Rule blind_observations: the blind stage's observations and truths (regenerated from the prior, or fields.h5's)."""

from simobs.separation.blind import (
    fields_observations,
    prior_box,
    regenerate_observations,
    spectrum_from_grid,
    write_observations,
)
from simobs.separation.dataset import read_field_dataset
from simobs.tracking import job_run

p = snakemake.params
s = p.settings
with job_run(snakemake, params={**s, "prior": p.prior, "seed": p.seed}) as run:
    fields = read_field_dataset(snakemake.input.fields, with_train=False)
    if s["source"] == "prior":
        lower, upper = prior_box(p.prior, p.sigma)
        spectrum = spectrum_from_grid(snakemake.input.grid, fields.attrs["npix"], fields.attrs["pixel_size_arcmin"])
        obs = regenerate_observations(fields.test_dust, spectrum, lower, upper, s["n"], p.seed)
    else:
        obs = fields_observations(fields, s["n"])
    write_observations(obs, snakemake.output.observations)
    run.log_metrics({"n_observations": len(obs.theta), "n_distinct_dust_maps": len(set(obs.dust_index.tolist()))})
    run.log_input_dataset(snakemake.output.observations, "blind-observations", context="output")
