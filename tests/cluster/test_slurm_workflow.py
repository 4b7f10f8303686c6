"""The real workflow (the tiny study) on the local SLURM cluster, through the shipped profile.

One chained scenario in one work directory, because a full run of the tiny study
through SLURM takes about ten minutes on the 2-CPU test node.  Every step runs
``snakemake --profile slurm --profile tests/cluster/profile`` (the shipped profile, the
test layer and the test cluster's site file) on ``tests/data/tiny.yaml`` plus
``tests/cluster/tiny-cluster.yaml`` (fewer epochs, the smallest separation settings):

(a) the data rules (demo generation, indexing, ingestion) of every source, on the
    controller with the GPU: CPU jobs on the ``cpu`` partition.  They cannot run on the
    GPU-less controller: that one has no ``slurmd``, so its jobs would pend forever;
(b) the embedding targets on the GPU-less controller: ``train_embedding`` is refused at
    submission with a clear error, nothing else is submitted, and the datasets stay
    complete and up to date;
(c) the same targets with the GPU: ``train_embedding`` is cancelled with ``scancel`` as
    soon as it has written its first per-epoch checkpoint; the run fails and leaves no
    complete-looking output (no model, no run id);
(d) the whole study: it finishes, ``train_embedding`` resumes from the checkpoint of
    (c), every job is a SLURM job on the right partition, and every MLflow job run
    carries the SLURM job id that sacct knows.

The steps are module-scoped fixtures, each checked by its own test, so a failure names
the step that broke.  The GPU on the test cluster is a dummy (CUDA_VISIBLE_DEVICES=0 and
nothing behind it): the GPU rules run on the CPU, as the workflow does wherever torch
sees no usable GPU.

``test_quickstart_runs_as_written`` runs the quick-start block of the README's cluster
section (or of docs/cluster.md until the README has it) in a copy of the working tree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from slurm_helpers import (
    REPO,
    TEST_ACCOUNT,
    TEST_SITE,
    SlurmCluster,
    snakemake_job_counts,
    submitted_jobs,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TINY_CONFIG = REPO / "tests" / "data" / "tiny.yaml"
CLUSTER_LAYER = REPO / "tests" / "cluster" / "tiny-cluster.yaml"
#: The study's rules that slurm/config.yaml sends to the GPU partition with a GPU.
GPU_RULES = frozenset({"train_embedding", "embed", "train_score_model", "separate"})
#: The opt-in target `blind`'s GPU rules (issue #15).
BLIND_GPU_RULES = frozenset({"train_blind_score_model", "blind_separate"})
BLIND_LAYER = REPO / "tests" / "cluster" / "tiny-blind.yaml"
#: The rules that make results/datasets/<source>.h5: the demo universe, the SDSS-frame
#: cutouts of the observed survey, the realism stage of the TNG-layout model, ingestion.
OBSERVED_DATA_RULES = frozenset({"make_demo_source", "frame_index", "cutout_plan", "cutout_shard",
                                 "ingest_shard", "ingest_merge"})
DATA_RULES = OBSERVED_DATA_RULES | {"index_source", "realism"}
CHECKPOINT = Path("results/embedding/checkpoints/last.pt")
TRAIN_LOG = Path("results/logs/train_embedding.log")
#: What a finished train_embedding job leaves (a subset of its outputs).
EMBEDDING_OUTPUTS = tuple(Path("results/embedding") / f for f in
                          ("model.pt", "model.json", "metrics.json", "train_embedding.run_id"))


def _tiny_study() -> tuple[str, dict[str, int], int]:
    """The tiny study's name, ``{source: images expected}`` and the training epochs."""
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    tiny = yaml.safe_load(TINY_CONFIG.read_text())
    layer = yaml.safe_load(CLUSTER_LAYER.read_text())
    demo = {**base["demo"], **tiny.get("demo", {}), **layer.get("demo", {})}
    sources = layer.get("sources") or tiny.get("sources") or base["sources"]
    per_source = {
        s["name"]: (demo["n_observed"] if s["kind"] == "observation"
                    else demo["n_galaxies_per_model"] * demo["n_projections"])
        for s in sources
    }
    epochs = layer.get("embedding", {}).get("max_epochs") or base["embedding"]["max_epochs"]
    return layer.get("study") or tiny["study"], per_source, int(epochs)


STUDY, SOURCE_IMAGES, MAX_EPOCHS = _tiny_study()
DATASETS = tuple(f"results/datasets/{s}.h5" for s in SOURCE_IMAGES)
EMBEDDING_TARGETS = ("results/embedding/model.pt",
                     *(f"results/embeddings/{s}.h5" for s in SOURCE_IMAGES))


