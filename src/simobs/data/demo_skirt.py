"""A demo simulation written the way real mocks come: TNG SKIRT broadband files.

Idealised (no PSF, no noise) renderings of a demo-universe model
(:func:`simobs.data.demo_universe.render_galaxy` with ``idealised=True``), in the layout
of the TNG data release's ``skirt_images_sdss`` (Rodriguez-Gomez et al. 2019): one file
``broadband_<subfindID>.fits`` per subhalo, a float32 (4, N, N) cube for
``FILTER0..3 = sloan/sdss_g, r, i, z`` in ``BUNIT = 'counts/s/pixel'`` (nanomaggies ×
:data:`~simobs.data.realism.TNG_FLUXMAG0` / 1e9), ``PIXSCALE``, ``USE_Z`` and
``CDELT1/2`` in parsec; N scales with the galaxy (15 disk half-light radii, as the TNG
images span a fixed number of stellar half-mass radii); no id keyword.  As in TNG, each
subhalo has one image, so a model of ``n_galaxies`` × ``n_projections`` images is
written as that many subhalos.  The realism stage makes them survey-like.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from simobs.data.demo_universe import DemoSettings, render_galaxy, sample_galaxies
from simobs.data.realism import TNG_FLUXMAG0

__all__ = ["SKIRT_FILTERS", "fov_pixels", "write_tng_skirt_source"]

log = logging.getLogger(__name__)

SKIRT_FILTERS = ("sloan/sdss_g", "sloan/sdss_r", "sloan/sdss_i", "sloan/sdss_z")
#: i → z flux ratio of the demo's z plane (the demo renders g, r, i; z is never ingested).
Z_OVER_I = 1.1
FOV_HALF_LIGHT_RADII = 15.0


def fov_pixels(disk_hlr_arcsec: float, pixel_scale: float, lo: int = 32, hi: int = 256) -> int:
    """Side N of a mock's field of view: 15 disk half-light radii, even, within [lo, hi]."""
    n = int(np.ceil(FOV_HALF_LIGHT_RADII * disk_hlr_arcsec / pixel_scale / 2.0)) * 2
    return int(np.clip(n, lo, hi))


def _write_broadband(path: Path, counts: np.ndarray, row: dict, pixel_scale: float) -> None:
    from astropy.cosmology import Planck15  # the TNG cosmology
    from astropy.io import fits

    pc_per_pixel = Planck15.kpc_proper_per_arcmin(float(row["redshift"])).value / 60.0 * 1000.0 * pixel_scale
    hdu = fits.PrimaryHDU(counts.astype(np.float32))
    h = hdu.header
    for k, name in enumerate(SKIRT_FILTERS):
        h[f"FILTER{k}"] = name
    h["BUNIT"] = "counts/s/pixel"
    h["PIXSCALE"] = (pixel_scale, "arcsec")
    h["USE_Z"] = (float(row["redshift"]), "redshift used for the angular scale")
    for axis in (1, 2):
        h[f"CTYPE{axis}"] = "pc"
        h[f"CDELT{axis}"] = pc_per_pixel
        h[f"CRPIX{axis}"] = (counts.shape[-1] + 1) / 2.0
        h[f"CRVAL{axis}"] = 0.0
    hdu.writeto(path, overwrite=True)


def write_tng_skirt_source(out_dir: str | os.PathLike[str], *, source: str, model: str, n_galaxies: int,
                           n_projections: int, seed: int, settings: DemoSettings = DemoSettings()) -> pd.DataFrame:
    """Write ``n_galaxies × n_projections`` idealised subhalo images of ``model`` (atomically).

    Returns the truth table (one row per file, ``image_id`` = the subfind id).
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    n = n_galaxies * n_projections
    truth = sample_galaxies(model, n, 1, rng, settings)
    subfind = np.sort(rng.choice(np.arange(1, 20 * n + 1), size=n, replace=False)) + 400000
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sizes = []
    f0 = np.asarray([TNG_FLUXMAG0[b] for b in "griz"])[:, None, None]
    for row, sid in zip(truth.to_dict("records"), subfind):
        size = fov_pixels(float(row["disk_hlr"]), settings.pixel_scale)
        nmgy = render_galaxy(row, replace(settings, image_size=size), idealised=True)
        cube = np.concatenate([nmgy, nmgy[2:3] * Z_OVER_I]) * f0 / 1e9
        _write_broadband(tmp / f"broadband_{sid}.fits", cube, row, settings.pixel_scale)
        sizes.append(size)
    truth.insert(0, "image_id", [str(s) for s in subfind])
    truth.insert(1, "galaxy_key", [str(s) for s in subfind])
    truth.insert(2, "file", [f"broadband_{s}.fits" for s in subfind])
    truth.insert(3, "source", source)
    truth["fov_pixels"] = sizes
    truth.to_csv(tmp / "truth.csv", index=False)
    (tmp / "settings.json").write_text(pd.Series({**asdict(settings), "model": model, "seed": seed,
                                                  "layout": "skirt_tng"}).to_json(indent=1))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    log.info("wrote %d TNG-SKIRT-layout mocks of model %r to %s", n, model, out_dir)
    return truth
