"""Shared fixtures: the repository, a Snakemake runner, and the tiny study run once per session.

The workflow tests of every stage read the outputs of one run of the whole tiny study
(``tiny_study``), so the pipeline runs once per test session, not once per test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests/data/tiny.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


@dataclass
class SnakemakeResult:
    returncode: int
    output: str
    workdir: Path

    def job_counts(self) -> dict[str, int]:
        """The 'Job stats' table Snakemake prints before running."""
        counts: dict[str, int] = {}
        m = re.search(r"Job stats:\njob\s+count\n[- ]+\n(.*?)\n\s*total\s+(\d+)", self.output, re.S)
        if m:
            for line in m.group(1).splitlines():
                name, n = line.split()
                counts[name] = int(n)
        return counts


def run_snakemake(workdir: Path, *args: str, configfiles: tuple[Path | str, ...] = (TINY_CONFIG,),
                  timeout: int = 3600, cores: int = 2, env: dict[str, str] | None = None) -> SnakemakeResult:
    """Run the repository's workflow in ``workdir`` (outputs go there), under a hard timeout."""
    cmd = [
        "timeout", "-s", "KILL", str(timeout),
        SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--cores", str(cores), *args, "--configfile", *map(str, configfiles),
    ]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("SIMOBS_TRACKING_URI", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=workdir)
    return SnakemakeResult(proc.returncode, proc.stdout + proc.stderr, workdir)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> SnakemakeResult:
    """The whole tiny study run once (all stages), in a fresh folder."""
    workdir = tmp_path_factory.mktemp("tiny_study")
    # SIMOBS_TINY_TARGETS="file ..." runs only up to those targets (while developing a stage).
    result = run_snakemake(workdir, *os.environ.get("SIMOBS_TINY_TARGETS", "").split())
    log = workdir / "snakemake-output.txt"
    log.write_text(result.output)
    if result.returncode != 0:
        pytest.fail(f"the tiny study failed (exit {result.returncode}); output tail:\n{result.output[-6000:]}")
    return result


def copy_study(src: Path, dst: Path) -> Path:
    """Copy a finished study folder (raw data, results, Snakemake metadata) for a variant run."""
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("locks", "incomplete"))
    return dst


#: Figures the tests measured (jobs killed and recovered, files compared, writers), printed
#: in the run's terminal summary so that a CI log carries them (the README cites them).
_MEASURED: list[str] = []


@pytest.fixture
def measured():
    """``measured(line)`` records a measured figure for the end-of-run summary."""
    return _MEASURED.append


def pytest_terminal_summary(terminalreporter) -> None:
    if _MEASURED:
        terminalreporter.section("measured by the tests")
        for line in _MEASURED:
            terminalreporter.write_line(line)
