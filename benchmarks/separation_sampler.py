"""Benchmark: sampling cost of the default sampler (Heun, 20 steps) against the previous one (Euler–Maruyama, 24).

Times ``separate_observations`` for a few observations with the demo's U-Net (config/config.yaml:
32×32 maps, width 16; its weights do not change the cost) and the demo's samples per
observation, for each (method, steps), and reports seconds and the ratio to the first,
measured in the same process.  Heun makes 2n − 1 network calls for n steps.

    .venv/bin/python benchmarks/separation_sampler.py [--observations 4] [--runs euler_maruyama:24 heun:20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from simobs.separation.fields import gaussian_random_field, lognormal_dust, power_law_power_2d
from simobs.separation.model import build_noise_predictor
from simobs.separation.sample import separate_observations
from simobs.separation.sde import LinearBetaSchedule

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--observations", type=int, default=4)
    parser.add_argument("--runs", nargs="+", default=["euler_maruyama:24", "heun:20"], help="method:n_steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a separate job has 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sep = yaml.safe_load((REPO / "config/config.yaml").read_text())["separation"]
    npix = sep["fields"]["npix"]
    # A CMB-like power is enough for timing (camb is not needed: the cost does not depend on it).
    cmb = power_law_power_2d(npix, -3.0)
    model = build_noise_predictor({**sep["model"], **sep["sde"], "npix": npix, "cmb_power": cmb,
                                   "dust_power": power_law_power_2d(npix, -2.5)}).eval()
    rng = np.random.default_rng(0)
    sigma = np.full(args.observations, 1.5)
    y = lognormal_dust(args.observations, npix, slope=-2.5, log_scatter=0.8, rng=rng)
    y = y + sigma[:, None, None] * gaussian_random_field(cmb, args.observations, rng)
    s = sep["sampling"]
    print(f"{'method/steps':>20} {'seconds':>8} {'ratio':>6}")
    first = None
    for run in args.runs:
        method, steps = run.split(":")
        start = time.perf_counter()
        separate_observations(model, y, sigma, schedule=LinearBetaSchedule(sep["sde"]["beta_min"],
                                                                           sep["sde"]["beta_max"]),
                              cmb_power=cmb, n_samples=s["n_samples"], batch_size=s["batch_size"], method=method,
                              n_steps=int(steps), seed=0)
        seconds = time.perf_counter() - start
        first = first or seconds
        print(f"{run:>20} {seconds:8.2f} {seconds / first:6.2f}")


if __name__ == "__main__":
    main()
