"""File-format readers, one per layout, behind one registry keyed by the config's ``layout``.

A reader is ``read(path, layout) -> list[GalaxyImage]``: one file, every image it
holds, pixels (bands, y, x) float32 in the file's unit.  Adding a layout is adding one
module here and one line to :data:`READERS` (and the name to the schema's
``sources[].layout`` enum; a test checks they agree).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from simobs.data.formats.base import GalaxyImage, RejectedFile, SourceLayout
from simobs.data.formats.cube import read_cube
from simobs.data.formats.mef import read_mef
from simobs.data.formats.nihao_skirt import read_nihao_skirt
from simobs.data.formats.skirt_tng import read_skirt_tng
from simobs.data.formats.rgb import read_rgb

__all__ = ["READERS", "PREPARED_LAYOUTS", "GalaxyImage", "RejectedFile", "SourceLayout", "read_images", "reader_for"]

Reader = Callable[[str | Path, SourceLayout], list[GalaxyImage]]

READERS: dict[str, Reader] = {
    "mef": read_mef,
    "cube": read_cube,
    "skirt_tng": read_skirt_tng,
    "nihao_skirt": read_nihao_skirt,
    "rgb": read_rgb,
}
# Layouts a pre-ingestion stage turns into prepared shards (no per-file reader):
# sdss_frames, the SDSS corrected frames + a catalogue (simobs.data.cutouts).
PREPARED_LAYOUTS = ("sdss_frames",)


def reader_for(layout: str) -> Reader:
    """The reader of a layout name.

    Raises:
        ValueError: unknown layout (the message lists the known ones).
    """
    try:
        return READERS[layout]
    except KeyError:
        raise ValueError(f"unknown layout {layout!r}; known layouts: {sorted(READERS)}") from None


def read_images(path: str | Path, layout: SourceLayout) -> list[GalaxyImage]:
    """Every image in ``path`` read with the reader of ``layout.layout``.

    Raises:
        RejectedFile: the file cannot be read as that layout (the message says why).
    """
    return reader_for(layout.layout)(path, layout)
