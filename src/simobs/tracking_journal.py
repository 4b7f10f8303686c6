"""The journal of MLflow runs that could not reach the tracking store (``tracking.on_error: warn``).

A job whose store fails (a tracking server that is down, a SQLite file on a read-only
path) keeps working and writes its outputs; every store operation it could not send is
kept as data (an *op*, a JSON mapping) and, when the job ends, appended as one line to
:data:`JOURNAL`.  Files it logged as artefacts are linked (or copied) into
:data:`SPOOL` first, so that a temporary file or a later rerun does not change them.
:func:`replay` sends the journalled runs to the store later (the next ``snakemake``
invocation does it at start and end; ``python -m simobs.cli replay`` does it by hand)
and removes each line once its run is recorded.  A line whose replay fails stays, so a
run is never silently lost.

Ops, in the order the job made them (``t`` in milliseconds since the epoch)::

    {"op": "params",   "params": {"a.b": "1"}}
    {"op": "metrics",  "metrics": [["loss", 1.5, t, step], ...]}
    {"op": "tags",     "tags": {"k": "v"}}
    {"op": "artifact", "path": "/abs/file", "artifact_path": "figures" | null}
    {"op": "dataset",  "name": ..., "digest": ..., "source": ..., "context": "input"}
    {"op": "end",      "status": "FINISHED" | "FAILED", "t": t}

A journal line (a *record*)::

    {"pending_id": "pending-<hex>", "run_id": <id of a run already in the store> | null,
     "create": {"run_name": ..., "tags": {...}, "t": t} | null, "ops": [...], "error": "..."}

``run_id`` may itself be a pending id (the end of an invocation whose run is pending);
replay resolves pending ids, in ``run_id`` and in the lineage tags of later records, to
the ids of the runs it created (tag ``simobs.pending_id``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["JOURNAL", "SPOOL", "apply_op", "append", "new_pending_id", "replay", "spool_file", "ReplayResult"]

#: One line per run that is not (yet) in the store.  Relative to the study's directory.
JOURNAL = Path("results/tracking/missing_runs.jsonl")
#: Artefact files of the journalled runs, one folder per pending id.
SPOOL = Path("results/tracking/missing")

PENDING = "pending-"
#: Tags whose values are run ids (comma-separated) that replay resolves.
_LINEAGE_TAGS = ("simobs.parent_runs",)


def new_pending_id() -> str:
    """A fresh id for a run that has no MLflow run id yet."""
    return PENDING + uuid.uuid4().hex


def is_pending(run_id: str | None) -> bool:
    return bool(run_id) and str(run_id).startswith(PENDING)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Hold the journal's lock (appends and replays of concurrent jobs take turns)."""
    JOURNAL.parent.mkdir(parents=True, exist_ok=True)
    with open(JOURNAL.with_name(JOURNAL.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def spool_file(pending_id: str, path: str | os.PathLike[str]) -> str:
    """Keep a snapshot of an artefact file for a journalled run; returns its absolute path.

    A hard link where the file system allows it (outputs are replaced atomically, so the
    link keeps this version's content), else a copy.
    """
    src = Path(path)
    folder = SPOOL / pending_id
    folder.mkdir(parents=True, exist_ok=True)
    slot = folder / f"{len(list(folder.iterdir())):03d}"  # one folder per artefact: its name is kept
    slot.mkdir()
    dst = slot / src.name
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return str(dst.resolve())


def append(record: Mapping[str, Any]) -> None:
    """Append one record to the journal (flushed and synced before returning)."""
    line = json.dumps(record, sort_keys=True) + "\n"
    with _locked(), open(JOURNAL, "a") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def apply_op(client: Any, run_id: str, op: Mapping[str, Any]) -> None:
    """Send one op to the store for ``run_id`` (an ``mlflow.MlflowClient``)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

    kind = op["op"]
    if kind == "params":
        client.log_batch(run_id, params=[Param(k, v) for k, v in op["params"].items()])
    elif kind == "metrics":
        client.log_batch(run_id, metrics=[Metric(k, float(v), int(t), int(s)) for k, v, t, s in op["metrics"]])
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["tags"].items()])
    elif kind == "artifact":
        client.log_artifact(run_id, op["path"], op.get("artifact_path"))
    elif kind == "dataset":
        ds = Dataset(name=op["name"], digest=op["digest"], source_type="local", source=op["source"])
        client.log_inputs(run_id, datasets=[DatasetInput(ds, tags=[InputTag("mlflow.data.context", op["context"])])])
    elif kind == "end":
        client.set_terminated(run_id, status=op["status"], end_time=op.get("t"))
    else:
        raise ValueError(f"unknown tracking op {kind!r} in {JOURNAL}")


@dataclass(frozen=True)
class ReplayResult:
    """What :func:`replay` did: runs recorded now, records left in the journal, and why."""

    replayed: int
    left: int
    error: str = ""


def _find_replayed(client: Any, experiment_id: str, pending_id: str) -> str | None:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`simobs.pending_id` = '{pending_id}'")
    return runs[0].info.run_id if runs else None


def replay(client: Any, experiment_id: str, retry: Callable[[Callable[[], Any], str], Any]) -> ReplayResult:
    """Send every journalled run to the store, oldest first; keep the records that fail.

    Args:
        client: ``mlflow.MlflowClient`` of the study's store.
        experiment_id: the study's experiment.
        retry: ``retry(fn, what)`` calls ``fn`` with the store's lock retries.

    Stops at the first record that fails (the store is still unreachable): that record
    and the later ones stay in the journal.  A record half-sent before a crash is found
    again by its ``simobs.pending_id`` tag instead of being created twice.
    """
    if not JOURNAL.exists():
        return ReplayResult(0, 0)
    with _locked():
        lines = [ln for ln in JOURNAL.read_text().splitlines() if ln.strip()]
        ids: dict[str, str] = {}
        done = 0
        error = ""

        def resolve(run_id: str) -> str | None:
            if not is_pending(run_id):
                return run_id
            if run_id not in ids:
                found = retry(lambda: _find_replayed(client, experiment_id, run_id), "replay lookup")
                if found:
                    ids[run_id] = found
            return ids.get(run_id)

        for line in lines:
            rec = json.loads(line)
            try:
                run_id = resolve(rec["run_id"]) if rec.get("run_id") else resolve(rec["pending_id"])
                if rec.get("run_id") and run_id is None:
                    raise LookupError(f"run {rec['run_id']} is not in the store yet")
                if run_id is None:
                    run_id = _create(client, experiment_id, rec, resolve, retry)
                ids[rec["pending_id"]] = run_id
                for op in rec["ops"]:
                    retry(lambda op=op: apply_op(client, run_id, op), f"replay {op['op']}")
            except Exception as exc:  # noqa: BLE001 - the record stays; the reason is reported
                error = f"{type(exc).__name__}: {exc}"
                break
            done += 1
            shutil.rmtree(SPOOL / rec["pending_id"], ignore_errors=True)
        rest = lines[done:]
        if rest:
            tmp = JOURNAL.with_name(JOURNAL.name + ".tmp")
            tmp.write_text("".join(ln + "\n" for ln in rest))
            os.replace(tmp, JOURNAL)
        else:
            JOURNAL.unlink()
        return ReplayResult(done, len(rest), error)


def _create(client: Any, experiment_id: str, rec: Mapping[str, Any], resolve: Callable[[str], str | None],
            retry: Callable[[Callable[[], Any], str], Any]) -> str:
    create = rec["create"]
    tags = dict(create["tags"])
    for key in _LINEAGE_TAGS:
        if tags.get(key):
            tags[key] = ",".join(resolve(r) or r for r in tags[key].split(","))
    invocation = tags.get("simobs.invocation")
    if invocation and resolve(invocation):
        tags["mlflow.parentRunId"] = resolve(invocation)
    tags.update({"simobs.pending_id": rec["pending_id"], "simobs.replayed": "true",
                 "simobs.store_error": str(rec.get("error", ""))[:1000]})
    run = retry(lambda: client.create_run(experiment_id, start_time=create.get("t"), tags=tags,
                                          run_name=create["run_name"]), "replay run creation")
    return run.info.run_id