@dataclass
class Step:
    """One Snakemake run of the scenario.

    Attributes:
        returncode: Snakemake's exit status (137: killed by the timeout).
        output: Its merged stdout and stderr (also in ``<workdir>/snakemake-<name>.txt``).
        jobs: ``{SLURM job id: rule}`` of the jobs it submitted.
        cancelled_job: (c) only: the train_embedding job that was cancelled.
        cancel_error: (c) only: scancel's error, where the job had ended before it.
        checkpoint_epoch: (c) only: completed epochs in the checkpoint it left.
    """

    returncode: int
    output: str
    jobs: dict[str, str]
    cancelled_job: str | None = None
    cancel_error: str = ""
    checkpoint_epoch: int | None = None

    def tail(self, n: int = 6000) -> str:
        return self.output[-n:]


def _args(workdir: Path, *targets: str) -> tuple[str, ...]:
    # Targets before --configfile, which takes every following word as a file.
    return (*targets, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(TINY_CONFIG), str(CLUSTER_LAYER))


def _run(cluster: SlurmCluster, workdir: Path, name: str, *targets: str, timeout_s: int,
         layers: tuple[Path, ...] = ()) -> Step:
    args = (*_args(workdir, *targets), *map(str, layers))
    res = cluster.run_snakemake(workdir, *args, timeout_s=timeout_s)
    (workdir / f"snakemake-{name}.txt").write_text(res.stdout)
    return Step(res.returncode, res.stdout, submitted_jobs(res.stdout))


def _require(step: Step, what: str) -> None:
    """Stop a later step whose precondition an earlier step did not establish."""
    if step.returncode != 0:
        pytest.fail(f"precondition failed: {what} (exit {step.returncode}); see that step's test")


def _job_processes(workdir: Path, rule: str) -> list[str]:
    """Command lines of live processes that run ``rule``'s script for ``workdir``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(workdir) in cmd and f"{rule}.py" in cmd:
            found.append(cmd)
    return found


# --------------------------------------------------------------------------- the scenario


@pytest.fixture(scope="module")
def cluster(slurm_cluster: SlurmCluster) -> SlurmCluster:
    """The GPU cluster; runs track into the work directory (as the workflow tests do)."""
    return slurm_cluster.with_env(drop=("SIMOBS_TRACKING_URI",), PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slurm_study")


@pytest.fixture(scope="module")
def datasets_step(cluster: SlurmCluster, workdir: Path) -> Step:
    """(a) Every source's dataset, through SLURM."""
    return _run(cluster, workdir, "a-datasets", *DATASETS, timeout_s=1500)


@pytest.fixture(scope="module")
def refused_step(cluster: SlurmCluster, workdir: Path, datasets_step: Step) -> Iterator[Step]:
    """(b) The embedding targets on the controller without GPUs."""
    # Without the datasets, CPU jobs would be submitted to a controller with no node.
    _require(datasets_step, "(a) made the datasets")
    nogpu = cluster.nogpu
    step = _run(nogpu, workdir, "b-nogpu", *EMBEDDING_TARGETS, timeout_s=300)
    yield step
    for job in step.jobs:  # nothing should be there; never leave a job pending forever
        subprocess.run(["scancel", job], env=nogpu.env, check=False, timeout=30)


@pytest.fixture(scope="module")
def cancelled_step(cluster: SlurmCluster, workdir: Path, refused_step: Step) -> Step:
    """(c) The embedding targets with the GPU; train_embedding cancelled after a checkpoint."""
    from simobs.embedding.checkpoint import load_checkpoint

    log = workdir / "snakemake-c-scancel.txt"
    proc = cluster.popen_snakemake(workdir, *_args(workdir, *EMBEDDING_TARGETS),
                                   timeout_s=600, log=log)
    job = None
    cancel_error = ""
    try:
        deadline = time.monotonic() + 580
        while proc.poll() is None and time.monotonic() < deadline:
            train = [j for j, r in submitted_jobs(log.read_text()).items() if r == "train_embedding"]
            # Poll fast: the job is cancelled between its first checkpoint and its end
            # (the remaining epochs, statistics and figures: several seconds at least).
            if train and (workdir / CHECKPOINT).is_file():
                job = train[0]
                try:
                    cluster.slurm("scancel", job)
                except RuntimeError as exc:  # the job had ended already
                    cancel_error = str(exc)
                break
            time.sleep(0.1)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            # SIGTERM reaches Snakemake through `timeout`, and Snakemake cancels its
            # SLURM jobs; SIGKILL would stop only `timeout`.
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    output = log.read_text()
    state = load_checkpoint(workdir / CHECKPOINT)
    return Step(rc, output, submitted_jobs(output), cancelled_job=job, cancel_error=cancel_error,
                checkpoint_epoch=None if state is None else int(state["epoch"]))


