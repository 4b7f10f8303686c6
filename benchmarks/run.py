"""The performance suite of issue 16: one command (``make bench``), a table, and a JSON file.

Every figure is a ratio against a baseline measured in the same run (these machines are
shared and noisy), next to the raw seconds.  Rows (the issue's items):

1. ``dag``       -- ``snakemake -n`` on N observed files (benchmarks/dry_run_scaling.py), linear extrapolation to 600k.
2. ``ingest``    -- the ingestion stages (``INGEST_STAGES``), each on demo files written as rule
   make_demo_source writes them, against a naive single-process loop over the same files,
   and 2 shard jobs at once against 1 process (per core):
   cube files (``ingest_shard`` on the int16 cubes of ``bulgy``; files/s), the realism stage
   (``realism_shard`` on the idealised TNG SKIRT files of ``compact`` against astropy's getdata
   of each file + one HDF5 write; files/s) and the SDSS-frame cutouts (``cut_source_shard`` on
   the frames + catalogue of ``sdss_demo`` against reading each galaxy's frames with astropy and
   cutting them with ``reproject_interp``; catalogue rows = galaxies/s).
3. ``loader``    -- images/s of the HDF5 training loader against the images/s a training step
   consumes, and training fed by the loader against training from batches in memory.
4. ``train``     -- images/s of one k-sparse VAE training step (default settings, CPU) and the
   achieved FLOP rate as a fraction of a large float32 matmul measured in the same run.
5. ``encode``    -- images/s of inference-mode encoding at the configured batch against batch 64.
6. ``ood``       -- k-NN OOD score, old (float64, ``np.partition``) against new (float32,
   torch top-k) at the same sizes up to 20k x 20k, the new one alone at 50k x 50k and 200k x 50k;
   power-law fit in N x M over all of them and extrapolation to 600k x 50k; then the configured
   index (``knn_index``) against the exact score on embedding-like rows at 200k x 50k (flags
   compared, extrapolated to 600k), and on unclustered Gaussians (its check must fall back).
7. ``umap``      -- rule project's strategy on rows shaped like the embeddings (latent_dim, k
   active): the first fit + transform of a process (numba JIT) untimed and reported apart, fits
   at >= 4,096 rows (NN-descent, as at fit_max_samples), transform rows/s in one batch of
   transform_batch_size, a new index's first transform against its second (per-index cost),
   extrapolated to 600k = fit(fit_max_samples) + transform(the rest).
8. ``separation`` -- posterior samples/s (untrained network of the demo's shape), and sampling
   from t*(sigma) against the same step size from t = 1 (benchmarks/separation_map_size.py: map size).
9. ``demo``      -- ``make demo`` wall time, read from benchmarks/results/demo.json
   (``{"wall_s": ..., "cores": ..., "date": ...}``, written by whoever ran the demo); never run here.

GPU rows are skipped with a note when ``torch.cuda.is_available()`` is false.

    .venv/bin/python benchmarks/run.py [--quick] [--only ood umap] [--json benchmarks/results/bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


@dataclass
class Row:
    """One line of the table: ``value`` in ``unit``; ``ratio`` = value / the named baseline's value."""

    item: str
    name: str
    value: float
    unit: str
    baseline: str = ""
    ratio: float | None = None
    goal: str = ""
    note: str = ""


def _config() -> dict:
    import yaml

    return yaml.safe_load((REPO / "config/config.yaml").read_text())


def _timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Best wall time of ``repeat`` calls (s): the least disturbed by the machine's other users."""
    return _timed_result(fn, repeat)[0]


