"""Fixtures of the browser tests: the tiny study's folder, its dashboard, a Chromium page.

Set ``SIMOBS_REVIEW_STUDY=/path/to/finished/tiny/study`` to reuse a finished run of the
tiny study (its folder as ``tiny_study`` leaves it) instead of running it again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from tests.browser.dashboard import (
    ARTIFACTS,
    STUDY_CONFIGS,
    Dashboard,
    browser_page,
    chromium_missing_reason,
    start_dashboard,
)


@pytest.fixture(scope="session")
def chromium() -> None:
    reason = chromium_missing_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def study_dir(request: pytest.FixtureRequest) -> Path:
    """The folder of a finished tiny study (results/, .snakemake/)."""
    reuse = os.environ.get("SIMOBS_REVIEW_STUDY")
    if reuse:
        path = Path(reuse)
        if not (path / "results/summary/headline.csv").exists():
            pytest.fail(f"SIMOBS_REVIEW_STUDY={reuse} is not a finished tiny study (no results/summary/headline.csv)")
        return path
    return request.getfixturevalue("tiny_study").workdir


@pytest.fixture(scope="session")
def reviewed_study(study_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny study in which one rule was rerun (``--forcerun summary``).

    Its store holds two invocations: the whole study, and the rerun with its one job.
    """
    from tests.conftest import copy_study, run_snakemake

    study = copy_study(study_dir, tmp_path_factory.mktemp("reviewed") / "study")
    # mtime triggers: only the forced rule reruns, whatever changed in the code since the study ran
    result = run_snakemake(study, "--forcerun", "summary", "--rerun-triggers", "mtime", timeout=900)
    (ARTIFACTS / "rerun-summary.log").parent.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "rerun-summary.log").write_text(result.output)
    if result.returncode != 0:
        pytest.fail(f"rerunning the rule summary failed (exit {result.returncode}):\n{result.output[-4000:]}")
    return study


@pytest.fixture(scope="session")
def dashboard(chromium: None, reviewed_study: Path) -> Iterator[Dashboard]:
    """The study's MLflow dashboard, started as `make ui` starts it, on a free loopback port."""
    # the tiny study ignores SIMOBS_TRACKING_URI (tests/conftest.py); so does its dashboard
    with mock.patch.dict(os.environ):
        os.environ.pop("SIMOBS_TRACKING_URI", None)
        with start_dashboard(reviewed_study, STUDY_CONFIGS, ARTIFACTS / "mlflow-ui.log") as dash:
            yield dash


@pytest.fixture
def page(chromium: None) -> Iterator:
    """A fresh headless Chromium page (1600 x 1000)."""
    with browser_page() as p:
        yield p


@pytest.fixture
def tall_page(chromium: None) -> Iterator:
    """A page tall enough that the runs table shows every job of the tiny study without scrolling."""
    with browser_page(height=2600) as p:
        yield p
