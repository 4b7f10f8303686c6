"""MLflow tracking for Snakemake jobs: one MLflow run per job, in one experiment per study.

Every rule script wraps its work in :func:`job_run`::

    with job_run(snakemake) as run:
        result = some_library_call(...)
        run.log_metrics({"n_images": result.n})
        run.log_artifact(snakemake.output.manifest, "manifests")

The run carries the tags a reviewer needs to trust a number: rule, wildcards, git commit
and dirty flag, config digest, input digests, host, SLURM job id, simobs version, and the
ids of the runs whose outputs it consumed (lineage, read from upstream ``.run_id`` files).
The job's run id is written to the rule's ``run_id`` output, so that downstream rules can
record their parents without putting run ids in ``params:`` (which would trigger reruns).

Runs of one ``snakemake`` invocation are nested under an invocation run created by the
Snakefile's ``onstart`` handler (:func:`start_invocation`).

SQLite is the default store.  Several jobs finishing at once contend for its write lock;
every store call is retried with jittered exponential back-off, so no job fails because
another one is writing.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from simobs import __version__
from simobs.io import config_digest, file_digest, write_text_atomic

__all__ = [
    "JobRun",
    "TrackingSettings",
    "job_run",
    "start_invocation",
    "end_invocation",
    "flatten",
    "git_state",
    "resolve_tracking_uri",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Where the Snakefile's onstart handler leaves the invocation's parent run id.
INVOCATION_FILE = Path("results/tracking/invocation.json")

_MAX_PARAM_LEN = 6000  # MLflow's limit on a parameter value
_LOCK_WORDS = ("database is locked", "database is busy", "locked", "busy", "unable to open database")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class TrackingSettings:
    """Where runs go.

    Attributes:
        uri: tracking URI. ``sqlite:///relative/path.db`` is resolved against the
            working directory into an absolute path, so that cluster jobs started in
            other folders reach the same store; ``http(s)://`` for a tracking server.
        experiment: experiment name (one per study).
        artifact_location: folder for artefacts of a new experiment (SQLite stores only).
        enabled: ``False`` turns tracking off (the ``run_id`` files then hold ``untracked``).
    """

    uri: str = "sqlite:///results/tracking/mlflow.db"
    experiment: str = "simobs"
    artifact_location: str = "results/tracking/artifacts"
    enabled: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrackingSettings:
        section = dict(config.get("tracking", {}) or {})
        # An environment variable wins, so a cluster user can point every job at a
        # tracking server without editing the study's config.
        uri = os.environ.get("SIMOBS_TRACKING_URI") or section.get("uri", cls.uri)
        return cls(
            uri=resolve_tracking_uri(uri),
            # One experiment per study: the study's name unless the config names another.
            experiment=str(section.get("experiment") or config.get("study") or cls.experiment),
            artifact_location=str(section.get("artifact_location", cls.artifact_location)),
            enabled=bool(section.get("enabled", True)),
        )


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative ``sqlite:///`` URI absolute and create its folder."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = Path(uri[len(prefix):])
        if not path.is_absolute():
            path = Path.cwd() / path
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path.resolve())
    return uri


def _artifact_uri(location: str) -> str:
    if "://" in location:
        return location
    path = Path(location)
    if not path.is_absolute():
        path = Path.cwd() / path
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve().as_uri()


# --------------------------------------------------------------------------- helpers


def _is_lock_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(word in text for word in _LOCK_WORDS)


def with_retries(fn: Callable[[], T], *, what: str, attempts: int = 12, base_delay: float = 0.2) -> T:
    """Call ``fn``, retrying with jittered exponential back-off while the store is locked.

    Only lock/busy errors are retried; anything else is raised at once.  With the
    defaults the last try comes after about a minute of waiting.
    """
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - we re-raise anything that is not a lock error
            if not _is_lock_error(exc) or attempt == attempts - 1:
                raise
            delay = min(base_delay * 2**attempt, 10.0) * (0.5 + random.random())
            log.debug("MLflow store busy during %s (%s); retrying in %.2f s", what, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested mapping into ``a.b.c`` keys with string values (MLflow params)."""
    out: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:_MAX_PARAM_LEN]
    return out


