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

A store that fails otherwise (a server that is down, a read-only SQLite file) follows
``tracking.on_error``: ``fail`` stops the job with :class:`TrackingStoreError`; ``warn``
lets it finish and journals its run (:mod:`simobs.tracking_journal`) for a later replay.
Each run also records the resolved config, package versions and seeds
(:meth:`JobRun.log_provenance`); user names and passwords in URIs are never logged.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import logging
import os
import random
import re
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
from simobs import tracking_journal as journal
from simobs.io import config_digest, file_digest, write_text_atomic

__all__ = [
    "JobRun",
    "TrackingSettings",
    "TrackingStoreError",
    "STORE_RETRIES",
    "package_versions",
    "redact",
    "replay_missing",
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
        on_error: what a job does when the store fails: ``fail`` (raise) or ``warn``
            (log, finish the job, journal the run for a later replay).
    """

    uri: str = "sqlite:///results/tracking/mlflow.db"
    experiment: str = "simobs"
    artifact_location: str = "results/tracking/artifacts"
    enabled: bool = True
    on_error: str = "fail"

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
            on_error=_on_error(section.get("on_error", cls.on_error)),
        )


def _on_error(value: Any) -> str:
    if value not in ("fail", "warn"):
        raise ValueError(f"tracking.on_error: {value!r} is not one of 'fail', 'warn'")
    return str(value)


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative ``sqlite:///`` URI absolute and create its folder."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = Path(uri[len(prefix):])
        if not path.is_absolute():
            path = Path.cwd() / path
        with contextlib.suppress(OSError):  # a read-only path is reported when the store is opened
            path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path.resolve())
    return uri


def check_store_writable(uri: str) -> None:
    """Raise ``PermissionError`` naming the path when a SQLite store cannot be written.

    Checked before opening the store: SQLite reports a read-only folder as "unable to
    open database file", which the lock retries would otherwise retry for a minute.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return
    path = Path(uri[len(prefix):])
    folder = path.parent
    if not folder.is_dir():
        raise PermissionError(f"SQLite tracking store {path}: folder {folder} does not exist and cannot be created")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PermissionError(f"SQLite tracking store {path} is on a read-only path (SQLite needs to write "
                              f"the file and its folder {folder})")


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


#: Lock retries of this process so far (read by the tests and logged at each job's end).
STORE_RETRIES = {"count": 0}


def with_retries(fn: Callable[[], T], *, what: str, attempts: int = 12, base_delay: float = 0.2) -> T:
    """Call ``fn``, retrying with jittered exponential back-off while the store is locked.

    Only lock/busy errors are retried; anything else is raised at once.  With the
    defaults the last try comes after about a minute of waiting.  Each retry is counted
    in :data:`STORE_RETRIES`.
    """
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - we re-raise anything that is not a lock error
            if not _is_lock_error(exc) or attempt == attempts - 1:
                raise
            STORE_RETRIES["count"] += 1
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

    check_store_writable(settings.uri)
    return MlflowClient(tracking_uri=settings.uri)


def ensure_experiment(settings: TrackingSettings) -> str:
    """Return the experiment id, creating the experiment if needed (race-safe)."""
    check_store_writable(settings.uri)
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

    Replays the journal of runs that missed the store first.  Returns the run id (also
    written to :data:`INVOCATION_FILE` for the jobs; a ``pending-`` id when the store
    failed under ``on_error: warn``), or ``None`` when tracking is disabled.
    """
    settings = TrackingSettings.from_config(config)
    if not settings.enabled:
        return None
    git = git_state(repo)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    tags = {
        "simobs.kind": "invocation",
        "simobs.command": redact(" ".join(argv if argv is not None else sys.argv))[:5000],
        "simobs.config_digest": config_digest(config),
        "simobs.version": __version__,
        "mlflow.source.git.commit": git["commit"],
        "simobs.git_dirty": git["dirty"],
        "host": socket.gethostname(),
        "mlflow.user": _user(),
    }
    run = _open_run(settings, f"snakemake · {stamp}", tags, what="invocation start", replay=True)
    run.log_params(config, "config.")
    run.log_provenance(config)
    run._write_journal()
    write_text_atomic(INVOCATION_FILE, json.dumps({"run_id": run.run_id}))
    return run.run_id


def end_invocation(config: Mapping[str, Any], *, success: bool) -> None:
    """Mark the invocation run finished or failed (called from ``onsuccess``/``onerror``).

    Then replays the journal, so that runs journalled during the invocation reach a store
    that has come back.
    """
    settings = TrackingSettings.from_config(config)
    run_id = _read_invocation().get("run_id")
    if not settings.enabled or not run_id:
        return
    run = JobRun(run_id=run_id, settings=settings, _pending_id=journal.new_pending_id())
    try:
        if journal.is_pending(run_id):  # journal the end too; replay resolves the id
            run._offline, run._error = [], "the invocation run is journalled"
        else:
            run._client = _client(settings)
    except Exception as exc:  # noqa: BLE001 - on_error decides
        run._fail(exc, "invocation end")
    run._send({"op": "end", "status": "FINISHED" if success else "FAILED", "t": _now_ms()})
    run._write_journal()
    try:
        replay_missing(settings)
    except Exception as exc:  # noqa: BLE001 - the journal stays for the next invocation
        log.warning("journalled MLflow runs not replayed (%s); they stay in %s", redact(str(exc)), journal.JOURNAL)


def replay_missing(settings: TrackingSettings) -> journal.ReplayResult:
    """Send the journalled runs (:data:`simobs.tracking_journal.JOURNAL`) to the store.

    Raises when the store cannot be opened; a run that fails to replay stays in the
    journal (``left`` of the result, with the reason in ``error``).
    """
    if not settings.enabled or not journal.JOURNAL.exists():
        return journal.ReplayResult(0, 0)
    exp_id = ensure_experiment(settings)
    result = journal.replay(_client(settings), exp_id, lambda fn, what: with_retries(fn, what=what))
    if result.replayed or result.left:
        log.warning("replayed %d journalled MLflow run(s) into %s; %d left in %s%s", result.replayed,
                    redact(settings.uri), result.left, journal.JOURNAL,
                    f" ({redact(result.error)})" if result.error else "")
    return result


def _now_ms() -> int:
    return int(time.time() * 1000)


def _open_run(settings: TrackingSettings, name: str, tags: Mapping[str, str], *, what: str,
              replay: bool = False) -> JobRun:
    """Create a run in the store, or (``on_error: warn``, store failing) a journalled one."""
    tags = {k: redact(str(v))[:5000] for k, v in tags.items()}
    pending = journal.new_pending_id()
    run = JobRun(run_id=pending, settings=settings, _pending_id=pending,
                 _create={"run_name": name, "tags": tags, "t": _now_ms()})
    try:
        exp_id = ensure_experiment(settings)
        if replay:
            replay_missing(settings)
        client = _client(settings)
        created = with_retries(lambda: client.create_run(exp_id, run_name=name, tags=tags), what="run creation")
    except Exception as exc:  # noqa: BLE001 - on_error decides
        run._fail(exc, what)
        return run
    run.run_id, run._client, run._create = created.info.run_id, client, None
    log.info("MLflow run %s (%s) in experiment %r at %s", run.run_id, name, settings.experiment, redact(settings.uri))
    return run


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry inside some containers
        return "unknown"


# --------------------------------------------------------------------------- job runs


class TrackingStoreError(RuntimeError):
    """The tracking store failed and ``tracking.on_error`` is ``fail``."""


@dataclass
class JobRun:
    """The MLflow run of one Snakemake job.  Create it with :func:`job_run`.

    Every store call goes through :meth:`_send`.  When the store fails, ``on_error:
    fail`` raises :class:`TrackingStoreError`; ``on_error: warn`` logs a warning and
    keeps this and every later op of the run for the journal
    (:mod:`simobs.tracking_journal`), written when the job ends.
    """

    run_id: str
    settings: TrackingSettings
    _client: Any = field(repr=False, default=None)
    _pending_id: str = ""
    _create: dict[str, Any] | None = field(repr=False, default=None)
    _offline: list[dict[str, Any]] | None = field(repr=False, default=None)
    _error: str = ""

    @property
    def enabled(self) -> bool:
        """``True`` while the run reaches the store (not disabled, not journalled)."""
        return self._client is not None and self._offline is None

    @property
    def _active(self) -> bool:
        return self._client is not None or self._offline is not None

    @property
    def journalled(self) -> bool:
        """``True`` once the store failed and the run's ops go to the journal."""
        return self._offline is not None

    def _fail(self, exc: BaseException, what: str) -> None:
        where = redact(self.settings.uri)
        message = f"MLflow tracking store {where} failed during {what}: {redact(str(exc))[:2000]}"
        if self.settings.on_error == "fail":
            raise TrackingStoreError(
                message + "\n(set tracking.on_error: warn to keep the job going and journal its run in "
                f"{journal.JOURNAL}; fix the store or tracking.uri / SIMOBS_TRACKING_URI)"
            ) from exc
        log.warning("%s; the job goes on and its run is kept in %s until the store is back "
                    "(replayed by the next snakemake run or `python -m simobs.cli replay`)", message, journal.JOURNAL)
        self._offline = []
        self._error = message

    def _send(self, op: dict[str, Any]) -> None:
        if not self._active:
            return  # tracking disabled
        if self._offline is None:
            try:
                with_retries(lambda: journal.apply_op(self._client, self.run_id, op), what=op["op"])
                return
            except Exception as exc:  # noqa: BLE001 - on_error decides
                self._fail(exc, op["op"])
        if op["op"] == "artifact":
            op = {**op, "path": journal.spool_file(self._pending_id, op["path"])}
        self._offline.append(op)

    def _write_journal(self) -> None:
        if self._offline is None:
            return
        journal.append({
            "pending_id": self._pending_id,
            "run_id": None if self._create is not None else self.run_id,
            "create": self._create,
            "ops": self._offline,
            "error": self._error,
            "experiment": self.settings.experiment,
        })

    def log_params(self, params: Mapping[str, Any], prefix: str = "") -> None:
        """Log (nested) parameters, flattened to ``a.b.c`` keys (credentials in URIs masked)."""
        items = [(k, redact(v)) for k, v in flatten(params, prefix).items()]
        for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self._send({"op": "params", "params": dict(items[start : start + 100])})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log scalar metrics; ``step`` makes curves (epochs, iterations)."""
        now = int(time.time() * 1000)
        batch = [[k, float(v), now, int(step or 0)] for k, v in metrics.items() if v is not None]
        for start in range(0, len(batch), 1000):
            self._send({"op": "metrics", "metrics": batch[start : start + 1000]})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values cut to 5,000 characters, credentials in URIs masked)."""
        self._send({"op": "tags", "tags": {k: redact(str(v))[:5000] for k, v in tags.items()}})

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Copy a small file (figure, table, manifest, model) into the run's artefacts."""
        self._send({"op": "artifact", "path": str(path), "artifact_path": artifact_path})

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        """Log a matplotlib figure as ``artifact_file`` (e.g. ``figures/loss.png``)."""
        if not self._active:
            return
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(artifact_file).name
            fig.savefig(local)
            parent = str(Path(artifact_file).parent)
            self.log_artifact(local, None if parent == "." else parent)

    def log_table(self, table: Any, artifact_file: str) -> None:
        """Log a pandas DataFrame as a CSV artefact."""
        if not self._active:
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
        if not self._active:
            return
        path = Path(path)
        self._send({"op": "dataset", "name": name or path.stem, "digest": file_digest(path)[:32],
                    "source": json.dumps({"uri": str(path.resolve())}), "context": context})

    def log_provenance(self, config: Mapping[str, Any]) -> None:
        """Record the resolved config (artefact ``config/config.yaml``), package versions and seeds.

        Versions become tags ``version.<package>``; every ``seed`` key of the config a
        param ``seeds.<path>`` (e.g. ``seeds.embedding.seed``).  Credentials in URIs are
        masked in all three.
        """
        if not self._active:
            return
        import yaml

        clean = redact_config(config)
        self.set_tags({f"version.{name}": v for name, v in package_versions().items()})
        self.log_params(seeds(clean), "seeds.")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "config.yaml"
            local.write_text(yaml.safe_dump(clean, sort_keys=True))
            self.log_artifact(local, "config")


#: The packages whose versions every run records (distribution names).
PACKAGES = ("torch", "numpy", "xgboost", "umap-learn", "astropy", "galsim", "camb", "snakemake", "mlflow")


@functools.cache
def package_versions() -> dict[str, str]:
    """Installed versions of :data:`PACKAGES` (``not installed`` where absent)."""
    from importlib import metadata

    out: dict[str, str] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def seeds(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every key named ``seed`` in a (nested) config, by dotted path."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(seeds(value, f"{prefix}{key}."))
        elif key == "seed":
            out[f"{prefix}{key}"] = value
    return out


_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """Mask the user and password of every URI in ``text``: ``http://u:t@h`` -> ``http://***@h``."""
    return _CREDENTIALS.sub(r"\g<scheme>***@", text) if isinstance(text, str) else text


def redact_config(value: Any) -> Any:
    """A copy of a (nested) config with every string passed through :func:`redact`."""
    if isinstance(value, Mapping):
        return {str(k): redact_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_config(v) for v in value]
    return redact(value) if isinstance(value, str) else value

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
def job_thread_limits(threads: int | None) -> Iterator[None]:
    """Hold the job's BLAS/OpenMP pools (numpy, scipy, XGBoost's OpenMP) and torch's
    intra-op pool to the ``threads`` Snakemake gave the job.

    Snakemake exports ``OMP_NUM_THREADS`` only to shell rules; in a ``script:`` rule numpy
    is loaded before the script runs and its BLAS pool takes every core of the node, so
    two 1-thread jobs of the demo each ran 2-thread matrix products on 2 cores (ood_scores,
    misspecification).  ``None`` or < 1: no limit."""
    if not threads or int(threads) < 1:
        yield
        return
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")  # only when the script uses it: importing torch costs seconds
    with threadpool_limits(limits=int(threads)):
        if torch is None:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(int(threads))
        try:
            yield
        finally:
            torch.set_num_threads(before)


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

    config = getattr(smk, "config", {}) or {}
    job = JobRun(run_id="untracked", settings=settings)
    if settings.enabled:
        parents = sorted({Path(f).read_text().strip() for f in inputs if f.endswith(".run_id") and Path(f).exists()})
        # Scripts run from a copy under .snakemake/; scriptdir is the repository's workflow/scripts.
        git = git_state(getattr(smk, "scriptdir", None))
        invocation = _read_invocation().get("run_id")
        tags = {
            "simobs.kind": "job",
            "simobs.rule": rule,
            "simobs.wildcards": json.dumps(wildcards, sort_keys=True),
            "simobs.config_digest": config_digest(config),
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
        if invocation:  # a journalled invocation is linked when both are replayed
            tags["simobs.invocation" if journal.is_pending(invocation) else "mlflow.parentRunId"] = invocation
        job = _open_run(settings, run_name or _run_name(rule, wildcards), tags, what="run creation")

    try:
        if params:
            job.log_params(params)
        job.log_provenance(config)
        with job_thread_limits(getattr(smk, "threads", None)):
            yield job
    except BaseException:
        log.exception("job failed")
        try:
            job._send({"op": "end", "status": "FAILED", "t": _now_ms()})
        except TrackingStoreError as exc:  # the job's own error is the one to report
            log.error("%s", exc)
        job._write_journal()
        raise
    else:
        job._send({"op": "end", "status": "FINISHED", "t": _now_ms()})
        job._write_journal()
        write_text_atomic(run_id_file, job.run_id + "\n")
    finally:
        if settings.enabled:
            log.info("tracking store: %d lock retries in this job%s", STORE_RETRIES["count"],
                     f"; run journalled in {journal.JOURNAL}" if job.journalled else "")
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
