"""The study's headline: one table of the numbers a reader of the study looks for first.

The rule ``summary`` reads the final outputs of every stage and turns them into

* a long table (``headline.csv``) with one row per number: the posterior model
  probabilities of each observed sample (with their bootstrap intervals), the fraction of
  observed galaxies flagged out of distribution, the fraction of each simulation outside
  the observed typical set, the MMD two-sample p-values, the classifier's held-out
  accuracy and calibration, the embedding's reconstruction quality and the separation
  metrics (diffusion posterior against the Wiener filter);
* the same table rendered as Markdown and as a self-contained HTML page (the MLflow UI
  shows both in a run's artefacts; the Markdown is also the run's description);
* flat MLflow metric names (``posterior/<observations>/<model>``, ...), so that headline
  numbers can be compared across studies and reruns in the dashboard's charts.

Inputs missing from :class:`SummaryInputs` (a study without a stage) leave out their rows;
an input that is given but unreadable raises an error naming the file.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from simobs.io import atomic_path, write_text_atomic

__all__ = [
    "HEADLINE_COLUMNS",
    "SummaryInputs",
    "Headline",
    "collect_headline",
    "headline_markdown",
    "headline_html",
    "write_headline",
    "publish_headline",
    "clip_markdown",
]

PathLike = str | os.PathLike[str]

#: Columns of ``headline.csv``: the stage a number comes from, what it is about (an observed
#: sample, a simulation, a pair of them or the whole study), the quantity, its value, an
#: optional interval and a note saying how to read it.
HEADLINE_COLUMNS = ["section", "subject", "quantity", "value", "lo", "hi", "note"]

#: Order of the sections in the table and its renderings.
SECTIONS = ["Model posterior", "Misspecification", "MMD tests", "Classifier", "Embedding", "Separation"]

#: Separation metrics shown in the headline (all scalar metrics go to MLflow anyway);
#: ``{comp}`` is ``dust`` and ``cmb``.  Coverage keys are matched by prefix.
_SEPARATION_KEYS = [
    ("{comp}_mse_ratio_vs_wiener", "MSE of the posterior mean / MSE of the Wiener filter", "< 1: better than Wiener"),
    ("{comp}_power_max_abs_rel_error_below_half_nyquist", "max |relative power error|, k < Nyquist/2",
     "posterior samples' power spectrum vs the truth"),
]


@dataclass(frozen=True)
class SummaryInputs:
    """Final outputs of the stages; ``None`` leaves a stage out of the headline.

    Attributes:
        posterior: ``results/model_posterior/aggregate.csv`` (rule ``model_posterior``).
        misspecification: ``results/misspecification/summary.csv`` (per-source flagged and
            atypical fractions).
        mmd: ``results/misspecification/mmd_tests.csv``.
        verdict: ``results/misspecification/verdict.json`` (one statement per observed sample).
        classifier: ``results/classifier/metrics.json``.
        embedding: ``results/embedding/metrics.json``.
        separation: the separation stage's metrics JSON (flat mapping of name to number).
    """

    posterior: PathLike | None = None
    misspecification: PathLike | None = None
    mmd: PathLike | None = None
    verdict: PathLike | None = None
    classifier: PathLike | None = None
    embedding: PathLike | None = None
    separation: PathLike | None = None


@dataclass
class Headline:
    """The study's headline numbers.

    Attributes:
        table: one row per number, columns :data:`HEADLINE_COLUMNS`.
        metrics: the same numbers under flat MLflow metric names.
        statements: one sentence per observed sample saying whether any simulation is
            consistent with it (from the misspecification verdict).
    """

    table: pd.DataFrame
    metrics: dict[str, float] = field(default_factory=dict)
    statements: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- reading


def _read_csv(path: PathLike, required: Sequence[str], what: str) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the {what} table {path}: {exc}") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(
            f"the {what} table {path} lacks the columns {missing} (has {list(df.columns)}); "
            "rerun the rule that writes it with this version of simobs"
        )
    return df


def _read_json(path: PathLike, what: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the {what} file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"the {what} file {path} holds a {type(data).__name__}, expected a JSON object")
    return data


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _metric_name(*parts: str) -> str:
    """An MLflow metric name from parts (MLflow allows ``[A-Za-z0-9_\\-. :/]``)."""
    clean = ["".join(ch if ch.isalnum() or ch in "_-. :" else "_" for ch in str(p)) for p in parts]
    return "/".join(clean)


class _Rows:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.metrics: dict[str, float] = {}

    def add(self, section: str, subject: str, quantity: str, value: Any, *, metric: str | None = None,
            lo: Any = None, hi: Any = None, note: str = "") -> None:
        v = _number(value)
        self.rows.append({"section": section, "subject": subject, "quantity": quantity, "value": v,
                          "lo": _number(lo), "hi": _number(hi), "note": note})
        if metric and v is not None:
            self.metrics[metric] = v


# --------------------------------------------------------------------------- sections


def _posterior_rows(rows: _Rows, path: PathLike) -> None:
    df = _read_csv(path, ["observations", "model", "posterior"], "aggregate posterior")
    for obs, part in df.groupby("observations", sort=False):
        best = part["posterior"].idxmax()
        for i, r in part.iterrows():
            note = []
            if "n_counted" in r and _number(r["n_counted"]) is not None:
                note.append(f"{int(r['n_counted'])} galaxies counted")
                if "n_excluded_ood" in r and _number(r["n_excluded_ood"]) is not None:
                    note[-1] += f", {int(r['n_excluded_ood'])} excluded as OOD"
            if i == best:
                note.insert(0, "most probable model")
            rows.add("Model posterior", str(obs), f"p({r['model']} | {obs})", r["posterior"],
                     metric=_metric_name("posterior", obs, r["model"]),
                     lo=r.get("posterior_lo"), hi=r.get("posterior_hi"), note="; ".join(note))


def _misspecification_rows(rows: _Rows, path: PathLike, verdict: Mapping[str, Any]) -> None:
    df = _read_csv(path, ["source", "kind", "atypical_fraction"], "misspecification summary")
    flagged_cols = [c for c in df.columns if c.startswith("flagged_fraction_")]
    for _, r in df[df["kind"] == "observation"].iterrows():
        nominal = _number(r.get("nominal_flagged_fraction"))
        note = f"nominal {nominal:.1%} for a well-specified simulation" if nominal is not None else ""
        v = verdict.get(str(r["source"]), {}) if isinstance(verdict, Mapping) else {}
        flagged = _number(v.get("flagged_fraction")) if isinstance(v, Mapping) else None
        if flagged is not None:
            # the verdict's fraction uses the OOD score the study is configured with
            rows.add("Misspecification", str(r["source"]), "flagged out of distribution", flagged,
                     metric=_metric_name("flagged_fraction", r["source"]), note=note)
            continue
        for col in flagged_cols:  # no verdict: every score's fraction
            score = col.removeprefix("flagged_fraction_")
            rows.add("Misspecification", str(r["source"]), f"flagged out of distribution ({score} score)", r[col],
                     metric=_metric_name("flagged_fraction", r["source"], score), note=note)
    for _, r in df[df["kind"] == "simulation"].iterrows():
        rows.add("Misspecification", str(r["source"]), "outside the observed typical set", r["atypical_fraction"],
                 metric=_metric_name("atypical_fraction", r["source"]),
                 note="simulated galaxies unlike any observed one (VAE typicality)")


def _mmd_rows(rows: _Rows, path: PathLike) -> None:
    df = _read_csv(path, ["observations", "simulation", "p_value"], "MMD test")
    for _, r in df.iterrows():
        alpha = _number(r.get("alpha"))
        rejected = str(r.get("rejected")).lower() in ("true", "1", "1.0")
        note = ("rejected" if rejected else "not rejected") + (f" at alpha = {alpha:g}" if alpha is not None else "")
        rows.add("MMD tests", f"{r['simulation']} vs {r['observations']}", "MMD permutation p-value", r["p_value"],
                 metric=_metric_name("mmd_p_value", r["observations"], r["simulation"]), note=note)


def _classifier_rows(rows: _Rows, path: PathLike) -> None:
    m = _read_json(path, "classifier metrics")
    for key, label, note in [
        ("test_accuracy", "held-out accuracy", "simulated galaxies of the test split"),
        ("test_ece", "held-out expected calibration error", "after temperature scaling when it was needed"),
    ]:
        if key in m:
            rows.add("Classifier", "simulations", label, m[key], metric=_metric_name("classifier", key), note=note)


def _embedding_rows(rows: _Rows, path: PathLike) -> None:
    m = _read_json(path, "embedding metrics")
    for key, label, note in [
        ("val_fve", "fraction of variance explained (held-out images)", "reconstructions at the training k"),
        ("val_fve_inference", "fraction of variance explained (held-out images, inference k)",
         "reconstructions with the k used to embed"),
        ("dead_fraction", "dead latent fraction", "latents never among the k active ones"),
    ]:
        if key in m:
            rows.add("Embedding", "observations", label, m[key], metric=_metric_name("embedding", key), note=note)


def _separation_rows(rows: _Rows, path: PathLike) -> None:
    m = _read_json(path, "separation metrics")
    comps = [c for c in ("dust", "cmb") if any(k.startswith(c + "_") for k in m)]
    for comp in comps:
        for pattern, label, note in _SEPARATION_KEYS:
            key = pattern.format(comp=comp)
            stderr = _number(m.get(f"{key}_stderr"))
            if stderr is not None:
                note = f"{note}; ± {stderr:.1%} standard error over the test maps"
            if key in m:
                rows.add("Separation", comp, label, m[key], metric=_metric_name("separation", key), note=note)
        levels = [k for k in m if k.startswith(f"{comp}_coverage_") and not k.endswith("_wiener")]
        for key in sorted(levels, key=lambda k: _number(k.rsplit("_", 1)[-1]) or 0.0):
            level = key.removeprefix(f"{comp}_coverage_")
            wiener = _number(m.get(f"{key}_wiener"))
            rows.add("Separation", comp, f"coverage of the central {level} % credible interval", m[key],
                     metric=_metric_name("separation", key),
                     note=f"nominal {level} %" + (f"; Wiener {wiener:.1%}" if wiener is not None else ""))


def collect_headline(inputs: SummaryInputs) -> Headline:
    """Read the stages' final outputs and gather the headline numbers.

    Raises:
        ValueError: an input is given but unreadable or lacks the expected columns.
    """
    rows = _Rows()
    verdict = _read_json(inputs.verdict, "misspecification verdict") if inputs.verdict else {}
    if inputs.posterior:
        _posterior_rows(rows, inputs.posterior)
    if inputs.misspecification:
        _misspecification_rows(rows, inputs.misspecification, verdict)
    if inputs.mmd:
        _mmd_rows(rows, inputs.mmd)
    if inputs.classifier:
        _classifier_rows(rows, inputs.classifier)
    if inputs.embedding:
        _embedding_rows(rows, inputs.embedding)
    if inputs.separation:
        _separation_rows(rows, inputs.separation)
    table = pd.DataFrame(rows.rows, columns=HEADLINE_COLUMNS)
    statements = {str(k): str(v["statement"]) for k, v in verdict.items()
                  if isinstance(v, Mapping) and v.get("statement")}
    return Headline(table=table, metrics=rows.metrics, statements=statements)


# --------------------------------------------------------------------------- rendering


def _fmt(value: Any) -> str:
    v = _number(value)
    if v is None:
        return ""
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.2e}"
    return f"{v:.3g}" if abs(v) >= 1 else f"{v:.3f}"


def _interval(lo: Any, hi: Any) -> str:
    return f"[{_fmt(lo)}, {_fmt(hi)}]" if _number(lo) is not None and _number(hi) is not None else ""


def _sections(table: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame]]:
    order = SECTIONS + sorted(set(table["section"]) - set(SECTIONS))
    for name in order:
        part = table[table["section"] == name]
        if len(part):
            yield name, part


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def headline_markdown(headline: Headline, title: str) -> str:
    """The headline as Markdown: the verdict sentences, then one table per section."""
    lines = [f"# {title}", ""]
    for obs, text in headline.statements.items():
        lines.append(f"- **{_md_cell(obs)}**: {_md_cell(text)}")
    if headline.statements:
        lines.append("")
    for name, part in _sections(headline.table):
        lines += [f"## {name}", "", "| subject | quantity | value | interval | note |", "|---|---|---:|---|---|"]
        for _, r in part.iterrows():
            cells = [r["subject"], r["quantity"], _fmt(r["value"]), _interval(r["lo"], r["hi"]), r["note"] or ""]
            lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
        lines.append("")
    if headline.table.empty:
        lines.append("No stage produced a headline number.")
    return "\n".join(lines).rstrip() + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, "DejaVu Sans", sans-serif; margin: 1.5em; color: #1f2933; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.4em; }
table { border-collapse: collapse; min-width: 40em; }
th, td { border-bottom: 1px solid #d9e2ec; padding: 0.3em 0.8em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f4f8; }
ul.verdict li { margin: 0.3em 0; }
"""