def git_state(repo: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Commit and dirty flag of the repository holding the workflow.

    Set explicitly because Snakemake runs scripts from a copy under ``.snakemake/``,
    where MLflow's own git detection sees nothing.
    """
    repo = Path(repo or Path.cwd())

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=20
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": "unknown"}
    return {"commit": commit, "dirty": str(dirty).lower()}


def _client(settings: TrackingSettings):  # -> MlflowClient (imported lazily: mlflow is slow to import)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.uri)


def ensure_experiment(settings: TrackingSettings) -> str:
    """Return the experiment id, creating the experiment if needed (race-safe)."""
    client = _client(settings)

    def get_or_create() -> str:
        exp = client.get_experiment_by_name(settings.experiment)
        if exp is not None:
            return exp.experiment_id
        kwargs = {}
        if settings.uri.startswith("sqlite:") or settings.uri.startswith("file:"):
            kwargs["artifact_location"] = _artifact_uri(settings.artifact_location)
        try:
            return client.create_experiment(settings.experiment, **kwargs)
        except Exception as exc:  # another job created it first
            exp = client.get_experiment_by_name(settings.experiment)
            if exp is None:
                raise exc
            return exp.experiment_id

    return with_retries(get_or_create, what="experiment creation")


def _read_invocation() -> dict[str, str]:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(INVOCATION_FILE.read_text())
    return {}


# --------------------------------------------------------------------------- invocation


def start_invocation(
    config: Mapping[str, Any], *, argv: Sequence[str] | None = None, repo: str | os.PathLike[str] | None = None
) -> str | None:
    """Create the parent run of one ``snakemake`` invocation (called from ``onstart``).

    Returns its run id (also written to :data:`INVOCATION_FILE` for the jobs), or
    ``None`` when tracking is disabled.
    """
    settings = TrackingSettings.from_config(config)
    if not settings.enabled:
        return None
    exp_id = ensure_experiment(settings)
    client = _client(settings)
    git = git_state(repo)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    tags = {
        "simobs.kind": "invocation",
        "simobs.command": " ".join(argv if argv is not None else sys.argv)[:5000],
        "simobs.config_digest": config_digest(config),
        "simobs.version": __version__,
        "mlflow.source.git.commit": git["commit"],
        "simobs.git_dirty": git["dirty"],
        "host": socket.gethostname(),
        "mlflow.user": _user(),
    }
    run = with_retries(
        lambda: client.create_run(exp_id, run_name=f"snakemake · {stamp}", tags=tags), what="invocation run"
    )
    with_retries(
        lambda: client.log_batch(run.info.run_id, params=_params(flatten(config, "config."))),
        what="invocation params",
    )
    write_text_atomic(INVOCATION_FILE, json.dumps({"run_id": run.info.run_id, "experiment_id": exp_id}))
    return run.info.run_id


def end_invocation(config: Mapping[str, Any], *, success: bool) -> None:
    """Mark the invocation run finished or failed (called from ``onsuccess``/``onerror``)."""
    settings = TrackingSettings.from_config(config)
    run_id = _read_invocation().get("run_id")
    if not settings.enabled or not run_id:
        return
    client = _client(settings)
    status = "FINISHED" if success else "FAILED"
    with_retries(lambda: client.set_terminated(run_id, status=status), what="invocation end")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry inside some containers
        return "unknown"


def _params(params: Mapping[str, str]):
    from mlflow.entities import Param

    return [Param(k, v) for k, v in params.items()]


# --------------------------------------------------------------------------- job runs


@dataclass
class JobRun:
    """The MLflow run of one Snakemake job.  Create it with :func:`job_run`."""

    run_id: str
    settings: TrackingSettings
    _client: Any = field(repr=False, default=None)

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def _call(self, what: str, fn: Callable[[], T]) -> T | None:
        if self._client is None:
            return None
        return with_retries(fn, what=what)

    def log_params(self, params: Mapping[str, Any], prefix: str = "") -> None:
        """Log (nested) parameters, flattened to ``a.b.c`` keys."""
        flat = flatten(params, prefix)
        items = list(flat.items())
        for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            chunk = dict(items[start : start + 100])
            self._call("params", lambda chunk=chunk: self._client.log_batch(self.run_id, params=_params(chunk)))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log scalar metrics; ``step`` makes curves (epochs, iterations)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step or 0)) for k, v in metrics.items() if v is not None]
        for start in range(0, len(batch), 1000):
            chunk = batch[start : start + 1000]
            self._call("metrics", lambda chunk=chunk: self._client.log_batch(self.run_id, metrics=chunk))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        self._call("tags", lambda: self._client.log_batch(self.run_id, tags=batch))

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Copy a small file (figure, table, manifest, model) into the run's artefacts."""
        self._call("artifact", lambda: self._client.log_artifact(self.run_id, str(path), artifact_path))

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        """Log a matplotlib figure as ``artifact_file`` (e.g. ``figures/loss.png``)."""
        self._call("figure", lambda: self._client.log_figure(self.run_id, fig, artifact_file))

    def log_table(self, table: Any, artifact_file: str) -> None:
        """Log a pandas DataFrame as a CSV artefact."""
        if self._client is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(artifact_file).name
            table.to_csv(local, index=False)
            parent = str(Path(artifact_file).parent)
            self.log_artifact(local, None if parent == "." else parent)

    def log_input_dataset(self, path: str | os.PathLike[str], name: str | None = None, context: str = "input") -> None:
        """Record a (large) dataset by reference with its content digest, not a copy.

        ``context`` is ``input`` for a dataset the job read, ``output`` for one it wrote.
        """
        from mlflow.entities import Dataset, DatasetInput, InputTag

        path = Path(path)
        ds = Dataset(
            name=name or path.stem,
            digest=file_digest(path)[:32],
            source_type="local",
            source=json.dumps({"uri": str(path.resolve())}),
        )
        self._call(
            "dataset input",
            lambda: self._client.log_inputs(
                self.run_id, datasets=[DatasetInput(ds, tags=[InputTag("mlflow.data.context", context)])]
            ),
        )


def _run_name(rule: str, wildcards: Mapping[str, str]) -> str:
    values = [str(v) for k, v in wildcards.items() if not k.startswith("_")]
    return " · ".join([rule, *values]) if values else rule


def _digest_inputs(files: Sequence[str], limit: int = 200) -> dict[str, str]:
    """Digests of the job's input files (a folder gets its listing's digest)."""
    out: dict[str, str] = {}
    for f in files[:limit]:
        p = Path(f)
        try:
            if p.is_dir():
                listing = "\n".join(sorted(str(q.relative_to(p)) for q in p.rglob("*")))
                out[f] = "dir:" + config_digest({"listing": listing})
            elif p.exists():
                out[f] = file_digest(p)[:16]
        except OSError as exc:
            out[f] = f"unreadable: {exc}"
    return out


def _setup_logging(log_files: Sequence[str]) -> logging.Handler | None:
    if not log_files:
        return None
    path = Path(log_files[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for noisy in ("alembic", "mlflow", "matplotlib", "numba", "urllib3", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


@contextlib.contextmanager
def job_run(
    smk: Any,
    *,
    params: Mapping[str, Any] | None = None,
    run_name: str | None = None,
) -> Iterator[JobRun]:
    """Open the MLflow run of the current Snakemake job.

    Args:
        smk: the ``snakemake`` object of a rule script (rule, wildcards, input, output,
            params, config, log).
        params: parameters to log; defaults to ``smk.params.settings`` when the rule has
            such a parameter (the rule's config section), flattened.
        run_name: display name; defaults to ``rule · wildcard values``.

    The run id is written to ``smk.output.run_id`` after the body succeeds, so that a
    failed job leaves no run-id file and Snakemake reruns it.  The run is marked
    FAILED (and the exception re-raised) when the body raises.
    """
    handler = _setup_logging(list(getattr(smk, "log", []) or []))
    settings = TrackingSettings.from_config(getattr(smk, "config", {}) or {})
    wildcards = {k: str(v) for k, v in dict(getattr(smk, "wildcards", {}).items()).items()}
    rule = str(getattr(smk, "rule", "script"))
    inputs = [str(f) for f in getattr(smk, "input", [])]
    run_id_file = getattr(smk.output, "run_id", None)
    if run_id_file is None:
        raise ValueError(f"rule {rule!r} must declare an output named 'run_id' for its MLflow run id")

    if params is None:
        params = getattr(getattr(smk, "params", None), "settings", None)

    client = None
    run_id = "untracked"
    if settings.enabled:
        exp_id = ensure_experiment(settings)
        client = _client(settings)
        parents = sorted({Path(f).read_text().strip() for f in inputs if f.endswith(".run_id") and Path(f).exists()})
        # Scripts run from a copy under .snakemake/; scriptdir is the repository's workflow/scripts.
        git = git_state(getattr(smk, "scriptdir", None))
        invocation = _read_invocation().get("run_id")
        tags = {
            "simobs.kind": "job",
            "simobs.rule": rule,
            "simobs.wildcards": json.dumps(wildcards, sort_keys=True),
            "simobs.config_digest": config_digest(getattr(smk, "config", {}) or {}),
            "simobs.input_digests": json.dumps(_digest_inputs(inputs), sort_keys=True)[:5000],
            "simobs.parent_runs": ",".join(p for p in parents if p != "untracked"),
            "simobs.version": __version__,
            "mlflow.source.git.commit": git["commit"],
            "simobs.git_dirty": git["dirty"],
            "host": socket.gethostname(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
            "mlflow.user": _user(),
            **{f"wildcard.{k}": v for k, v in wildcards.items()},
        }
        if invocation:
            tags["mlflow.parentRunId"] = invocation
        name = run_name or _run_name(rule, wildcards)
        run = with_retries(lambda: client.create_run(exp_id, run_name=name, tags=tags), what="run creation")
        run_id = run.info.run_id
        log.info("MLflow run %s (%s) in experiment %r at %s", run_id, name, settings.experiment, settings.uri)

    job = JobRun(run_id=run_id, settings=settings, _client=client)
    try:
        if params:
            job.log_params(params)
        yield job
    except BaseException:
        log.exception("job failed")
        job._call("end", lambda: client.set_terminated(run_id, status="FAILED"))
        raise
    else:
        job._call("end", lambda: client.set_terminated(run_id, status="FINISHED"))
        write_text_atomic(run_id_file, run_id + "\n")
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
