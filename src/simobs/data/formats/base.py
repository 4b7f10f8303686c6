"""What every file-format reader shares: the layout description, the image record, the
rejection, and the header/file-name helpers (band order, ids, unit, pixel scale).

A reader turns one file into a list of :class:`GalaxyImage` (one per image the file
holds: a cutout file holds one, a NIHAO photometry file ten orientations).  Pixels keep
the file's shape and unit; the ingestion stage checks shape and finiteness, and a
realism stage converts units and resamples.  Every problem raises :class:`RejectedFile`
with a reason a person can act on; the stage decides whether that skips the file or
fails the job.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "RejectedFile",
    "SourceLayout",
    "GalaxyImage",
    "open_fits",
    "header_value",
    "canonical_band",
    "bands_from_header",
    "select_bands",
    "match_id_pattern",
    "resolve_ids",
    "check_unit",
    "check_pixel_scale",
    "check_pixels",
]


class RejectedFile(Exception):
    """A raw file that cannot be ingested; ``str(exc)`` is the reason, ``code`` its category."""

    def __init__(self, reason: str, code: str = "invalid") -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class SourceLayout:
    """How one source's files are laid out (mirrors a ``sources`` entry of the config).

    ``layout`` names a reader of :mod:`simobs.data.formats`; the other fields are the
    settings readers may use (each reader documents which).
    """

    layout: str
    bands: tuple[str, ...]  # output band order
    image_shape: tuple[int, int]  # (H, W) the dataset stores
    id_key: str | None = "OBJID"  # header keyword of the image id
    galaxy_key: str | None = None  # header keyword of the simulated galaxy id (simulations)
    projection_key: str | None = None  # header keyword of the projection index
    id_pattern: str | None = None  # regex on the file name with groups id / galaxy / projection
    band_key: str = "BAND"  # mef: keyword naming the band of each HDU
    cube_band_order: tuple[str, ...] = field(default_factory=tuple)  # cube: order along axis 0
    hdu: int | str = 0  # cube: which HDU holds the cube
    unit: str | None = None  # declared flux unit; files whose BUNIT differs are rejected
    pixel_scale: float | None = None  # arcsec/pixel expected
    pixel_scale_key: str | None = "PIXSCALE"
    pixel_scale_rtol: float = 0.01
    rgb_channels: tuple[str, ...] = ("i", "r", "g")  # rgb: the bands shown as R, G, B

    def __post_init__(self) -> None:
        if self.cube_band_order:
            missing = [b for b in self.bands if canonical_band(b) not in map(canonical_band, self.cube_band_order)]
            if missing:
                raise ValueError(f"cube_band_order {list(self.cube_band_order)} lacks band(s) {missing} listed in bands")
        if self.id_pattern:
            groups = set(re.compile(self.id_pattern).groupindex)
            if not groups & {"id", "galaxy"}:
                raise ValueError(f"id_pattern {self.id_pattern!r} needs a named group (?P<galaxy>...) or (?P<id>...)")

    @classmethod
    def from_source(cls, source: Mapping[str, Any], image_shape: Sequence[int]) -> SourceLayout:
        """Build a layout from one ``sources`` entry of the config."""
        return cls(
            layout=source["layout"],
            bands=tuple(source["bands"]),
            image_shape=(int(image_shape[0]), int(image_shape[1])),
            id_key=source.get("id_key"),
            galaxy_key=source.get("galaxy_key"),
            projection_key=source.get("projection_key"),
            id_pattern=source.get("id_pattern"),
            band_key=source.get("band_key", "BAND"),
            cube_band_order=tuple(source.get("cube_band_order") or ()),
            hdu=source.get("hdu", 0),
            unit=source.get("unit"),
            pixel_scale=source.get("pixel_scale"),
            pixel_scale_key=source.get("pixel_scale_key", "PIXSCALE"),
            rgb_channels=tuple(source.get("rgb_channels") or ("i", "r", "g")),
        )


@dataclass(frozen=True)
class GalaxyImage:
    """One image read from a file.

    Attributes:
        image_id: unique id within the source.
        galaxy_id: simulated galaxy id (projections of one galaxy share it); equals
            ``image_id`` for observations.
        projection_id: projection index, -1 when the source has none.
        pixels: (bands, y, x) float32 in the file's unit, bands in ``bands`` order.
        bands: band names of the first axis (the source's ``bands``).
        unit: the file's flux unit (BUNIT or the format's documented unit), None if unknown.
        pixel_scale_arcsec: angular pixel size, None if the file has none (NIHAO).
        pixel_size_pc: physical pixel size in parsec, None if unknown.
        redshift: redshift the image was made for, None if unknown.
        file: the file it came from.
    """

    image_id: str
    galaxy_id: str
    projection_id: int
    pixels: np.ndarray
    bands: tuple[str, ...] = ()
    unit: str | None = None
    pixel_scale_arcsec: float | None = None
    pixel_size_pc: float | None = None
    redshift: float | None = None
    file: str = ""


@contextlib.contextmanager
def open_fits(path: str | Path) -> Iterator[Any]:
    """Open a FITS file; any read error becomes ``RejectedFile(code='unreadable')``."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
            yield hdul
    except RejectedFile:
        raise
    except (OSError, ValueError, TypeError, IndexError, EOFError, KeyError) as exc:
        raise RejectedFile(f"not a readable FITS file ({type(exc).__name__}: {exc})", "unreadable") from None


