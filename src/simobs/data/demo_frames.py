"""The demo's observed survey as SDSS corrected frames plus a galaxy catalogue.

The demo universe's observed galaxies (:func:`simobs.data.demo_universe.sample_galaxies`,
GalSim profiles from :func:`~simobs.data.demo_universe.galaxy_profiles`) are placed at
sky positions on a stripe of consecutive fields of one run/camcol and drawn into
2048 x 1489 frames per band, written in the SDSS data model's layout
(:mod:`simobs.data.sdss_frames`).  As in SDSS, the frames of one field in different
bands do not share a pixel grid: each band's frames are offset and slightly rotated
against the others, and consecutive fields overlap by 128 rows.  A few galaxies lie
near the stripe's edges (some of their cutouts leave every frame of a band) and one
lies off every frame, so the cutout rules' rejections are exercised.

Output folder: ``frames/<run>/<camcol>/frame-<band>-<run6>-<camcol>-<field4>.fits``
(the SAS tree), ``catalogue.fits`` (objid, ra, dec, run, camcol, field) and
``truth.csv`` (the demo universe's truth per catalogue row).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from simobs.data.demo_universe import BANDS, SKY_SIGMA, DemoSettings, galaxy_profiles, sample_galaxies
from simobs.data.sdss_frames import FRAME_SHAPE, sdss_dark_variance, sdss_gain, write_frame

__all__ = ["FrameLayout", "frame_wcs", "paint_frames", "write_demo_frames"]

log = logging.getLogger(__name__)

N_EDGE_CASES = 5
FIELD_STEP = 1361  # rows between consecutive fields (1489 - 128 overlap)
# Nanomaggies per count of the demo's chips (DR8-like), per band.
CALIB = {"g": 0.0037, "r": 0.0050, "i": 0.0068}
# The cutouts' resampling (reproject_adaptive's Gaussian kernel) lowers the per-pixel noise
# to 0.42-0.45 of the frame's (measured on white noise over sub-pixel phases and the demo's
# rotations); the frames are that much noisier so that the cutouts have the demo's
# SDSS-like depth, as the simulations' images do.
RESAMPLING_NOISE_FACTOR = 0.435


@dataclass(frozen=True)
class FrameLayout:
    """Where the demo stripe lies and how the bands' frames differ.

    Attributes:
        ra0, dec0: sky position (deg) of the centre of the first field's r frame.
        run, camcol, first_field: SDSS identifiers of the stripe.
        band_offset: per band, (dx, dy) pixel offset of its frames against r.
        band_rotation: per band, rotation (deg) of its frames against r.
        spacing: galaxy grid spacing in pixels.  The simulations' mocks are isolated
            galaxies, so the observed cutouts must not hold much more neighbour light than
            they do: at 128 px the four nearest neighbours add 1.0 % of a fiducial galaxy's
            own surface brightness in the cutout's 24-32 px annulus (at 80 px, the earlier
            value, 14 %: enough for the MMD to tell observations from their own model at 600
            galaxies; tests/data/test_demo_frames.py).
        margin: distance in pixels of the grid from the stripe's sides.
    """

    ra0: float = 150.0
    dec0: float = 2.0
    run: int = 756
    camcol: int = 3
    first_field: int = 101
    band_offset: Mapping[str, tuple[float, float]] = field(
        default_factory=lambda: {"g": (17.3, -41.6), "r": (0.0, 0.0), "i": (-12.8, 29.1)})
    band_rotation: Mapping[str, float] = field(default_factory=lambda: {"g": 0.35, "r": 0.0, "i": -0.3})
    spacing: float = 128.0
    margin: float = 90.0


def frame_wcs(ra: float, dec: float, rotation_deg: float, pixel_scale: float):
    """TAN WCS of a 2048 x 1489 frame centred on (ra, dec), y axis rotated ``rotation_deg`` east of north."""
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(FRAME_SHAPE[1] + 1) / 2.0, (FRAME_SHAPE[0] + 1) / 2.0]
    c, s = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
    d = pixel_scale / 3600.0
    w.wcs.cd = [[-d * c, d * s], [d * s, d * c]]
    w.pixel_shape = (FRAME_SHAPE[1], FRAME_SHAPE[0])
    return w


def _stripe_wcs(layout: FrameLayout, n_fields: int, pixel_scale: float) -> list[dict[str, object]]:
    """Every frame of the stripe: band, field and WCS."""
    ref = frame_wcs(layout.ra0, layout.dec0, 0.0, pixel_scale)
    frames = []
    for k in range(n_fields):
        for band in BANDS:
            dx, dy = layout.band_offset.get(band, (0.0, 0.0))
            cx, cy = (FRAME_SHAPE[1] - 1) / 2.0 + dx, (FRAME_SHAPE[0] - 1) / 2.0 + k * FIELD_STEP + dy
            ra, dec = ref.wcs_pix2world([[cx, cy]], 0)[0]
            frames.append({"band": band, "field": layout.first_field + k,
                           "wcs": frame_wcs(float(ra), float(dec), layout.band_rotation.get(band, 0.0), pixel_scale)})
    return frames


def paint_frames(
    frames: Sequence[Mapping[str, object]],
    ra: np.ndarray,
    dec: np.ndarray,
    profiles: Sequence[Mapping[str, object]],
    stamp: int = 96,
) -> list[np.ndarray]:
    """Draw GalSim ``profiles`` (one dict band -> profile per galaxy) at (ra, dec) into noiseless frames.

    Each galaxy is drawn in each frame of its band that its stamp touches, through that
    frame's local WCS Jacobian (so rotation and sub-pixel position are exact), and added
    to the frame.  Returns one (1489, 2048) nanomaggy array per frame.
    """
    import galsim

    out = []
    for f in frames:
        w = f["wcs"]
        image = np.zeros(FRAME_SHAPE, dtype=np.float32)
        x, y = w.wcs_world2pix(ra, dec, 0)
        cd = np.asarray(w.wcs.cd) * 3600.0
        # GalSim's (u, v): u to the west (the cutouts' +x), v to the north.
        jac = galsim.JacobianWCS(-cd[0, 0], -cd[0, 1], cd[1, 0], cd[1, 1])
        inside = (x > -stamp) & (x < FRAME_SHAPE[1] + stamp) & (y > -stamp) & (y < FRAME_SHAPE[0] + stamp)
        for i in np.flatnonzero(inside):
            x0, y0 = int(np.round(x[i])) - stamp // 2, int(np.round(y[i])) - stamp // 2
            offset = (x[i] - (x0 + (stamp - 1) / 2.0), y[i] - (y0 + (stamp - 1) / 2.0))
            img = galsim.ImageF(stamp, stamp, wcs=jac)
            profiles[i][f["band"]].drawImage(image=img, offset=offset, add_to_image=False)
            ys, xs = slice(max(y0, 0), min(y0 + stamp, FRAME_SHAPE[0])), slice(max(x0, 0), min(x0 + stamp, FRAME_SHAPE[1]))
            if ys.start < ys.stop and xs.start < xs.stop:
                image[ys, xs] += img.array[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        out.append(image)
    return out


def _paint_chunk(args: tuple) -> list[np.ndarray]:
    frames, ra, dec, rows = args
    return paint_frames(frames, ra, dec, [galaxy_profiles(r) for r in rows])


def _positions(layout: FrameLayout, n: int, pixel_scale: float, rng: np.random.Generator,
               n_fields: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sky positions of ``n`` grid galaxies + edge cases; returns (ra, dec, stripe y in pixels)."""
    ref = frame_wcs(layout.ra0, layout.dec0, 0.0, pixel_scale)
    length = (n_fields - 1) * FIELD_STEP + FRAME_SHAPE[0]
    xs = np.arange(layout.margin, FRAME_SHAPE[1] - layout.margin + 1, layout.spacing)
    # The far end loses the g frames' 42-pixel offset too.
    ys = np.arange(layout.margin, length - layout.margin - 48 + 1, layout.spacing)
    gx, gy = np.meshgrid(xs, ys)
    gx, gy = gx.ravel()[:n], gy.ravel()[:n]
    jitter = rng.uniform(-6.0, 6.0, (2, len(gx)))
    px, py = gx + jitter[0], gy + jitter[1]
    # Near the stripe's sides: cutouts that leave one band's frames (off_frame) or just fit;
    # and one galaxy off every frame.
    edge_x = np.array([34.0, 40.0, FRAME_SHAPE[1] - 38.0, FRAME_SHAPE[1] - 55.0, -400.0])
    edge_y = np.array([300.0, 700.0, 500.0, 900.0, 600.0])
    px, py = np.r_[px, edge_x], np.r_[py, edge_y]
    ra, dec = ref.wcs_pix2world(px, py, 0)
    return ra, dec, py


