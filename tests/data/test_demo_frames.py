"""The demo's observed frames: galaxies far enough apart that cutouts hold little neighbour light.

The simulations' mocks are isolated galaxies.  If the observed cutouts of the demo
universe (cut from frames like SDSS's) hold the wings of their grid neighbours, the
observations differ from their own model in the outer pixels, and the MMD tells them apart
once the samples are large (the imbalanced demo at 600 fiducial galaxies rejected
fiducial at p = 0.012 with the 80-px grid; issue #13).
"""

from __future__ import annotations

import numpy as np

from simobs.data.demo_frames import FrameLayout
from simobs.data.demo_universe import DemoSettings, galaxy_profiles, sample_galaxies


def _annulus_mean(image: np.ndarray, r0: float, r1: float) -> float:
    c = (image.shape[0] - 1) / 2.0
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]] - c
    r = np.hypot(xx, yy)
    return float(image[(r >= r0) & (r < r1)].mean())


def test_grid_neighbours_add_little_light_to_a_cutouts_outer_pixels() -> None:
    """Four nearest neighbours' surface brightness in the 24-32 px annulus < 2 % of the galaxy's own.

    Noiseless r-band images (PSF included) of fiducial galaxies, the galaxy's own image
    shifted by the grid spacing standing for each of its four nearest neighbours.  The
    80-px grid gave 14 %.
    """
    settings = DemoSettings()
    spacing = int(round(FrameLayout().spacing))
    truth = sample_galaxies("fiducial", 60, 1, np.random.default_rng(0), settings)
    n = 2 * spacing + 65
    own, neighbours = [], []
    for row in truth.to_dict("records"):
        img = galaxy_profiles(row)["r"].drawImage(nx=n, ny=n, scale=settings.pixel_scale).array
        own.append(_annulus_mean(img, 24, 32))
        neighbours.append(sum(_annulus_mean(np.roll(img, sign * spacing, axis=axis), 24, 32)
                              for axis in (0, 1) for sign in (1, -1)))
    ratio = np.mean(neighbours) / np.mean(own)
    assert ratio < 0.02, f"neighbours add {ratio:.1%} of a galaxy's own light at 24-32 px (grid {spacing} px)"
