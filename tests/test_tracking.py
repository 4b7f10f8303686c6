"""MLflow tracking: one run per job with its tags, lineage, failures, concurrent writers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mlflow import MlflowClient

from simobs.tracking import flatten, job_run, resolve_tracking_uri, start_invocation
from tests.reliability.reliability_helpers import fake_smk as _fake_smk


def fake_smk(tmp: Path, *, rule="ingest_merge", wildcards=None, inputs=(), config=None):
    smk = _fake_smk(tmp, config or {"study": "t", "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db"}},
                    rule=rule, inputs=inputs, wildcards=wildcards)
    smk.params.settings = {"a": {"b": 1}, "c": [1, 2]}
    return smk


def client(tmp: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp}/mlflow.db")


def test_job_run_tags_params_lineage_and_run_id_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    parent = tmp_path / "up.run_id"
    parent.write_text("abc123\n")
    data = tmp_path / "data.h5"
    data.write_bytes(b"x" * 100)
    smk = fake_smk(tmp_path, inputs=[str(parent), str(data)])
    invocation = start_invocation(smk.config, argv=["snakemake", "--cores", "2"], repo=Path(__file__).parent)
    with job_run(smk) as run:
        run.log_metrics({"loss": 1.5}, step=3)
        run.log_input_dataset(data, "images")
    run_id = Path(smk.output.run_id).read_text().strip()
    assert run_id == run.run_id
    r = client(tmp_path).get_run(run_id)
    tags = r.data.tags
    assert r.info.run_name == "ingest_merge · tng100" and r.info.status == "FINISHED"
    assert tags["simobs.rule"] == "ingest_merge" and json.loads(tags["simobs.wildcards"]) == {"source": "tng100"}
    assert tags["slurm_job_id"] == "4242" and tags["simobs.parent_runs"] == "abc123"
    assert tags["mlflow.parentRunId"] == invocation
    assert len(tags["mlflow.source.git.commit"]) == 40 and tags["simobs.git_dirty"] in ("true", "false")
    assert set(json.loads(tags["simobs.input_digests"])) == {str(parent), str(data)}
    for key in ("simobs.config_digest", "host", "simobs.version"):
        assert tags[key]
    assert r.data.params == {"a.b": "1", "c": "[1, 2]"}
    assert r.data.metrics == {"loss": 1.5}
    assert r.inputs.dataset_inputs[0].dataset.name == "images"
    assert "MLflow run" in Path(smk.log[0]).read_text()


def test_failed_job_is_marked_failed_and_writes_no_run_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    smk = fake_smk(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with job_run(smk):
            raise RuntimeError("boom")
    assert not Path(smk.output.run_id).exists()
    runs = client(tmp_path).search_runs([client(tmp_path).get_experiment_by_name("t").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "boom" in Path(smk.log[0]).read_text()


def test_relative_sqlite_uri_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///results/x.db") == f"sqlite:///{tmp_path.resolve()}/results/x.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_flatten():
    assert flatten({"a": {"b": {"c": 1}}, "d": "x", "e": None}) == {"a.b.c": "1", "d": "x", "e": "null"}


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    from simobs.io import atomic_path

    with atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_job_holds_blas_and_torch_to_its_threads():
    """Snakemake exports OMP_NUM_THREADS only to shell rules: a script job's BLAS pool
    (loaded with numpy before the script runs) would take every core of the node."""
    import torch
    from threadpoolctl import threadpool_info

    from simobs.tracking import job_thread_limits

    torch_before = torch.get_num_threads()
    with job_thread_limits(1):
        pools = [p for p in threadpool_info() if p["user_api"] in ("blas", "openmp")]
        assert pools and all(p["num_threads"] == 1 for p in pools), pools
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == torch_before
    with job_thread_limits(None):  # no threads given: no limit
        assert torch.get_num_threads() == torch_before
