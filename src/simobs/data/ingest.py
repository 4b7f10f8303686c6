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
from simobs.data.fits_io import RejectedFile, SourceLayout, read_galaxy_image
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
    "merge_shards",
    "layout_from_source",
]

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["file", "code", "reason"]
_STR = h5py.string_dtype(encoding="utf-8")
_WRITE_BLOCK = 256


class IngestError(RuntimeError):
    """Ingestion cannot produce a trustworthy dataset; the message says why and what to do."""


# --------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class Normalisation:
    """Pixel normalisation applied at ingestion and recorded in the dataset.

    Attributes:
        method: ``asinh`` (x' = asinh(x / s_b), the SDSS "luptitude" stretch that keeps
            faint outskirts and bright cores in one dynamic range), ``linear``
            (x' = x / s_b) or ``none``.
        scale: softening/scale s_b per band, in the file's flux units.
    """

    method: str = "asinh"
    scale: Mapping[str, float] = field(default_factory=dict)
    lupton: Mapping[str, Any] = field(default_factory=dict)  # lupton_rgb: channels, Q, stretch, minimum

    def __post_init__(self) -> None:
        if self.method not in ("asinh", "linear", "none", "lupton_rgb"):
            raise ValueError(f"normalisation method must be asinh, linear, lupton_rgb or none, not {self.method!r}")

    def scales(self, bands: Sequence[str]) -> np.ndarray:
        if self.method == "none":
            return np.ones(len(bands), dtype=np.float32)
        missing = [b for b in bands if b not in self.scale]
        if missing:
            raise ValueError(f"normalisation.scale has no value for band(s) {missing}; add them to the config")
        return np.asarray([float(self.scale[b]) for b in bands], dtype=np.float32)

    def apply(self, pixels: np.ndarray, bands: Sequence[str]) -> np.ndarray:
        """Normalise (..., bands, H, W) pixels (lupton_rgb: the 8-bit colour stretch, in [0, 1])."""
        if self.method == "lupton_rgb":
            from simobs.data.rgb import LUPTON_DEFAULTS, lupton_rgb

            kw = {**LUPTON_DEFAULTS, **self.lupton}
            flat = pixels.reshape(-1, *pixels.shape[-3:])
            return np.stack([lupton_rgb(p, bands, **kw) for p in flat]).reshape(pixels.shape)
        if self.method == "none":
            return pixels.astype(np.float32, copy=False)
        s = self.scales(bands)[:, None, None]
        x = pixels / s
        return (np.arcsinh(x) if self.method == "asinh" else x).astype(np.float32, copy=False)

    def invert(self, values: np.ndarray, bands: Sequence[str]) -> np.ndarray:
        """Back to the file's flux units (not defined for the clipped, quantised lupton_rgb)."""
        if self.method == "lupton_rgb":
            raise ValueError("the lupton_rgb stretch is clipped and 8-bit: it cannot be inverted to fluxes")
        if self.method == "none":
            return values
        s = self.scales(bands)[:, None, None]
        return (np.sinh(values) if self.method == "asinh" else values) * s

    def to_json(self, bands: Sequence[str]) -> str:
        record: dict[str, Any] = {"method": self.method, "scale": {b: float(self.scale.get(b, 1.0)) for b in bands}}
        if self.method == "lupton_rgb":
            from simobs.data.rgb import LUPTON_DEFAULTS

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
    return SourceLayout(
        layout=source["layout"],
        bands=tuple(source["bands"]),
        image_shape=(int(image_shape[0]), int(image_shape[1])),
        id_key=source.get("id_key"),
        galaxy_key=source.get("galaxy_key"),
        projection_key=source.get("projection_key"),
        band_key=source.get("band_key", "BAND"),
        cube_band_order=tuple(source.get("cube_band_order") or ()),
        hdu=source.get("hdu", 0),
        pixel_scale=source.get("pixel_scale"),
        pixel_scale_key=source.get("pixel_scale_key", "PIXSCALE"),
        id_pattern=source.get("id_pattern"),
        rgb_channels=tuple(source.get("rgb_channels") or ("i", "r", "g")),
    )


# --------------------------------------------------------------------------- shards


