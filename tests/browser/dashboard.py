"""Drive the MLflow dashboard and the Snakemake report of a study in headless Chromium.

Used by the browser tests and, from the command line, to take the README's screenshots
of a finished study::

    .venv/bin/python tests/browser/dashboard.py --workdir . --configfile config/config.yaml \\
        --report results/report.html --out docs/figures

Chromium is Debian's ``chromium`` package driven through Playwright's Python API; Playwright's
own browser download (``playwright install``) is never used.  Every page is a user's view:
selectors are visible names and the test ids MLflow's React app puts on its widgets.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
#: The tiny study's configuration, as tests/conftest.py runs it.
STUDY_CONFIGS = (REPO / "config/config.yaml", REPO / "tests/data/tiny.yaml")
#: Screenshots, logs and the report of the browser tests (git-ignored; CI keeps them as artefacts).
ARTIFACTS = REPO / "tests/artifacts"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

CHROMIUM = os.environ.get("SIMOBS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Generous: MLflow's server takes ~10 s to start on an idle machine, much longer on a loaded CI runner.
SERVER_START_TIMEOUT_S = 240
#: How long a page may take to show what a test waits for (the React app fetches after it renders).
UI_TIMEOUT_MS = 90_000


def chromium_missing_reason() -> str | None:
    """Why the browser tests cannot run here, or ``None`` when they can."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return (f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium; "
                ".ci/run does) or point SIMOBS_CHROMIUM at a Chromium binary")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install -e '.[test]')"
    return None


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- the dashboard


@dataclass
class Dashboard:
    """A running MLflow UI: its base URL and the experiment id of the study."""

    url: str
    experiment_id: str
    tracking_uri: str
    process: subprocess.Popen
    log_path: Path

    def runs_url(self) -> str:
        # workflowType: MLflow 3 opens experiments in its GenAI view unless told otherwise
        return f"{self.url}/#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"

    def run_url(self, run_id: str, tab: str = "") -> str:
        suffix = f"/{tab}" if tab else ""
        return f"{self.url}/#/experiments/{self.experiment_id}/runs/{run_id}{suffix}?workflowType=machine_learning"


def _wait_healthy(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the MLflow UI exited with {proc.returncode}; its log ({log_path}):\n"
                               + log_path.read_text()[-4000:])
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        time.sleep(1)
    raise RuntimeError(f"the MLflow UI did not answer {url}/health within {timeout_s:.0f} s; its log ({log_path}):\n"
                       + log_path.read_text()[-4000:])


@contextlib.contextmanager
def start_dashboard(workdir: Path, configfiles: Sequence[str | Path], log_path: Path,
                    port: int | None = None) -> Iterator[Dashboard]:
    """Start the dashboard the way ``make ui`` does (:func:`simobs.cli.ui_command`), on a free port.

    It runs in ``workdir`` (where the study's relative store paths point) with one worker
    and without MLflow's background job runner, which a review of runs does not need.
    """
    from mlflow import MlflowClient

    from simobs.cli import UI_ENV, load_config, ui_command
    from simobs.tracking import TrackingSettings

    port = port or free_port()
    old = Path.cwd()
    os.chdir(workdir)  # the study's relative paths (config, sqlite store) resolve here, as under `make ui`
    try:
        config = load_config([str(Path(old, c)) for c in configfiles])
        settings = TrackingSettings.from_config(config)
        cmd = ui_command(config, port)
    finally:
        os.chdir(old)
    experiment = MlflowClient(tracking_uri=settings.uri).get_experiment_by_name(settings.experiment)
    if experiment is None:
        raise RuntimeError(f"no experiment {settings.experiment!r} in {settings.uri}: has the study run in {workdir}?")
    env = {**os.environ, **UI_ENV}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        # own process group: the server's worker processes are stopped with it
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log_path, SERVER_START_TIMEOUT_S)
        yield Dashboard(url, experiment.experiment_id, settings.uri, proc, log_path)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


@contextlib.contextmanager
def browser_page(width: int = 1600, height: int = 1000) -> Iterator[Any]:
    """A Playwright page in headless Debian Chromium with a fresh, throw-away profile."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="simobs-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": width, "height": height},
            )
            context.set_default_timeout(UI_TIMEOUT_MS)
            try:
                page = context.pages[0] if context.pages else context.new_page()
                yield page
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def close_assistant(page: Any) -> None:
    """Close MLflow's assistant side panel (it covers a third of the page) when it is open."""
    close = page.locator('button[data-component-id="mlflow.assistant.chat_panel.close"]')
    with contextlib.suppress(Exception):
        close.first.click(timeout=3000)


# --------------------------------------------------------------------------- user actions


def runs_table_row(page: Any, run_name: str) -> Any:
    """The runs-table row whose run-name link reads exactly ``run_name``."""
    link = page.get_by_role("link", name=run_name, exact=True)
    return page.locator('[role="row"]').filter(has=link)


def use_model_training_view(page: Any) -> None:
    """Switch MLflow 3's sidebar from its GenAI view to "Model training" (remembered by the browser)."""
    page.get_by_role("button", name="Model training", exact=True).first.click()


def open_experiment(page: Any, dash: Dashboard) -> None:
    """The experiment's runs table in the model-training view, waiting until its rows are there."""
    page.goto(dash.runs_url())
    page.locator('[role="row"] a[href*="/runs/"]').first.wait_for()
    use_model_training_view(page)
    close_assistant(page)


