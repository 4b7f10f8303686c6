"""Helpers every stage entry point shares: what a stage returns to its rule script,
atomic writing of figures, tables and JSON, and reading tables with string ids.

A module below the stage packages (``comparison``, ``misspecification``), so that they
share these without importing each other's stage code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from simobs.io import atomic_path  # noqa: E402

__all__ = ["StageOutput", "save_figure", "write_table", "write_json", "read_table", "ID_COLUMNS"]

ID_COLUMNS = ("id", "galaxy_id")


@dataclass
class StageOutput:
    """What a stage hands to its script for MLflow: metrics, tables and written figures."""

    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    #: Digests of what the outputs were made from (``vae_digest``, ``classifier_digest``),
    #: logged by the rule scripts as MLflow tags ``simobs.<name>``.
    lineage: dict[str, str] = field(default_factory=dict)

    def lineage_tags(self) -> dict[str, str]:
        """The lineage as MLflow tags (``simobs.vae_digest``, ...), unknown digests left out."""
        return {f"simobs.{k}": v for k, v in self.lineage.items() if v}


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 130) -> Path:
    """Save and close a figure atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return Path(path)


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a CSV table atomically (floats with full precision)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def write_json(obj: Any, path: str | Path) -> Path:
    """Write JSON atomically (sorted keys; numpy scalars as floats)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float))
    return Path(path)


def read_table(path: str | Path, required: Sequence[str] = (), what: str = "table", rule: str = "") -> pd.DataFrame:
    """Read a CSV written by a stage, id columns as strings (zero-padded ids survive).

    Raises:
        ValueError: naming the file and the missing columns (and the rule to rerun).
    """
    df = pd.read_csv(path, dtype={c: str for c in ID_COLUMNS})
    missing = [c for c in required if c not in df.columns]
    if missing:
        hint = f"; rerun rule `{rule}`" if rule else ""
        raise ValueError(f"{path}: {what} lacks column(s) {missing}{hint}")
    return df
