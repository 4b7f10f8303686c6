"""Command-line helpers around the workflow: ``python -m simobs.cli where|ui``.

``where`` prints where a study's results are and how to open its dashboard;
``ui`` starts the MLflow dashboard on 127.0.0.1 against the study's tracking store;
``replay`` sends the runs journalled while the store failed (``tracking.on_error: warn``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from simobs.tracking import TrackingSettings, replay_missing
from simobs.tracking_journal import JOURNAL

DEFAULT_CONFIG = Path("config/config.yaml")


def _merge(base: dict, extra: Mapping) -> dict:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def load_config(configfiles: Sequence[str]) -> dict[str, Any]:
    """The study config as Snakemake sees it: config/config.yaml, then each --configfile on top."""
    config: dict[str, Any] = {}
    for path in [DEFAULT_CONFIG, *map(Path, configfiles)]:
        if path.exists():
            _merge(config, yaml.safe_load(path.read_text()) or {})
        elif path != DEFAULT_CONFIG:
            raise SystemExit(f"config file {path} does not exist")
    return config


#: A review dashboard needs neither MLflow's background job runner nor telemetry; one
#: worker starts in seconds instead of tens of seconds on a laptop.
UI_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def ui_command(config: Mapping[str, Any], port: int) -> list[str]:
    """The ``mlflow ui`` command serving the study's store on 127.0.0.1 (run it with :data:`UI_ENV`)."""
    settings = TrackingSettings.from_config(config)
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", settings.uri,
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


def runs_url(config: Mapping[str, Any], port: int) -> str:
    """Address of the study's runs table (MLflow 3 opens experiments in its GenAI view otherwise)."""
    from mlflow import MlflowClient

    settings = TrackingSettings.from_config(config)
    base = f"http://127.0.0.1:{port}"
    try:
        exp = MlflowClient(tracking_uri=settings.uri).get_experiment_by_name(settings.experiment)
    except Exception:  # noqa: BLE001 - no store yet: point at the start page
        exp = None
    if exp is None:
        return base
    return f"{base}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simobs.cli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("where", "ui", "replay"):
        p = sub.add_parser(name)
        p.add_argument("--configfile", action="append", default=[], help="study config(s) layered on config/config.yaml")
        p.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    config = load_config(args.configfile)
    if args.command == "replay":
        result = replay_missing(TrackingSettings.from_config(config))
        print(f"replayed {result.replayed} journalled MLflow run(s); {result.left} left in {JOURNAL}"
              + (f" ({result.error})" if result.error else ""))
        return 1 if result.left else 0
    if args.command == "where":
        settings = TrackingSettings.from_config(config)
        print(f"\nStudy '{config.get('study')}' finished. Results are in {Path('results').resolve()}:")
        for sub_dir in sorted(p.name for p in Path("results").iterdir() if p.is_dir()) if Path("results").exists() else []:
            print(f"  results/{sub_dir}/")
        print(f"MLflow store: {settings.uri} (experiment '{settings.experiment}')")
        print(f"Open the dashboard with:\n  make ui        # then {runs_url(config, args.port)}")
        print("  (or: " + " ".join(shlex.quote(c) for c in ui_command(config, args.port)) + ")")
        return 0
    cmd = ui_command(config, args.port)
    print(f"MLflow dashboard for experiment '{TrackingSettings.from_config(config).experiment}': "
          f"{runs_url(config, args.port)}  (Ctrl-C stops it)", flush=True)
    os.execve(cmd[0], cmd, {**os.environ, **UI_ENV})
    return 0  # unreachable


if __name__ == "__main__":
    raise SystemExit(main())
