"""Benchmark: how `snakemake -n` scales with the number of galaxies (issue: 600k SDSS cutouts).

Two routes for one observed source (plus a small simulation source), ~1 shard per
10,000 galaxies, a dry run of the whole workflow each:

* files: N empty files named like SDSS cutouts (layout mef);
* catalogue: an N-row catalogue (CSV) + 300 frame files (layout sdss_frames): the dry
  run must read neither, so it should cost what the files route costs.

Reported as ratios against the smallest N of the files route, measured in the same command.

    .venv/bin/python benchmarks/dry_run_scaling.py [--sizes 6000 60000 600000] [--routes files catalogue]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def make_files(folder: Path, n: int, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{prefix}{i:07d}.fits").touch()


def make_catalogue(work: Path, n: int) -> Path:
    """An n-row catalogue and 300 (empty) frames of 100 fields in g, r, i."""
    folder = work / "raw/frames/756/3"
    folder.mkdir(parents=True)
    for field in range(100, 200):
        for band in "gri":
            (folder / f"frame-{band}-000756-3-{field:04d}.fits").touch()
    path = work / "raw/catalogue.csv"
    rng = np.random.default_rng(0)
    pd.DataFrame({"objid": 1237650000000000000 + np.arange(n), "ra": rng.uniform(150, 151, n),
                  "dec": rng.uniform(2, 3, n), "run": 756, "camcol": 3,
                  "field": rng.integers(100, 200, n)}).to_csv(path, index=False)
    return path


def dry_run(work: Path, n_obs: int, route: str = "files") -> float:
    make_files(work / "raw/tng", 1000, "tng-")
    base = yaml.safe_load((REPO / "config/config.yaml").read_text())
    obs, sim = dict(base["sources"][0]), dict(base["sources"][1])
    obs.update(name="sdss", shards=max(1, n_obs // 10_000))
    if route == "files":
        make_files(work / "raw/sdss", n_obs, "frame-")
        obs.update(path=str(work / "raw/sdss/*.fits"), layout="mef", id_key="OBJID")
        obs.pop("catalogue", None)
    else:
        catalogue = make_catalogue(work, n_obs)
        obs.update(path=str(work / "raw/frames/**/frame-*.fits*"), layout="sdss_frames",
                   catalogue={**obs.get("catalogue", {}), "path": str(catalogue)})
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
    parser.add_argument("--routes", nargs="+", choices=["files", "catalogue"], default=["files", "catalogue"])
    args = parser.parse_args()
    results = []
    for route in args.routes:
        for n in args.sizes:
            with tempfile.TemporaryDirectory() as tmp:
                results.append((route, n, dry_run(Path(tmp), n, route)))
    base_t = results[0][2]
    print(f"{'route':>9} {'galaxies':>9} {'shards':>6} {'dry run s':>10} {'ratio':>6}")
    for route, n, t in results:
        print(f"{route:>9} {n:>9} {max(1, n // 10000):>6} {t:>10.2f} {t / base_t:>6.2f}")


if __name__ == "__main__":
    main()
