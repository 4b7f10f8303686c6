"""Ingestion: raw FITS files → one validated, normalised HDF5 image dataset per source.

Large sources (the paper's ~600,000 SDSS cutouts) are ingested in shards that run as
separate jobs; the workflow DAG holds one index job, ``n_shards`` shard jobs and one
merge job per source, never one job per file.

1. :func:`write_file_index` lists a source's files once (sorted, so shards are stable).
2. :func:`ingest_shard` reads, validates and normalises one contiguous slice of the index.
3. :func:`merge_shards` checks ids across shards and writes the final dataset.

Bad input never silently disappears: every rejected file is listed with its reason in a
manifest (policy ``skip``) or stops the job with a message naming the file (policy
``fail``).  Every output is written atomically, so a failed or killed job leaves no
partial dataset that could look complete.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from simobs import __version__
from simobs.data.formats import RejectedFile, SourceLayout, read_images
from simobs.data.formats.base import check_pixels
from simobs.data.shards import (
    MANIFEST_COLUMNS,
    STR,
    ShardWriter,
    iter_shard_blocks,
    read_manifest,
    shard_info,
    write_manifest,
    write_params,
)
from simobs.io import atomic_path

__all__ = [
    "IngestError",
    "Normalisation",
    "ShardResult",
    "list_source_files",
    "write_file_index",
    "read_file_index",
    "shard_slice",
    "ingest_shard",
    "ingest_prepared_shard",
    "prepared_manifest_path",
    "merge_shards",
    "layout_from_source",
]

log = logging.getLogger(__name__)



class IngestError(RuntimeError):
    """Ingestion cannot produce a trustworthy dataset; the message says why and what to do."""


# --------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class Normalisation:
    """Pixel normalisation applied at ingestion and recorded in the dataset.

    Attributes:
        method: ``asinh`` (x' = asinh(x / s_b), the SDSS "luptitude" stretch that keeps
            faint outskirts and bright cores in one dynamic range), ``linear``
            (x' = x / s_b), ``lupton_rgb`` (the 8-bit Lupton et al. 2004 colour stretch of
            SkyServer JPEGs, :func:`simobs.data.formats.rgb.lupton_rgb`, values in [0, 1]) or ``none``.
        scale: softening/scale s_b per band, in the file's flux units.
        lupton: lupton_rgb's ``channels``, ``Q``, ``stretch``, ``minimum`` (defaults
            :data:`simobs.data.formats.rgb.LUPTON_DEFAULTS`).
    """

    method: str = "asinh"
    scale: Mapping[str, float] = field(default_factory=dict)
    lupton: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in ("asinh", "linear", "lupton_rgb", "none"):
            raise ValueError(f"normalisation method must be asinh, linear, lupton_rgb or none, not {self.method!r}")

    def scales(self, bands: Sequence[str]) -> np.ndarray:
        if self.method == "none":
            return np.ones(len(bands), dtype=np.float32)
        missing = [b for b in bands if b not in self.scale]
        if missing:
            raise ValueError(f"normalisation.scale has no value for band(s) {missing}; add them to the config")
        return np.asarray([float(self.scale[b]) for b in bands], dtype=np.float32)

    def apply(self, pixels: np.ndarray, bands: Sequence[str]) -> np.ndarray:
        """Normalise (..., bands, H, W) pixels."""
        if self.method == "lupton_rgb":
            from simobs.data.formats.rgb import LUPTON_DEFAULTS, lupton_rgb

            kw = {**LUPTON_DEFAULTS, **self.lupton}
            flat = pixels.reshape(-1, *pixels.shape[-3:])
            return np.stack([lupton_rgb(p, bands, **kw) for p in flat]).reshape(pixels.shape)
        if self.method == "none":
            return pixels.astype(np.float32, copy=False)
        s = self.scales(bands)[:, None, None]
        x = pixels / s
        return (np.arcsinh(x) if self.method == "asinh" else x).astype(np.float32, copy=False)

    def invert(self, values: np.ndarray, bands: Sequence[str]) -> np.ndarray:
        """Back to the file's flux units (not defined for the clipped, 8-bit lupton_rgb)."""
        if self.method == "lupton_rgb":
            raise ValueError("the lupton_rgb stretch is clipped and 8-bit: it cannot be inverted to fluxes")
        if self.method == "none":
            return values
        s = self.scales(bands)[:, None, None]
        return (np.sinh(values) if self.method == "asinh" else values) * s

    def to_json(self, bands: Sequence[str]) -> str:
        record: dict[str, Any] = {"method": self.method, "scale": {b: float(self.scale.get(b, 1.0)) for b in bands}}
        if self.method == "lupton_rgb":
            from simobs.data.formats.rgb import LUPTON_DEFAULTS

            record["lupton"] = {**LUPTON_DEFAULTS, **self.lupton}
        return json.dumps(record)


