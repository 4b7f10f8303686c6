"""Writers of test files in exactly the SKIRT layouts users download (TNG and NIHAO)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

TNG_FILTERS = ("sloan/sdss_g", "sloan/sdss_r", "sloan/sdss_i", "sloan/sdss_z")
NIHAO_BANDS = ["FUV", "NUV", "u", "g", "r", "i", "z", "2MASS_J", "2MASS_H", "2MASS_KS", "W1", "W2", "W3", "W4",
               "PACS70", "PACS100", "PACS160", "SPIRE250", "SPIRE350", "SPIRE500"]


def exponential_disk(n: int, r_pix: float, total: float, q: float = 0.7, seed: int = 0) -> np.ndarray:
    """(n, n) smooth exponential disk with ``total`` summed flux, slightly off-centre."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:n, :n] - (n - 1) / 2.0 - rng.uniform(-2, 2, 2)[:, None, None]
    r = np.hypot(x, y / q)
    img = np.exp(-r / r_pix)
    return img / img.sum() * total


def write_tng(path: Path, n: int, *, z: float = 0.05, filters=TNG_FILTERS, bunit="counts/s/pixel",
              counts_r: float = 2.4e9, seed: int = 0) -> Path:
    """A TNG SKIRT broadband file: primary HDU float32 (4, n, n), FILTERn, BUNIT, PIXSCALE, USE_Z, CDELT in pc."""
    colours = (0.7, 1.0, 1.2, 0.25)  # counts/s relative to r (fluxmag0 of z is ~10x smaller)
    cube = np.stack([exponential_disk(n, n / 15, counts_r * c, seed=seed) for c in colours])  # always 4 planes
    hdu = fits.PrimaryHDU(cube.astype(np.float32))
    h = hdu.header
    for k, name in enumerate(filters):
        h[f"FILTER{k}"] = name
    if bunit is not None:
        h["BUNIT"] = bunit
    h["PIXSCALE"] = 0.396
    h["USE_Z"] = z
    pc = 0.396 * 1000.0 * {0.05: 0.9824}.get(z, 1.0)  # ~ kpc/arcsec at z = 0.05 (Planck15)
    for axis in (1, 2):
        h[f"CTYPE{axis}"] = "pc"
        h[f"CDELT{axis}"] = pc
    hdu.writeto(path)
    return path


def write_nihao(path: Path, name: str, n: int, *, n_orient: int = 10, size_pc: float = 40000.0,
                flux_r_jy: float = 0.05) -> Path:
    """A NIHAO resolved-photometry file: SUMMARY bintable, one row per orientation, 20 bands in Jy."""
    nb = len(NIHAO_BANDS)
    flux = np.stack([np.stack([exponential_disk(n, n / 12, flux_r_jy * (0.5 + 0.05 * b), q=0.3 + 0.07 * k, seed=k)
                               for b in range(nb)]) for k in range(n_orient)]).astype(np.float32)
    cols = [
        fits.Column(name="name", format="20A", array=[name] * n_orient),
        fits.Column(name="stellar_mass", format="D", array=np.full(n_orient, 1e10)),
        fits.Column(name="axis_ratio", format="D", array=np.linspace(0.3, 1.0, n_orient)),
        fits.Column(name="bands", format=f"{nb * 10}A", dim=f"(10,{nb})",
                    array=np.array([NIHAO_BANDS] * n_orient, dtype="S10")),
        fits.Column(name="flux", format=f"{nb * n * n}E", dim=f"({n},{n},{nb})", array=flux),
        fits.Column(name="flux_nodust", format=f"{nb * n * n}E", dim=f"({n},{n},{nb})", array=flux * 1.3),
        fits.Column(name="size", format="D", array=np.full(n_orient, size_pc)),
    ]
    summary = fits.BinTableHDU.from_columns(cols, name="SUMMARY")
    galaxies = fits.BinTableHDU.from_columns([fits.Column(name="name", format="20A", array=[name])], name="GALAXIES")
    fits.HDUList([fits.PrimaryHDU(), galaxies, summary]).writeto(path)
    return path
