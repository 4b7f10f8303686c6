"""Benchmark: cost of the separation stage against the map size (the demo's 32×32 vs 64×64, ...).

For each map side it times, with the demo's model settings (config/config.yaml), one
training epoch of denoising score matching over a fixed number of maps and the posterior
sampling of a few observations (the demo's method, samples and steps), and reports
both as ratios against the first size, measured in the same process.  Peak memory is not
reported: every size here fits in a few hundred MB.

    .venv/bin/python benchmarks/separation_map_size.py [--sizes 32 64] [--maps 512] [--observations 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from simobs.separation.fields import gaussian_random_field, lognormal_dust
from simobs.separation.sample import separate_observations
from simobs.separation.sde import LinearBetaSchedule
from simobs.separation.spectra import cmb_power_2d
from simobs.separation.train import TrainSettings, train_score_model, training_t_max

REPO = Path(__file__).resolve().parents[1]


def measure(npix: int, arcmin: float, n_maps: int, n_obs: int, cfg: dict, work: Path) -> tuple[float, float]:
    fields, sep = cfg["fields"], cfg
    rng = np.random.default_rng(0)
    cmb_power, _, _ = cmb_power_2d(npix, arcmin, fields["cosmology"])
    dust = lognormal_dust(n_maps + n_obs, npix, slope=fields["dust"]["slope"],
                          log_scatter=fields["dust"]["log_scatter"], rng=rng)
    schedule = LinearBetaSchedule(sep["sde"]["beta_min"], sep["sde"]["beta_max"])
    sigma_max = float(max(np.atleast_1d(fields["sigma"])))
    training = {k: v for k, v in sep["training"].items() if k not in ("device", "sigma_max")}
    settings = TrainSettings.from_mapping({**training, **sep["model"], **sep["sde"], "epochs": 1, "val_fraction": 0.0,
                                           "t_max": training_t_max(schedule, sigma_max)})
    start = time.perf_counter()
    result = train_score_model(dust[:n_maps], cmb_power, settings, model_path=work / f"m{npix}.pt",
                               checkpoint_path=work / f"c{npix}.ckpt", device="cpu")
    train_s = time.perf_counter() - start
    sigma = np.full(n_obs, sigma_max)
    y = dust[n_maps:] + sigma[:, None, None] * gaussian_random_field(cmb_power, n_obs, rng)
    s = sep["sampling"]
    start = time.perf_counter()
    separate_observations(result.model, y, sigma, schedule=schedule, cmb_power=cmb_power, n_samples=s["n_samples"],
                          batch_size=s["batch_size"], method=s["method"], n_steps=s["n_steps"], seed=0, device="cpu")
    return train_s, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--maps", type=int, default=512, help="training maps in the timed epoch")
    parser.add_argument("--observations", type=int, default=2, help="observations sampled")
    args = parser.parse_args()
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())["separation"]
    patch_arcmin = cfg["fields"]["npix"] * cfg["fields"]["pixel_size_arcmin"]  # keep the patch, refine pixels
    print(f"torch threads: {torch.get_num_threads()}; patch {patch_arcmin / 60:.1f} deg; "
          f"{args.maps} maps per epoch, {args.observations} observations sampled")
    print(f"{'npix':>5} {'train epoch s':>14} {'ratio':>6} {'sampling s':>11} {'ratio':>6}")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for npix in args.sizes:
            train_s, sample_s = measure(npix, patch_arcmin / npix, args.maps, args.observations, cfg, Path(tmp))
            base = base or (train_s, sample_s)
            print(f"{npix:>5} {train_s:>14.1f} {train_s / base[0]:>6.2f} {sample_s:>11.1f} {sample_s / base[1]:>6.2f}")


if __name__ == "__main__":
    main()