def headline_html(headline: Headline, title: str) -> str:
    """The headline as a self-contained HTML page (no external resources)."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    if headline.statements:
        out.append('<ul class="verdict">')
        out += [f"<li><b>{e(obs)}</b>: {e(text)}</li>" for obs, text in headline.statements.items()]
        out.append("</ul>")
    for name, part in _sections(headline.table):
        out += [f"<h2>{e(name)}</h2>", "<table>",
                "<tr><th>subject</th><th>quantity</th><th>value</th><th>interval</th><th>note</th></tr>"]
        for _, r in part.iterrows():
            out.append(f"<tr><td>{e(str(r['subject']))}</td><td>{e(str(r['quantity']))}</td>"
                       f"<td class=\"num\">{e(_fmt(r['value']))}</td><td>{e(_interval(r['lo'], r['hi']))}</td>"
                       f"<td>{e(str(r['note'] or ''))}</td></tr>")
        out.append("</table>")
    if headline.table.empty:
        out.append("<p>No stage produced a headline number.</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_headline(headline: Headline, title: str, *, table: PathLike, markdown: PathLike | None = None,
                   html_page: PathLike | None = None, metrics: PathLike | None = None) -> None:
    """Write the headline table (CSV) and, when paths are given, its renderings and metrics (JSON)."""
    with atomic_path(table) as tmp:
        headline.table.to_csv(tmp, index=False)
    if markdown is not None:
        write_text_atomic(markdown, headline_markdown(headline, title))
    if html_page is not None:
        write_text_atomic(html_page, headline_html(headline, title))
    if metrics is not None:
        write_text_atomic(metrics, json.dumps(headline.metrics, indent=2, sort_keys=True) + "\n")


#: MLflow shows this tag as a run's description (Markdown) on the run's overview page.
DESCRIPTION_TAG = "mlflow.note.content"


#: Longest description kept (JobRun.set_tags keeps 5,000 characters of a tag; MLflow 8,000).
_MAX_DESCRIPTION = 4800


def clip_markdown(markdown: str, limit: int) -> str:
    """Cut Markdown at a line boundary to at most ``limit`` characters, saying where the rest is."""
    if len(markdown) <= limit:
        return markdown
    note = "\n*(cut here: the full table is the artefact headline.md)*\n"
    kept, size = [], 0
    for line in markdown.splitlines(keepends=True):
        if size + len(line) > limit - len(note):
            break
        kept.append(line)
        size += len(line)
    return "".join(kept) + note


def publish_headline(run: Any, markdown: str) -> None:
    """Make the headline the description of the summary run and of its invocation run.

    The summary run is nested under the ``snakemake`` invocation that produced it; giving
    the invocation run the same description means that opening the invocation's row in
    the dashboard already shows the study's result.

    Args:
        run: the summary job's :class:`simobs.tracking.JobRun` (nothing happens when
            tracking is disabled).
        markdown: the headline as Markdown (:func:`headline_markdown`).
    """
    markdown = clip_markdown(markdown, _MAX_DESCRIPTION)
    run.set_tags({DESCRIPTION_TAG: markdown, "simobs.kind": "summary"})
    if not getattr(run, "enabled", False):
        return
    from mlflow import MlflowClient

    from simobs.tracking import with_retries

    client = MlflowClient(tracking_uri=run.settings.uri)
    parent = with_retries(lambda: client.get_run(run.run_id), what="summary run").data.tags.get("mlflow.parentRunId")
    if parent:
        link = f"\n\nFrom the run `summary` ({run.run_id}) of this invocation.\n"
        with_retries(lambda: client.set_tag(parent, DESCRIPTION_TAG, markdown + link), what="invocation description")
