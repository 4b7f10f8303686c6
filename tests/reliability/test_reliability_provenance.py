"""Each MLflow run records the resolved config, package versions and seeds; credentials never leak."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import yaml
from mlflow import MlflowClient

from reliability_helpers import fake_smk
from simobs.tracking import PACKAGES, job_run, redact, start_invocation

SECRET = "s3cretT0ken"
CRED_URI = f"http://alice:{SECRET}@tracking.example.org:5000"


def test_runs_record_config_versions_seeds_and_never_credentials(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # A cluster user keeps the server (with credentials) in the config; here the
    # environment points the jobs at a local store instead, as SIMOBS_TRACKING_URI does.
    monkeypatch.setenv("SIMOBS_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    config = {"study": "t", "seed": 42, "tracking": {"uri": CRED_URI},
              "embedding": {"seed": 3, "lr": 0.002}, "separation": {"training": {"seed": 1}},
              "sources": {"sdss": {"path": f"s3://bob:{SECRET}@bucket/*.fits"}}}
    inv = start_invocation(config, argv=["snakemake", "--config", f"tracking.uri={CRED_URI}"])
    smk = fake_smk(tmp_path, config, rule="embed")
    smk.params.settings = {"upload": CRED_URI, "k": 32}
    with job_run(smk) as run:
        run.set_tags({"remote": CRED_URI})
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for run_id in (inv, run.run_id):
        r = client.get_run(run_id)
        for key in PACKAGES:
            assert r.data.tags[f"version.{key}"] == metadata.version(key)
        assert {k: v for k, v in r.data.params.items() if k.startswith("seeds.")} == {
            "seeds.seed": "42", "seeds.embedding.seed": "3", "seeds.separation.training.seed": "1"}
        saved = yaml.safe_load(Path(client.download_artifacts(run_id, "config/config.yaml", str(tmp_path / run_id)))
                               .read_text())
        assert saved["tracking"]["uri"] == "http://***@tracking.example.org:5000"
        assert saved["embedding"] == config["embedding"] and saved["seed"] == 42
        everything = " ".join([*r.data.params.values(), *r.data.tags.values(), yaml.safe_dump(saved)])
        assert SECRET not in everything and "alice" not in everything and "bob:" not in everything
    assert client.get_run(run.run_id).data.params["upload"] == "http://***@tracking.example.org:5000"
    assert client.get_run(inv).data.tags["simobs.command"].endswith("tracking.uri=http://***@tracking.example.org:5000")
    assert SECRET not in Path(smk.log[0]).read_text()


def test_redact():
    assert redact("see https://u:p@h.org/x and sqlite:////a/b.db") == "see https://***@h.org/x and sqlite:////a/b.db"
    assert redact("http://token@h") == "http://***@h"
    assert redact("mail alice@example.org") == "mail alice@example.org"
