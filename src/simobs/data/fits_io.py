"""Reading galaxy images from FITS files in the layouts surveys and simulations use.

Two layouts are supported (a source's config picks one):

``mef``
    one multi-extension file per galaxy, one image HDU per band; the band of each HDU
    is read from a header keyword (``band_key``, default ``BAND``), falling back to
    EXTNAME, so the order of the HDUs in the file does not matter.
``cube``
    one (bands, y, x) cube per image in one HDU (``hdu``, default the primary); the band
    order along the first axis is given by ``cube_band_order`` in the config.

Integer images with BSCALE/BZERO are scaled to physical values by astropy.  Every
problem raises :class:`RejectedFile` with a reason a person can act on; the ingestion
stage decides whether that skips the file or fails the job.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["RejectedFile", "SourceLayout", "GalaxyImage", "read_galaxy_image"]


class RejectedFile(Exception):
    """A raw file that cannot be ingested; ``str(exc)`` is the reason, ``code`` its category."""

    def __init__(self, reason: str, code: str = "invalid") -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class SourceLayout:
    """How one source's FITS files are laid out (mirrors a ``sources`` entry of the config)."""

    layout: str  # "mef" or "cube"
    bands: tuple[str, ...]  # output band order
    image_shape: tuple[int, int]  # (H, W) expected
    id_key: str | None = "OBJID"  # None: the id is built from galaxy_key and projection_key
    galaxy_key: str | None = None  # header keyword of the simulated galaxy id (simulations)
    projection_key: str | None = None  # header keyword of the projection index
    band_key: str = "BAND"  # mef: keyword naming the band of each HDU
    cube_band_order: tuple[str, ...] = field(default_factory=tuple)  # cube: order along axis 0
    hdu: int | str = 0  # cube: which HDU holds the cube
    pixel_scale: float | None = None  # arcsec/pixel expected
    pixel_scale_key: str | None = "PIXSCALE"
    pixel_scale_rtol: float = 0.01
    id_pattern: str | None = None  # regex on the file name giving the id (group "id" or the first group)
    rgb_channels: tuple[str, ...] = ("i", "r", "g")  # rgb: the bands shown as R, G, B

    def __post_init__(self) -> None:
        if self.layout not in ("mef", "cube", "sdss_frames", "rgb"):
            raise ValueError(f"layout must be 'mef', 'cube', 'rgb' or 'sdss_frames', not {self.layout!r}")
        if self.layout == "cube" and self.cube_band_order:
            order = self.cube_band_order
            missing = [b for b in self.bands if b not in order]
            if missing:
                raise ValueError(f"cube_band_order {list(order)} lacks band(s) {missing} listed in bands")


@dataclass(frozen=True)
class GalaxyImage:
    """One image read from a file: pixels (bands, H, W) float32 in the file's units."""

    image_id: str
    galaxy_id: str
    projection_id: int
    pixels: np.ndarray


def _header_value(headers: Sequence, key: str | None) -> str | None:
    if not key:
        return None
    for h in headers:
        if key in h and str(h[key]).strip() != "":
            return str(h[key]).strip()
    return None


def _header_band_order(header, n_planes: int) -> list[str]:
    """Band order of a cube from its header: ``BANDS`` ('grz' or 'g,r,z') or ``BAND0``, ``BAND1``, ...

    Raises:
        RejectedFile: neither is there (the config's ``cube_band_order`` is then needed).
    """
    value = str(header.get("BANDS", "")).strip()
    if value:
        parts = [p.strip() for p in re.split(r"[,\s]+", value) if p.strip()]
        return parts if len(parts) > 1 or n_planes == 1 else list(value)
    keyed = [str(header[f"BAND{i}"]).strip() for i in range(n_planes) if f"BAND{i}" in header]
    if len(keyed) == n_planes:
        return keyed
    if n_planes == 1 and str(header.get("BAND", header.get("FILTER", ""))).strip():  # a one-band image
        return [str(header.get("BAND", header.get("FILTER"))).strip()]
    raise RejectedFile(
        f"no band order: the header has neither BANDS nor BAND0..BAND{n_planes - 1}; set the source's "
        f"cube_band_order in the config", "missing_keyword"
    )


def _check_pixel_scale(headers: Sequence, layout: SourceLayout) -> None:
    if layout.pixel_scale is None or not layout.pixel_scale_key:
        return
    value = _header_value(headers, layout.pixel_scale_key)
    if value is None:
        return  # many archives omit it; the config's value is then trusted
    try:
        scale = float(value)
    except ValueError:
        raise RejectedFile(f"header {layout.pixel_scale_key}={value!r} is not a number", "bad_header") from None
    if not np.isclose(scale, layout.pixel_scale, rtol=layout.pixel_scale_rtol):
        raise RejectedFile(
            f"pixel scale {scale} arcsec/pixel ({layout.pixel_scale_key}) differs from the "
            f"source's pixel_scale {layout.pixel_scale}", "pixel_scale"
        )


def _check_pixels(pixels: np.ndarray, layout: SourceLayout) -> np.ndarray:
    expected = (len(layout.bands), *layout.image_shape)
    if pixels.shape != expected:
        raise RejectedFile(f"image shape {pixels.shape} differs from expected (bands, H, W) = {expected}", "wrong_shape")
    pixels = np.asarray(pixels, dtype=np.float32)
    bad = ~np.isfinite(pixels)
    if bad.any():
        per_band = {layout.bands[b]: int(bad[b].sum()) for b in range(len(layout.bands)) if bad[b].any()}
        raise RejectedFile(f"non-finite pixels (NaN/inf) per band: {per_band}", "non_finite")
    return pixels


