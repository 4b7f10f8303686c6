"""The benchmark scripts still run (at toy sizes); their numbers are read by people, not asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_separation_map_size_benchmark_runs_and_reports_ratios() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/separation_map_size.py"), "--sizes", "16", "32",
         "--maps", "32", "--observations", "1"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()[:2] in ("16", "32")]
    assert [r[0] for r in rows] == ["16", "32"], out
    assert rows[0][2] == "1.00" and rows[0][4] == "1.00", out  # the first size is the baseline
    assert all(float(r[1]) > 0 and float(r[3]) > 0 for r in rows), out


def test_dry_run_benchmark_runs_both_routes_and_reports_ratios() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/dry_run_scaling.py"), "--sizes", "20"],
        capture_output=True, text=True, timeout=600, check=True,
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["files"], ["catalogue"])]
    assert [r[0] for r in rows] == ["files", "catalogue"], out
    assert rows[0][4] == "1.00" and float(rows[1][3]) > 0, out