def header_value(headers: Sequence[Mapping[str, Any]], key: str | None) -> str | None:
    """The first non-empty value of ``key`` among ``headers`` (as a stripped string), else None."""
    if not key:
        return None
    for h in headers:
        if key in h and str(h[key]).strip() != "":
            return str(h[key]).strip()
    return None


def canonical_band(name: str) -> str:
    """Band name as the config writes it: ``'sloan/sdss_g'``, ``'SDSS_g'``, ``'G'`` → ``'g'``.

    The last token after ``/``, ``_``, ``.`` or a space, lower-cased.
    """
    return re.split(r"[/_.\s]", str(name).strip())[-1].lower()


def bands_from_header(header: Mapping[str, Any], n: int) -> list[str] | None:
    """Band names along a cube's first axis from header keywords, or None if absent.

    Tried in order: ``FILTER0..FILTER{n-1}`` (SKIRT), ``BAND0..`` and ``BANDS``
    (Legacy Survey cutouts: ``BANDS = 'grz'`` or ``'g,r,z'``).  Names are canonical
    (:func:`canonical_band`).
    """
    for prefix in ("FILTER", "BAND"):
        names = [header.get(f"{prefix}{k}") for k in range(n)]
        if any(v is not None for v in names):
            if any(v is None for v in names):
                missing = [f"{prefix}{k}" for k, v in enumerate(names) if v is None]
                raise RejectedFile(f"header keyword(s) {missing} missing: {prefix}0..{prefix}{n - 1} must name "
                                   f"the {n} planes of the cube", "missing_keyword")
            return [canonical_band(v) for v in names]
    value = header.get("BANDS")
    if value is not None:
        text = str(value).strip()
        parts = [p for p in re.split(r"[,\s]+", text) if p] if re.search(r"[,\s]", text) else list(text)
        if len(parts) != n:
            raise RejectedFile(f"header BANDS={text!r} names {len(parts)} bands for a cube of {n} planes",
                               "bad_header")
        return [canonical_band(p) for p in parts]
    return None


def select_bands(data: np.ndarray, order: Sequence[str], wanted: Sequence[str], where: str) -> np.ndarray:
    """Planes of ``data`` (planes, y, x) in ``wanted`` order, given the planes' band ``order``.

    Raises:
        RejectedFile: a wanted band is not in ``order``; ``where`` says which keyword or
            setting named the planes (it goes into the message).
    """
    have = [canonical_band(b) for b in order]
    missing = [b for b in wanted if canonical_band(b) not in have]
    if missing:
        raise RejectedFile(f"missing band(s) {missing}: the planes are {list(order)} ({where})", "missing_band")
    return data[[have.index(canonical_band(b)) for b in wanted]]


def match_id_pattern(path: str | Path, pattern: str | None) -> dict[str, str]:
    """Named groups of ``pattern`` matched against the file's name ({} without a pattern).

    Raises:
        RejectedFile: the name does not match (code ``bad_filename``).
    """
    if not pattern:
        return {}
    name = Path(path).name
    m = re.fullmatch(pattern, name) or re.search(pattern, name)
    if m is None:
        raise RejectedFile(f"file name {name!r} does not match the source's id_pattern {pattern!r}", "bad_filename")
    return {k: v for k, v in m.groupdict().items() if v is not None}


