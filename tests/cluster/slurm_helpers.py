"""Access to the local single-node SLURM cluster of ``tests/cluster/slurm-cluster.sh``.

The fixtures in ``tests/cluster/conftest.py`` build a :class:`SlurmCluster` with
:func:`find_cluster`; tests use it to run Snakemake through the project's SLURM profile
(``slurm/``) layered with the test profile (``tests/cluster/profile/``) and to read the
jobs back from ``sacct``.

Nothing here starts the cluster unless ``SIMOBS_SLURM_UP=1`` is set; otherwise a
missing SLURM installation or a stopped cluster is reported as a skip reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO / "tests" / "cluster" / "slurm-cluster.sh"
PROJECT_PROFILE = REPO / "slurm"
TEST_PROFILE = REPO / "tests" / "cluster" / "profile"
TEST_SITE = TEST_PROFILE / "site.yaml"
#: Account that slurm-cluster.sh creates for root and that TEST_SITE names.
TEST_ACCOUNT = "simobs"

_SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+)")
# "Job 3 has been submitted with SLURM jobid 42 (log: .../slurm_logs/rule_embed/source_x/42.log)."
_SUBMITTED_RULE = re.compile(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_([A-Za-z0-9_]+)/")
_FINAL_STATES_PREFIXES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY",
                          "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE")
_SACCT_FIELDS = ("JobID", "JobName", "Partition", "Account", "State", "ExitCode", "AllocTRES")


class ClusterUnavailable(RuntimeError):
    """The local cluster cannot be used; the message says why and how to fix it."""


@dataclass(frozen=True)
class SlurmCluster:
    """A running local cluster and the environment needed to submit to it.

    Attributes:
        state_dir: The script's state directory (configs, logs, pid files).
        slurm_conf: The ``slurm.conf`` clients must use (exported as SLURM_CONF).
        env: ``os.environ`` plus SLURM_CONF and SIMOBS_SLURM_SITE (the test site file);
            pass it to every subprocess that calls SLURM or Snakemake.
        profiles: The ``--profile`` arguments in order: the project profile, then the
            test layer whose top-level keys replace the project's.
    """

    state_dir: Path
    slurm_conf: Path
    env: dict[str, str] = field(repr=False)
    profiles: tuple[Path, ...] = (PROJECT_PROFILE, TEST_PROFILE)

    @property
    def nogpu(self) -> SlurmCluster:
        """The same node seen through the second controller, which has no GPU gres.

        Jobs are never started there (it has no slurmd); it exists to check that a
        GPU request is refused at submission.
        """
        conf = self.state_dir / "etc-nogpu" / "slurm.conf"
        return replace(self, slurm_conf=conf, env={**self.env, "SLURM_CONF": str(conf)})

    def profile_args(self) -> list[str]:
        """``--profile A --profile B`` for the snakemake command line."""
        args: list[str] = []
        for p in self.profiles:
            args += ["--profile", str(p)]
        return args

    def run_snakemake(
        self, workdir: Path, *args: str, timeout_s: int = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run Snakemake in ``workdir`` through the layered profiles.

        Runs under ``timeout -s KILL``: a stuck run (a status query that never sees the
        job end) ignores SIGTERM.  stdout and stderr are merged into ``.stdout``.

        Args:
            workdir: Directory holding the Snakefile (or pass ``--snakefile``).
            *args: Further snakemake arguments (targets, ``--configfile``, ...).
            timeout_s: Seconds before the run is killed (exit code 137).
        """
        cmd = ["timeout", "-s", "KILL", str(timeout_s), sys.executable, "-m", "snakemake",
               *self.profile_args(), *args]
        return subprocess.run(cmd, cwd=workdir, env=self.env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)

    def with_env(self, drop: tuple[str, ...] = (), **values: str) -> SlurmCluster:
        """The same cluster with environment variables removed (``drop``) or set."""
        env = {k: v for k, v in self.env.items() if k not in drop}
        env.update(values)
        return replace(self, env=env)

    def popen_snakemake(self, workdir: Path, *args: str, timeout_s: int = 300,
                        log: Path) -> subprocess.Popen[bytes]:
        """Start Snakemake like :meth:`run_snakemake`, in the background, output to ``log``."""
        cmd = ["timeout", "-s", "KILL", str(timeout_s), sys.executable, "-m", "snakemake",
               *self.profile_args(), *args]
        with open(log, "wb") as fh:
            return subprocess.Popen(cmd, cwd=workdir, env=self.env, stdout=fh,
                                    stderr=subprocess.STDOUT)

    def slurm(self, *cmd: str, timeout_s: int = 30) -> str:
        """Run a SLURM client command (``squeue``, ``scancel``, ...) and return stdout."""
        res = subprocess.run(list(cmd), env=self.env, text=True, capture_output=True,
                             timeout=timeout_s, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout

    def sacct(self, job_ids: list[str]) -> dict[str, dict[str, str]]:
        """Accounting records of the given jobs (allocations only, no steps).

        Returns:
            ``{job_id: {"JobID", "JobName", "Partition", "Account", "State",
            "ExitCode", "AllocTRES"}}``; a job slurmdbd has not recorded yet is absent.
        """
        if not job_ids:
            return {}
        out = self.slurm("sacct", "-X", "--parsable2", "--noheader", "-j", ",".join(job_ids),
                         "--format=" + ",".join(_SACCT_FIELDS))
        rows = [dict(zip(_SACCT_FIELDS, line.split("|"))) for line in out.splitlines() if line]
        return {r["JobID"]: r for r in rows}

    def wait_for_sacct(self, job_ids: list[str], timeout_s: float = 60) -> dict[str, dict[str, str]]:
        """:meth:`sacct` once every job has a final state there (slurmdbd records lag).

        Returns what sacct has after ``timeout_s`` even if some jobs are still missing
        or not final; the caller's assertions then show which.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            rows = self.sacct(job_ids)
            done = all(j in rows and rows[j]["State"].startswith(_FINAL_STATES_PREFIXES)
                       for j in job_ids)
            if done or time.monotonic() > deadline:
                return rows
            time.sleep(1)


def submitted_job_ids(snakemake_output: str) -> list[str]:
    """SLURM job ids in the order Snakemake reported submitting them."""
    return _SUBMITTED.findall(snakemake_output)


def submitted_jobs(snakemake_output: str) -> dict[str, str]:
    """``{SLURM job id: rule}`` of every job Snakemake submitted, in submission order.

    The rule is read from the job's SLURM log path (``.../slurm_logs/rule_<rule>/...``),
    which the executor plugin prints with each submission.
    """
    return dict(_SUBMITTED_RULE.findall(snakemake_output))


def snakemake_job_counts(snakemake_output: str) -> dict[str, int]:
    """The first 'Job stats' table Snakemake printed: ``{rule: number of jobs}``."""
    m = re.search(r"Job stats:\njob\s+count\n[- ]+\n(.*?)\n\s*total\s+\d+", snakemake_output, re.S)
    counts: dict[str, int] = {}
    if m:
        for line in m.group(1).splitlines():
            name, n = line.split()
            counts[name] = int(n)
    return counts


def _node_ready(env: dict[str, str]) -> bool:
    res = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, text=True,
                         capture_output=True, timeout=15, check=False)
    states = res.stdout.split()
    return res.returncode == 0 and bool(states) and states[0] in {"idle", "mixed", "allocated"}


def find_cluster() -> SlurmCluster:
    """The running local cluster.

    Raises:
        ClusterUnavailable: SLURM is not installed, the cluster is not running (and
            SIMOBS_SLURM_UP=1 did not start it) or its node is not usable; the message
            names the command that fixes it.
    """
    if shutil.which("sbatch") is None:
        raise ClusterUnavailable(
            "SLURM is not installed (no sbatch on PATH); install it with "
            "`.ci/install-cluster.sh` and start `tests/cluster/slurm-cluster.sh up`")
    state = Path(os.environ.get("SIMOBS_SLURM_DIR", "/tmp/simobs-slurm"))
    conf = state / "etc" / "slurm.conf"
    env = {**os.environ, "SLURM_CONF": str(conf), "SIMOBS_SLURM_SITE": str(TEST_SITE)}
    up = subprocess.run(["bash", str(CLUSTER_SCRIPT), "status"], env=env, text=True,
                        capture_output=True, timeout=60, check=False)
    if up.returncode != 0 and os.environ.get("SIMOBS_SLURM_UP") == "1":
        started = subprocess.run(["bash", str(CLUSTER_SCRIPT), "up"], env=env, text=True,
                                 capture_output=True, timeout=180, check=False)
        if started.returncode != 0:
            raise ClusterUnavailable(
                f"`tests/cluster/slurm-cluster.sh up` failed:\n{started.stderr.strip()}")
        up = subprocess.run(["bash", str(CLUSTER_SCRIPT), "status"], env=env, text=True,
                            capture_output=True, timeout=60, check=False)
    if up.returncode != 0:
        raise ClusterUnavailable(
            f"the local SLURM cluster is not running (state dir {state}); start it with "
            "`tests/cluster/slurm-cluster.sh up` (or set SIMOBS_SLURM_UP=1)")
    if not _node_ready(env):
        raise ClusterUnavailable(
            f"the cluster's node is not idle (see `SLURM_CONF={conf} sinfo -N -l` and "
            f"{state}/log/slurmd.log); `tests/cluster/slurm-cluster.sh down` then `up`")
    return SlurmCluster(state_dir=state, slurm_conf=conf, env=env)