def read_galaxy_image(path: str | Path, layout: SourceLayout) -> GalaxyImage:
    """Read one galaxy image and its ids from ``path``.

    Raises:
        RejectedFile: the file is not readable FITS (truncated, another format), lacks
            a band or an id keyword, has the wrong shape or pixel scale, or holds
            NaN/inf pixels.  The message says which.
    """
    from astropy.io import fits

    path = Path(path)
    if layout.layout == "rgb":
        from simobs.data.rgb import image_id_from_name, read_rgb_image

        pixels = read_rgb_image(path, bands=layout.bands, channels=layout.rgb_channels, image_shape=layout.image_shape)
        image_id = image_id_from_name(path, layout.id_pattern)
        return GalaxyImage(image_id=image_id, galaxy_id=image_id, projection_id=-1, pixels=pixels)
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
            headers = [h.header for h in hdul]
            if layout.layout == "mef":
                planes: dict[str, np.ndarray] = {}
                for hdu in hdul:
                    if hdu.data is None or getattr(hdu.data, "ndim", 0) != 2:
                        continue
                    band = str(hdu.header.get(layout.band_key, hdu.header.get("EXTNAME", ""))).strip().lower()
                    if band in planes:
                        raise RejectedFile(f"band {band!r} appears in more than one HDU", "duplicate_band")
                    planes[band] = np.asarray(hdu.data, dtype=np.float32)
                wanted = [b.lower() for b in layout.bands]
                missing = [b for b in wanted if b not in planes]
                if missing:
                    raise RejectedFile(
                        f"missing band(s) {missing} (found {sorted(planes) or 'no 2-D image HDU'}; "
                        f"bands are read from header keyword {layout.band_key!r} or EXTNAME)", "missing_band"
                    )
                shapes = {planes[b].shape for b in wanted}
                if len(shapes) > 1:
                    raise RejectedFile(f"bands have different shapes {sorted(shapes)}", "wrong_shape")
                pixels = np.stack([planes[b] for b in wanted])
            else:
                try:
                    hdu = hdul[layout.hdu]
                except (IndexError, KeyError):
                    raise RejectedFile(f"no HDU {layout.hdu!r} (file has {len(hdul)} HDUs)", "missing_hdu") from None
                data = hdu.data
                if data is None:
                    raise RejectedFile(f"HDU {layout.hdu!r} holds no data", "missing_hdu")
                data = np.asarray(data, dtype=np.float32)
                if data.ndim == 2:  # a single-band image is a one-band cube
                    data = data[None]
                order = [b.lower() for b in (layout.cube_band_order or _header_band_order(hdu.header, data.shape[0]))]
                missing = [b for b in layout.bands if b.lower() not in order]
                if missing:
                    raise RejectedFile(f"cube holds bands {order}, not {missing}", "missing_band")
                if data.ndim != 3 or data.shape[0] != len(order):
                    raise RejectedFile(
                        f"cube shape {data.shape} does not match (bands={len(order)}, H, W) "
                        f"for cube_band_order {order}", "wrong_shape"
                    )
                pixels = data[[order.index(b.lower()) for b in layout.bands]]
    except RejectedFile:
        raise
    except (OSError, ValueError, TypeError, IndexError, EOFError) as exc:
        raise RejectedFile(f"not a readable FITS file ({type(exc).__name__}: {exc})", "unreadable") from None

    _check_pixel_scale(headers, layout)
    pixels = _check_pixels(pixels, layout)
    if layout.id_pattern:  # e.g. Legacy Survey cutouts: the id is in the file name only
        from simobs.data.rgb import image_id_from_name

        image_id = image_id_from_name(path, layout.id_pattern)
    else:
        image_id = _header_value(headers, layout.id_key) if layout.id_key else None
    galaxy_id = None
    projection = -1
    if layout.galaxy_key:
        galaxy_id = _header_value(headers, layout.galaxy_key)
        if galaxy_id is None:
            raise RejectedFile(f"header keyword {layout.galaxy_key!r} (the simulated galaxy id) is missing", "missing_keyword")
    if layout.projection_key:
        value = _header_value(headers, layout.projection_key)
        if value is None:
            raise RejectedFile(f"header keyword {layout.projection_key!r} (the projection) is missing", "missing_keyword")
        try:
            projection = int(value)
        except ValueError:
            raise RejectedFile(f"header {layout.projection_key}={value!r} is not an integer", "bad_header") from None
    if image_id is None or (layout.id_key == layout.galaxy_key and layout.projection_key):
        # Simulations often identify an image by galaxy and projection only.
        if galaxy_id is None:
            raise RejectedFile(f"header keyword {layout.id_key!r} (the image id) is missing", "missing_keyword")
        image_id = f"{galaxy_id}_p{projection}" if layout.projection_key else galaxy_id
    if galaxy_id is None:
        galaxy_id = image_id
    return GalaxyImage(image_id=image_id, galaxy_id=galaxy_id, projection_id=projection, pixels=pixels)