@pytest.fixture(scope="module")
def rerun_step(cluster: SlurmCluster, workdir: Path, cancelled_step: Step) -> Step:
    """(d) The whole study (the default target), after the cancellation."""
    return _run(cluster, workdir, "d-rerun", timeout_s=2700)


@pytest.fixture(scope="module")
def blind_step(cluster: SlurmCluster, workdir: Path, rerun_step: Step) -> Step:
    """(g) The opt-in blind separation (`snakemake blind`) at its smallest, after the study."""
    _require(rerun_step, "the whole study ran through SLURM")
    return _run(cluster, workdir, "g-blind", "blind", timeout_s=1500, layers=(BLIND_LAYER,))


# --------------------------------------------------------------------------- checks


def _assert_every_job_on_slurm(cluster: SlurmCluster, step: Step) -> None:
    """Each job Snakemake ran was submitted to SLURM, completed, on its partition."""
    counts = snakemake_job_counts(step.output)
    counts.pop("all", None)  # the target rules have no action: nothing to run
    counts.pop("blind", None)
    assert counts, step.tail()
    assert Counter(step.jobs.values()) == Counter(counts), (counts, step.jobs)
    rows = cluster.wait_for_sacct(list(step.jobs))
    for job, rule in step.jobs.items():
        row = rows.get(job)
        assert row is not None, f"sacct does not know job {job} ({rule})"
        assert row["State"] == "COMPLETED", (rule, row)
        assert row["Account"] == TEST_ACCOUNT, (rule, row)
        if rule in GPU_RULES | BLIND_GPU_RULES:
            assert row["Partition"] == "gpu", (rule, row)
            assert "gres/gpu=1" in row["AllocTRES"], (rule, row)
        else:
            assert row["Partition"] == "cpu", (rule, row)
            assert "gres/gpu" not in row["AllocTRES"], (rule, row)


def test_a_data_rules_run_as_slurm_jobs_on_cpu_partition(cluster, datasets_step):
    assert datasets_step.returncode == 0, datasets_step.tail()
    assert set(datasets_step.jobs.values()) == DATA_RULES, datasets_step.jobs
    _assert_every_job_on_slurm(cluster, datasets_step)


def test_b_gpu_rule_is_refused_at_submission_without_gpus(cluster, workdir, refused_step):
    out = refused_step.output
    # 1: a failed job; 137 would mean a run left waiting for a job that never ran.
    assert refused_step.returncode == 1, refused_step.tail()
    assert "Error in rule train_embedding" in out, refused_step.tail()
    assert "Invalid generic resource (gres) specification" in out, refused_step.tail()
    assert refused_step.jobs == {}, "nothing may be submitted on the cluster without GPUs"
    for path in (*EMBEDDING_OUTPUTS, CHECKPOINT.parent):
        assert not (workdir / path).exists(), f"{path} left by a job that never ran"

    # The rest of the workflow is not corrupted: the datasets are complete and readable,
    # and Snakemake still sees them as finished and up to date.
    from simobs.data.dataset import read_info

    for name, expected in SOURCE_IMAGES.items():
        path = workdir / "results" / "datasets" / f"{name}.h5"
        info = read_info(path)
        assert info.source == name
        assert info.n_images + info.n_rejected == expected, (name, info)
        with h5py.File(path, "r") as h5:
            images = h5["images"][:]
            assert images.shape[0] == info.n_images == len(h5["ids"]), name
            assert np.isfinite(images).all(), name
    assert not list((workdir / ".snakemake" / "locks").glob("*")), "a lock was left behind"
    dry = cluster.run_snakemake(workdir, *_args(workdir, *DATASETS), "-n", timeout_s=300)
    assert dry.returncode == 0, dry.stdout[-4000:]
    assert "Nothing to be done" in dry.stdout, dry.stdout[-4000:]


