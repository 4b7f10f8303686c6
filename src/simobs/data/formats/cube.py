"""``cube``: one (bands, y, x) cube per file in one HDU (``hdu``, default the primary).

The band order along the first axis comes from the header (``FILTERn``, ``BANDn`` or
``BANDS``, see :func:`~simobs.data.formats.base.bands_from_header`) or, where the
header names none, from the config's ``cube_band_order``; when both exist they must
agree.  A 2-D image is a one-band cube (its band may also be named by ``BAND`` or
``FILTER``), as the Legacy Survey's single-band cutouts are.  Integer cubes with BSCALE/BZERO are scaled to physical values by astropy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simobs.data.formats.base import (
    GalaxyImage,
    RejectedFile,
    SourceLayout,
    bands_from_header,
    canonical_band,
    check_pixel_scale,
    check_unit,
    open_fits,
    resolve_ids,
    select_bands,
)


def cube_planes(hdul, layout: SourceLayout) -> tuple[np.ndarray, list[str], str]:
    """(data (planes, y, x) float32, band name of each plane, where the names came from).

    Raises:
        RejectedFile: no such HDU, no data, not 3-D, or no band order (header or config).
    """
    try:
        hdu = hdul[layout.hdu]
    except (IndexError, KeyError):
        raise RejectedFile(f"no HDU {layout.hdu!r} (file has {len(hdul)} HDUs)", "missing_hdu") from None
    if hdu.data is None:
        raise RejectedFile(f"HDU {layout.hdu!r} holds no data", "missing_hdu")
    data = np.asarray(hdu.data, dtype=np.float32)
    configured = [canonical_band(b) for b in layout.cube_band_order]
    if data.ndim == 2:
        data = data[None]
        single = hdu.header.get("BAND", hdu.header.get("FILTER"))
        if single is not None and bands_from_header(hdu.header, 1) is None:
            return data, [canonical_band(single)], "from header keyword BAND/FILTER"
    if data.ndim != 3:
        raise RejectedFile(f"cube shape {data.shape} is not (bands, H, W)", "wrong_shape")
    from_header = bands_from_header(hdu.header, data.shape[0])
    if from_header is not None:
        if configured and from_header != configured:
            raise RejectedFile(f"header band order {from_header} (FILTERn/BANDn/BANDS) differs from the source's "
                               f"cube_band_order {configured}", "band_order")
        return data, from_header, "from header keywords FILTERn/BANDn/BANDS"
    if not configured:
        raise RejectedFile(f"no band order: header keywords FILTER0..FILTER{data.shape[0] - 1} (or BAND0.., BANDS) "
                           f"are missing and the source sets no cube_band_order", "missing_keyword")
    if data.shape[0] != len(configured):
        raise RejectedFile(f"cube shape {data.shape} does not match (bands={len(configured)}, H, W) "
                           f"for cube_band_order {configured}", "wrong_shape")
    return data, configured, "from the source's cube_band_order"


def read_cube(path: str | Path, layout: SourceLayout) -> list[GalaxyImage]:
    """The one image of a cube file (see the module docstring)."""
    with open_fits(path) as hdul:
        headers = [h.header for h in hdul]
        data, order, where = cube_planes(hdul, layout)
    pixels = select_bands(data, order, layout.bands, where)
    scale = check_pixel_scale(headers, layout)
    unit = check_unit(headers, layout)
    image_id, galaxy_id, projection = resolve_ids(headers, path, layout)
    return [GalaxyImage(image_id, galaxy_id, projection, pixels, bands=layout.bands, unit=unit,
                        pixel_scale_arcsec=scale, file=str(path))]
