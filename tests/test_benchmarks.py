"""The benchmark scripts still run (at toy sizes); their numbers are read by people, not asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_separation_map_size_benchmark_runs_and_reports_ratios() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/separation_map_size.py"), "--sizes", "16", "32",
         "--maps", "32", "--observations", "1"],
        capture_output=True, text=True, timeout=900, check=True,
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()[:2] in ("16", "32")]
    assert [r[0] for r in rows] == ["16", "32"], out
    assert rows[0][2] == "1.00" and rows[0][4] == "1.00", out  # the first size is the baseline
    assert all(float(r[1]) > 0 and float(r[3]) > 0 for r in rows), out


def test_suite_prints_a_table_and_writes_json_with_ratios_and_the_machine(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/run.py"), "--quick", "--only", "ood", "encode", "demo",
         "--json", str(out_json)],
        capture_output=True, text=True, timeout=900, check=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    result = json.loads(out_json.read_text())
    assert result["machine"]["cpus"] >= 1 and "load_average_start" in result["machine"]
    rows = {r["name"]: r for r in result["rows"]}
    ood = [r for r in result["rows"] if r["item"] == "6 ood"]
    assert len(ood) == 6, proc.stdout
    exact = [r for r in ood if "new (float32" in r["name"]]
    assert len(exact) == 3 and all(r["value"] > 0 and r["ratio"] > 0 for r in exact)
    assert all("flags differing at the 95% quantile: 0" in r["note"] for r in exact), proc.stdout  # exact path
    assert "exact, extrapolated" in ood[3]["name"] and ood[3]["value"] > exact[-1]["value"]
    # the IVF index against the exact score on the same queries: its flags are the exact ones
    index = ood[4]
    assert "index (ivf)" in index["name"] and index["ratio"] > 0, proc.stdout
    assert "flags differing: 0 of" in index["note"] and "'fell_back': False" in index["note"], proc.stdout
    assert "index, extrapolated" in ood[5]["name"] and ood[5]["value"] > index["value"]
    assert rows["encode, batch 64, CPU"]["value"] > 0
    assert any("GPU" in name and "skipped" in r["note"] for name, r in rows.items()) or result["machine"]["gpu"]
    assert "6 ood" in proc.stdout and "machine:" in proc.stdout  # the printed table


def test_training_loader_and_ingestion_rows_measure_against_their_baselines(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/run.py"), "--quick", "--only", "train", "loader", "ingest",
         "--json", str(out_json)],
        capture_output=True, text=True, timeout=900, check=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    rows = {(r["item"], r["name"]): r for r in json.loads(out_json.read_text())["rows"]}
    by_item: dict[str, list] = {}
    for (item, _), r in rows.items():
        by_item.setdefault(item, []).append(r)
    assert len(by_item["4 train"]) >= 2 and all(r["value"] > 0 for r in by_item["4 train"][:2]), proc.stdout
    loader, consume, fed = by_item["3 loader"]
    assert loader["value"] > 0 and consume["value"] > 0
    assert abs(loader["ratio"] - loader["value"] / consume["value"]) < 1e-9 * loader["ratio"]  # a ratio of this run
    assert fed["ratio"] is not None and 0.3 < fed["value"] < 5, proc.stdout  # same steps, same batches
    ingest = by_item["2 ingest"]
    assert len(ingest) == 9, proc.stdout  # cube files, realism, cutouts: naive loop, 1 process, 2 shard jobs
    for naive, one, two in (ingest[0:3], ingest[3:6], ingest[6:9]):
        assert naive["value"] > 0 and one["ratio"] > 0 and two["ratio"] > 0, proc.stdout
        assert abs(one["ratio"] - one["value"] / naive["value"]) < 1e-9 * one["ratio"]  # the same files, this run
        assert two["baseline"].endswith("1 process") and two["unit"] == one["unit"]
    assert "60 files" in ingest[0]["note"]  # 20 galaxies x 3 projections of the demo's int16 cubes
    assert "20 TNG SKIRT" in ingest[3]["note"] and ingest[3]["name"].startswith("realism:")  # 10 galaxies x 2
    assert "20 catalogue rows" in ingest[6]["note"] and ingest[7]["unit"] == "galaxies/s/core"


def test_dry_run_benchmark_runs_both_routes_and_reports_ratios() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/dry_run_scaling.py"), "--sizes", "20"],
        capture_output=True, text=True, timeout=600, check=True,
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["files"], ["catalogue"])]
    assert [r[0] for r in rows] == ["files", "catalogue"], out
    assert rows[0][4] == "1.00" and float(rows[1][3]) > 0, out


def test_embedding_objectives_benchmark_runs_and_reports_the_dead_fraction_curve(tmp_path: Path) -> None:
    import json

    from tests.embedding.conftest import write_image_dataset

    data = write_image_dataset(tmp_path / "obs.h5", 64)
    tiny = ["latent_dim=32", "k=4", "k_start=16", "k_anneal_epochs=1", "width=8", "depth=2", "max_width=16",
            "batch_size=16", "max_epochs=2", "block_rows=8", "aux_k=8", "val_fraction=0.2"]
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/embedding_objectives.py"), "--dataset", str(data),
         "--label", "toy", *[a for s in tiny + ["objective=infovae"] for a in ("--set", s)]],
        capture_output=True, text=True, timeout=900, check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["label"] == "toy" and len(result["dead_fraction_per_epoch"]) == 2, result
    assert 0 <= result["dead_fraction"] <= 1 and result["val_fve"] < 1, result
