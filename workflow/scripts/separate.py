"""Rule separate: posterior samples of dust and CMB for one shard of the observations."""

import logging

import torch

from simobs.separation.dataset import read_field_dataset, shard_indices, write_posterior_shard
from simobs.separation.model import load_noise_predictor
from simobs.separation.sample import separate_observations
from simobs.devices import resolve_device
from simobs.tracking import job_run

p = snakemake.params
s = p.settings
torch.set_num_threads(snakemake.threads)
shard = int(snakemake.wildcards.shard)

with job_run(snakemake, params={**s, "seed": p.seed, "n_bins": p.n_bins}) as run:
    device = resolve_device(s["device"], key="separation.sampling.device")
    fields = read_field_dataset(snakemake.input.fields, with_train=False)
    idx = shard_indices(len(fields.sigma), s["n_shards"], shard)
    model = load_noise_predictor(snakemake.input.model, device=device)
    log = logging.getLogger("separate")
    summary = separate_observations(
        model, fields.observation[idx], fields.sigma[idx], schedule=model.schedule, cmb_power=fields.cmb_power,
        n_samples=s["n_samples"], batch_size=s["batch_size"], method=s["method"], n_steps=s["n_steps"],
        time_power=s["time_power"], seed=p.seed, indices=idx, credible_levels=s["credible_levels"],
        n_saved_samples=s["n_saved_samples"], n_bins=p.n_bins, device=device,
        on_observation=lambda i: log.info("observation %d (%d/%d of shard %d)", idx[i], i + 1, len(idx), shard),
    )
    write_posterior_shard(snakemake.output.posterior, idx, summary,
                          {"n_steps": s["n_steps"], "time_power": s["time_power"], "seed": p.seed, "shard": shard,
                           "n_shards": s["n_shards"]})
    run.log_metrics({"n_observations": len(idx), "mean_dust_posterior_std": float(summary.dust_std.mean())})
    run.set_tags({"simobs.device": str(device)})