def _timed_result(fn: Callable[[], object], repeat: int = 1) -> tuple[float, object]:
    """Best wall time of ``repeat`` calls (s) and the last call's result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def _power_law(x: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """Exponent b and prefactor a of t = a x^b (least squares in log-log)."""
    b, log_a = np.polyfit(np.log(x), np.log(t), 1)
    return float(b), float(np.exp(log_a))


# ---------------------------------------------------------------- 1. DAG
def bench_dag(quick: bool) -> list[Row]:
    from dry_run_scaling import dry_run

    sizes = [600, 6000] if quick else [6000, 60000]
    times = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            times.append(dry_run(Path(tmp), n))
    b, a = _power_law(np.array(sizes, float), np.array(times))
    rows = [Row("1 dag", f"snakemake -n, {n} files", t, "s", f"{sizes[0]} files", t / times[0]) for n, t in zip(sizes, times)]
    rows.append(Row("1 dag", "extrapolated to 600000 files", a * 600000 ** b, "s", goal="<= 10 s",
                    note=f"t ~ N^{b:.2f}; one observed + one simulated source"))
    return rows


# ---------------------------------------------------------------- 2. ingestion (hook)
# name -> callable(quick) -> list[Row].  Helpers adding the realism stage and the
# SDSS-frame cutouts register their files/s measurement here (against a naive
# single-process loop over the same files, measured in the same call).
INGEST_STAGES: dict[str, Callable[[bool], list[Row]]] = {}


def _ingest_slice(args: tuple) -> int:
    """One shard job: ingest_source_shard over its slice of the file index (a rule's library call)."""
    from simobs.data.ingest import ingest_source_shard

    index, source, settings, shard, n_shards, out = args
    return ingest_source_shard(source, settings, shard=shard, n_shards=n_shards, out=out, manifest=f"{out}.tsv",
                               index=index).n_images


def _naive_read(files: list[str], out: Path) -> int:
    """The baseline: astropy's getdata per file, stacked and written as one HDF5 dataset."""
    import h5py
    from astropy.io import fits

    images = np.stack([np.asarray(fits.getdata(f), dtype=np.float32) for f in files])
    with h5py.File(out, "w") as h5:
        h5.create_dataset("images", data=images)
    return len(images)


def bench_ingest_cubes(quick: bool) -> list[Row]:
    """ingest_shard on the demo's FITS cubes (int16 + BSCALE/BZERO: the `bulgy` source) against
    the naive loop, in one process and as 2 shard jobs at once."""
    from concurrent.futures import ProcessPoolExecutor

    from simobs.data.demo_universe import write_demo_source
    from simobs.data.ingest import list_source_files, write_file_index

    cfg = _config()
    source = next(s for s in cfg["sources"] if s["name"] == "bulgy")
    n_galaxies = 20 if quick else 200
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bulgy"
        write_demo_source(folder, source="bulgy", kind="simulation", model=source["demo_model"], n_galaxies=n_galaxies,
                          n_projections=3, seed=3, band_order=source["cube_band_order"], integer=True,
                          workers=min(2, os.cpu_count() or 1))
        files = list_source_files(str(folder / "*.fits"))
        source = {**source, "path": str(folder / "*.fits")}
        t_naive = _timed(lambda: _naive_read(files, Path(tmp) / "naive.h5"), repeat=2)
        index = Path(tmp) / "index.txt"
        write_file_index(source["path"], index, source="bulgy")
        t_one = _timed(lambda: _ingest_slice((index, source, cfg["ingest"], 0, 1, Path(tmp) / "one.h5")), repeat=2)
        halves = [(index, source, cfg["ingest"], i, 2, Path(tmp) / f"half{i}.h5") for i in range(2)]
        with ProcessPoolExecutor(2) as pool:
            list(pool.map(_ingest_slice, halves))  # warm the workers' imports
            t_two = _timed(lambda: list(pool.map(_ingest_slice, halves)), repeat=2)
    n = len(files)
    note = f"{n} files of (3, 64, 64) int16 cubes with BSCALE/BZERO (the demo's bulgy source)"
    return [Row("2 ingest", "naive loop (astropy getdata + one HDF5 write)", n / t_naive, "files/s", note=note),
            Row("2 ingest", "ingest_shard, 1 process", n / t_one, "files/s/core", "naive loop", t_naive / t_one,
                note="validation, ids, normalisation, chunked HDF5 shard"),
            Row("2 ingest", "ingest_shard, 2 shard jobs at once", n / t_two / 2, "files/s/core", "1 process",
                t_one / t_two / 2, note=f"speed-up {t_one / t_two:.2f}x on {os.cpu_count()} cores")]


INGEST_STAGES["cube files"] = bench_ingest_cubes


def _demo_source(cfg: dict, name: str, folder: Path, **sizes: int) -> dict:
    """Write demo source ``name`` into ``folder`` as rule make_demo_source does (its config's
    layout, model and seed; ``sizes`` overrides n_galaxies / n_projections) and return its
    config entry with ``path`` (and the catalogue's) moved from data/demo/<name> to ``folder``."""
    from simobs.config import demo_source_settings
    from simobs.data.demo_universe import generate_from_settings

    generate_from_settings(folder, source=name, **{**demo_source_settings(cfg, name), **sizes, "workers": 1})
    source = next(s for s in cfg["sources"] if s["name"] == name)

    def moved(path: str) -> str:
        return path.replace(f"data/demo/{name}", str(folder))

    source = {**source, "path": moved(source["path"])}
    if source.get("catalogue"):
        source["catalogue"] = {**source["catalogue"], "path": moved(source["catalogue"]["path"])}
    return source


def _realism_slice(args: tuple) -> int:
    """One realism shard job: realism_shard over its slice of the file index (rule realism's call)."""
    from simobs.data.realism_stage import realism_shard

    index, source, settings, seed, shard, n_shards, out = args
    return realism_shard(source, settings, seed=seed, index=index, shard=shard, n_shards=n_shards, out=out,
                         manifest=f"{out}.tsv").n_files


def _naive_read_ragged(files: list[str], out: Path) -> int:
    """The baseline for files of different sizes: astropy's getdata per file, the pixels
    concatenated and written as one HDF5 dataset (with the shapes)."""
    import h5py
    from astropy.io import fits

    arrays = [np.asarray(fits.getdata(f), dtype=np.float32) for f in files]
    with h5py.File(out, "w") as h5:
        h5.create_dataset("pixels", data=np.concatenate([a.ravel() for a in arrays]))
        h5.create_dataset("shapes", data=np.array([a.shape for a in arrays]))
    return len(arrays)


def bench_ingest_realism(quick: bool) -> list[Row]:
    """realism_shard on the demo's idealised TNG SKIRT files (the `compact` source, written
    by demo_skirt as rule make_demo_source does) against reading the same files, in one
    process and as 2 shard jobs at once."""
    from concurrent.futures import ProcessPoolExecutor

    from simobs.data.ingest import list_source_files, write_file_index

    cfg = _config()
    name = next(s["name"] for s in cfg["sources"] if s.get("realism") is not None and s["layout"] == "skirt_tng")
    sizes = {"n_galaxies": 10, "n_projections": 2} if quick else {}  # full: the demo's size
    with tempfile.TemporaryDirectory() as tmp:
        source = _demo_source(cfg, name, Path(tmp) / name, **sizes)
        files = list_source_files(source["path"])
        n = len(files)
        t_naive = _timed(lambda: _naive_read_ragged(files, Path(tmp) / "naive.h5"), repeat=2)
        index = Path(tmp) / "index.txt"
        write_file_index(source["path"], index, source=name)
        job = (index, source, cfg["ingest"], int(cfg["seed"]))
        t_one = _timed(lambda: _realism_slice((*job, 0, 1, Path(tmp) / "one.h5")), repeat=2)
        halves = [(*job, i, 2, Path(tmp) / f"half{i}.h5") for i in range(2)]
        with ProcessPoolExecutor(2) as pool:
            list(pool.map(_realism_slice, [(*job, i, n, Path(tmp) / f"warm{i}.h5") for i in range(2)]))  # one file each
            t_two = _timed(lambda: list(pool.map(_realism_slice, halves)), repeat=2)
        sides = [shape[-1] for shape in _fits_shapes(files)]
    note = (f"{n} TNG SKIRT broadband files (4, N, N) float32, N {min(sides)}-{max(sides)} px "
            f"(the demo's {name} source{', toy size' if quick else ''})")
    return [Row("2 ingest", "realism: naive loop (astropy getdata + one HDF5 write)", n / t_naive, "files/s",
                note=note),
            Row("2 ingest", "realism: realism_shard, 1 process", n / t_one, "files/s/core", "realism naive loop",
                t_naive / t_one, note="calibration, placement at z, rebinning, PSF, sky + noise; shard with ivar"),
            Row("2 ingest", "realism: realism_shard, 2 shard jobs at once", n / t_two / 2, "files/s/core",
                "realism 1 process", t_one / t_two / 2, note=f"speed-up {t_one / t_two:.2f}x on {os.cpu_count()} cores")]


def _fits_shapes(files: list[str]) -> list[tuple[int, ...]]:
    from astropy.io import fits

    return [tuple(fits.getheader(f)[f"NAXIS{k}"] for k in (3, 2, 1)) for f in files]


INGEST_STAGES["realism"] = bench_ingest_realism


def _cutout_slice(args: tuple) -> int:
    """One cutout shard job: cut_source_shard over its slice of the plan (rule cutout_shard's call)."""
    from simobs.data.cutouts import cut_source_shard

    source, image_size, plan, shard, n_shards, out = args
    return cut_source_shard(source, image_size, plan=plan, shard=shard, n_shards=n_shards, out=out,
                            manifest=f"{out}.tsv")["n_rows"]


def _naive_cutouts(plan_path: Path, bands: list[str], shape: tuple[int, int], pixel_scale: float, out: Path) -> int:
    """The baseline: per galaxy and band, read its frame with astropy and cut it with
    ``reproject_interp`` (bilinear) onto the galaxy's grid; one HDF5 write.  Returns the plan's rows."""
    import h5py
    import pandas as pd
    from astropy.io import fits
    from astropy.wcs import WCS
    from reproject import reproject_interp

    from simobs.data.cutouts import cutout_wcs

    plan = pd.read_csv(plan_path, sep="\t", dtype={"id": str}, keep_default_na=False)
    todo = plan[plan["code"] == ""]
    cubes = np.zeros((len(todo), len(bands), *shape), dtype=np.float32)
    for i, r in enumerate(todo.itertuples()):
        grid = cutout_wcs(r.ra, r.dec, shape, pixel_scale)
        for b, band in enumerate(bands):
            data, header = fits.getdata(getattr(r, f"frame_{band}"), header=True)
            cubes[i, b] = np.nan_to_num(reproject_interp((data, WCS(header)), grid, shape_out=shape,
                                                         return_footprint=False))
    with h5py.File(out, "w") as h5:
        h5.create_dataset("images", data=cubes)
    return len(plan)


def bench_ingest_cutouts(quick: bool) -> list[Row]:
    """cut_source_shard on the demo's SDSS frames and catalogue (the `sdss_demo` source, written
    by demo_frames as rule make_demo_source does) against a naive per-galaxy loop, in one
    process and as 2 shard jobs at once.  Rates are catalogue rows (galaxies) per second."""
    from concurrent.futures import ProcessPoolExecutor

    import pandas as pd

    from simobs.data.cutouts import write_cutout_plan, write_frame_index

    cfg = _config()
    name = next(s["name"] for s in cfg["sources"] if s["layout"] == "sdss_frames")
    size = [int(v) for v in cfg["ingest"]["image_size"]]
    with tempfile.TemporaryDirectory() as tmp:
        source = _demo_source(cfg, name, Path(tmp) / name, n_galaxies=20 if quick else 200)  # 1 field
        t_index, n_frames = _timed_result(lambda: write_frame_index(source["path"], source["bands"],
                                                                    Path(tmp) / "frames.tsv"))
        plan = Path(tmp) / "plan.tsv"
        t_plan, table = _timed_result(lambda: write_cutout_plan(source, size, index=Path(tmp) / "frames.tsv", out=plan))
        n, n_cut = len(table), int((table["code"] == "").sum())
        t_naive = _timed(lambda: _naive_cutouts(plan, source["bands"], tuple(size), float(source["pixel_scale"]),
                                                Path(tmp) / "naive.h5"), repeat=2)
        t_one = _timed(lambda: _cutout_slice((source, size, plan, 0, 1, Path(tmp) / "one.h5")), repeat=2)
        halves = [(source, size, plan, i, 2, Path(tmp) / f"half{i}.h5") for i in range(2)]
        with ProcessPoolExecutor(2) as pool:
            list(pool.map(_cutout_slice, [(source, size, plan, i, n, Path(tmp) / f"warm{i}.h5") for i in range(2)]))
            t_two = _timed(lambda: list(pool.map(_cutout_slice, halves)), repeat=2)
        n_fields = pd.read_csv(Path(tmp) / "frames.tsv", sep="\t")["field"].nunique()
    note = (f"{n} catalogue rows ({n_cut} cut, {n - n_cut} rejected by the plan), {n_frames} frames "
            f"({n_fields} field(s) x {len(source['bands'])} bands, 2048x1489) of the demo's {name} source; "
            f"frame index {t_index:.2f} s, plan {t_plan:.2f} s")
    return [Row("2 ingest", "cutouts: naive loop (frame read + reproject_interp per galaxy and band)", n / t_naive,
                "galaxies/s", note=note),
            Row("2 ingest", "cutouts: cut_source_shard, 1 process", n / t_one, "galaxies/s/core",
                "cutouts naive loop", t_naive / t_one,
                note="each frame read once; reproject_adaptive (flux-conserving) per band onto a TAN grid"),
            Row("2 ingest", "cutouts: cut_source_shard, 2 shard jobs at once", n / t_two / 2, "galaxies/s/core",
                "cutouts 1 process", t_one / t_two / 2, note=f"speed-up {t_one / t_two:.2f}x on {os.cpu_count()} cores")]


INGEST_STAGES["sdss cutouts"] = bench_ingest_cutouts


def bench_ingest(quick: bool) -> list[Row]:
    rows = []
    for name, stage in INGEST_STAGES.items():
        t0 = time.perf_counter()
        rows += stage(quick)
        print(f"[ingest {name}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    return rows or [Row("2 ingest", "ingestion files/s", float("nan"), "files/s",
                        note="not measured yet: register stages in benchmarks/run.py INGEST_STAGES")]


