"""Per-galaxy multi-band cutouts from SDSS corrected frames and a galaxy catalogue.

The route for a user who holds what SDSS distributes (frames + a catalogue such as
UPenn PhotDec) rather than ready-made cutouts.  Three steps, each a rule:

1. :func:`build_frame_index`: the WCS footprint of every frame, read once per frame
   directory from the headers only.
2. :func:`plan_cutouts`: which frame serves each catalogue row in each band (the
   catalogue's own run/camcol/field, a neighbouring field when the cutout crosses the
   frame's edge, or any frame whose footprint holds it), with the rows that cannot be
   cut (``off_frame``, ``missing_band``) kept and their reasons; rows sorted by field so
   that a shard of consecutive rows needs few frames.
3. :func:`cut_shard`: one contiguous slice of the plan.  Each frame is read once; each
   band is resampled with ``reproject.reproject_adaptive`` (flux-conserving) onto one
   TAN grid per galaxy centred on its catalogue position, north up, east left, at the
   survey's pixel scale, so the bands share a pixel grid although the frames do not.

Output: a prepared shard (see docs/contracts.md) that the ingestion normalises.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simobs.data.sdss_frames import FrameError, frame_ivar, read_frame, read_frame_header
from simobs.data.shards import ShardWriter
from simobs.io import atomic_path

__all__ = [
    "CutoutError",
    "CatalogueColumns",
    "read_catalogue",
    "build_frame_index",
    "plan_cutouts",
    "cut_shard",
    "cutout_wcs",
    "resample_band",
    "INDEX_WCS_KEYS",
]

log = logging.getLogger(__name__)

INDEX_WCS_KEYS = ("NAXIS1", "NAXIS2", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "CD1_1", "CD1_2", "CD2_1", "CD2_2")
_MARGIN = 3.0  # frame pixels the resampling kernel needs beyond the cutout's edge


class CutoutError(ValueError):
    """The catalogue or the frames cannot give trustworthy cutouts; the message names file, row or column."""


# --------------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class CatalogueColumns:
    """Column names of the catalogue (``sources[].catalogue`` in the config)."""

    id: str = "objid"
    ra: str = "ra"
    dec: str = "dec"
    run: str | None = None
    camcol: str | None = None
    field: str | None = None

    @property
    def has_fields(self) -> bool:
        return bool(self.run and self.camcol and self.field)

    @classmethod
    def from_config(cls, cat: Mapping[str, Any]) -> CatalogueColumns:
        return cls(id=cat.get("id_column", "objid"), ra=cat.get("ra_column", "ra"), dec=cat.get("dec_column", "dec"),
                   run=cat.get("run_column"), camcol=cat.get("camcol_column"), field=cat.get("field_column"))


def read_catalogue(path: str | os.PathLike[str], columns: CatalogueColumns) -> pd.DataFrame:
    """Read a FITS table or CSV catalogue into ``row, id, ra, dec[, run, camcol, field]``.

    Raises:
        CutoutError: the file is missing or unreadable, a named column is absent,
            RA/Dec are not finite numbers, or an id appears twice (naming rows).
    """
    path = str(path)
    wanted = [c for c in (columns.id, columns.ra, columns.dec, columns.run, columns.camcol, columns.field) if c]
    if not os.path.isfile(path):
        raise CutoutError(f"catalogue {path} does not exist; set sources[].catalogue.path")
    try:
        if path.lower().endswith((".csv", ".csv.gz", ".txt")):
            frame = pd.read_csv(path, dtype={columns.id: str})
        else:
            from astropy.table import Table

            table = Table.read(path)
            missing = [c for c in wanted if c not in table.colnames]
            if missing:
                raise CutoutError(_missing_columns(path, missing, table.colnames))
            frame = table[wanted].to_pandas()
    except CutoutError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise CutoutError(f"catalogue {path}: not a readable FITS table or CSV ({type(exc).__name__}: {exc})") from None
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise CutoutError(_missing_columns(path, missing, list(frame.columns)))
    out = pd.DataFrame({"row": np.arange(len(frame)), "id": frame[columns.id].astype(str).str.strip()})
    for key in ("ra", "dec"):
        values = pd.to_numeric(frame[getattr(columns, key)], errors="coerce").to_numpy(float)
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise CutoutError(f"catalogue {path}: column {getattr(columns, key)!r} is not a finite number in "
                              f"row(s) {bad[:5].tolist()} (ids {out['id'].iloc[bad[:5]].tolist()})")
        out[key] = values
    if columns.has_fields:
        for key in ("run", "camcol", "field"):
            out[key] = pd.to_numeric(frame[getattr(columns, key)], errors="raise").astype(int).to_numpy()
    dup = out["id"].duplicated(keep=False)
    if dup.any():
        first = out.loc[dup, "id"].iloc[0]
        rows = out.index[out["id"] == first].tolist()
        raise CutoutError(
            f"catalogue {path}: {int(out['id'][dup].nunique())} id(s) in column {columns.id!r} appear more than "
            f"once, e.g. {first!r} in rows {rows}; every galaxy needs a unique id. De-duplicate the catalogue."
        )
    return out


def _missing_columns(path: str, missing: Sequence[str], have: Sequence[str]) -> str:
    return (f"catalogue {path} has no column(s) {list(missing)} (named in sources[].catalogue.*_column); "
            f"its columns are {list(have)[:30]}")


# --------------------------------------------------------------------------- frame index


def build_frame_index(frames: Sequence[str], bands: Sequence[str]) -> pd.DataFrame:
    """One row per frame of the wanted bands: file, band, run, camcol, field and its TAN WCS.

    Only headers are read.  Frames of other bands (e.g. u, z when the study uses g, r, i)
    are left out.

    Raises:
        CutoutError: no frame of some band; a frame without WCS or whose FILTER
            contradicts its name (the message names the file).
    """
    rows = []
    for path in frames:
        try:
            name, header = read_frame_header(path)
        except FrameError as exc:
            raise CutoutError(str(exc)) from None
        if name.band not in bands:
            continue
        row = {"file": str(path), "band": name.band, "run": name.run, "camcol": name.camcol, "field": name.field}
        row.update({k: float(header[k]) for k in INDEX_WCS_KEYS[:6]})
        cd = _header_wcs(header).pixel_scale_matrix  # CD or PC x CDELT, as the header has it
        row.update(dict(zip(INDEX_WCS_KEYS[6:], map(float, cd.ravel()))))
        rows.append(row)
    index = pd.DataFrame(rows, columns=["file", "band", "run", "camcol", "field", *INDEX_WCS_KEYS])
    missing = [b for b in bands if b not in set(index["band"])]
    if missing:
        raise CutoutError(f"no frame of band(s) {missing} among the {len(frames)} frame files; the source's "
                          f"path must match frame-<band>-<run6>-<camcol>-<field4>.fits[.bz2] of every band")
    return index.sort_values(["run", "camcol", "field", "band"], ignore_index=True)


def _header_wcs(header):
    from astropy.wcs import WCS

    return WCS(header, naxis=2)


def _index_wcs(row: Mapping[str, Any]):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [row["CRPIX1"], row["CRPIX2"]]
    w.wcs.crval = [row["CRVAL1"], row["CRVAL2"]]
    w.wcs.cd = [[row["CD1_1"], row["CD1_2"]], [row["CD2_1"], row["CD2_2"]]]
    w.pixel_shape = (int(row["NAXIS1"]), int(row["NAXIS2"]))
    return w


def cutout_wcs(ra: float, dec: float, shape: tuple[int, int], pixel_scale: float):
    """The TAN grid of one cutout: centred on (ra, dec) deg, north up, east left, ``pixel_scale`` arcsec."""
    from astropy.wcs import WCS

    h, w = shape
    out = WCS(naxis=2)
    out.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    out.wcs.crval = [ra, dec]
    out.wcs.crpix = [(w + 1) / 2.0, (h + 1) / 2.0]  # the centre of the array (FITS pixels are 1-based)
    s = pixel_scale / 3600.0
    out.wcs.cd = [[-s, 0.0], [0.0, s]]
    out.pixel_shape = (w, h)
    return out


def _corner_offsets(shape: tuple[int, int], pixel_scale: float) -> np.ndarray:
    """(8, 2) tangent-plane offsets (east, north) in deg of the cutout's corners and edge midpoints."""
    h, w = shape
    hx, hy = w / 2.0 * pixel_scale / 3600.0, h / 2.0 * pixel_scale / 3600.0
    return np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy], [0, -hy], [0, hy], [-hx, 0], [hx, 0]])