def resolve_ids(headers: Sequence[Mapping[str, Any]], path: str | Path, layout: SourceLayout,
                projection: int | None = None) -> tuple[str, str, int]:
    """(image id, galaxy id, projection) from header keywords, else from the file-name pattern.

    ``projection`` is given by readers whose files hold several projections (NIHAO).
    Without an image id, the id is ``<galaxy>_p<projection>`` (or the galaxy id).

    Raises:
        RejectedFile: a configured keyword is missing and the pattern does not supply it.
    """
    groups = match_id_pattern(path, layout.id_pattern)
    source_hint = f" or group of id_pattern {layout.id_pattern!r}" if layout.id_pattern else ""

    def lookup(key: str | None, group: str, what: str, required: bool) -> str | None:
        value = header_value(headers, key) or groups.get(group)
        if value is None and required:
            raise RejectedFile(f"header keyword {key!r} ({what}){source_hint} is missing", "missing_keyword")
        return value

    galaxy_id = lookup(layout.galaxy_key, "galaxy", "the simulated galaxy id", bool(layout.galaxy_key))
    if projection is None:
        value = lookup(layout.projection_key, "projection", "the projection", bool(layout.projection_key))
        if value is not None:
            try:
                projection = int(value)
            except ValueError:
                raise RejectedFile(f"projection {value!r} (header {layout.projection_key} or file name) is not an "
                                   f"integer", "bad_header") from None
    image_id = lookup(layout.id_key, "id", "the image id", False)
    compose = projection is not None and (image_id is None or layout.id_key == layout.galaxy_key)
    if image_id is None or compose:
        if galaxy_id is None:
            raise RejectedFile(f"header keyword {layout.id_key!r} (the image id){source_hint} is missing",
                               "missing_keyword")
        image_id = f"{galaxy_id}_p{projection}" if projection is not None else galaxy_id
    return image_id, galaxy_id or image_id, -1 if projection is None else projection


def check_unit(headers: Sequence[Mapping[str, Any]], layout: SourceLayout, key: str = "BUNIT") -> str | None:
    """The file's unit (header ``key``); rejects a file whose unit differs from the declared one.

    Units compare case- and space-insensitively.  A file without ``key`` is trusted to
    be in the declared unit.
    """
    value = header_value(headers, key)
    if layout.unit is None or value is None:
        return value or layout.unit
    if value.replace(" ", "").lower() != layout.unit.replace(" ", "").lower():
        raise RejectedFile(f"unit {value!r} (header keyword {key}) differs from the source's declared unit "
                           f"{layout.unit!r}; convert the file or correct sources[].unit", "wrong_unit")
    return value


def check_pixel_scale(headers: Sequence[Mapping[str, Any]], layout: SourceLayout) -> float | None:
    """The file's pixel scale in arcsec (header ``pixel_scale_key``, else the config's value).

    Raises:
        RejectedFile: the header value is not a number, or differs from the source's
            ``pixel_scale`` by more than ``pixel_scale_rtol``.
    """
    value = header_value(headers, layout.pixel_scale_key)
    if value is None:
        return layout.pixel_scale  # many archives omit it; the config's value is then trusted
    try:
        scale = float(value)
    except ValueError:
        raise RejectedFile(f"header {layout.pixel_scale_key}={value!r} is not a number", "bad_header") from None
    if layout.pixel_scale is not None and not np.isclose(scale, layout.pixel_scale, rtol=layout.pixel_scale_rtol):
        raise RejectedFile(
            f"pixel scale {scale} arcsec/pixel ({layout.pixel_scale_key}) differs from the "
            f"source's pixel_scale {layout.pixel_scale}", "pixel_scale"
        )
    return scale


def check_pixels(pixels: np.ndarray, bands: Sequence[str], image_shape: Sequence[int]) -> np.ndarray:
    """Float32 pixels of the expected (bands, H, W) shape with only finite values.

    Raises:
        RejectedFile: wrong shape (``wrong_shape``) or NaN/inf pixels (``non_finite``).
    """
    expected = (len(bands), *map(int, image_shape))
    if tuple(pixels.shape) != expected:
        raise RejectedFile(f"image shape {tuple(pixels.shape)} differs from expected (bands, H, W) = {expected}",
                           "wrong_shape")
    pixels = np.asarray(pixels, dtype=np.float32)
    bad = ~np.isfinite(pixels)
    if bad.any():
        per_band = {bands[b]: int(bad[b].sum()) for b in range(len(bands)) if bad[b].any()}
        raise RejectedFile(f"non-finite pixels (NaN/inf) per band: {per_band}", "non_finite")
    return pixels
