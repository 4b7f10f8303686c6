"""A tracking store that fails (`tracking.on_error: fail | warn`), the journal and its replay,
and many jobs writing one SQLite store at once."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from reliability_helpers import fake_smk, free_port, read_only
from simobs import cli
from simobs.io import write_text_atomic
from simobs.tracking import TrackingStoreError, job_run, start_invocation
from simobs.tracking_journal import JOURNAL, SPOOL

SECRET = "s3cretT0ken"


@pytest.fixture(autouse=True)
def _fast_http_failures(monkeypatch):
    # MLflow's HTTP client retries a refused connection 7 times with back-off (minutes);
    # one try keeps the tests short.  The behaviour under test does not depend on it.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.delenv("SIMOBS_TRACKING_URI", raising=False)


def config(uri: str, on_error: str) -> dict:
    return {"study": "t", "seed": 42, "tracking": {"uri": uri, "on_error": on_error}}


def run_job(tmp: Path, cfg: dict, rule: str = "ingest_merge", inputs=(), value: str = "table\n"):
    """One job that writes a table, logs a metric and the table as an artefact."""
    smk = fake_smk(tmp, cfg, rule=rule, inputs=inputs, table=f"{rule}.csv")
    with job_run(smk) as run:
        write_text_atomic(smk.output.table, value)
        run.log_metrics({"n": 3.0}, step=1)
        run.log_artifact(smk.output.table, "tables")
    return smk, run


def journal_records() -> list[dict]:
    return [json.loads(line) for line in JOURNAL.read_text().splitlines()]


def test_server_down_with_fail_stops_the_job_before_its_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"http://alice:{SECRET}@127.0.0.1:{free_port()}"
    smk = fake_smk(tmp_path, config(uri, "fail"), table="t.csv")
    with pytest.raises(TrackingStoreError, match=r"store http://\*\*\*@127\.0\.0\.1:\d+ failed during run creation") as err:
        with job_run(smk):
            raise AssertionError("the job's work must not start")
    assert SECRET not in str(err.value) and "on_error: warn" in str(err.value)
    assert not Path(smk.output.run_id).exists() and not JOURNAL.exists()


def test_server_down_with_warn_writes_outputs_journals_the_run_and_replays_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    down = config(f"http://alice:{SECRET}@127.0.0.1:{free_port()}", "warn")
    first, _ = run_job(tmp_path, down, rule="ingest_merge")
    # A downstream job of the same invocation: its lineage names the journalled run.
    second, run = run_job(tmp_path, down, rule="embed", inputs=[first.output.run_id])
    assert run.journalled
    pending = [Path(s.output.run_id).read_text().strip() for s in (first, second)]
    assert all(p.startswith("pending-") for p in pending)
    assert Path(first.output.table).read_text() == "table\n"
    records = journal_records()
    assert [r["pending_id"] for r in records] == pending
    assert records[1]["create"]["tags"]["simobs.parent_runs"] == pending[0]
    ops = [op["op"] for op in records[0]["ops"]]
    assert ops[0] == "params" and ops[-1] == "end" and {"metrics", "artifact", "tags"} <= set(ops)
    text = JOURNAL.read_text() + Path(first.log[0]).read_text()
    assert SECRET not in text and "failed during run creation" in Path(first.log[0]).read_text()
    # The artefact is kept even if a rerun replaces the output (atomically, as every job does).
    write_text_atomic(first.output.table, "rewritten\n")

    # The store is back (here: the study now points at a SQLite store): replay by hand.
    db = tmp_path / "store" / "mlflow.db"
    (tmp_path / "back.yaml").write_text(yaml.safe_dump(config(f"sqlite:///{db}", "warn")))
    assert cli.main(["replay", "--configfile", str(tmp_path / "back.yaml")]) == 0
    assert not JOURNAL.exists() and not any(SPOOL.iterdir())
    client = MlflowClient(f"sqlite:///{db}")
    runs = {r.data.tags["simobs.rule"]: r for r in client.search_runs(
        [client.get_experiment_by_name("t").experiment_id])}
    merged, embed = runs["ingest_merge"], runs["embed"]
    assert merged.info.status == embed.info.status == "FINISHED"
    assert merged.data.tags["simobs.pending_id"] == pending[0]
    assert embed.data.tags["simobs.parent_runs"] == merged.info.run_id  # lineage resolved
    assert merged.data.metrics == {"n": 3.0} and merged.data.params["a.b"] == "1"
    table = client.download_artifacts(merged.info.run_id, "tables/ingest_merge.csv", str(tmp_path))
    assert Path(table).read_text() == "table\n"


def test_a_failed_replay_keeps_the_journal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    down = config(f"http://127.0.0.1:{free_port()}", "warn")
    run_job(tmp_path, down)
    before = JOURNAL.read_text()
    (tmp_path / "down.yaml").write_text(yaml.safe_dump(down))
    with pytest.raises(Exception, match="Connection refused"):  # still down: nothing is lost
        cli.main(["replay", "--configfile", str(tmp_path / "down.yaml")])
    assert JOURNAL.read_text() == before


@pytest.mark.parametrize("on_error", ["fail", "warn"])
def test_sqlite_store_on_a_read_only_path(tmp_path, monkeypatch, on_error):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "shared"
    store.mkdir()
    cfg = config(f"sqlite:///{store}/mlflow.db", on_error)
    start_invocation(cfg)  # the store exists and holds the study's experiment
    (tmp_path / "results/tracking/invocation.json").unlink()
    with read_only(store):
        if on_error == "fail":
            with pytest.raises(TrackingStoreError, match=rf"{store}/mlflow\.db is on a read-only path"):
                run_job(tmp_path, cfg)
            assert not (tmp_path / "out/ingest_merge.csv").exists() and not JOURNAL.exists()
            return
        smk, run = run_job(tmp_path, cfg)
        assert run.journalled and Path(smk.output.table).exists()
        assert len(journal_records()) == 1
    # Writable again: the next invocation replays the journal before its own run.
    start_invocation(cfg)
    assert not JOURNAL.exists()
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    jobs = client.search_runs([client.get_experiment_by_name("t").experiment_id],
                              filter_string="tags.`simobs.kind` = 'job'")
    assert [r.data.tags["simobs.replayed"] for r in jobs] == ["true"]


def _writer(tmp: str, i: int, barrier, results) -> None:
    """One job: waits for the others, then writes its run (params, 10 metric steps, an artefact)."""
    os.chdir(tmp)
    import simobs.tracking as tracking

    cfg = config(f"sqlite:///{tmp}/mlflow.db", "fail")
    smk = fake_smk(Path(tmp), cfg, rule=f"r{i}", wildcards={"i": str(i)}, table=f"t{i}.csv")
    barrier.wait()
    try:
        with job_run(smk) as run:
            write_text_atomic(smk.output.table, f"{i}\n")
            for step in range(10):
                run.log_metrics({"m": step}, step=step)
            run.log_artifact(smk.output.table, "tables")
        results.put((i, run.run_id, tracking.STORE_RETRIES["count"], ""))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put((i, "", tracking.STORE_RETRIES["count"], repr(exc)))


@pytest.mark.slow
def test_eight_jobs_write_one_sqlite_store_at_once(tmp_path, measured):
    n = 8
    os.chdir(tmp_path)
    start_invocation(config(f"sqlite:///{tmp_path}/mlflow.db", "fail"))  # as the Snakefile's onstart
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), i, barrier, results)) for i in range(n)]
    for p in procs:
        p.start()
    out = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    failures = [err for *_, err in out if err]
    retries = sum(r for _, _, r, _ in out)
    measured(f"one SQLite store: {n} concurrent writers, {len(failures)} failures, {retries} lock retries")
    assert failures == [] and all(p.exitcode == 0 for p in procs)
    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    ids = [run_id for _, run_id, _, _ in out]
    assert len(set(ids)) == n
    for run_id in ids:
        assert c.get_run(run_id).info.status == "FINISHED"
        assert len(c.get_metric_history(run_id, "m")) == 10
        assert [a.path for a in c.list_artifacts(run_id, "tables")] and c.list_artifacts(run_id, "config")
