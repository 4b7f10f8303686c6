"""``skirt_tng``: IllustrisTNG / Illustris SKIRT synthetic SDSS images (Rodriguez-Gomez et
al. 2019, MNRAS 483, 4140; the ``skirt_images_sdss`` archives of the TNG data release).

One file per subhalo, ``broadband_<subfindID>.fits``; the primary HDU holds a float32
cube (4, N, N) for the filters named by ``FILTER0..FILTER3`` (``sloan/sdss_g`` ...),
``BUNIT = 'counts/s/pixel'``, ``PIXSCALE`` (arcsec) and ``USE_Z`` (the redshift the
image was made for), ``CDELT1/2`` in parsec with ``CTYPE1/2 = 'pc'``.  N differs from
galaxy to galaxy; there is no object-id keyword: the id comes from the file name
(``id_pattern``, e.g. ``'broadband_(?P<galaxy>\\d+)\\.fits'``).  Noise-free, no PSF: the
realism stage makes them survey-like.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from simobs.data.formats.base import (
    GalaxyImage,
    RejectedFile,
    SourceLayout,
    check_unit,
    header_value,
    open_fits,
    resolve_ids,
    select_bands,
)
from simobs.data.formats.cube import cube_planes

UNIT = "counts/s/pixel"


def _float_keyword(header, key: str, what: str) -> float:
    value = header_value([header], key)
    if value is None:
        raise RejectedFile(f"header keyword {key} ({what}) is missing", "missing_keyword")
    try:
        return float(value)
    except ValueError:
        raise RejectedFile(f"header {key}={value!r} ({what}) is not a number", "bad_header") from None


def read_skirt_tng(path: str | Path, layout: SourceLayout) -> list[GalaxyImage]:
    """The one idealised image of a TNG SKIRT broadband file, in counts/s per pixel.

    Raises:
        RejectedFile: not FITS, a FILTERn keyword missing or a wanted band absent, BUNIT
            other than the declared unit, CTYPE1 not 'pc', or USE_Z/CDELT1 missing.
    """
    with open_fits(path) as hdul:
        header = hdul[0].header
        data, order, where = cube_planes(hdul, layout)
    if "FILTER0" not in header:
        raise RejectedFile("header keyword FILTER0 is missing: TNG SKIRT files name each plane's filter in "
                           "FILTER0..FILTER3", "missing_keyword")
    pixels = select_bands(data, order, layout.bands, where)
    # The format's unit is counts/s/pixel: a file with another BUNIT is rejected even when
    # the source declares none.
    unit = check_unit([header], replace(layout, unit=layout.unit or UNIT)) or UNIT
    ctype = str(header.get("CTYPE1", "")).strip()
    if ctype != "pc":
        raise RejectedFile(f"header CTYPE1={ctype!r}: TNG SKIRT files give CDELT1 in parsec (CTYPE1 = 'pc')",
                           "bad_header")
    pc = _float_keyword(header, "CDELT1", "pixel size in pc")
    z = _float_keyword(header, "USE_Z", "the redshift the image was made for")
    scale = _float_keyword(header, "PIXSCALE", "arcsec / pixel") if "PIXSCALE" in header else None
    image_id, galaxy_id, projection = resolve_ids([header], path, layout)
    return [GalaxyImage(image_id, galaxy_id, projection, pixels, bands=layout.bands, unit=unit,
                        pixel_scale_arcsec=scale, pixel_size_pc=pc, redshift=z, file=str(path))]
