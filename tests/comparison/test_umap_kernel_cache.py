"""UMAP's numba kernels compile once per environment, not once per process (issue 16)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# One small fit + transform in a fresh process; prints numba's cache hits and misses of umap's kernels.
_CHILD = """
import gc, json, numpy as np, umap
from numba.core.dispatcher import Dispatcher
from simobs.comparison.projection import cache_umap_kernels
cache_umap_kernels()
x = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
umap.UMAP(n_neighbors=10, n_epochs=5, random_state=0, n_jobs=1).fit(x).transform(x[:50])
# above 4,096 rows umap-learn finds neighbours with pynndescent's NN-descent
big = np.random.default_rng(1).normal(size=(4500, 8)).astype(np.float32)
umap.UMAP(n_neighbors=10, n_epochs=5, random_state=0, n_jobs=1).fit(big)
kernels = [d for d in gc.get_objects() if isinstance(d, Dispatcher)]
def count(prefix, what):
    return sum(sum(getattr(d.stats, what).values()) for d in kernels if d.py_func.__module__.startswith(prefix))
print(json.dumps({"hits": count("umap.", "cache_hits"), "misses": count("umap.", "cache_misses"),
                  "nnd_hits": count("pynndescent.", "cache_hits"), "nnd_misses": count("pynndescent.", "cache_misses")}))
"""


def _run(cache_dir: Path) -> dict[str, int]:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", _CHILD], env=env, capture_output=True, text=True,
                         timeout=900, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_second_process_loads_umap_kernels_from_the_cache_instead_of_compiling(tmp_path: Path) -> None:
    first, second = _run(tmp_path), _run(tmp_path)
    # measured: first 13 misses (~200 s with a cold cache for pynndescent too), second 10 hits, 2 misses (~20 s)
    assert first["misses"] >= 10, first  # a cold cache: the kernels were compiled (and written)
    assert second["hits"] >= 0.75 * first["misses"], (first, second)
    # umap.utils' two tiny random-number helpers (tau_rand, tau_rand_int) miss every time
    assert second["misses"] <= 0.2 * first["misses"], (first, second)
    # pynndescent's NN-descent kernels too (its nn_descent itself cannot be cached: "dynamic globals")
    assert first["nnd_misses"] >= 5 and second["nnd_hits"] >= 0.5 * first["nnd_misses"], (first, second)
