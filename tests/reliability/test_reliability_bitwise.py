"""Two runs of the tiny study from scratch give bit-identical results on CPU.

One run is the session's ``tiny_study``; the other starts from an empty folder.  The
named artefacts (datasets, embeddings, UMAP coordinates, classifier outputs, posteriors,
OOD flags) must exist and be equal bit for bit; every other data file under results/ is
compared as well, except those that record when, where or how long (listed below).
"""

from __future__ import annotations

import json
import re
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import run_snakemake

pytestmark = pytest.mark.slow

#: Must exist in both runs and be bit-identical (globs relative to the study folder).
REQUIRED = (
    "results/datasets/*.h5",              # ingested images
    "results/embeddings/*.h5",            # VAE embeddings, reconstruction errors, ELBOs
    "results/projection/umap.csv",        # UMAP coordinates
    "results/classifier/heldout_predictions.csv",
    "results/classifier/classifier.json",  # the trained booster itself
    "results/classifier/replicates.json",  # its replicates (the training variance of the intervals)
    "results/model_posterior/*.csv",      # per-galaxy and aggregate posteriors, Bayes factors
    "results/misspecification/scores.csv",  # OOD scores and flags per galaxy
    "results/misspecification/verdict.json",
)
DATA_SUFFIXES = {".h5", ".csv", ".tsv", ".json", ".txt", ".npy", ".npz"}
#: Not compared, and why: MLflow (times, run ids), logs and benchmarks (times), run ids.
SKIP_PARTS = {"tracking", "logs", "benchmarks"}
SKIP_SUFFIXES = {".run_id"}


def _h5_content(path: Path) -> dict[str, bytes | str]:
    """Every dataset's dtype, shape and raw bytes and every attribute: the content, not
    HDF5's layout (which may differ in free-space bookkeeping)."""
    out: dict[str, bytes | str] = {}
    with h5py.File(path, "r") as h5:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                data = np.asarray(obj[()])
                # Strings are objects: compare their values, not the pointers tobytes() gives.
                raw = repr(data.tolist()).encode() if data.dtype.kind == "O" else data.tobytes()
                out[name] = f"{obj.dtype}{obj.shape}".encode() + raw
            for key, value in obj.attrs.items():
                out[f"{name}@{key}"] = repr(value)
        visit("/", h5)
        h5.visititems(visit)
    return out


#: Wall-clock measurements inside result tables (a run's speed, not its result).
TIMING = re.compile(r"(_seconds|_wall_s|_per_s)$")


def _without_timings(path: Path) -> object:
    """A JSON file's or CSV table's content less its wall-clock fields (names matching TIMING)."""
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return {k: v for k, v in data.items() if not TIMING.search(k)} if isinstance(data, dict) else data
    import pandas as pd

    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return table.drop(columns=[c for c in table.columns if TIMING.search(c)]).to_dict("list")


def _pt_content(path: Path) -> object:
    """A torch file's content with every tensor as dtype, shape and raw bytes, less its
    wall-clock fields (a model file keeps its training history, epoch_seconds included)."""
    import torch

    def plain(value: object) -> object:
        if isinstance(value, torch.Tensor):
            return (str(value.dtype), tuple(value.shape), value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if not (isinstance(k, str) and TIMING.search(k))}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(torch.load(path, map_location="cpu", weights_only=False))


def same_content(a: Path, b: Path) -> bool:
    """Equal content: HDF5 files dataset by dataset (see _h5_content), others byte for byte,
    except that wall-clock fields of JSON and CSV tables and torch files (TIMING) are not
    compared."""
    if a.suffix == ".h5":
        return _h5_content(a) == _h5_content(b)
    if a.read_bytes() == b.read_bytes():
        return True
    if a.suffix == ".pt":
        return _pt_content(a) == _pt_content(b)
    return a.suffix in (".json", ".csv") and _without_timings(a) == _without_timings(b)


def _data_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in (root / "results").rglob("*")
            if p.is_file() and p.suffix in DATA_SUFFIXES and p.suffix not in SKIP_SUFFIXES
            and not SKIP_PARTS & set(p.relative_to(root).parts) and not p.name.startswith(".")}


def compare_studies(first: Path, second: Path) -> list[str]:
    """Assert the two study folders hold bit-identical results; returns the files compared."""
    for pattern in REQUIRED:
        matches = sorted(first.glob(pattern))
        assert matches, f"the tiny study made no {pattern}"
        for path in matches:
            rel = path.relative_to(first)
            assert (second / rel).exists(), f"{rel} missing in the second run"
            assert same_content(path, second / rel), f"{rel} differs between two runs from scratch"
    files = _data_files(first)
    assert files == _data_files(second)
    differ = sorted(f for f in files if not same_content(first / f, second / f))
    assert differ == [], f"data files that differ between two runs: {differ}"
    return sorted(files)


def test_two_runs_from_scratch_are_bit_identical(tiny_study, tmp_path, measured):
    second = run_snakemake(tmp_path, *os.environ.get("SIMOBS_TINY_TARGETS", "").split())
    assert second.returncode == 0, second.output[-6000:]
    files = compare_studies(tiny_study.workdir, tmp_path)
    measured(f"bitwise reruns: {len(files)} data files compared, all bit-identical: "
             + json.dumps(sorted({str(Path(f).parent) for f in files})))
