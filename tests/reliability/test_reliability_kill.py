"""Kill anywhere: SIGKILL one job of each rule at a random moment inside its work, rerun.

On a copy of the finished tiny study, for every rule Snakemake lists (its rule graph,
so rules added later are covered without editing this file), downstream rules first:

1. force one job of the rule (`--forcerun RULE <one of its outputs>`), wait until the
   job's script is running, then SIGKILL Snakemake and the job together (what a node
   failure or an out-of-memory kill does) at a random moment of the job's run time;
2. check that nothing the job left looks complete: a dry run must either plan the job
   again or stop on Snakemake's incomplete-files check;
3. rerun (`--unlock`, then the target; `--rerun-incomplete` where Snakemake asks for it)
   and check every data output of the rule equals the uninterrupted run's, bit for bit.

Downstream rules first, so that rerunning a job never makes a rule still to be tested
out of date.  Each rule's run time is read from its benchmark file where it has one.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from test_reliability_bitwise import DATA_SUFFIXES, same_content
from tests.conftest import REPO, SNAKEMAKE, TINY_CONFIG, copy_study, run_snakemake

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("SIMOBS_KILL_SEED", "17"))
#: SIMOBS_KILL_RULES="rule,rule" limits the test to those rules (while developing a rule).
ONLY = [r for r in os.environ.get("SIMOBS_KILL_RULES", "").split(",") if r]


def rule_order(workdir: Path) -> list[str]:
    """The workflow's rules, downstream first (from `snakemake --rulegraph`)."""
    res = run_snakemake(workdir, "--rulegraph", "--forceall")
    assert res.returncode == 0, res.output[-3000:]
    names = dict(re.findall(r'^\s*(\d+)\[label = "([A-Za-z_0-9]+)"', res.output, re.M))
    edges = [(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", res.output, re.M)]
    rules = [r for r in names.values() if r != "all"]
    order: list[str] = []
    downstream = {r: {b for a, b in edges if a == r and b != "all"} for r in rules}
    while len(order) < len(rules):  # a rule whose downstream rules are all placed goes next
        ready = sorted(r for r in rules if r not in order and downstream[r] <= set(order))
        assert ready, f"cycle in the rule graph: {edges}"
        order.extend(ready)
    return order


def rule_outputs(workdir: Path) -> dict[str, list[str]]:
    """Output files of each rule (`snakemake --summary`; temporary ones included)."""
    res = run_snakemake(workdir, "--summary")
    assert res.returncode == 0, res.output[-3000:]
    out: dict[str, list[str]] = {}
    for line in res.output.splitlines():
        cols = line.split("\t")
        if len(cols) >= 3 and cols[0] != "output_file" and re.fullmatch(r"[A-Za-z_]\w*", cols[2]):
            out.setdefault(cols[2], []).append(cols[0])
    return out


def run_time(workdir: Path, rule: str) -> float:
    """Seconds the rule's jobs took in the uninterrupted run (benchmark files), else 5."""
    times = []
    for tsv in (workdir / "results" / "benchmarks").glob(f"{rule}/**/*.tsv"):
        rows = tsv.read_text().splitlines()
        if len(rows) > 1:
            times.append(float(rows[1].split("\t")[0]))
    return max(times) if times else 5.0


def _job_script(proc: psutil.Process) -> psutil.Process | None:
    for child in proc.children(recursive=True):
        try:
            if any(".snakemake/scripts/" in part for part in child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def kill_inside(workdir: Path, rule: str, target: str, delay: float) -> str:
    """Start the forced job, SIGKILL Snakemake and the job ``delay`` s after the rule's
    script started.  Returns ``killed`` or ``finished`` (the job ended before the moment).

    Upstream jobs the target needs again (temporary outputs) run first; the rule's own
    job is the one running once Snakemake has printed ``rule <name>:``.
    """
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2",
           target, "--forcerun", rule, "--configfile", str(TINY_CONFIG)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SIMOBS_TRACKING_URI", None)
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    started = threading.Event()

    def watch() -> None:
        for line in proc.stdout:
            if re.match(rf"^(local)?rule {rule}:", line):
                started.set()

    threading.Thread(target=watch, daemon=True).start()
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 600
    script = None
    while script is None and proc.poll() is None and time.monotonic() < deadline:
        if started.is_set():
            script = _job_script(parent)
        time.sleep(0.05)
    if script is None:
        proc.wait(timeout=300)
        return "finished"
    time.sleep(delay)
    if proc.poll() is not None or not script.is_running():
        proc.wait(timeout=60)
        return "finished"
    victims = [parent, *parent.children(recursive=True)]
    os.killpg(proc.pid, signal.SIGKILL)
    for p in victims:
        with_suppress(p.kill)
    proc.wait(timeout=60)
    return "killed"


def with_suppress(fn) -> None:
    try:
        fn()
    except psutil.Error:
        pass


def _data_files(root: Path, outputs: list[str]) -> list[str]:
    files = []
    for out in outputs:
        path = root / out
        members = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path][: path.is_file()]
        files += [str(p.relative_to(root)) for p in members  # temporary outputs are gone: not compared
                  if p.suffix in DATA_SUFFIXES | {".fits", ".pt"} and not p.name.startswith(".")]
    return files


def test_kill_one_job_of_each_rule_and_recover(tiny_study, tmp_path, measured):
    reference = tiny_study.workdir
    work = copy_study(reference, tmp_path / "study")
    order, outputs = rule_order(work), rule_outputs(work)
    if ONLY:
        assert set(ONLY) <= set(order), f"SIMOBS_KILL_RULES names rules the workflow lacks: {ONLY}"
        order = [r for r in order if r in ONLY]
    rng = random.Random(SEED)
    report: list[str] = []
    killed = 0
    for rule in order:
        assert outputs.get(rule), f"rule {rule}: no outputs listed by snakemake --summary"
        target = rng.choice(sorted(outputs[rule]))
        delay = rng.uniform(0.05, 0.95) * run_time(reference, rule)
        for _ in range(4):  # a job faster than the chosen moment: try an earlier one
            outcome = kill_inside(work, rule, target, delay)
            if outcome == "killed":
                break
            delay /= 3
        assert outcome == "killed", f"rule {rule}: the job always finished before the kill"
        killed += 1

        assert run_snakemake(work, "--unlock").returncode == 0
        dry = run_snakemake(work, target, "-n")
        asks_incomplete = dry.returncode != 0 and "--rerun-incomplete" in dry.output
        assert asks_incomplete or dry.job_counts().get(rule), (
            f"rule {rule}: after a SIGKILL at {delay:.2f} s its outputs look complete:\n{dry.output[-3000:]}")
        rerun = run_snakemake(work, target, *(["--rerun-incomplete"] if asks_incomplete else []))
        assert rerun.returncode == 0, f"rule {rule}: the rerun failed:\n{rerun.output[-4000:]}"

        files = _data_files(reference, outputs[rule])
        differ = [f for f in files if not (work / f).exists() or not same_content(reference / f, work / f)]
        assert differ == [], f"rule {rule}: outputs differ from the uninterrupted run after recovery: {differ}"
        report.append(f"{rule}: killed at {delay:.2f} s, {'--rerun-incomplete' if asks_incomplete else 'rerun'}, "
                      f"{len(files)} data files equal")
    assert killed == len(order)
    measured(f"kill anywhere: {killed} jobs killed and recovered (seed {SEED}):\n  " + "\n  ".join(report))