# ---------------------------------------------------------------- 4. training, 5. encoding
def _vae(cfg: dict):
    import torch

    from simobs.embedding.model import KSparseVAE
    from simobs.embedding.settings import EmbeddingSettings

    settings = EmbeddingSettings.from_config(cfg["embedding"])
    bands, size = len(cfg["sources"][0]["bands"]), int(cfg["ingest"]["image_size"][0])
    torch.manual_seed(0)
    return KSparseVAE(settings.architecture(bands, size)), settings, bands, size


def _matmul_flops(n: int = 2048) -> float:
    import torch

    a = torch.randn(n, n)
    t = _timed(lambda: a @ a, repeat=3)
    return 2 * n**3 / t


def _train_step(model, settings) -> Callable[[object], None]:
    """One optimisation step of the configured objective on a batch ``x`` (AuxK left out)."""
    import torch

    from simobs.embedding.train import objective_loss

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(x) -> None:
        opt.zero_grad(set_to_none=True)
        objective_loss(model, x, settings.k, settings)[2].backward()  # the trainer's own loss
        opt.step()

    return step


def bench_train(quick: bool) -> list[Row]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model, settings, bands, size = _vae(_config())
    x = torch.randn(settings.batch_size, bands, size, size)
    train_step = _train_step(model, settings)

    def step() -> None:
        train_step(x)

    step()  # warm-up (allocator, kernels)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    n_steps = 2 if quick else 5
    t = _timed(lambda: [step() for _ in range(n_steps)]) / n_steps
    peak = _matmul_flops()
    rows = [Row("4 train", f"VAE train step, batch {settings.batch_size}, CPU fp32", settings.batch_size / t, "images/s"),
            Row("4 train", "achieved FLOP rate / 2048^2 matmul", flops / t / peak, "fraction", "matmul",
                note=f"{flops / t / 1e9:.1f} of {peak / 1e9:.1f} GFLOP/s; torch threads {torch.get_num_threads()}")]
    if not torch.cuda.is_available():
        rows.append(Row("4 train", "GPU bf16 + channels-last vs fp32 eager", float("nan"), "x", goal=">= 2x",
                        note="skipped: no GPU on this machine"))
    return rows


