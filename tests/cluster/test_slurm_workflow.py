"""The real workflow on the local SLURM cluster, through the shipped profile.

Runs the tiny study's path to one source's embeddings (demo images, ingestion,
`train_embedding`, `embed`) with `snakemake --profile slurm --profile
tests/cluster/profile` and checks through sacct that the GPU rules went to the gpu
partition with a GPU and everything else to the cpu partition.  The GPU on the test
cluster is a dummy: the jobs see CUDA_VISIBLE_DEVICES=0 and must fall back to the CPU.
"""

from __future__ import annotations

import time

import pytest

from slurm_helpers import REPO, TEST_ACCOUNT, submitted_job_ids

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TINY_CONFIG = REPO / "tests" / "data" / "tiny.yaml"
OBSERVED = "sdss_demo"  # the tiny study's observation source
GPU_RULES = {"train_embedding", "embed"}


def test_embedding_path_runs_on_the_cluster(slurm_cluster, tmp_path):
    env = dict(slurm_cluster.env)
    env.pop("SIMOBS_TRACKING_URI", None)  # track into the run directory, as the workflow tests do
    cluster = type(slurm_cluster)(state_dir=slurm_cluster.state_dir,
                                  slurm_conf=slurm_cluster.slurm_conf, env=env)
    target = f"results/embeddings/{OBSERVED}.h5"
    # The target before --configfile, which takes every following word as a file.
    res = cluster.run_snakemake(
        tmp_path, target, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
        "--configfile", str(TINY_CONFIG), timeout_s=1200)
    assert res.returncode == 0, res.stdout[-6000:]
    assert (tmp_path / target).is_file()

    # "Job N has been submitted with SLURM jobid M (log: .../rule_<rule>/...)"
    rule_of = {}
    for line in res.stdout.splitlines():
        ids = submitted_job_ids(line)
        if ids:
            rule_of[ids[0]] = line.split("/rule_")[1].split("/")[0]
    assert GPU_RULES <= set(rule_of.values()), rule_of

    deadline = time.monotonic() + 30
    while True:
        rows = cluster.sacct(list(rule_of))
        if all(rows.get(j, {}).get("State") == "COMPLETED" for j in rule_of) or time.monotonic() > deadline:
            break
        time.sleep(1)
    for job, rule in rule_of.items():
        row = rows[job]
        assert row["State"] == "COMPLETED", (rule, row)
        assert row["Account"] == TEST_ACCOUNT, (rule, row)
        if rule in GPU_RULES:
            assert row["Partition"] == "gpu", (rule, row)
            assert "gres/gpu=1" in row["AllocTRES"], (rule, row)
        else:
            assert row["Partition"] == "cpu", (rule, row)
            assert "gres/gpu" not in row["AllocTRES"], (rule, row)