@dataclass
class ShardResult:
    n_files: int
    n_images: int
    rejected: pd.DataFrame

    @property
    def reason_counts(self) -> dict[str, int]:
        return dict(Counter(self.rejected["code"])) if len(self.rejected) else {}


def _reject_or_fail(policy: str, source: str, path: str, exc: RejectedFile, rejected: list[dict]) -> None:
    if policy == "fail":
        raise IngestError(
            f"source {source!r}: file {path} rejected: {exc}. Fix or remove the file, or set "
            f"ingest.on_bad_file: skip to list such files in the manifest and go on."
        )
    log.warning("rejected %s: %s", path, exc)
    rejected.append({"file": path, "code": exc.code, "reason": str(exc)})


def _create_datasets(h5: h5py.File, n_bands: int, shape: tuple[int, int], chunk: int) -> None:
    h, w = shape
    h5.create_dataset(
        "images", shape=(0, n_bands, h, w), maxshape=(None, n_bands, h, w), dtype="f4",
        chunks=(chunk, n_bands, h, w),
    )
    for name, dtype in (("ids", _STR), ("galaxy_ids", _STR), ("files", _STR)):
        h5.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(4096,))
    h5.create_dataset("projection_ids", shape=(0,), maxshape=(None,), dtype="i4", chunks=(4096,))


def _append(h5: h5py.File, images: list, ids: list, gids: list, projs: list, files: list) -> None:
    n0 = h5["images"].shape[0]
    n1 = n0 + len(images)
    for name, values in (("images", np.stack(images)), ("ids", ids), ("galaxy_ids", gids),
                         ("projection_ids", np.asarray(projs, dtype=np.int32)), ("files", files)):
        h5[name].resize(n1, axis=0)
        h5[name][n0:n1] = values


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

    Duplicate ids inside the shard are rejected here (the later file loses); duplicates
    across shards are caught by :func:`merge_shards`.

    Raises:
        IngestError: with ``on_bad_file='fail'``, at the first bad file (naming it).
    """
    if on_bad_file not in ("skip", "fail"):
        raise ValueError(f"on_bad_file must be 'skip' or 'fail', not {on_bad_file!r}")
    rejected: list[dict] = []
    seen: dict[str, str] = {}
    n_images = 0
    with atomic_path(out, suffix=".h5") as tmp, h5py.File(tmp, "w") as h5:
        _create_datasets(h5, len(layout.bands), layout.image_shape, chunk_images)
        block: tuple[list, list, list, list, list] = ([], [], [], [], [])
        for path in files:
            try:
                img = read_galaxy_image(path, layout)
                if img.image_id in seen:
                    raise RejectedFile(f"duplicate id {img.image_id!r} (first seen in {seen[img.image_id]})",
                                       "duplicate_id")
            except RejectedFile as exc:
                _reject_or_fail(on_bad_file, source, path, exc, rejected)
                continue
            seen[img.image_id] = path
            # 8-bit RGB cutouts arrive stretched (lupton_rgb); everything else is normalised here
            pixels = img.pixels if layout.layout == "rgb" else normalisation.apply(img.pixels, layout.bands)
            for lst, value in zip(block, (pixels, img.image_id,
                                          img.galaxy_id, img.projection_id, path)):
                lst.append(value)
            if len(block[0]) >= _WRITE_BLOCK:
                _append(h5, *block)
                n_images += len(block[0])
                block = ([], [], [], [], [])
        if block[0]:
            _append(h5, *block)
            n_images += len(block[0])
        h5.attrs["n_files"] = len(files)
    frame = pd.DataFrame(rejected, columns=MANIFEST_COLUMNS)
    write_manifest(frame, manifest)
    return ShardResult(n_files=len(files), n_images=n_images, rejected=frame)


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

    Raises:
        IngestError: no image survived, more than ``max_rejected_fraction`` of the files
            were rejected (usually a wrong layout or band list in the config), or a
            cross-shard duplicate under ``on_bad_file='fail'``.  The manifest is then
            written to ``failure_manifest`` (a file that is not a job output, so it
            survives the failed job) and summarised in the log.
    """
    rejected_parts = [pd.read_csv(m, sep="\t", dtype=str, keep_default_na=False) for m in manifests]
    rejected: list[dict] = []
    seen: dict[str, str] = {}
    keep_masks: list[np.ndarray] = []
    n_files = 0
    for shard in shards:
        with h5py.File(shard, "r") as h5:
            n_files += int(h5.attrs["n_files"])
            ids = h5["ids"].asstr()[:]
            files = h5["files"].asstr()[:]
        mask = np.ones(len(ids), dtype=bool)
        for i, (image_id, path) in enumerate(zip(ids, files)):
            if image_id in seen:
                exc = RejectedFile(f"duplicate id {image_id!r} (first seen in {seen[image_id]})", "duplicate_id")
                _reject_or_fail(on_bad_file, source, path, exc, rejected)
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
        # where the message says, a file that is no output (``failure_manifest``) and the log.
        where = failure_manifest or manifest_out
        write_manifest(manifest, where)
        counts = ", ".join(f"{c}: {n}" for c, n in Counter(manifest["code"]).most_common())
        log.error("rejected files of source %r by reason: %s; the first ones:\n%s", source, counts,
                  manifest.head(20).to_string(index=False))
        raise IngestError(
            f"source {source!r}: {problem}; the reasons ({counts}) are in {where}. This usually means the "
            f"source's layout, bands or header keywords in the config do not match its files."
        )

    bands = layout.bands
    h, w = layout.image_shape
    with atomic_path(out, suffix=".h5") as tmp, h5py.File(tmp, "w") as dst:
        images = dst.create_dataset(
            "images", shape=(n_images, len(bands), h, w), dtype="f4",
            chunks=(min(chunk_images, n_images), len(bands), h, w),
        )
        ids_out: list[np.ndarray] = []
        gids_out: list[np.ndarray] = []
        projs_out: list[np.ndarray] = []
        pos = 0
        for shard, mask in zip(shards, keep_masks):
            with h5py.File(shard, "r") as src:
                n = src["images"].shape[0]
                step = chunk_images * 16
                for start in range(0, n, step):
                    sel = mask[start : start + step]
                    block = src["images"][start : start + step][sel]
                    images[pos : pos + len(block)] = block
                    pos += len(block)
                ids_out.append(src["ids"].asstr()[:][mask])
                gids_out.append(src["galaxy_ids"].asstr()[:][mask])
                projs_out.append(src["projection_ids"][:][mask])
        dst.create_dataset("ids", data=np.concatenate(ids_out).astype(object), dtype=_STR)
        dst.create_dataset("galaxy_ids", data=np.concatenate(gids_out).astype(object), dtype=_STR)
        dst.create_dataset("projection_ids", data=np.concatenate(projs_out).astype(np.int32))
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


