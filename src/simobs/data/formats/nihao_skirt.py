"""``nihao_skirt``: NIHAO SKIRT mock photometry (Faucher et al. 2023, ApJ 957, 7; layout of
the README of ``ntf229/NIHAO-SKIRT-Catalog``).

Per galaxy one file ``<name>_nihao-resolved-photometry.fits``; its ``SUMMARY`` binary
table has one row per orientation (10 per galaxy) with ``name``, ``bands`` (the 20
bandpass names, FUV ... SPIRE500, SDSS g, r, i among them), ``flux`` (band, y, x) images
in Jansky (``flux_nodust`` the dust-free ones, chosen with ``hdu: flux_nodust``), and
``size``, the side of the modelled cube in parsec.  There is no angular pixel scale and
no redshift: the realism stage places the galaxy at one.  Each orientation is one
projection of the same galaxy (projection = row index); the galaxy id is the ``name``
column (or the file name with ``id_pattern``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simobs.data.formats.base import (
    GalaxyImage,
    RejectedFile,
    SourceLayout,
    canonical_band,
    match_id_pattern,
    open_fits,
    select_bands,
)

UNIT = "Jy"
FILE_SUFFIX = "_nihao-resolved-photometry.fits"


def read_nihao_skirt(path: str | Path, layout: SourceLayout) -> list[GalaxyImage]:
    """One image per orientation of a NIHAO resolved-photometry file, in Jy per pixel.

    ``layout.hdu`` names the flux column when it is a string (``flux`` or
    ``flux_nodust``); the default HDU index 0 means ``flux``.

    Raises:
        RejectedFile: no SUMMARY extension, a column missing, a wanted band not in
            ``bands``, images that are not (bands, N, N), or a declared unit other than Jy.
    """
    column = layout.hdu if isinstance(layout.hdu, str) else "flux"
    if layout.unit is not None and layout.unit.replace(" ", "").lower() != "jy":
        raise RejectedFile(f"NIHAO SKIRT fluxes are in Jy, the source declares unit {layout.unit!r}", "wrong_unit")
    with open_fits(path) as hdul:
        if "SUMMARY" not in hdul:
            raise RejectedFile(f"no SUMMARY extension (file has {[h.name for h in hdul]})", "missing_hdu")
        table = hdul["SUMMARY"].data
        names = table.columns.names
        missing = [c for c in ("bands", column, "size") if c not in names]
        if missing:
            raise RejectedFile(f"SUMMARY lacks column(s) {missing} (has {names})", "missing_keyword")
        rows = [(np.asarray(r[column], np.float32), [str(b).strip() for b in r["bands"]], float(r["size"]),
                 str(r["name"]).strip() if "name" in names else None) for r in table]
    groups = match_id_pattern(path, layout.id_pattern)
    images = []
    for k, (flux, bands, size_pc, name) in enumerate(rows):
        if flux.ndim != 3 or flux.shape[0] != len(bands) or flux.shape[1] != flux.shape[2]:
            raise RejectedFile(f"SUMMARY row {k}: {column} has shape {flux.shape}, expected ({len(bands)}, N, N) "
                               f"for its {len(bands)} bands", "wrong_shape")
        pixels = select_bands(flux, [canonical_band(b) for b in bands], layout.bands, f"SUMMARY row {k} column 'bands'")
        galaxy = name or groups.get("galaxy") or Path(path).name.removesuffix(FILE_SUFFIX)
        images.append(GalaxyImage(f"{galaxy}_p{k}", galaxy, k, pixels, bands=layout.bands, unit=UNIT,
                                  pixel_scale_arcsec=None, pixel_size_pc=size_pc / flux.shape[-1], redshift=None,
                                  file=str(path)))
    if not images:
        raise RejectedFile("SUMMARY has no rows (no orientation)", "empty")
    return images
