"""Rule blind_separate: Gibbs-diffusion chains of (H0, ombh2, sigma) and the dust, with the oracle and
Gaussian-dust baselines, for one shard of the blind observations."""

import logging

import torch

from simobs.devices import resolve_device
from simobs.separation.blind import (
    gaussian_dust_predictor,
    load_predictor,
    prior_box,
    read_observations,
    separate_blind,
    shard_seed,
    spectrum_from_grid,
    write_blind_shard,
)
from simobs.separation.dataset import read_field_dataset, shard_indices
from simobs.separation.sde import LinearBetaSchedule
from simobs.tracking import job_run

p = snakemake.params
s = p.settings
inp = snakemake.input
torch.set_num_threads(snakemake.threads)
shard = int(snakemake.wildcards.shard)
log = logging.getLogger("blind_separate")

with job_run(snakemake, params={**s, "prior": p.prior, "seed": p.seed}) as run:
    device = resolve_device(s["device"], key="separation.blind.device")
    fields = read_field_dataset(inp.fields)
    everything = read_observations(inp.observations)
    idx = shard_indices(len(everything.theta), s["n_shards"], shard)
    obs = everything.rows(idx)
    lower, upper = prior_box(p.prior, p.sigma)
    spectrum = spectrum_from_grid(inp.grid, fields.attrs["npix"], fields.attrs["pixel_size_arcmin"], device)
    gaussian = gaussian_dust_predictor(fields.train_dust, LinearBetaSchedule(p.sde["beta_min"], p.sde["beta_max"]))
    gaussian.dust_half = gaussian.dust_half.to(device)
    models = [inp.model] if isinstance(inp.model, str) else list(inp.model)  # none for predictor: gaussian
    predictor, schedule = load_predictor(s["predictor"], models[0] if models else None, gaussian, device)
    gibbs = {"n_chains": s["n_chains"], "n_iterations": s["n_gibbs"], "n_burn": s["n_burn"], "n_steps": s["n_steps"],
             "method": s["method"], "n_warmup": s["hmc"]["n_warmup"], "n_hmc": s["hmc"]["n_transitions"],
             "n_leapfrog": s["hmc"]["n_leapfrog"], "target_accept": s["hmc"]["target_accept"],
             "init": s["init"]}
    n_total = s["n_burn"] + s["n_gibbs"]
    result = separate_blind(
        obs, idx, spectrum=spectrum, predictor=predictor, schedule=schedule, gaussian=gaussian, lower=lower,
        upper=upper, gibbs=gibbs, baselines=s["baselines"], seed=shard_seed(p.seed, shard), device=device,
        on_iteration=lambda it: log.info("Gibbs iteration %d/%d (shard %d)", it + 1, n_total, shard),
    )
    write_blind_shard(result, snakemake.output.chains, predictor=s["predictor"], shard=shard,
                      n_shards=s["n_shards"], lower=lower.tolist(), upper=upper.tolist())
    run.log_metrics({"n_observations": len(idx), "hmc_accept_mean": float(result.accept.mean())})
    run.set_tags({"simobs.device": str(device)})
