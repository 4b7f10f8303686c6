"""Fixtures for tests against the local SLURM cluster (tests/cluster/slurm-cluster.sh).

``slurm_cluster`` yields a :class:`slurm_helpers.SlurmCluster` (env with SLURM_CONF and
SIMOBS_SLURM_SITE, the layered profiles, helpers to run Snakemake and read sacct) and
skips the test, with the reason and the command that fixes it, where SLURM is not
installed or the cluster is not running.  Mark such tests ``@pytest.mark.slurm``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from slurm_helpers import ClusterUnavailable, SlurmCluster, find_cluster  # noqa: E402


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The running local cluster (with the dummy GPU gres); skips where there is none."""
    try:
        cluster = find_cluster()
    except ClusterUnavailable as exc:
        pytest.skip(f"local SLURM cluster unavailable: {exc}")
    yield cluster


@pytest.fixture(scope="session")
def slurm_cluster_nogpu(slurm_cluster: SlurmCluster) -> SlurmCluster:
    """The same node through the controller without GPU gres (submission checks only)."""
    return slurm_cluster.nogpu