def test_c_cancelled_training_leaves_no_complete_output(cluster, workdir, cancelled_step):
    job = cancelled_step.cancelled_job
    assert job is not None, f"train_embedding never wrote a checkpoint:\n{cancelled_step.tail()}"
    assert not cancelled_step.cancel_error, (
        "train_embedding ended between its first checkpoint and the scancel; raise "
        f"embedding.max_epochs in {CLUSTER_LAYER.name}: {cancelled_step.cancel_error}")
    assert cancelled_step.returncode == 1, cancelled_step.tail()
    assert f"SLURM-job '{job}' failed, SLURM status is: 'CANCELLED'" in cancelled_step.output
    # Only the training ran: the datasets of (a) were reused.
    assert set(cancelled_step.jobs.values()) == {"train_embedding"}, cancelled_step.jobs
    for path in EMBEDDING_OUTPUTS:
        assert not (workdir / path).exists(), f"{path} exists after the job was cancelled"
    assert cancelled_step.checkpoint_epoch is not None and cancelled_step.checkpoint_epoch >= 1
    assert cluster.wait_for_sacct([job])[job]["State"].startswith("CANCELLED")
    # proctrack/linuxproc kills the job's process tree: no training outlives the job.
    assert _job_processes(workdir, "train_embedding") == []


def test_d_rerun_finishes_and_training_resumes_from_checkpoint(workdir, cancelled_step, rerun_step):
    assert rerun_step.returncode == 0, rerun_step.tail()
    assert "train_embedding" in rerun_step.jobs.values(), rerun_step.jobs
    # Neither the refused submission nor the cancellation made Snakemake redo the data.
    assert not DATA_RULES & set(rerun_step.jobs.values()), rerun_step.jobs
    epoch = cancelled_step.checkpoint_epoch
    log = (workdir / TRAIN_LOG).read_text()
    assert re.search(rf"resuming from checkpoint \S+: {epoch} of at most {MAX_EPOCHS} epochs done",
                     log), log[-3000:]
    metrics = json.loads((workdir / "results" / "embedding" / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == epoch


def test_e_every_job_of_the_rerun_is_a_slurm_job_on_its_partition(cluster, rerun_step):
    assert GPU_RULES <= set(rerun_step.jobs.values()), rerun_step.jobs
    _assert_every_job_on_slurm(cluster, rerun_step)


def test_g_blind_separation_runs_through_the_cluster_profile(cluster, workdir, blind_step):
    """Issue #15: `snakemake blind --profile slurm`: every rule of the target a SLURM job, the
    score model's training and the sampling shards on the GPU partition, the metrics written."""
    assert blind_step.returncode == 0, blind_step.tail()
    assert set(blind_step.jobs.values()) == {"cmb_spectra_grid", "train_blind_score_model", "blind_observations",
                                             "blind_separate", "evaluate_blind"}, blind_step.jobs
    assert BLIND_GPU_RULES <= set(blind_step.jobs.values())
    _assert_every_job_on_slurm(cluster, blind_step)
    metrics = json.loads((workdir / "results" / "separation" / "blind" / "metrics.json").read_text())
    assert metrics["n_observations"] == 4 and np.isfinite(metrics["rhat_median_H0"])


def test_f_mlflow_runs_carry_the_slurm_job_ids(workdir, datasets_step, cancelled_step, rerun_step, blind_step):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'results' / 'tracking' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(STUDY)
    assert exp is not None, f"no MLflow experiment {STUDY!r}"
    # Job runs carry the rule (the summary's run is re-tagged simobs.kind=summary); the
    # invocation runs of the snakemake processes on the submit host carry none.
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=5000)
            if "simobs.rule" in r.data.tags]
    assert runs, "no MLflow job runs"
    # The blind target's jobs (g) log to the same experiment; taking its fixture here makes
    # the check independent of the order pytest runs f and g in.
    rule_of = {**datasets_step.jobs, **cancelled_step.jobs, **rerun_step.jobs, **blind_step.jobs}
    by_job: dict[str, list] = {}
    for run in runs:
        tags = run.data.tags
        job = tags.get("slurm_job_id", "")
        # Every job ran under SLURM: no run without a job id, none from elsewhere.
        assert job in rule_of, (run.info.run_id, tags.get("simobs.rule"), job)
        assert tags["simobs.rule"] == rule_of[job], (job, tags["simobs.rule"], rule_of[job])
        by_job.setdefault(job, []).append(run)
    for job, rule in {**datasets_step.jobs, **rerun_step.jobs, **blind_step.jobs}.items():
        finished = [r for r in by_job.get(job, []) if r.info.status == "FINISHED"]
        assert len(finished) == 1, f"job {job} ({rule}): {len(finished)} finished MLflow runs"
    # The cancelled training's run never finished (its run id file was never written).
    cancelled = by_job.get(cancelled_step.cancelled_job or "", [])
    assert cancelled and all(r.info.status != "FINISHED" for r in cancelled)