def write_manifest(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a rejected-files manifest (:data:`MANIFEST_COLUMNS`, tab-separated) atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False)



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
    index: str | os.PathLike[str] | None,
    shard: int,
    n_shards: int,
    out: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    prepared: str | os.PathLike[str] | None = None,
    prepared_manifest: str | os.PathLike[str] | None = None,
) -> ShardResult:
    """Ingest shard ``shard`` of ``n_shards`` of a source described by its config entry.

    Sources made by a pre-ingestion stage (the frame cutouts) pass that stage's
    ``prepared`` shard and its manifest instead of the file ``index``.
    """
    if prepared is not None:
        from simobs.data.prepared import ingest_prepared_shard

        return ingest_prepared_shard(
            prepared, prepared_manifest, source=source["name"], bands=source["bands"],
            image_shape=tuple(settings["image_size"]), normalisation=_normalisation(settings), out=out,
            manifest=manifest, on_bad_file=settings.get("on_bad_file", "skip"),
            chunk_images=int(settings.get("chunk_images", 64)),
        )
    files = read_file_index(index)
    part = files[shard_slice(len(files), shard, n_shards)]
    layout = layout_from_source(source, settings["image_size"])
    log.info("source %s shard %d/%d: %d files", source["name"], shard, n_shards, len(part))
    return ingest_shard(
        part,
        source=source["name"],
        layout=layout,
        normalisation=_normalisation(settings),
        out=out,
        manifest=manifest,
        on_bad_file=settings.get("on_bad_file", "skip"),
        chunk_images=int(settings.get("chunk_images", 64)),
        failure_manifest=failure_manifest,
    )


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