def bench_encode(quick: bool) -> list[Row]:
    import torch

    cfg = _config()
    model, settings, bands, size = _vae(cfg)
    embed_batch = int(cfg["embedding"]["embed_batch_size"])
    model.eval()
    n = 256 if quick else 1024
    images = torch.randn(n, bands, size, size)

    def encode(batch: int) -> None:
        with torch.inference_mode():
            for s in range(0, n, batch):
                model(images[s:s + batch], k=settings.k_inference, sample=False)

    encode(64)  # warm-up
    base = _timed(lambda: encode(64))
    big = _timed(lambda: encode(embed_batch))
    rows = [Row("5 encode", "encode, batch 64, CPU", n / base, "images/s"),
            Row("5 encode", f"encode, batch {embed_batch}, CPU", n / big, "images/s", "batch 64", base / big)]
    if not torch.cuda.is_available():
        rows.append(Row("5 encode", "encode on GPU", float("nan"), "images/s", note="skipped: no GPU on this machine"))
    return rows


# ---------------------------------------------------------------- 6. OOD scores
def _old_knn_score(ref_points: np.ndarray, q: np.ndarray, k: int, batch: int = 2048) -> np.ndarray:
    """The k-NN score before issue 16 (float64 distances, ``np.partition``): the baseline."""
    ref_sq = (ref_points.astype(np.float64) ** 2).sum(1)
    out = np.empty(len(q))
    for start in range(0, len(q), batch):
        qb = q[start:start + batch].astype(np.float64)
        d2 = (qb**2).sum(1)[:, None] + ref_sq[None, :] - 2.0 * qb @ ref_points.T.astype(np.float64)
        np.maximum(d2, 0.0, out=d2)
        near = np.partition(d2, k - 1, axis=1)[:, :k]
        out[start:start + batch] = np.sqrt(near).mean(1)
    return out


