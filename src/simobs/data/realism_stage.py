"""The realism stage: one shard of a source's raw mock files → a prepared shard.

Reads each file with the source's format reader (:mod:`simobs.data.formats`), applies
the forward model of :mod:`simobs.data.realism` and writes the survey-like images, their
inverse variance and every drawn parameter with :class:`~simobs.data.shards.ShardWriter`
(the prepared-shards contract, docs/contracts.md).  A file the stage cannot use (another
unit, a missing filter, no redshift) is listed in the shard's manifest with the reason,
or stops the job under ``ingest.on_bad_file: fail``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from simobs.data.formats import GalaxyImage, RejectedFile, SourceLayout, read_images
from simobs.data.ingest import IngestError, read_file_index, shard_slice
from simobs.data.realism import (
    RealismSettings,
    image_seed,
    make_survey_like,
    place_at_redshift,
    to_nanomaggies,
)
from simobs.data.shards import ShardWriter

__all__ = ["RealismResult", "realise_image", "realism_shard", "realism_figure"]

log = logging.getLogger(__name__)


@dataclass
class RealismResult:
    n_files: int
    n_images: int
    n_rejected: int
    example: tuple[np.ndarray, np.ndarray, float, float] | None  # (ideal, survey-like, scales) of the first image


def realise_image(img: GalaxyImage, settings: RealismSettings, *, seed: int, source: str
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, Any], np.ndarray, float]:
    """One idealised image → (survey-like image, ivar, params, idealised image in nmgy, its scale).

    Raises:
        RejectedFile: unit that cannot be calibrated (naming BUNIT), NaN/inf pixels,
            or no redshift/pixel scale to place the galaxy with.
    """
    if not np.isfinite(img.pixels).all():
        raise RejectedFile(f"image {img.image_id!r}: non-finite pixels (NaN/inf) in the idealised image", "non_finite")
    try:
        nmgy = to_nanomaggies(img.pixels, img.unit or "", img.bands)
    except ValueError as exc:
        raise RejectedFile(f"image {img.image_id!r}: unit {img.unit!r} (header keyword BUNIT): {exc}",
                           "wrong_unit") from None
    try:
        placed, scale, z = place_at_redshift(
            nmgy, pixel_size_pc=img.pixel_size_pc, pixel_scale=img.pixel_scale_arcsec, file_redshift=img.redshift,
            redshift=settings.redshift, cosmology=settings.cosmology, flux_distance_mpc=settings.flux_distance_mpc)
    except ValueError as exc:
        raise RejectedFile(f"image {img.image_id!r}: {exc}", "no_redshift") from None
    rng = np.random.default_rng(image_seed(seed, source, img.image_id))
    image, ivar, params = make_survey_like(placed, scale, img.bands, settings, rng)
    params.update({"redshift": z, "mock_pixel_scale_arcsec": scale, "mock_size_pixels": int(placed.shape[-1])})
    return image, ivar, params, placed, scale


def realism_shard(source: Mapping[str, Any], ingest: Mapping[str, Any], *, seed: int, index: str | os.PathLike[str],
                  shard: int, n_shards: int, out: str | os.PathLike[str], manifest: str | os.PathLike[str]
                  ) -> RealismResult:
    """Make shard ``shard`` of ``n_shards`` of a source survey-like (see the module docstring).

    Raises:
        IngestError: under ``on_bad_file: fail``, at the first file that cannot be used.
        ValueError: the source's realism block lacks a band (naming the key).
    """
    name = source["name"]
    layout = SourceLayout.from_source(source, ingest["image_size"])
    settings = RealismSettings.from_config(source.get("realism") or {}, ingest["image_size"])
    settings.check_bands(layout.bands)
    policy = ingest.get("on_bad_file", "skip")
    files = read_file_index(index)
    part = files[shard_slice(len(files), shard, n_shards)]
    example = None
    with ShardWriter(out, bands=layout.bands, image_shape=layout.image_shape, manifest=manifest,
                     chunk_images=int(ingest.get("chunk_images", 64)), with_ivar=True) as writer:
        for path in part:
            try:
                images = read_images(path, layout)
                realised = [realise_image(img, settings, seed=seed, source=name) for img in images]
            except RejectedFile as exc:
                if policy == "fail":
                    raise IngestError(f"source {name!r}: file {path} rejected by the realism stage: {exc}. Fix or "
                                      f"remove the file, or set ingest.on_bad_file: skip") from None
                log.warning("rejected %s: %s", path, exc)
                writer.reject(path, exc.code, str(exc))
                continue
            for img, (image, ivar, params, ideal, scale) in zip(images, realised):
                writer.add(image, image_id=img.image_id, galaxy_id=img.galaxy_id, projection_id=img.projection_id,
                           file=path, params=params, ivar=ivar)
                if example is None:
                    example = (ideal, image, scale, params["pixel_scale_arcsec"])
        writer.n_files = len(part)
    return RealismResult(len(part), writer.n_images, len(writer.rejected), example)


def realism_figure(ideal: np.ndarray, survey: np.ndarray, ideal_scale: float, survey_scale: float,
                   title: str = ""):
    """A matplotlib figure: the idealised mock beside its survey-like version (g, r, i colour).

    Both panels use the same Lupton et al. (2004) asinh colour stretch and show the same
    angular field (the survey cutout's), so brightness, sharpness and noise compare directly.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.visualization import make_lupton_rgb

    h, w = survey.shape[-2:]
    half_y, half_x = h * survey_scale / 2, w * survey_scale / 2

    def rgb(img: np.ndarray) -> np.ndarray:
        i, r, g = (np.asarray(img[k], float) for k in (2, 1, 0))
        return make_lupton_rgb(i, r, g, minimum=-0.02, stretch=0.4, Q=8)

    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.8))
    ny, nx = ideal.shape[-2:]
    for ax, img, scale, label in ((axes[0], ideal, ideal_scale, "idealised mock (no PSF, no noise)"),
                                  (axes[1], survey, survey_scale, "after realism (SDSS seeing, sky, noise)")):
        ny, nx = img.shape[-2:]
        ext = (-nx * scale / 2, nx * scale / 2, -ny * scale / 2, ny * scale / 2)
        ax.imshow(rgb(img), origin="lower", extent=ext, interpolation="nearest")
        ax.set_xlim(-half_x, half_x)
        ax.set_ylim(-half_y, half_y)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("arcsec")
    axes[0].set_ylabel("arcsec")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
