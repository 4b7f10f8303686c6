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


def test_embedding_objectives_benchmark_runs_and_reports_the_dead_fraction_curve(tmp_path: Path) -> None:
    import json

    from tests.embedding.conftest import write_image_dataset

    data = write_image_dataset(tmp_path / "obs.h5", 64)
    tiny = ["latent_dim=32", "k=4", "k_start=16", "k_anneal_epochs=1", "width=8", "depth=2", "max_width=16",
            "batch_size=16", "max_epochs=2", "block_rows=8", "aux_k=8", "val_fraction=0.2"]
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/embedding_objectives.py"), "--dataset", str(data),
         "--label", "toy", *[a for s in tiny + ["objective=infovae"] for a in ("--set", s)]],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["label"] == "toy" and len(result["dead_fraction_per_epoch"]) == 2, result
    assert 0 <= result["dead_fraction"] <= 1 and result["val_fve"] < 1, result