def expand_run(page: Any, run_name: str) -> None:
    """Click the expander of a parent run's row so that its nested runs show."""
    row = runs_table_row(page, run_name).first
    row.locator('[role="gridcell"][col-id*="Run Name"] button').first.click()


def widen_run_names(page: Any, extra_px: int = 160) -> None:
    """Drag the runs table's Run Name column wider, so that names like ``embed · sdss_demo`` read whole."""
    header = page.locator('[role="columnheader"][col-id*="Run Name"]').first
    handle = header.locator(".ag-header-cell-resize").first
    box = handle.bounding_box()
    if box is None:
        return
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + extra_px, y, steps=8)
    page.mouse.up()


def open_run_tab(page: Any, dash: Dashboard, run_id: str, tab: str) -> None:
    """A run's page on one of its tabs (``""`` overview, ``model-metrics``, ``artifacts``)."""
    page.goto(dash.run_url(run_id, tab))
    page.get_by_role("tab", name="Artifacts").wait_for()
    close_assistant(page)


def show_description(page: Any) -> None:
    """Unfold a run's description on its overview tab (MLflow shows its first lines only)."""
    more = page.get_by_text("Show more", exact=True)
    with contextlib.suppress(Exception):
        more.first.click(timeout=5000)


def metric_chart(page: Any, metric: str) -> Any:
    """The chart card of ``metric`` on a run's Model metrics tab (filtered by the search box)."""
    page.get_by_placeholder("Search metric charts").fill(metric)
    title = page.locator(f'h4[title="{metric}"]')
    return page.locator('[data-testid="experiment-view-compare-runs-card"]').filter(has=title).first


def open_artifact(page: Any, path: str) -> None:
    """Click through the artefact tree to ``path`` (``figures/reconstructions.png``)."""
    parts = path.split("/")
    for part in parts:
        page.locator(f'[data-testid="artifact-tree-node"][artifact-name="{part}"]').first.click()


def screenshot(page: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(1000)  # let charts finish their transitions
    page.screenshot(path=str(path))
    return path


def show_report_result(page: Any, report: Path, category: str, subcategory: str | None, path: str) -> None:
    """In a Snakemake report: open a category (and subcategory), show a result and its caption."""
    page.goto(Path(report).resolve().as_uri())
    page.get_by_text(category, exact=True).first.click()
    if subcategory:
        page.get_by_text(subcategory, exact=True).first.click()
    row = page.locator("tr").filter(has_text=path).first
    row.locator('a[iconname="eye"]').click()
    row.locator('a[iconname="information-circle"]').click()


# --------------------------------------------------------------------------- the README's screenshots


def find_run(tracking_uri: str, experiment_id: str, run_name: str) -> str:
    """Id of the newest run named ``run_name``."""
    from mlflow import MlflowClient

    runs = MlflowClient(tracking_uri=tracking_uri).search_runs(
        [experiment_id], filter_string=f"attributes.run_name = '{run_name}'", order_by=["attributes.start_time DESC"],
        max_results=1)
    if not runs:
        raise LookupError(f"no run named {run_name!r} in experiment {experiment_id} of {tracking_uri}")
    return runs[0].info.run_id


def take_screenshots(workdir: Path, configfiles: Sequence[str], out: Path, report: Path | None) -> list[Path]:
    """Screenshots of a finished study: runs table, training run, summary run and the report."""
    shots: list[Path] = []
    with start_dashboard(workdir, configfiles, out / "mlflow-ui.log") as dash, browser_page() as page:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=dash.tracking_uri)
        train = find_run(dash.tracking_uri, dash.experiment_id, "train_embedding")
        invocation = client.get_run(client.get_run(train).data.tags["mlflow.parentRunId"]).info.run_name
        open_experiment(page, dash)
        expand_run(page, invocation)  # the invocation that ran the whole pipeline
        runs_table_row(page, "train_embedding").first.wait_for()
        with contextlib.suppress(Exception):  # cosmetic
            widen_run_names(page)
        shots.append(screenshot(page, out / "dashboard-runs.png"))
        summary = find_run(dash.tracking_uri, dash.experiment_id, "summary")
        open_run_tab(page, dash, summary, "")
        show_description(page)
        page.get_by_role("heading", name="Model posterior").first.wait_for()
        shots.append(screenshot(page, out / "dashboard-summary.png"))
        open_run_tab(page, dash, train, "model-metrics")
        metric_chart(page, "loss").locator("path.point").nth(1).wait_for()
        shots.append(screenshot(page, out / "dashboard-training.png"))
    if report is not None:
        with browser_page() as page:
            show_report_result(page, report, "2. Comparison", "Posterior model probabilities",
                               "results/model_posterior/posterior.png")
            page.get_by_text("DESCRIPTION").first.wait_for()
            shots.append(screenshot(page, out / "report.png"))
    return shots


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("."), help="the study's folder (holds results/)")
    parser.add_argument("--configfile", action="append", default=[], help="the study's config file(s)")
    parser.add_argument("--report", type=Path, help="a Snakemake report (.html) to screenshot as well")
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = parser.parse_args(argv)
    reason = chromium_missing_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    for path in take_screenshots(args.workdir.resolve(), args.configfile, args.out.resolve(), args.report):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
