"""Benchmark: how `snakemake -n` scales with the number of raw files (issue: 600k SDSS cutouts).

Creates N empty files named like SDSS cutouts for one observed source (plus a small
simulation source), configures ~1 shard per 10,000 files, and times a dry run of the
whole workflow.  Reported as ratios against the smallest N, measured in the same command.

    .venv/bin/python benchmarks/dry_run_scaling.py [--sizes 6000 60000 600000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def make_files(folder: Path, n: int, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{prefix}{i:07d}.fits").touch()


def dry_run(work: Path, n_obs: int) -> float:
    make_files(work / "raw/sdss", n_obs, "frame-")
    make_files(work / "raw/tng", 1000, "tng-")
    base = yaml.safe_load((REPO / "config/config.yaml").read_text())
    obs, sim = dict(base["sources"][0]), dict(base["sources"][1])
    obs.update(name="sdss", path=str(work / "raw/sdss/*.fits"), shards=max(1, n_obs // 10_000))
    obs.pop("demo_model")
    sim.update(name="tng", path=str(work / "raw/tng/*.fits"), shards=1)
    sim.pop("demo_model")
    cfg = work / "bench.yaml"
    cfg.write_text(yaml.safe_dump({"study": "bench", "sources": [obs, sim]}))
    cmd = [str(Path(sys.executable).with_name("snakemake")), "-n", "--quiet", "all", "--cores", "2",
           "--snakefile", str(REPO / "Snakefile"), "--directory", str(work), "--configfile", str(cfg)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[6000, 60000, 600000])
    args = parser.parse_args()
    results = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            results.append((n, dry_run(Path(tmp), n)))
    base_n, base_t = results[0]
    print(f"{'files':>9} {'shards':>6} {'dry run s':>10} {'ratio':>6}")
    for n, t in results:
        print(f"{n:>9} {max(1, n // 10000):>6} {t:>10.2f} {t / base_t:>6.2f}")


if __name__ == "__main__":
    main()
