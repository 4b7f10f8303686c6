"""``mef``: one multi-extension FITS file per galaxy, one 2-D image HDU per band.

The band of each HDU is read from header keyword ``band_key`` (default ``BAND``),
falling back to EXTNAME, so the order of the HDUs does not matter.  Integer images with
BSCALE/BZERO are scaled to physical values by astropy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simobs.data.formats.base import (
    GalaxyImage,
    RejectedFile,
    SourceLayout,
    canonical_band,
    check_pixel_scale,
    check_unit,
    open_fits,
    resolve_ids,
)


def read_mef(path: str | Path, layout: SourceLayout) -> list[GalaxyImage]:
    """The one image of a multi-extension file (see the module docstring)."""
    with open_fits(path) as hdul:
        headers = [h.header for h in hdul]
        planes: dict[str, np.ndarray] = {}
        for hdu in hdul:
            if hdu.data is None or getattr(hdu.data, "ndim", 0) != 2:
                continue
            band = canonical_band(hdu.header.get(layout.band_key, hdu.header.get("EXTNAME", "")))
            if band in planes:
                raise RejectedFile(f"band {band!r} appears in more than one HDU", "duplicate_band")
            planes[band] = np.asarray(hdu.data, dtype=np.float32)
    wanted = [canonical_band(b) for b in layout.bands]
    missing = [b for b in wanted if b not in planes]
    if missing:
        raise RejectedFile(
            f"missing band(s) {missing} (found {sorted(planes) or 'no 2-D image HDU'}; "
            f"bands are read from header keyword {layout.band_key!r} or EXTNAME)", "missing_band"
        )
    shapes = {planes[b].shape for b in wanted}
    if len(shapes) > 1:
        raise RejectedFile(f"bands have different shapes {sorted(shapes)}", "wrong_shape")
    scale = check_pixel_scale(headers, layout)
    unit = check_unit(headers, layout)
    image_id, galaxy_id, projection = resolve_ids(headers, path, layout)
    return [GalaxyImage(image_id, galaxy_id, projection, np.stack([planes[b] for b in wanted]),
                        bands=layout.bands, unit=unit, pixel_scale_arcsec=scale, file=str(path))]