def write_demo_frames(
    out_dir: str | os.PathLike[str],
    *,
    source: str,
    model: str,
    n_galaxies: int,
    seed: int,
    settings: DemoSettings = DemoSettings(),
    layout: FrameLayout = FrameLayout(),
    workers: int = 1,
) -> pd.DataFrame:
    """Generate the observed survey as frames + catalogue into ``out_dir`` (atomically); returns the truth.

    ``n_galaxies`` catalogue rows: a grid, and 5 edge cases (4 near the stripe's sides, of
    which 3 leave some band's frames; one off every frame); the stripe has as many
    fields as the grid needs.
    """
    rng = np.random.default_rng(seed)
    per_field = len(np.arange(layout.margin, FRAME_SHAPE[1] - layout.margin + 1, layout.spacing)) * (
        FIELD_STEP / layout.spacing)
    n_grid = max(1, n_galaxies - N_EDGE_CASES)
    n_fields = max(1, int(np.ceil(n_grid / per_field)))
    while len(_positions(layout, 10**9, settings.pixel_scale, np.random.default_rng(0), n_fields)[0]) < n_galaxies:
        n_fields += 1
    ra, dec, stripe_y = _positions(layout, n_grid, settings.pixel_scale, rng, n_fields)
    truth = sample_galaxies(model, len(ra), 1, rng, settings)
    frames = _stripe_wcs(layout, n_fields, settings.pixel_scale)
    records = truth.to_dict("records")
    n_chunks = max(1, workers)
    chunks = [(frames, ra[i::n_chunks], dec[i::n_chunks], records[i::n_chunks]) for i in range(n_chunks)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            painted = list(pool.map(_paint_chunk, chunks))
    else:
        painted = [_paint_chunk(c) for c in chunks]
    images = [sum(p[k] for p in painted) for k in range(len(frames))]

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    frame_dir = tmp / "frames" / str(layout.run) / str(layout.camcol)
    x = np.arange(FRAME_SHAPE[1])
    for k, (f, image) in enumerate(zip(frames, images)):
        band = str(f["band"])
        calib = (CALIB[band] * (1.0 + 0.02 * np.sin(2 * np.pi * (x / FRAME_SHAPE[1] + 0.1 * k)))).astype(np.float32)
        gain = sdss_gain(band, layout.camcol, layout.run)
        dark = sdss_dark_variance(band, layout.camcol, layout.run)
        sigma = SKY_SIGMA[band] * settings.noise_scale / RESAMPLING_NOISE_FACTOR
        sky = gain * ((sigma / CALIB[band]) ** 2 - dark)  # sky counts giving the wanted sky noise
        allsky = (sky * (1.0 + 0.03 * np.linspace(-1, 1, 256)[None, :] + np.zeros((192, 1)))).astype(np.float32)
        sky_img = np.repeat(np.repeat(allsky, 8, axis=0), 8, axis=1)[: FRAME_SHAPE[0], : FRAME_SHAPE[1]]
        dn_var = (np.clip(image, 0, None) / calib + sky_img) / gain + dark
        noisy = image + rng.normal(0.0, 1.0, FRAME_SHAPE).astype(np.float32) * np.sqrt(dn_var) * calib
        write_frame(frame_dir, band=band, run=layout.run, camcol=layout.camcol, field=int(f["field"]),
                    image=noisy.astype(np.float32), wcs=f["wcs"], calib=calib, allsky=allsky)
    objid = np.array([1237650000000000000 + layout.run * 10**6 + i for i in range(len(ra))], dtype=np.int64)
    field_no = layout.first_field + np.clip(np.floor(stripe_y / FIELD_STEP), 0, n_fields - 1).astype(int)
    _write_catalogue(tmp / "catalogue.fits", objid, ra, dec, layout, field_no)
    truth.insert(0, "image_id", objid.astype(str))
    truth.insert(1, "galaxy_key", objid.astype(str))
    truth.insert(2, "file", "catalogue.fits")
    truth.insert(3, "source", source)
    truth["ra"], truth["dec"] = ra, dec
    truth.to_csv(tmp / "truth.csv", index=False)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    log.info("wrote %d frames and a %d-row catalogue to %s", len(frames), len(ra), out_dir)
    return truth


def _write_catalogue(path: Path, objid, ra, dec, layout: FrameLayout, field_no) -> None:
    from astropy.table import Table

    n = len(ra)
    Table({"objid": objid, "ra": ra, "dec": dec, "run": np.full(n, layout.run, dtype=np.int16),
           "camcol": np.full(n, layout.camcol, dtype=np.int16), "field": field_no.astype(np.int16)}
          ).write(path, format="fits", overwrite=True)
