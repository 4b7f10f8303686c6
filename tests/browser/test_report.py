"""The Snakemake report of the tiny study: every figure with its caption, grouped by stage.

The report is built once (``snakemake --report tests/artifacts/report.html``) from the
tiny study's results; one test reads the self-contained HTML, one opens it in Chromium.
"""

from __future__ import annotations

import html
import re
import subprocess
from pathlib import Path

import pytest
from tests.browser.dashboard import ARTIFACTS, REPO, SNAKEMAKE, STUDY_CONFIGS, screenshot, show_report_result

CAPTIONS = REPO / "workflow/report"
RULE_FILES = sorted((REPO / "workflow/rules").glob("*.smk"))
#: Rule files of opt-in targets (not in the default target, so not in the tiny study's report):
#: blind.smk is `snakemake blind` (issue #15).
OPT_IN_RULE_FILES = {"blind.smk"}


def _reported_outputs(default_target_only: bool = False) -> dict[str, tuple[str, str]]:
    """Every ``report(...)`` in the rule files: path -> (caption file, category)."""
    out = {}
    pattern = re.compile(r'report\(\s*"([^"]+)",\s*caption="([^"]+)",\s*category="([^"]+)"', re.S)
    for smk in RULE_FILES:
        if default_target_only and smk.name in OPT_IN_RULE_FILES:
            continue
        for path, caption, category in pattern.findall(smk.read_text()):
            out[path] = ((smk.parent / caption).resolve().name, category)
    return out


def _first_words(rst: Path, n: int = 6) -> str:
    """The caption's first words as they read in the rendered report (markup and templating removed)."""
    text = re.sub(r"\{\{.*?\}\}|\{%.*?%\}", " ", rst.read_text())
    text = re.sub(r"[*`]", "", text)
    return " ".join(text.split()[:n])


@pytest.fixture(scope="session")
def report_html(study_dir: Path) -> Path:
    """The self-contained HTML report of the tiny study."""
    out = ARTIFACTS / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(study_dir), "--cores", "1",
           "--report", str(out), "--configfile", *map(str, STUDY_CONFIGS)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    (ARTIFACTS / "report.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"snakemake --report failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return out


def test_every_reported_figure_has_a_caption_file() -> None:
    reported = _reported_outputs()
    # no report() without a caption anywhere in the workflow
    bare = [m for smk in RULE_FILES for m in re.findall(r'report\(\s*"[^"]+",\s*category=', smk.read_text())]
    assert not bare, f"report() outputs without a caption: {bare}"
    assert len(reported) >= 20
    for path, (caption, _) in reported.items():
        assert (CAPTIONS / caption).exists(), f"{path}: caption {caption} missing from workflow/report/"
    categories = {c for _, c in reported.values()}
    assert {"0. Study summary", "1. Embedding", "2. Comparison", "3. Component separation"} <= categories


@pytest.mark.slow
def test_report_holds_every_figure_with_its_caption(report_html: Path) -> None:
    text = html.unescape(report_html.read_text().replace('\\"', '"').replace("\\n", " "))
    text = re.sub(r"<[^>]+>", " ", text)
    text = " ".join(text.split())
    for path, (caption, category) in _reported_outputs(default_target_only=True).items():
        assert Path(path).name in text, f"{path} is not in the report"
        words = _first_words(CAPTIONS / caption)
        assert words in text, f"the caption of {path} ({caption}: {words!r}...) is not in the report"
        assert category in text
    # the front page names the study
    assert "simobs-tiny" in text
    # self-contained: figures are embedded, not linked to files next to the report
    assert re.search(r'data:image/png;[^"]*base64,', report_html.read_text())


@pytest.mark.slow
@pytest.mark.browser
def test_report_opens_in_a_browser(report_html: Path, chromium: None, page) -> None:
    page.goto(report_html.resolve().as_uri())
    for category in ("0. Study summary", "1. Embedding", "2. Comparison", "3. Component separation"):
        page.get_by_text(category, exact=True).first.wait_for()
    page.get_by_text("simobs-tiny").first.wait_for()
    screenshot(page, ARTIFACTS / "report-front.png")

    # the headline table, rendered as a table
    show_report_result(page, report_html, "0. Study summary", None, "results/summary/headline.html")
    page.frame_locator("iframe").first.get_by_text("MMD permutation p-value").first.wait_for()
    page.get_by_text("The study's headline numbers").first.wait_for()  # its caption
    screenshot(page, ARTIFACTS / "report-summary.png")

    # a figure with its caption
    show_report_result(page, report_html, "2. Comparison", "Posterior model probabilities",
                       "results/model_posterior/posterior.png")
    page.get_by_text(_first_words(CAPTIONS / "posterior.rst")).first.wait_for()
    figure = page.locator('img[src*="filename=posterior.png"]').first
    figure.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=figure.element_handle())
    screenshot(page, ARTIFACTS / "report-figure.png")