def _gaussian_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """(n, dim) float32 unclustered Gaussian rows, per-dimension widths 0.1 to 2."""
    return rng.normal(size=(n, dim)).astype(np.float32) * np.linspace(0.1, 2, dim, dtype=np.float32)


def bench_ood(quick: bool) -> list[Row]:
    from simobs.misspecification.scores import KnnReference

    cfg = _config()["misspecification"]["ood"]
    k, comps, dim = int(cfg["knn_k"]), int(cfg["knn_components"]), int(_config()["embedding"]["latent_dim"])
    # (observed, reference, compare with the old code): the old code only where it takes seconds;
    # the largest sizes (the 10k..200k x 10k..50k) carry the power-law fit
    grid = ([(2000, 5000, True), (5000, 5000, True), (5000, 10000, True)] if quick else
            [(10000, 10000, True), (20000, 10000, True), (20000, 20000, True), (50000, 50000, False),
             (200000, 50000, False)])
    rng = np.random.default_rng(0)
    rows, work, t_new = [], [], []
    for n_obs, n_ref, compare in grid:
        ref, obs = _gaussian_rows(rng, n_ref, dim), _gaussian_rows(rng, n_obs, dim)
        knn = KnnReference.fit(ref, k=k, n_components=comps)
        new_t, new = _timed_result(lambda: knn.score(obs))
        if compare:
            old_t, old = _timed_result(lambda: _old_knn_score(knn.points, knn.project(obs), k))
            thr = np.quantile(old, 0.95)
            rows.append(Row("6 ood", f"knn {n_obs} x {n_ref}, new (float32, torch top-k)", new_t, "s",
                            "old (float64, np.partition)", new_t / old_t,
                            note=f"old {old_t:.1f} s; max rel. diff {np.max(np.abs(new / old - 1)):.1e}; "
                                 f"flags differing at the 95% quantile: {int(np.sum((new > thr) != (old > thr)))}"))
        else:
            rows.append(Row("6 ood", f"knn {n_obs} x {n_ref}, new (float32, torch top-k)", new_t, "s",
                            f"{grid[0][0]} x {grid[0][1]}", new_t / t_new[0],
                            note=f"{n_obs * n_ref / work[0]:.0f}x the work; the old code is not run at this size"))
        work.append(n_obs * n_ref)
        t_new.append(new_t)
    b, a = _power_law(np.array(work, float), np.array(t_new))
    rows.append(Row("6 ood", "knn 600000 x 50000, exact, extrapolated", a * (600000 * 50000) ** b, "s", goal="<= 120 s",
                    note=f"t ~ (N M)^{b:.2f}; D={dim}, C={comps}, k={k}; the grid's data are unclustered Gaussians"))
    rows += _bench_knn_index(quick, cfg, dim, comps, k)
    return rows


def _bench_knn_index(quick: bool, cfg: dict, dim: int, comps: int, k: int) -> list[Row]:
    """The configured index (``knn_index``; ``auto`` takes the IVF index at these sizes) against
    the exact score on the same queries: on embedding-like rows (clustered sparse codes, 5 %
    of the queries from clusters the reference lacks), and on the grid's unclustered
    Gaussians, where the index's check must fail and fall back to the exact score."""
    from simobs.embedding.settings import EmbeddingSettings
    from simobs.misspecification.scores import KnnReference

    k_act = int(EmbeddingSettings.from_config(_config()["embedding"]).k_inference)
    n_ref, n_obs = (10000, 20000) if quick else (50000, 200000)
    n_odd, n_held = n_obs // 20, n_ref // 5
    x = _embedding_like(n_ref + n_held + n_obs - n_odd, dim, k_act)
    ref, held = x[:n_ref], x[n_ref:n_ref + n_held]
    obs = np.concatenate([x[n_ref + n_held:], _embedding_like(n_odd, dim, k_act, seed=1)])
    index = dict(index=str(cfg.get("knn_index", "auto")), n_groups=int(cfg.get("knn_groups", 256)),
                 n_probe=int(cfg.get("knn_probe", 32)))
    if quick and index["index"] == "auto":
        index["index"] = "ivf"  # auto builds no index below 20,000 reference points
    t0 = time.perf_counter()
    knn = KnnReference.fit(ref, k=k, n_components=comps, **index)
    t_fit = time.perf_counter() - t0
    if quick:
        knn.min_work = 0  # the quick sizes are below the index's threshold
    thr = float(np.quantile(knn.score_exact(held), 0.95))  # as rule ood_scores sets it (held-out, exact)
    t_idx, fast = _timed_result(lambda: knn.score(obs, threshold=thr))
    check = dict(knn.last_check)
    t_ex, exact = _timed_result(lambda: knn.score_exact(obs))
    rel = fast / exact - 1
    rows = [Row("6 ood", f"knn {n_obs} x {n_ref}, {index['index']} index ({check.get('method')}), embedding-like",
                t_idx, "s", "exact, same queries", t_idx / t_ex,
                note=f"exact {t_ex:.1f} s; index build {t_fit:.1f} s; flagged {np.mean(exact > thr):.1%}, flags "
                     f"differing: {int(np.sum((fast > thr) != (exact > thr)))} of {n_obs}; unflagged scores: "
                     f"max rel. diff {rel.max():.1e}, {np.mean(rel > 1e-6):.2%} inexact; check {check}")]
    scale = 600000 / n_obs
    rows.append(Row("6 ood", "knn 600000 x 50000, index, extrapolated (embedding-like)",
                    t_fit * (50000 / n_ref) + t_idx * scale * (50000 / n_ref), "s", goal="<= 120 s",
                    note=f"index build + {scale:.0f}x the queries{'' if n_ref == 50000 else ' x the reference ratio'}"))
    if not quick:  # the worst case: no clusters, so the check fails and the exact score runs
        rng = np.random.default_rng(2)
        g_ref, g_obs = _gaussian_rows(rng, n_ref, dim), _gaussian_rows(rng, 50000, dim)
        knn_g = KnnReference.fit(g_ref, k=k, n_components=comps, **index)
        t_g, _ = _timed_result(lambda: knn_g.score(g_obs))
        check_g = dict(knn_g.last_check)
        t_ge, _ = _timed_result(lambda: knn_g.score_exact(g_obs))
        rows.append(Row("6 ood", f"knn 50000 x {n_ref}, {index['index']} index, unclustered Gaussians", t_g, "s",
                        "exact, same queries", t_g / t_ge, note=f"exact {t_ge:.1f} s; check {check_g}"))
    return rows