def _frame_pixels(wcs, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = wcs.wcs_world2pix(ra, dec, 0)
    return x, y


# --------------------------------------------------------------------------- plan

PLAN_REJECT_CODES = ("off_frame", "missing_band")


def plan_cutouts(
    catalogue: pd.DataFrame,
    index: pd.DataFrame,
    *,
    bands: Sequence[str],
    shape: tuple[int, int],
    pixel_scale: float,
    off_frame: str = "reject",
) -> pd.DataFrame:
    """Assign one frame per band to every catalogue row, or a rejection reason.

    Args:
        catalogue: from :func:`read_catalogue`.
        index: from :func:`build_frame_index`.
        shape: (H, W) of the cutouts in pixels.
        pixel_scale: arcsec per pixel of the cutouts (the survey's).
        off_frame: ``reject`` rows whose cutout no single frame holds in some band, or
            ``pad``: cut them from the frame holding their centre, masking the rest.

    Returns:
        The catalogue's rows sorted by their first band's (run, camcol, field), with
        columns ``frame_<band>`` (file or ""), ``padded`` (bool), ``code`` and ``reason``
        ("" for rows that will be cut).
    """
    from astropy import units as u
    from astropy.coordinates import SkyCoord, search_around_sky

    if off_frame not in ("reject", "pad"):
        raise ValueError(f"catalogue.off_frame must be 'reject' or 'pad', not {off_frame!r}")
    n = len(catalogue)
    ra, dec = catalogue["ra"].to_numpy(float), catalogue["dec"].to_numpy(float)
    offsets = _corner_offsets(shape, pixel_scale)
    cos_dec = np.cos(np.radians(dec))
    corner_ra = ra[:, None] + offsets[None, :, 0] / cos_dec[:, None]
    corner_dec = dec[:, None] + offsets[None, :, 1]
    has_fields = {"run", "camcol", "field"} <= set(catalogue.columns)

    # Candidate (row, frame) pairs: the catalogue's field and its neighbours, or every
    # frame whose footprint circle is near the row (a k-d tree, not rows x frames).
    if has_fields:
        key = catalogue[["run", "camcol", "field"]].reset_index().rename(columns={"index": "i"})
        parts = []
        for df in (-1, 0, 1):
            shifted = key.assign(field=key["field"] + df)
            parts.append(shifted.merge(index.reset_index().rename(columns={"index": "j"}), on=["run", "camcol", "field"]))
        pairs = pd.concat(parts, ignore_index=True)
        pair_i, pair_j = pairs["i"].to_numpy(), pairs["j"].to_numpy()
    else:
        centres = []
        radius = 0.0
        for _, f in index.iterrows():
            w = _index_wcs(f)
            c = w.wcs_pix2world([[(f["NAXIS1"] - 1) / 2, (f["NAXIS2"] - 1) / 2]], 0)[0]
            centres.append(c)
            diag = np.hypot(f["NAXIS1"], f["NAXIS2"]) / 2 * np.hypot(f["CD1_1"], f["CD2_1"])
            radius = max(radius, diag)
        centres = np.asarray(centres)
        frames_sky = SkyCoord(centres[:, 0] * u.deg, centres[:, 1] * u.deg)
        rows_sky = SkyCoord(ra * u.deg, dec * u.deg)
        reach = radius + np.hypot(*offsets[2]) + 1e-3
        pair_i, pair_j, _, _ = search_around_sky(rows_sky, frames_sky, reach * u.deg)

    # For each pair: does the frame hold the whole cutout (with the kernel's margin) and
    # its centre?  How far is the cutout from the frame's edge (to prefer the safest)?
    contains = np.zeros(len(pair_i), dtype=bool)
    covers = np.zeros(len(pair_i), dtype=bool)
    clearance = np.full(len(pair_i), -np.inf)
    for j in np.unique(pair_j):
        sel = np.flatnonzero(pair_j == j)
        f = index.iloc[int(j)]
        w = _index_wcs(f)
        rows = pair_i[sel]
        nx, ny = f["NAXIS1"], f["NAXIS2"]
        cx, cy = _frame_pixels(w, corner_ra[rows].ravel(), corner_dec[rows].ravel())
        cx, cy = cx.reshape(len(rows), -1), cy.reshape(len(rows), -1)
        edge = np.minimum.reduce([cx.min(1) + 0.5, nx - 0.5 - cx.max(1), cy.min(1) + 0.5, ny - 0.5 - cy.max(1)])
        contains[sel] = edge >= _MARGIN
        clearance[sel] = edge
        x0, y0 = _frame_pixels(w, ra[rows], dec[rows])
        covers[sel] = (x0 >= -0.5) & (x0 <= nx - 0.5) & (y0 >= -0.5) & (y0 <= ny - 0.5)
    if has_fields:
        own = index["field"].to_numpy()[pair_j] == catalogue["field"].to_numpy()[pair_i]
        clearance = clearance + np.where(own, 1e6, 0.0) * contains  # the catalogue's own field first

    band_of = index["band"].to_numpy()[pair_j]
    files = index["file"].to_numpy()
    plan = catalogue.copy()
    codes = np.full(n, "", dtype=object)
    reasons = np.full(n, "", dtype=object)
    padded = np.zeros(n, dtype=bool)
    covered_any = np.zeros(n, dtype=bool)
    band_missing: dict[int, list[str]] = {}
    band_cut: dict[int, list[str]] = {}
    for b in bands:
        in_band = band_of == b
        col = np.full(n, "", dtype=object)
        for mode, ok in (("contains", contains), ("covers", covers)):
            sel = np.flatnonzero(in_band & ok)
            if mode == "covers":
                covered_any[pair_i[sel]] = True
                if off_frame != "pad":
                    continue
                sel = sel[col[pair_i[sel]] == ""]
                padded[pair_i[sel]] = True
            if not len(sel):
                continue
            order = sel[np.lexsort((-clearance[sel], pair_i[sel]))]
            first = order[np.r_[True, pair_i[order][1:] != pair_i[order][:-1]]]
            take = first[col[pair_i[first]] == ""]
            col[pair_i[take]] = files[pair_j[take]]
        plan[f"frame_{b}"] = col
        covered_b = np.zeros(n, dtype=bool)
        covered_b[pair_i[np.flatnonzero(in_band & covers)]] = True
        for i in np.flatnonzero(col == ""):
            (band_cut if covered_b[i] else band_missing).setdefault(int(i), []).append(b)
    for i in range(n):
        if i in band_missing and covered_any[i]:
            codes[i] = "missing_band"
            where = f"run/camcol/field {tuple(catalogue.iloc[i][['run', 'camcol', 'field']])}" if has_fields else "its position"
            reasons[i] = f"no {'/'.join(band_missing[i])}-band frame covers {where}; add the frame(s) to the frame directory"
        elif i in band_missing or i in band_cut:
            codes[i] = "off_frame"
            bs = band_cut.get(i, []) + band_missing.get(i, [])
            reasons[i] = (f"no single {'/'.join(bs)}-band frame holds the whole {shape[1]}x{shape[0]} cutout "
                          f"(catalogue.off_frame: pad cuts it from the frame holding its centre, masked)"
                          if covered_any[i] else "the position lies outside every frame")
    plan["padded"] = padded & (codes == "")
    plan["code"] = codes
    plan["reason"] = reasons
    first = bands[0]
    sort_key = plan[f"frame_{first}"].replace("", "~")
    return plan.assign(_k=sort_key).sort_values(["_k", "ra"], kind="stable").drop(columns="_k").reset_index(drop=True)


# --------------------------------------------------------------------------- cutting


def resample_band(frame_image: np.ndarray, frame_wcs, ivar: np.ndarray | None, out_wcs, shape: tuple[int, int]):
    """Resample one band onto ``out_wcs``: (image, ivar or None, footprint) each (H, W)."""
    from reproject import reproject_adaptive

    h, w = shape
    ys, xs = np.mgrid[-0.5 : h : h / 2.0, -0.5 : w : w / 2.0]
    ra, dec = out_wcs.wcs_pix2world(xs.ravel(), ys.ravel(), 0)
    fx, fy = frame_wcs.wcs_world2pix(ra, dec, 0)
    ny, nx = frame_image.shape
    x0 = int(max(0, np.floor(fx.min() - 2 * _MARGIN)))
    x1 = int(min(nx, np.ceil(fx.max() + 2 * _MARGIN) + 1))
    y0 = int(max(0, np.floor(fy.min() - 2 * _MARGIN)))
    y1 = int(min(ny, np.ceil(fy.max() + 2 * _MARGIN) + 1))
    sub_wcs = frame_wcs[y0:y1, x0:x1]
    # The Gaussian kernel (reproject's default): centroids unbiased to < 0.01 pixel at every
    # sub-pixel phase and flux kept to < 1e-4 (the Hann kernel biases centroids by up to 0.1
    # pixel).  Both grids are TAN, so the round-trip check of the transformation is skipped.
    kw = dict(shape_out=shape, conserve_flux=True, boundary_mode="strict", roundtrip_coords=False)
    image, footprint = reproject_adaptive((frame_image[y0:y1, x0:x1], sub_wcs), out_wcs, **kw)
    out_ivar = None
    if ivar is not None:
        sub = ivar[y0:y1, x0:x1]
        sigma2 = np.where(sub > 0, 1.0 / np.where(sub > 0, sub, 1.0), np.nan)
        var_kw = {**kw, "conserve_flux": False, "return_footprint": False}
        # The kernel averages neighbouring pixels, so an output pixel's variance is
        # sum(w_i^2 var_i), below the resampled variance sum(w_i var_i).  Their ratio is
        # measured per cutout on one white-noise realisation with the frame's variance.
        mean_var = reproject_adaptive((sigma2, sub_wcs), out_wcs, **var_kw)
        noise = np.random.default_rng(0).standard_normal(sub.shape) * np.sqrt(np.nan_to_num(sigma2))
        noise_out = reproject_adaptive((noise, sub_wcs), out_wcs, **var_kw)
        ok = np.isfinite(mean_var) & np.isfinite(noise_out) & (mean_var > 0)
        factor = float(np.mean(noise_out[ok] ** 2) / np.mean(mean_var[ok])) if ok.any() else 1.0
        var_out = mean_var * factor
        out_ivar = np.where(ok, 1.0 / np.where(ok, var_out, 1.0), 0.0)
    return image, out_ivar, footprint


def cut_shard(
    plan: pd.DataFrame,
    *,
    bands: Sequence[str],
    shape: tuple[int, int],
    pixel_scale: float,
    catalogue_path: str,
    out: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    with_ivar: bool = False,
) -> dict[str, int]:
    """Cut the rows of ``plan`` (one shard's slice) into a prepared shard and its manifest.

    Each frame is read once: rows come sorted by field and a frame is dropped from
    memory after its last row.  Rejected plan rows go to the manifest with their reason.

    Writes ``out``, a prepared shard (:class:`simobs.data.shards.ShardWriter`):
    ``images`` (N, bands, H, W) float32 nanomaggies, ``ivar`` if asked, ``ids`` =
    ``galaxy_ids`` = catalogue ids, ``projection_ids`` -1, ``files``
    ("<catalogue>#row=<n>"), ``params/ra``, ``params/dec`` (deg), ``params/padded``
    (1: cut with ``off_frame: pad``), attr ``n_files`` = rows; and ``manifest``
    (file, code, reason), both atomically.

    Returns:
        ``{"n_rows", "n_images", "n_rejected", "n_frames_read"}``.
    """
    frame_cols = [f"frame_{b}" for b in bands]
    todo = plan[plan["code"] == ""]
    remaining: dict[str, int] = {}
    for col in frame_cols:
        for f in todo[col]:
            remaining[f] = remaining.get(f, 0) + 1
    cache: dict[str, tuple] = {}
    n_read = 0
    n_bands, (h, w) = len(bands), shape
    with ShardWriter(out, bands=bands, image_shape=shape, manifest=manifest, with_ivar=with_ivar) as writer:
        for r in plan[plan["code"] != ""].itertuples():
            writer.reject(f"{catalogue_path}#row={r.row} id={r.id}", r.code, f"id {r.id}: {r.reason}")
        for r in todo.itertuples():
            cube = np.zeros((n_bands, h, w), dtype=np.float32)
            ivar_cube = np.zeros((n_bands, h, w), dtype=np.float32)
            out_wcs = cutout_wcs(r.ra, r.dec, shape, pixel_scale)
            failed = None
            for b, band in enumerate(bands):
                path = getattr(r, f"frame_{band}")
                if path not in cache:
                    frame = read_frame(path, expected_band=band)
                    n_read += 1
                    cache[path] = (frame.image, frame.wcs(), frame_ivar(frame) if with_ivar else None)
                image, fwcs, fivar = cache[path]
                img, iv, foot = resample_band(image, fwcs, fivar, out_wcs, shape)
                remaining[path] -= 1
                if remaining[path] == 0:
                    del cache[path]
                valid = np.isfinite(img) & (foot > 0)
                if not valid.all() and not r.padded:
                    failed = f"{int((~valid).sum())} pixels of the {band}-band cutout fall off frame {path}"
                cube[b] = np.where(valid, img, 0.0)
                if iv is not None:
                    ivar_cube[b] = np.where(valid, iv, 0.0)
            if failed:
                writer.reject(f"{catalogue_path}#row={r.row} id={r.id}", "off_frame", f"id {r.id}: {failed}")
                continue
            writer.add(cube, image_id=r.id, galaxy_id=r.id, projection_id=-1, file=f"{catalogue_path}#row={r.row}",
                       params={"ra": float(r.ra), "dec": float(r.dec), "padded": float(bool(r.padded))},
                       ivar=ivar_cube if with_ivar else None)
        writer.n_files = len(plan)
    n_rejected = len(writer.rejected)
    log.info("cut %d of %d rows from %d frames (%d rejected)", writer.n_images, len(plan), n_read, n_rejected)
    return {"n_rows": len(plan), "n_images": writer.n_images, "n_rejected": n_rejected, "n_frames_read": n_read}


# --------------------------------------------------------------------------- config glue


def write_frame_index(frames_pattern: str, bands: Sequence[str], out: str | os.PathLike[str]) -> int:
    """Rule frame_index: index every frame matching ``frames_pattern``; returns the count."""
    from simobs.data.ingest import list_source_files

    frames = list_source_files(frames_pattern)
    if not frames:
        raise CutoutError(f"path {frames_pattern!r} matches no frame; put the corrected frames there or fix "
                          f"sources[].path")
    index = build_frame_index(frames, bands)
    with atomic_path(out) as tmp:
        index.to_csv(tmp, sep="\t", index=False)
    return len(index)


def write_cutout_plan(source: Mapping[str, Any], image_size: Sequence[int], *, index: str | os.PathLike[str],
                      out: str | os.PathLike[str]) -> pd.DataFrame:
    """Rule cutout_plan: read the catalogue, assign frames, write the sorted plan (TSV)."""
    cat = source["catalogue"]
    catalogue = read_catalogue(cat["path"], CatalogueColumns.from_config(cat))
    frames = pd.read_csv(index, sep="\t")
    plan = plan_cutouts(catalogue, frames, bands=source["bands"], shape=(int(image_size[0]), int(image_size[1])),
                        pixel_scale=float(source.get("pixel_scale", 0.396)), off_frame=cat.get("off_frame", "reject"))
    with atomic_path(out) as tmp:
        plan.to_csv(tmp, sep="\t", index=False)
    return plan


def cut_source_shard(source: Mapping[str, Any], image_size: Sequence[int], *, plan: str | os.PathLike[str],
                     shard: int, n_shards: int, out: str | os.PathLike[str],
                     manifest: str | os.PathLike[str]) -> dict[str, int]:
    """Rule cutout_shard: cut shard ``shard`` of ``n_shards`` of the plan's rows."""
    from simobs.data.ingest import shard_slice

    table = pd.read_csv(plan, sep="\t", dtype={"id": str}, keep_default_na=False)
    table["padded"] = table["padded"].astype(str) == "True"
    part = table.iloc[shard_slice(len(table), shard, n_shards)]
    return cut_shard(part, bands=source["bands"], shape=(int(image_size[0]), int(image_size[1])),
                     pixel_scale=float(source.get("pixel_scale", 0.396)), catalogue_path=source["catalogue"]["path"],
                     out=out, manifest=manifest, with_ivar=bool(source["catalogue"].get("ivar", False)))