# --------------------------------------------------------------------------- the README


def _quickstart() -> tuple[Path, str]:
    """The first ```bash block of the README's "Running on a SLURM cluster" section.

    Falls back to docs/cluster.md (the section's source) while the README lacks it.
    """
    for doc in (REPO / "README.md", REPO / "docs" / "cluster.md"):
        text = doc.read_text() if doc.is_file() else ""
        section = re.search(r"^## Running on a SLURM cluster\s*\n(.*?)(?=^## |\Z)", text, re.S | re.M)
        if section:
            block = re.search(r"^```bash\n(.*?)^```", section.group(1), re.S | re.M)
            assert block, f"{doc}: the cluster section has no ```bash block"
            return doc, block.group(1)
    pytest.fail("neither README.md nor docs/cluster.md has a '## Running on a SLURM cluster' section")


def _copy_working_tree(dst: Path) -> None:
    """Tracked and untracked-but-not-ignored files: what a fresh clone would hold, plus
    the work not committed yet (results, the venv and slurm/site.yaml stay behind)."""
    files = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file() or src.is_symlink():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name, follow_symlinks=False)


def test_quickstart_runs_as_written(slurm_cluster, tmp_path):
    """The quick-start commands, run unchanged by bash in a copy of the repository.

    What stands in for the user, and why:

    * ``$EDITOR`` is a script that writes the test cluster's values (account, partitions,
      small limits: tests/cluster/profile/site.yaml) into the ``slurm/site.yaml`` the
      block has just copied, as a user fills in their cluster's values.  No
      SIMOBS_SLURM_SITE is set, so the profile must find ``slurm/site.yaml`` by itself.
    * The environment is a login shell's (PATH with the project's environment first,
      HOME, USER) plus ``SLURM_CONF``, which on a real cluster is the site's
      /etc/slurm/slurm.conf; nothing else.
    * ``snakemake`` is a shell function that appends arguments to what the block runs:
      ``--profile tests/cluster/profile`` (the doc's own way to layer a second profile:
      the first status check after 2 s instead of 40 s), the tiny config and one small
      target, ``results/datasets/sdss_demo.h5``.  The whole demo study would take hours
      on the test node; the profile, the site file and the submission are what the
      quick-start is about, and those are exercised unchanged.
    """
    doc, block = _quickstart()
    assert re.search(r"^snakemake --profile slurm\b", block, re.M), f"{doc}: quick-start changed:\n{block}"
    tree = tmp_path / "simobs"
    tree.mkdir()
    _copy_working_tree(tree)
    editor = tmp_path / "editor.sh"
    editor.write_text(f'#!/bin/sh\ncat "{TEST_SITE}" > "$1"\n')
    editor.chmod(0o755)
    calls = tmp_path / "snakemake-calls.txt"
    prelude = f"""set -euo pipefail
snakemake() {{
    echo "snakemake $*" >> "{calls}"
    timeout -s KILL 900 snakemake "$@" --profile tests/cluster/profile \\
        results/datasets/sdss_demo.h5 --configfile tests/data/tiny.yaml
}}
"""
    env = {k: os.environ[k] for k in ("HOME", "USER", "LOGNAME", "LANG") if k in os.environ}
    env.update(PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               EDITOR=str(editor), SLURM_CONF=str(slurm_cluster.slurm_conf), PYTHONUNBUFFERED="1")
    res = subprocess.run(["timeout", "-s", "KILL", "1000", "bash", "-c", prelude + block],
                         cwd=tree, env=env, text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, check=False)
    (tmp_path / "quickstart-output.txt").write_text(res.stdout)
    assert res.returncode == 0, f"{doc} quick-start failed:\n{res.stdout[-6000:]}"
    assert "snakemake --profile slurm" in calls.read_text()
    assert (tree / "slurm" / "site.yaml").read_text() == TEST_SITE.read_text()
    assert (tree / "results" / "datasets" / "sdss_demo.h5").is_file()
    jobs = submitted_jobs(res.stdout)
    assert set(jobs.values()) == OBSERVED_DATA_RULES, jobs  # the observed survey only: cut from frames
    rows = slurm_cluster.wait_for_sacct(list(jobs))
    for job, rule in jobs.items():
        # The account and the partition come only from slurm/site.yaml.
        assert rows[job]["State"] == "COMPLETED", (rule, rows.get(job))
        assert rows[job]["Account"] == TEST_ACCOUNT, (rule, rows[job])
        assert rows[job]["Partition"] == "cpu", (rule, rows[job])