# ---------------------------------------------------------------- 7. UMAP
def _embedding_like(n: int, dim: int, k: int, n_clusters: int = 32, seed: int = 0) -> np.ndarray:
    """Rows shaped like the embeddings UMAP sees (rule project): (n, dim) float32 masked
    posterior means with exactly ``k`` non-zero units per row, from a mixture of
    ``n_clusters`` anisotropic Gaussian clusters of unequal weight.  Each cluster draws
    from its own 1.5 k units among the half of the latents that are alive (the demo's
    VAE leaves about half dead), with per-unit widths spread over a decade; the top ``k``
    by magnitude are kept, as the VAE's top-k mask does."""
    rng = np.random.default_rng(seed)
    alive = rng.choice(dim, dim // 2, replace=False)
    label = rng.choice(n_clusters, n, p=rng.dirichlet(np.full(n_clusters, 2.0)))
    m = min(len(alive), (3 * k) // 2)
    x = np.zeros((n, dim), dtype=np.float32)
    for c in range(n_clusters):
        rows = np.flatnonzero(label == c)
        units = rng.choice(alive, m, replace=False)
        v = rng.normal(0.0, 1.5, m) + np.exp(rng.uniform(np.log(0.1), 0.0, m)) * rng.normal(size=(len(rows), m))
        keep = np.argsort(-np.abs(v), axis=1)[:, :k]
        masked = np.zeros_like(v)
        np.put_along_axis(masked, keep, np.take_along_axis(v, keep, axis=1), axis=1)
        x[np.ix_(rows, units)] = masked
    return x


def bench_umap(quick: bool) -> list[Row]:
    """What rule project does (simobs.comparison.projection): fit on a subsample, transform
    the rest in batches of ``transform_batch_size``, on rows shaped like the embeddings
    (:func:`_embedding_like`: the latent dimension and active units of the config).

    Fits are timed at sizes >= 4,096 rows (umap-learn's NN-descent path, as for the
    workflow's 50,000) after one untimed warm-up fit + transform (numba's JIT, reported
    as its own row); full sizes are above 10,000 rows, where UMAP runs 200 epochs as it
    does at 50,000 (500 below).  The transform batch has more than 10,000 rows, where
    UMAP.transform runs 30 epochs (100 below).  Extrapolation: fit(fit_max_samples) from a
    power law over the fits + the first transform's preparation of the index + the
    steady per-row transform cost x the remaining rows.
    """
    import numba
    import pynndescent
    import umap

    from simobs.comparison.projection import ProjectionSettings, cache_umap_kernels
    from simobs.embedding.settings import EmbeddingSettings

    cfg = _config()
    p = ProjectionSettings.from_mapping(cfg["projection"])
    emb = EmbeddingSettings.from_config(cfg["embedding"])
    dim, k = int(emb.latent_dim), int(emb.k_inference)
    n_cached = cache_umap_kernels()
    sizes = [4500, 9000] if quick else [12500, 25000, 50000]
    batch = 10001 if quick else max(10001, p.transform_batch_size)
    n_warm = 4500  # >= 4096: the NN-descent path
    x = _embedding_like(sizes[-1] + batch, dim, k)
    x_fit, x_batch = x[:sizes[-1]], x[sizes[-1]:]

    def reducer():  # as project_embeddings makes it
        return umap.UMAP(n_neighbors=p.n_neighbors, min_dist=p.min_dist, metric=p.metric, random_state=p.seed,
                         n_components=2, n_jobs=1)

    warm_fit, warm = _timed_result(lambda: reducer().fit(x_fit[:n_warm]))
    warm_transform = _timed(lambda: warm.transform(x_batch[:2000]))
    again_fit = _timed(lambda: reducer().fit(x_fit[:n_warm]))
    again_transform = _timed(lambda: warm.transform(x_batch[:2000]))
    jit = warm_fit - again_fit + warm_transform - again_transform
    cache_dir = numba.config.CACHE_DIR or "beside the packages"
    rows = [Row("7 umap", f"warm-up: first fit ({n_warm} rows) + transform (2000) of the process",
                warm_fit + warm_transform, "s",
                note=f"JIT {jit:.1f} s (fit {warm_fit - again_fit:.1f}, transform {warm_transform - again_transform:.1f}; "
                     f"the same calls again {again_fit:.1f} + {again_transform:.1f} s); cache_umap_kernels enabled "
                     f"{n_cached} kernels, numba cache {cache_dir}")]
    fit_t, first_t, second_t = [], [], []
    for n in sizes:
        t, fitted = _timed_result(lambda: reducer().fit(x_fit[:n]))
        fit_t.append(t)
        first_t.append(_timed(lambda: fitted.transform(x_batch)))  # a new index: its search graph is prepared
        second_t.append(_timed(lambda: fitted.transform(x_batch)))
        rows.append(Row("7 umap", f"fit {n} rows", t, "s", f"fit {sizes[0]}", t / fit_t[0]))
    index = fitted._knn_search_index
    rows.append(Row("7 umap", f"transform {batch} rows (one batch) into the fit of {sizes[-1]}", batch / second_t[-1],
                    "rows/s", note="second call on the index; per-row s at fits of "
                    + ", ".join(f"{n}: {t / batch:.2e}" for n, t in zip(sizes, second_t))))
    rows.append(Row("7 umap", "first transform of a newly fitted index / its second", first_t[-1] / second_t[-1], "x",
                    "second transform", first_t[-1] / second_t[-1],
                    note=f"per index: {first_t[-1] - second_t[-1]:+.1f} s at {sizes[-1]} rows "
                         f"({', '.join(f'{a - b:+.1f}' for a, b in zip(first_t[:-1], second_t[:-1]))} s at the "
                         f"smaller fits); pynndescent {pynndescent.__version__}, shared cached search function: "
                         f"{getattr(index, '_uses_cached_search', 'n/a')}"))
    b, a = _power_law(np.array(sizes, float), np.array(fit_t))
    bt, at = _power_law(np.array(sizes, float), np.array(second_t) / batch)
    n_fit, n_all = p.fit_max_samples, 600000
    # the index's preparation (search graph and tree, once per fit) taken as linear in its size
    prepare_s = max(first_t[-1] - second_t[-1], 0.0) * n_fit / sizes[-1]
    fit_s, per_row = a * n_fit**b, at * n_fit**bt
    total = fit_s + prepare_s + per_row * (n_all - n_fit)
    rows.append(Row("7 umap", f"{n_all} rows, extrapolated (fit {n_fit}, transform the rest)", total, "s",
                    goal="<= 600 s",
                    note=f"fit {fit_s:.0f} s (~N^{b:.2f}) + index preparation {prepare_s:.1f} s + transform "
                         f"{per_row * (n_all - n_fit):.0f} s ({per_row:.2e} s/row, ~N_fit^{bt:.2f}); "
                         f"D={dim}, {k} active, batches of {p.transform_batch_size}"
                         + ("; toy sizes in the 500-epoch regime" if quick else "")))
    return rows


# ---------------------------------------------------------------- 8. separation
def bench_separation(quick: bool) -> list[Row]:
    """Posterior samples/s of the demo's sampler, and the cost of starting at t* against t = 1.

    The network is untrained (the cost does not depend on its weights).  "From t = 1" is
    the same step size over the whole reverse run: ``ceil(n_steps / t*)`` steps.
    """
    import math

    import torch

    from simobs.separation.model import build_noise_predictor
    from simobs.separation.sample import sample_posterior
    from simobs.separation.sde import ColouredNoise, LinearBetaSchedule

    sep = _config()["separation"]
    npix, sigma = int(sep["fields"]["npix"]), float(max(np.atleast_1d(sep["fields"]["sigma"])))
    model = build_noise_predictor({**sep["model"], **sep["sde"], "npix": npix, "gaussian_part": False}).eval()
    schedule = LinearBetaSchedule(sep["sde"]["beta_min"], sep["sde"]["beta_max"])
    s = sep["sampling"]
    n_samples = 4 if quick else 8  # the demo draws n_samples=40 per observation; the rate per sample is what counts
    t_star = float(schedule.t_star(sigma))
    y = torch.randn(n_samples, npix, npix, generator=torch.Generator().manual_seed(0))
    noise = ColouredNoise(np.ones((npix, npix)))  # white CMB: the cost does not depend on the spectrum

    def run(n_steps: int) -> None:
        with torch.inference_mode():
            sample_posterior(model, y, sigma, schedule=schedule, noise=noise, n_steps=n_steps,
                             generator=torch.Generator().manual_seed(0))

    n_full = math.ceil(int(s["n_steps"]) / t_star)
    from_t_star, from_one = _timed(lambda: run(int(s["n_steps"]))), _timed(lambda: run(n_full))
    return [Row("8 separation", f"posterior samples, {npix}^2, {s['n_steps']} steps from t*={t_star:.2f}",
                n_samples / from_t_star, "samples/s"),
            Row("8 separation", f"from t*: time / a run from t=1 ({n_full} steps)", from_t_star / from_one, "fraction",
                "from t=1", note=f"expected ~t* = {t_star:.2f} (largest sigma {sigma:g})")]


# ---------------------------------------------------------------- 3. data loading
def _image_file(path: Path, n: int, bands: int, size: int, chunk: int) -> Path:
    """An image dataset laid out as ingest_merge writes it (docs/contracts.md): float32
    ``images`` chunked by ``chunk_images`` rows, ids, attributes."""
    import h5py

    rng = np.random.default_rng(0)
    ids = np.array([f"obs-{i:07d}" for i in range(n)], dtype=object)
    with h5py.File(path, "w") as f:
        images = f.create_dataset("images", shape=(n, bands, size, size), dtype="f4", chunks=(chunk, bands, size, size))
        for start in range(0, n, 4096):
            stop = min(n, start + 4096)
            images[start:stop] = rng.standard_normal((stop - start, bands, size, size), dtype=np.float32)
        string = h5py.string_dtype("utf-8")
        f.create_dataset("ids", data=ids, dtype=string)
        f.create_dataset("galaxy_ids", data=ids, dtype=string)
        f.create_dataset("projection_ids", data=np.full(n, -1, np.int32))
        f.attrs.update(source="obs", kind="observation", bands=["g", "r", "i", "z", "u"][:bands],
                       pixel_scale_arcsec=0.396, n_images=n, n_rejected=0, simobs_version="bench")
    return path


def bench_loader(quick: bool) -> list[Row]:
    """Images/s of the training loader (HDF5, block shuffle, the configured buffer) against
    the images/s one training step consumes, and training fed by the loader against
    training fed from batches already in memory (the same steps, the same batches)."""
    import torch

    from simobs.embedding.data import BlockShuffleDataset, make_loader, read_source_info, split_blocks

    cfg = _config()
    model, settings, bands, size = _vae(cfg)
    chunk = int(cfg["ingest"].get("chunk_images", 64))
    n = 2048 if quick else 16384
    with tempfile.TemporaryDirectory() as tmp:
        path = _image_file(Path(tmp) / "obs.h5", n, bands, size, chunk)
        train_blocks, _ = split_blocks([read_source_info(path)], settings.val_fraction, settings.seed,
                                       settings.block_rows)
        ds = BlockShuffleDataset(train_blocks, settings.batch_size, shuffle=True,
                                 buffer_blocks=settings.shuffle_buffer_blocks, seed=settings.seed)

        def epoch() -> int:
            ds.set_epoch(1)
            return sum(len(b) for b in make_loader(ds, num_workers=0))

        t_epoch, n_read = _timed_result(epoch, repeat=2)
        loader_rate = n_read / t_epoch

        step = _train_step(model, settings)
        n_steps = 3 if quick else 48  # 3 refills of the shuffle buffer, as in an epoch
        ds.set_epoch(2)
        batches = [b for _, b in zip(range(n_steps), make_loader(ds, num_workers=0))]
        step(batches[0])  # warm-up

        def from_memory() -> None:
            for b in batches:
                step(b)

        def from_loader() -> None:
            ds.set_epoch(2)
            for _, b in zip(range(n_steps), make_loader(ds, num_workers=0)):
                step(b)

        t_memory = _timed(from_memory, repeat=2)
        t_loader = _timed(from_loader, repeat=2)
    consume = n_steps * settings.batch_size / t_memory
    note = (f"{n} images of {bands}x{size}x{size} float32, chunks of {chunk}, blocks of {settings.block_rows}, "
            f"buffer {settings.shuffle_buffer_blocks} blocks, 0 workers; torch threads {torch.get_num_threads()}")
    return [Row("3 loader", "HDF5 training loader, one epoch", loader_rate, "images/s", "training step", loader_rate / consume,
                goal=">= 3x", note=note),
            Row("3 loader", f"training step (batch {settings.batch_size}), consumption", consume, "images/s"),
            Row("3 loader", f"{n_steps} steps fed by the loader / fed from memory", t_loader / t_memory, "x",
                "in-memory batches", t_loader / t_memory, goal="<= 1.10")]


# ---------------------------------------------------------------- 9. demo

def bench_demo(quick: bool) -> list[Row]:
    path = REPO / "benchmarks/results/demo.json"
    if not path.exists():
        return [Row("9 demo", "make demo wall time", float("nan"), "s", goal="<= 900 s",
                    note=f"not measured here: write {path.relative_to(REPO)} with wall_s after a `make demo`")]
    d = json.loads(path.read_text())
    return [Row("9 demo", "make demo wall time", float(d["wall_s"]), "s", goal="<= 900 s",
                note=f"from {path.relative_to(REPO)} ({d.get('cores', '?')} cores, {d.get('date', '?')})")]


BENCHES: dict[str, Callable[[bool], list[Row]]] = {
    "dag": bench_dag, "ingest": bench_ingest, "loader": bench_loader,
    "train": bench_train, "encode": bench_encode, "ood": bench_ood, "umap": bench_umap,
    "separation": bench_separation, "demo": bench_demo,
}


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "numpy": np.__version__, "torch": torch.__version__, "gpu": torch.cuda.is_available(),
            "load_average_start": os.getloadavg()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes (minutes less; for the smoke test)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHES), help="run only these rows")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks/results/bench.json")
    args = parser.parse_args(argv)
    info, rows = machine(), []
    started = time.perf_counter()
    for name in args.only or list(BENCHES):
        t0 = time.perf_counter()
        rows += BENCHES[name](args.quick)
        print(f"[{name}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    info.update(load_average_end=os.getloadavg(), suite_s=time.perf_counter() - started, quick=args.quick)
    print(f"{'item':<12} {'measurement':<52} {'value':>10} {'unit':<9} {'ratio':>7}  {'vs / goal / note'}")
    for r in rows:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else ""
        extra = "; ".join(s for s in (f"vs {r.baseline}" if r.baseline else "", r.goal and f"goal {r.goal}", r.note) if s)
        print(f"{r.item:<12} {r.name:<52} {r.value:>10.3g} {r.unit:<9} {ratio:>7}  {extra}")
    print(f"machine: {info}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": info, "rows": [asdict(r) for r in rows]}, indent=1, default=str))


if __name__ == "__main__":
    main()