# --------------------------------------------------------------------------- file index


def list_source_files(pattern: str) -> list[str]:
    """Sorted list of the files matching a glob pattern (``**`` recurses)."""
    return sorted(p for p in glob.iglob(pattern, recursive=True) if os.path.isfile(p))


def write_file_index(pattern: str, out: str | os.PathLike[str], *, source: str) -> int:
    """Write the sorted list of a source's files, one per line; return the count.

    Raises:
        IngestError: the pattern matches no file.
    """
    files = list_source_files(pattern)
    if not files:
        raise IngestError(
            f"source {source!r}: path {pattern!r} matches no file. Put the source's FITS files there "
            f"or correct sources[].path in the config."
        )
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(files) + "\n")
    return len(files)


def read_file_index(path: str | os.PathLike[str]) -> list[str]:
    return [line for line in Path(path).read_text().splitlines() if line.strip()]


def shard_slice(n_files: int, shard: int, n_shards: int) -> slice:
    """Contiguous slice of the index for one shard (sizes differ by at most one)."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} outside 0..{n_shards - 1}")
    base, extra = divmod(n_files, n_shards)
    start = shard * base + min(shard, extra)
    return slice(start, start + base + (1 if shard < extra else 0))


def layout_from_source(source: Mapping[str, Any], image_shape: Sequence[int]) -> SourceLayout:
    """Build a :class:`SourceLayout` from one ``sources`` entry of the config."""
    return SourceLayout.from_source(source, image_shape)


# --------------------------------------------------------------------------- shards


@dataclass
class ShardResult:
    n_files: int
    n_images: int
    rejected: pd.DataFrame

    @property
    def reason_counts(self) -> dict[str, int]:
        return dict(Counter(self.rejected["code"])) if len(self.rejected) else {}


def _rejection(policy: str, source: str, path: str, exc: RejectedFile) -> dict[str, str]:
    """The manifest row of a rejected file, or IngestError under the ``fail`` policy."""
    if policy == "fail":
        raise IngestError(
            f"source {source!r}: file {path} rejected: {exc}. Fix or remove the file, or set "
            f"ingest.on_bad_file: skip to list such files in the manifest and go on."
        )
    log.warning("rejected %s: %s", path, exc)
    return {"file": path, "code": exc.code, "reason": str(exc)}


def ingest_shard(
    files: Sequence[str],
    *,
    source: str,
    layout: SourceLayout,
    normalisation: Normalisation,
    out: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    on_bad_file: str = "skip",
    chunk_images: int = 64,
) -> ShardResult:
    """Read, validate and normalise ``files`` into a shard HDF5 file and a manifest.

    Each file is read by the reader of ``layout.layout`` (a file may hold several
    images); each image is checked for shape and finite pixels.  Duplicate ids inside
    the shard are rejected here (the later one loses); duplicates across shards are
    caught by :func:`merge_shards`.

    Raises:
        IngestError: with ``on_bad_file='fail'``, at the first bad file (naming it).
    """
    if on_bad_file not in ("skip", "fail"):
        raise ValueError(f"on_bad_file must be 'skip' or 'fail', not {on_bad_file!r}")
    seen: dict[str, str] = {}
    with ShardWriter(out, bands=layout.bands, image_shape=layout.image_shape, manifest=manifest,
                     chunk_images=chunk_images) as writer:
        for path in files:
            try:
                images = read_images(path, layout)
            except RejectedFile as exc:
                writer.reject(**_rejection(on_bad_file, source, path, exc))
                continue
            for img in images:
                try:
                    pixels = _validated(img.pixels, img.image_id, path, seen, layout, len(images) > 1)
                except RejectedFile as exc:
                    writer.reject(**_rejection(on_bad_file, source, path, exc))
                    continue
                # 8-bit RGB cutouts arrive colour-stretched (lupton_rgb); all else is normalised here
                if layout.layout != "rgb":
                    pixels = normalisation.apply(pixels, layout.bands)
                writer.add(pixels, image_id=img.image_id, galaxy_id=img.galaxy_id,
                           projection_id=img.projection_id, file=path)
        writer.n_files = len(files)
    return ShardResult(n_files=len(files), n_images=writer.n_images, rejected=writer.rejected)


def _validated(pixels: np.ndarray, image_id: str, path: str, seen: dict[str, str], layout: SourceLayout,
               name_image: bool) -> np.ndarray:
    """Checked float32 pixels; records the id in ``seen``.  Raises RejectedFile."""
    try:
        pixels = check_pixels(pixels, layout.bands, layout.image_shape)
        if image_id in seen:
            raise RejectedFile(f"duplicate id {image_id!r} (first seen in {seen[image_id]})", "duplicate_id")
    except RejectedFile as exc:
        if name_image:
            raise RejectedFile(f"image {image_id!r}: {exc}", exc.code) from None
        raise
    seen[image_id] = path
    return pixels


def prepared_manifest_path(prepared: str | os.PathLike[str]) -> Path:
    """The rejected-files manifest beside a prepared shard: ``<shard>.rejected.tsv``."""
    p = Path(prepared)
    return p.with_name(p.name.removesuffix(".h5") + ".rejected.tsv")


def ingest_prepared_shard(
    prepared: str | os.PathLike[str],
    *,
    source: str,
    layout: SourceLayout,
    normalisation: Normalisation,
    out: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    on_bad_file: str = "skip",
    chunk_images: int = 64,
) -> ShardResult:
    """Validate and normalise a prepared shard (written by a pre-ingestion stage) into a shard.

    The same checks as :func:`ingest_shard` (shape, finite pixels, duplicate ids; an
    ``ivar`` must be finite and >= 0), the same normalisation; ``params`` and ``ivar``
    (kept in the flux unit, not normalised) are carried through.  The stage's own
    rejections (``<shard>.rejected.tsv``) head the shard's manifest.

    Raises:
        IngestError: the prepared shard's bands or image size differ from the config
            (the stage ran with other settings), or under ``on_bad_file='fail'`` a
            rejection (the stage's or this one's), naming the file.
    """
    info = shard_info(prepared)
    expected = (len(layout.bands), *layout.image_shape)
    if (info["bands"] is not None and list(info["bands"]) != list(layout.bands)) or info["image_shape"] != expected:
        raise IngestError(
            f"source {source!r}: prepared shard {prepared} holds bands {info['bands']} at {info['image_shape']}, "
            f"but the config asks for bands {list(layout.bands)} at (bands, H, W) = {expected}; rerun the stage "
            f"that wrote it (snakemake --forcerun on its rule)"
        )
    stage_rejected = read_manifest(prepared_manifest_path(prepared))
    if on_bad_file == "fail" and len(stage_rejected):
        row = stage_rejected.iloc[0]
        _rejection(on_bad_file, source, row["file"], RejectedFile(row["reason"], row["code"]))
    seen: dict[str, str] = {}
    with ShardWriter(out, bands=layout.bands, image_shape=layout.image_shape, manifest=manifest,
                     chunk_images=chunk_images, with_ivar=info["has_ivar"], rejected=stage_rejected) as writer:
        for block in iter_shard_blocks(prepared, block=4 * chunk_images):
            for i, image_id in enumerate(block.ids):
                path = block.files[i]
                try:
                    pixels = _validated(block.images[i], image_id, path, seen, layout, True)
                    ivar = None if block.ivar is None else block.ivar[i]
                    if ivar is not None and not (np.isfinite(ivar).all() and (ivar >= 0).all()):
                        raise RejectedFile(f"image {image_id!r}: ivar has NaN/inf or negative values", "bad_ivar")
                except RejectedFile as exc:
                    writer.reject(**_rejection(on_bad_file, source, path, exc))
                    continue
                writer.add(normalisation.apply(pixels, layout.bands), image_id=image_id,
                           galaxy_id=block.galaxy_ids[i], projection_id=int(block.projection_ids[i]), file=path,
                           params={k: v[i] for k, v in block.params.items()}, ivar=ivar)
        writer.n_files = info["n_files"]
    return ShardResult(n_files=info["n_files"], n_images=writer.n_images, rejected=writer.rejected)


# --------------------------------------------------------------------------- merge


def merge_shards(
    shards: Sequence[str | os.PathLike[str]],
    manifests: Sequence[str | os.PathLike[str]],
    *,
    out: str | os.PathLike[str],
    manifest_out: str | os.PathLike[str],
    source: str,
    kind: str,
    layout: SourceLayout,
    normalisation: Normalisation,
    config_digest: str = "",
    on_bad_file: str = "skip",
    max_rejected_fraction: float = 0.5,
    chunk_images: int = 64,
    failure_manifest: str | os.PathLike[str] | None = None,
) -> ShardResult:
    """Concatenate shard files into the source's dataset, rejecting ids seen in an earlier shard.

    Per-image ``params`` and ``ivar`` of prepared sources are carried into the dataset.

    Raises:
        IngestError: no image survived, more than ``max_rejected_fraction`` of the files
            were rejected (usually a wrong layout or band list in the config), or a
            cross-shard duplicate under ``on_bad_file='fail'``.  The manifest is then
            written to ``failure_manifest`` (a file that is no job output, so it survives
            the failed job; default ``manifest_out``) and summarised in the log.
    """
    rejected_parts = [read_manifest(m) for m in manifests]
    rejected: list[dict] = []
    seen: dict[str, str] = {}
    keep_masks: list[np.ndarray] = []
    n_files = 0
    infos = [shard_info(s) for s in shards]
    for shard, info in zip(shards, infos):
        n_files += info["n_files"]
        with h5py.File(shard, "r") as h5:
            ids = h5["ids"].asstr()[:]
            files = h5["files"].asstr()[:]
        mask = np.ones(len(ids), dtype=bool)
        for i, (image_id, path) in enumerate(zip(ids, files)):
            if image_id in seen:
                exc = RejectedFile(f"duplicate id {image_id!r} (first seen in {seen[image_id]})", "duplicate_id")
                rejected.append(_rejection(on_bad_file, source, path, exc))
                mask[i] = False
            else:
                seen[image_id] = path
        keep_masks.append(mask)
    manifest = pd.concat([*rejected_parts, pd.DataFrame(rejected, columns=MANIFEST_COLUMNS)], ignore_index=True)
    n_images = int(sum(m.sum() for m in keep_masks))
    n_rejected = len(manifest)
    problem = None
    if n_images == 0:
        problem = f"none of its {n_files} files could be ingested"
    elif n_files and n_rejected / n_files > max_rejected_fraction:
        problem = (f"{n_rejected} of {n_files} files were rejected (more than ingest.max_rejected_fraction = "
                   f"{max_rejected_fraction})")
    if problem:
        # Snakemake deletes a failed job's outputs, the manifest among them: the reasons go
        # where the message says (``failure_manifest``, no output) and into the log.
        where = failure_manifest or manifest_out
        write_manifest(manifest, where)
        counts = ", ".join(f"{c}: {n}" for c, n in Counter(manifest["code"]).most_common())
        log.error("rejected files of source %r by reason: %s; the first ones:\n%s", source, counts,
                  manifest.head(20).to_string(index=False))
        raise IngestError(
            f"source {source!r}: {problem}; the reasons ({counts}) are in {where}. This usually means the "
            f"source's layout, bands or header keywords in the config do not match its files."
        )
    filled = [info for info, m in zip(infos, keep_masks) if m.any()]
    with_ivar = all(info["has_ivar"] for info in filled)
    param_names = {tuple(info["params"]) for info in filled}
    if len(param_names) > 1:
        raise IngestError(f"source {source!r}: shards carry different per-image parameters {sorted(param_names)}; "
                          f"rerun the stage that prepared them")

    bands = layout.bands
    h, w = layout.image_shape
    with atomic_path(out, suffix=".h5") as tmp, h5py.File(tmp, "w") as dst:
        arrays = {name: dst.create_dataset(name, shape=(n_images, len(bands), h, w), dtype="f4",
                                           chunks=(min(chunk_images, n_images), len(bands), h, w))
                  for name in (("images", "ivar") if with_ivar else ("images",))}
        meta: dict[str, list[np.ndarray]] = {"ids": [], "galaxy_ids": [], "projection_ids": []}
        params: dict[str, list[np.ndarray]] = {}
        pos = 0
        for shard, mask in zip(shards, keep_masks):
            start = 0
            for block in iter_shard_blocks(shard, block=chunk_images * 16):
                sel = mask[start : start + len(block.ids)]
                start += len(block.ids)
                n = int(sel.sum())
                for name, ds in arrays.items():
                    ds[pos : pos + n] = getattr(block, name)[sel]
                pos += n
                for name in meta:
                    meta[name].append(getattr(block, name)[sel])
                for name, values in block.params.items():
                    params.setdefault(name, []).append(values[sel])
        for name in ("ids", "galaxy_ids"):
            dst.create_dataset(name, data=np.concatenate(meta[name]).astype(object), dtype=STR)
        dst.create_dataset("projection_ids", data=np.concatenate(meta["projection_ids"]).astype(np.int32))
        if params:
            write_params(dst.create_group("params"), {k: np.concatenate(v).tolist() for k, v in params.items()})
        dst.attrs.update(
            {
                "source": source,
                "kind": kind,
                "bands": json.dumps(list(bands)),
                "pixel_scale_arcsec": float(layout.pixel_scale or np.nan),
                "normalisation": normalisation.to_json(bands),
                "config_digest": config_digest,
                "n_images": n_images,
                "n_files": n_files,
                "n_rejected": n_rejected,
                "simobs_version": __version__,
            }
        )
    write_manifest(manifest, manifest_out)
    return ShardResult(n_files=n_files, n_images=n_images, rejected=manifest)


# --------------------------------------------------------------------------- config glue


def files_fingerprint(pattern: str) -> str:
    """Short digest of the sorted file list matching ``pattern`` (changes when files come or go)."""
    import hashlib

    h = hashlib.sha256()
    n = 0
    for path in list_source_files(pattern):
        h.update(path.encode())
        h.update(b"\0")
        n += 1
    return f"{n}:{h.hexdigest()[:16]}"


def _normalisation(settings: Mapping[str, Any]) -> Normalisation:
    norm = settings.get("normalisation", {}) or {}
    return Normalisation(method=norm.get("method", "asinh"), scale=dict(norm.get("scale", {})),
                         lupton=dict(norm.get("lupton", {}) or {}))


def ingest_source_shard(
    source: Mapping[str, Any],
    settings: Mapping[str, Any],
    *,
    shard: int,
    n_shards: int,
    out: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    index: str | os.PathLike[str] | None = None,
    prepared: str | os.PathLike[str] | None = None,
) -> ShardResult:
    """Ingest shard ``shard`` of ``n_shards`` of a source described by its config entry.

    A plain source reads its slice of the file ``index``; a source a pre-ingestion stage
    prepares (realism, cutouts) reads that stage's ``prepared`` shard instead.
    """
    layout = layout_from_source(source, settings["image_size"])
    common = dict(source=source["name"], layout=layout, normalisation=_normalisation(settings), out=out,
                  manifest=manifest, on_bad_file=settings.get("on_bad_file", "skip"),
                  chunk_images=int(settings.get("chunk_images", 64)))
    if prepared is not None:
        log.info("source %s shard %d/%d: prepared shard %s", source["name"], shard, n_shards, prepared)
        return ingest_prepared_shard(prepared, **common)
    if index is None:
        raise ValueError("ingest_source_shard needs the file index or a prepared shard")
    files = read_file_index(index)
    part = files[shard_slice(len(files), shard, n_shards)]
    log.info("source %s shard %d/%d: %d files", source["name"], shard, n_shards, len(part))
    return ingest_shard(part, **common)


def merge_source_shards(
    source: Mapping[str, Any],
    settings: Mapping[str, Any],
    *,
    shards: Sequence[str],
    manifests: Sequence[str],
    out: str | os.PathLike[str],
    manifest_out: str | os.PathLike[str],
    config_digest: str,
    failure_manifest: str | os.PathLike[str] | None = None,
) -> ShardResult:
    """Merge a source's shards into its dataset (see :func:`merge_shards`)."""
    return merge_shards(
        shards,
        manifests,
        out=out,
        manifest_out=manifest_out,
        source=source["name"],
        kind=source["kind"],
        layout=layout_from_source(source, settings["image_size"]),
        normalisation=_normalisation(settings),
        config_digest=config_digest,
        on_bad_file=settings.get("on_bad_file", "skip"),
        max_rejected_fraction=float(settings.get("max_rejected_fraction", 0.5)),
        chunk_images=int(settings.get("chunk_images", 64)),
        failure_manifest=failure_manifest,
    )
