"""Lineage digests that travel with artefacts, and the check that a stage's inputs share one.

What is recorded where (docs/contracts.md):

* the VAE model file: ``model_digest``, SHA-256 of the weights and the architecture
  (:func:`simobs.embedding.checkpoint.model_digest`), recomputed by ``load_model``;
* each embeddings file: attr ``vae_digest``, the ``model_digest`` of the VAE that made it;
* the classifier file: ``extra.vae_digest`` (of the embeddings it trained on) and
  ``digest`` (of its own content), recomputed by ``load_classifier``;
* the OOD thresholds table and the aggregate posterior table: columns
  ``classifier_digest`` and ``vae_digest`` of the classifier and embeddings they used.

A stage given inputs of two lineages (embeddings of two VAEs, or a classifier trained
on embeddings of another VAE than those it is asked to score) stops with
:class:`LineageError` naming every input and its digest, instead of computing a number.
Files written before digests were recorded have none: they are reported as ``unknown``
in a warning and accepted, since nothing says they differ.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

__all__ = ["LineageError", "check_same_lineage", "check_table_lineage", "shared_digest"]

log = logging.getLogger(__name__)


class LineageError(ValueError):
    """Inputs of one stage were made from different upstream artefacts."""


def shared_digest(digests: Sequence[str | None]) -> str | None:
    """The one known digest among ``digests`` (``None`` when none is known).

    Raises:
        LineageError: if two known digests differ (callers that can name the inputs use
            :func:`check_same_lineage` instead).
    """
    known = sorted({d for d in digests if d})
    if len(known) > 1:
        raise LineageError(f"inputs of different lineages: digests {known}")
    return known[0] if known else None


def check_same_lineage(inputs: Sequence[tuple[str, str | None]], what: str, fix: str) -> str | None:
    """Check that every input carries the same digest, and return it.

    Args:
        inputs: ``(name, digest)`` per input, ``name`` as the user should read it (a
            path, or ``classifier <path>``); ``digest`` ``None`` for a file written before
            digests were recorded.
        what: the digest's name in the files (e.g. ``vae_digest``), named in messages.
        fix: what the user should do about a mismatch (which rule to rerun).

    Returns:
        The shared digest, or ``None`` when no input has one.

    Raises:
        LineageError: when two inputs carry different digests; the message lists every
            input with its digest, then ``fix``.
    """
    known = {d for _, d in inputs if d}
    unknown = [name for name, d in inputs if not d]
    if len(known) > 1:
        listing = "\n".join(f"  {name}: {what} {d or 'unknown (written before digests were recorded)'}"
                            for name, d in inputs)
        raise LineageError(f"inputs of different lineages ({len(known)} different {what}s); they must all come "
                           f"from the same upstream artefact:\n{listing}\n{fix}")
    if unknown and inputs:
        log.warning("%s unknown for %s (written before lineage digests were recorded): cannot check that they "
                    "share one lineage%s; %s", what, ", ".join(unknown),
                    f" with {what} {next(iter(known))}" if known else "", fix)
    return next(iter(known)) if known else None


def check_table_lineage(table: pd.DataFrame, path: str | Path, column: str, expected: tuple[str, str | None],
                        fix: str) -> None:
    """Check that a stage's table was made from the artefact ``expected`` names.

    Args:
        table: The table read from ``path``.
        path: Named in the message.
        column: The table's digest column (``classifier_digest``, ``vae_digest``); a table
            from before it was recorded lacks it and passes.
        expected: ``(name, digest)`` of the artefact given to this stage; ``None``
            (unknown) passes.
        fix: What to rerun.

    Raises:
        LineageError: naming both digests, if the table records another one.
    """
    recorded = sorted({str(v) for v in table[column].dropna().unique() if str(v)}) if column in table.columns else []
    name, digest = expected
    if recorded and digest and recorded != [digest]:
        raise LineageError(f"inputs of different lineages: {path} was made with {column} {', '.join(recorded)}, but "
                           f"{name} has {column} {digest}. {fix}")
