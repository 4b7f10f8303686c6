"""``rgb``: 8-bit RGB cutouts (SkyServer PNG/JPEG), and the Lupton et al. (2004) colour stretch for FITS.

Zhou et al. (2025) trained on the SDSS SkyServer's 64 x 64 JPEG cutouts: R, G, B are the
i, r, g bands after the asinh colour stretch of Lupton et al. (2004).  To compare such
observations with FITS simulations, the simulations must go through the same stretch:
:func:`lupton_rgb` is ``astropy.visualization.make_lupton_rgb`` on the bands mapped to
R, G, B, quantised to 8 bits like the JPEGs, and returned as (bands, H, W) in [0, 1]
in the dataset's band order.  :func:`read_rgb` reads a PNG/JPEG into the same form; ids
come from the file name (``id_pattern``, :func:`~simobs.data.formats.base.resolve_ids`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from simobs.data.formats.base import GalaxyImage, RejectedFile, SourceLayout, canonical_band, resolve_ids

__all__ = ["LUPTON_DEFAULTS", "lupton_rgb", "read_rgb"]

# SkyServer-like defaults for images in nanomaggies: i, r, g -> R, G, B; the asinh
# softening Q and the linear stretch (nanomaggies) put the sky near black and a
# r ~ 17.7 galaxy's core near saturation.  (SkyServer's FITS2JPEG converter follows
# Lupton et al. 2004 "with some modifications" whose values are not published.)
LUPTON_DEFAULTS: Mapping[str, object] = {"channels": ["i", "r", "g"], "Q": 8.0, "stretch": 0.4, "minimum": 0.0}


def lupton_rgb(pixels: np.ndarray, bands: Sequence[str], *, channels: Sequence[str] = ("i", "r", "g"),
               Q: float = 8.0, stretch: float = 0.4, minimum: float = 0.0) -> np.ndarray:
    """The 8-bit Lupton colour image of (bands, H, W) ``pixels`` as (bands, H, W) float32 in [0, 1].

    ``channels`` names the bands shown as R, G, B; they must be the dataset's bands.

    Raises:
        ValueError: a channel band is not in ``bands``, or ``bands`` is not those three.
    """
    from astropy.visualization import make_lupton_rgb

    if sorted(channels) != sorted(bands):
        raise ValueError(f"normalisation.lupton.channels {list(channels)} must be the source bands {list(bands)} "
                         f"in R, G, B order")
    r, g, b = (pixels[list(bands).index(c)] for c in channels)
    rgb = make_lupton_rgb(r, g, b, minimum=minimum, stretch=stretch, Q=Q)  # (H, W, 3) uint8
    out = np.empty(pixels.shape, dtype=np.float32)
    for k, c in enumerate(channels):
        out[list(bands).index(c)] = rgb[..., k] / np.float32(255.0)
    return out


def read_rgb(path: str | os.PathLike[str], layout: SourceLayout) -> list[GalaxyImage]:
    """The one image of an 8-bit PNG/JPEG: (bands, H, W) float32 in [0, 1], R, G, B = ``layout.rgb_channels``.

    Raises:
        RejectedFile: unreadable, not 8-bit RGB/RGBA/greyscale, of the wrong size, or a
            name that ``id_pattern`` does not match.
    """
    bands, channels, image_shape = layout.bands, layout.rgb_channels, layout.image_shape
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in ("RGB", "RGBA", "L", "P"):
                raise RejectedFile(f"image mode {mode!r} is not 8-bit RGB", "wrong_format")
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except RejectedFile:
        raise
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise RejectedFile(f"not a readable PNG/JPEG ({type(exc).__name__}: {exc})", "unreadable") from None
    if rgb.shape[:2] != tuple(image_shape):
        raise RejectedFile(f"image size {rgb.shape[1]}x{rgb.shape[0]} differs from ingest.image_size "
                           f"{list(image_shape)} (H, W)", "wrong_shape")
    have = [canonical_band(c) for c in channels]
    if sorted(have) != sorted(map(canonical_band, bands)):
        raise ValueError(f"rgb_channels {list(channels)} must be the source bands {list(bands)} in R, G, B order")
    out = np.empty((len(bands), *rgb.shape[:2]), dtype=np.float32)
    for k, c in enumerate(have):
        out[[canonical_band(b) for b in bands].index(c)] = rgb[..., k] / np.float32(255.0)
    image_id, galaxy_id, projection = resolve_ids([], path, layout)
    return [GalaxyImage(image_id, galaxy_id, projection, out, bands=tuple(bands), unit="lupton_rgb",
                        pixel_scale_arcsec=layout.pixel_scale, file=str(path))]
