"""The performance suite of issue 16: one command (``make bench``), a table, and a JSON file.

Every figure is a ratio against a baseline measured in the same run (these machines are
shared and noisy), next to the raw seconds.  Rows (the issue's items):

1. ``dag``       -- ``snakemake -n`` on N observed files (benchmarks/dry_run_scaling.py), linear extrapolation to 600k.
2. ``ingest``    -- files/s of the ingestion stages; ``INGEST_STAGES`` is the hook where the
   realism and SDSS-frame cutout stages (other branches) add their rows.  Not measured yet.
3. ``loader``    -- not measured yet (see README "Performance").
4. ``train``     -- images/s of one k-sparse VAE training step (default settings, CPU) and the
   achieved FLOP rate as a fraction of a large float32 matmul measured in the same run.
5. ``encode``    -- images/s of inference-mode encoding at the configured batch against batch 64.
6. ``ood``       -- k-NN OOD score, old (float64, ``np.partition``) against new (float32,
   torch top-k) at the same sizes; power-law fit in N x M and extrapolation to 600k x 50k.
7. ``umap``      -- fit + transform of the configured strategy at growing N, extrapolated to 600k.
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


def bench_ingest(quick: bool) -> list[Row]:
    rows = [row for stage in INGEST_STAGES.values() for row in stage(quick)]
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


def bench_train(quick: bool) -> list[Row]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from simobs.embedding.model import elbo_terms

    model, settings, bands, size = _vae(_config())
    x = torch.randn(settings.batch_size, bands, size, size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(x, k=settings.k)
        elbo_terms(x, out.x_hat, out.kl, settings.beta)["loss"].mean().backward()
        opt.step()

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


def bench_ood(quick: bool) -> list[Row]:
    from simobs.misspecification.scores import KnnReference

    cfg = _config()["misspecification"]["ood"]
    k, comps, dim = int(cfg["knn_k"]), int(cfg["knn_components"]), int(_config()["embedding"]["latent_dim"])
    grid = [(2000, 5000), (5000, 5000), (5000, 10000)] if quick else [(10000, 10000), (20000, 10000), (20000, 20000)]
    rng = np.random.default_rng(0)
    rows, work, t_new = [], [], []
    for n_obs, n_ref in grid:
        ref = rng.normal(size=(n_ref, dim)).astype(np.float32) * np.linspace(0.1, 2, dim, dtype=np.float32)
        obs = rng.normal(size=(n_obs, dim)).astype(np.float32) * np.linspace(0.1, 2, dim, dtype=np.float32)
        knn = KnnReference.fit(ref, k=k, n_components=comps)
        proj = knn.project(obs)
        old_t, old = _timed_result(lambda: _old_knn_score(knn.points, proj, k))
        new_t, new = _timed_result(lambda: knn.score(obs))
        thr = np.quantile(old, 0.95)
        rows.append(Row("6 ood", f"knn {n_obs} x {n_ref}, new (float32, torch top-k)", new_t, "s",
                        "old (float64, np.partition)", new_t / old_t,
                        note=f"old {old_t:.1f} s; max rel. diff {np.max(np.abs(new / old - 1)):.1e}; "
                             f"flags differing at the 95% quantile: {int(np.sum((new > thr) != (old > thr)))}"))
        work.append(n_obs * n_ref)
        t_new.append(new_t)
    b, a = _power_law(np.array(work, float), np.array(t_new))
    rows.append(Row("6 ood", "knn 600000 x 50000, new, extrapolated", a * (600000 * 50000) ** b, "s", goal="<= 120 s",
                    note=f"t ~ (N M)^{b:.2f}; D={dim}, C={comps}, k={k}"))
    return rows


# ---------------------------------------------------------------- 7. UMAP
def bench_umap(quick: bool) -> list[Row]:
    import umap

    from simobs.comparison.projection import cache_umap_kernels

    p = _config()["projection"]
    cache_umap_kernels()
    sizes = [500, 1000] if quick else [2000, 5000]
    rng = np.random.default_rng(0)
    x_warm = rng.normal(size=(300, 32)).astype(np.float32)
    compile_s = _timed(lambda: umap.UMAP(n_neighbors=p["n_neighbors"], random_state=0, n_jobs=1, n_epochs=5)
                       .fit(x_warm).transform(x_warm[:50]))
    rows = [Row("7 umap", "first fit+transform of this process (300 rows)", compile_s, "s",
                note="JIT: cached on disk after the first run in this environment")]
    n_transform = sizes[-1]
    x = rng.normal(size=(sizes[-1] + n_transform, 32)).astype(np.float32)
    times, reducer = [], None
    for n in sizes:
        reducer = umap.UMAP(n_neighbors=p["n_neighbors"], min_dist=p["min_dist"], random_state=0, n_jobs=1)
        times.append(_timed(lambda: reducer.fit(x[:n])))
        rows.append(Row("7 umap", f"fit {n} rows", times[-1], "s", f"fit {sizes[0]}", times[-1] / times[0]))
    per_row = _timed(lambda: reducer.transform(x[sizes[-1]:])) / n_transform
    rows.append(Row("7 umap", f"transform {n_transform} rows (fitted on {sizes[-1]})", per_row * n_transform, "s"))
    b, a = _power_law(np.array(sizes, float), np.array(times))
    n_fit = int(p["fit_max_samples"])
    rows.append(Row("7 umap", f"600000 rows, extrapolated (fit {n_fit}, transform the rest)",
                    a * n_fit ** b + per_row * (600000 - n_fit), "s", goal="<= 600 s",
                    note=f"fit ~ N^{b:.2f}; transform linear (per-row cost grows with the fit size: a lower bound)"))
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


# ---------------------------------------------------------------- 3: not yet; 9. demo
def bench_not_yet(item: str, what: str) -> Callable[[bool], list[Row]]:
    return lambda quick: [Row(item, what, float("nan"), "", note="not measured yet (see README Performance)")]


def bench_demo(quick: bool) -> list[Row]:
    path = REPO / "benchmarks/results/demo.json"
    if not path.exists():
        return [Row("9 demo", "make demo wall time", float("nan"), "s", goal="<= 900 s",
                    note=f"not measured here: write {path.relative_to(REPO)} with wall_s after a `make demo`")]
    d = json.loads(path.read_text())
    return [Row("9 demo", "make demo wall time", float(d["wall_s"]), "s", goal="<= 900 s",
                note=f"from {path.relative_to(REPO)} ({d.get('cores', '?')} cores, {d.get('date', '?')})")]


BENCHES: dict[str, Callable[[bool], list[Row]]] = {
    "dag": bench_dag, "ingest": bench_ingest, "loader": bench_not_yet("3 loader", "HDF5 loader vs training step"),
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
