"""The SLURM profile against the real local cluster (tests/cluster/slurm-cluster.sh up).

Each test runs Snakemake through `--profile slurm --profile tests/cluster/profile` on a
tiny Snakefile and checks, through sacct and squeue, what SLURM did.  Skipped where SLURM
is not installed or the cluster is not running.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from slurm_helpers import CLUSTER_SCRIPT, TEST_ACCOUNT, SlurmCluster, submitted_job_ids

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# `train_embedding` is one of the GPU rules of slurm/config.yaml: its routing to the gpu
# partition and its GPU request come from the shipped profile, not from this file.
TWO_RULES = """
rule all:
    input: "cpu.txt", "gpu.txt"

rule cpu_step:
    output: "cpu.txt"
    shell: "echo partition=$SLURM_JOB_PARTITION > {output}"

rule train_embedding:
    input: "cpu.txt"
    output: "gpu.txt"
    shell: "echo partition=$SLURM_JOB_PARTITION cuda=$CUDA_VISIBLE_DEVICES > {output}"
"""


def wait_for_sacct(cluster: SlurmCluster, job_ids: list[str], timeout_s: float = 30) -> dict:
    """sacct rows of all jobs, waiting for slurmdbd to record their final state."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = cluster.sacct(job_ids)
        done = all(j in rows and rows[j]["State"] not in {"PENDING", "RUNNING"} for j in job_ids)
        if done or time.monotonic() > deadline:
            return rows
        time.sleep(1)


def test_cluster_script_up_is_idempotent(slurm_cluster):
    res = subprocess.run(["bash", str(CLUSTER_SCRIPT), "up"], env=slurm_cluster.env,
                         text=True, capture_output=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert "already up" in res.stderr


def test_cpu_and_gpu_rules_run_on_their_partitions(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(TWO_RULES)
    res = slurm_cluster.run_snakemake(tmp_path)
    assert res.returncode == 0, res.stdout[-4000:]
    jobs = submitted_job_ids(res.stdout)
    assert len(jobs) == 2, res.stdout[-4000:]
    cpu_job, gpu_job = jobs  # train_embedding needs cpu.txt, so it is submitted second
    rows = wait_for_sacct(slurm_cluster, jobs)
    assert rows[cpu_job]["Partition"] == "cpu"
    assert rows[gpu_job]["Partition"] == "gpu"
    assert {rows[j]["State"] for j in jobs} == {"COMPLETED"}
    # The account comes from the site file (tests/cluster/profile/site.yaml).
    assert {rows[j]["Account"] for j in jobs} == {TEST_ACCOUNT}
    assert "gres/gpu=1" in rows[gpu_job]["AllocTRES"]
    assert "gres/gpu" not in rows[cpu_job]["AllocTRES"]
    assert (tmp_path / "cpu.txt").read_text().strip() == "partition=cpu"
    # The dummy GPU: SLURM hands out device 0; nothing is behind it.
    assert (tmp_path / "gpu.txt").read_text().strip() == "partition=gpu cuda=0"


def test_gpu_rule_is_refused_at_submission_on_cluster_without_gpus(slurm_cluster_nogpu, tmp_path):
    (tmp_path / "Snakefile").write_text(TWO_RULES)
    (tmp_path / "cpu.txt").write_text("made before\n")  # only the GPU job is submitted
    res = slurm_cluster_nogpu.run_snakemake(tmp_path, "gpu.txt", timeout_s=120)
    assert res.returncode == 1, res.stdout[-4000:]
    assert "Error in rule train_embedding" in res.stdout
    assert "Invalid generic resource (gres) specification" in res.stdout
    assert submitted_job_ids(res.stdout) == []


def test_scancel_of_running_job_fails_the_run(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(
        'rule slow:\n    output: "slow.txt"\n    shell: "sleep 300; touch {output}"\n')
    log = tmp_path / "snakemake.log"
    proc = slurm_cluster.popen_snakemake(tmp_path, timeout_s=240, log=log)
    try:
        job = None
        deadline = time.monotonic() + 90
        while job is None and time.monotonic() < deadline and proc.poll() is None:
            ids = submitted_job_ids(log.read_text())
            if ids and slurm_cluster.slurm("squeue", "-h", "-j", ids[0], "-o", "%T").strip() == "RUNNING":
                job = ids[0]
            else:
                time.sleep(1)
        assert job is not None, f"job never ran:\n{log.read_text()[-4000:]}"
        slurm_cluster.slurm("scancel", job)
        rc = proc.wait(timeout=230)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    # 137 would mean `timeout` killed a run that never noticed the cancellation.
    assert rc == 1, out[-4000:]
    assert f"SLURM-job '{job}' failed, SLURM status is: 'CANCELLED'" in out
    assert not (tmp_path / "slow.txt").exists()
    assert wait_for_sacct(slurm_cluster, [job])[job]["State"].startswith("CANCELLED")
