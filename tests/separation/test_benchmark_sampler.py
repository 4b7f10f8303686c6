"""The sampler benchmark still runs (toy size); its numbers are read by people, not asserted."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_sampler_benchmark_runs_and_reports_ratios() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/separation_sampler.py"), "--observations", "1",
         "--runs", "euler_maruyama:2", "heun:2"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    rows = [line.split() for line in out.splitlines() if ":" in line]
    assert [r[0] for r in rows] == ["euler_maruyama:2", "heun:2"], out
    assert rows[0][2] == "1.00" and all(float(r[1]) > 0 for r in rows), out
