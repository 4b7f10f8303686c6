"""SDSS DR8+ corrected frames (``frame-<band>-<run6>-<camcol>-<field4>.fits[.bz2]``).

The layout follows the SDSS data model page "frame" (data.sdss.org, BOSS_PHOTOOBJ/frames):

* HDU0: the calibrated, sky-subtracted image, 2048 (x) x 1489 (y) float32 in nanomaggies,
  with a TAN WCS (CTYPE RA---TAN/DEC--TAN, CRPIX, CRVAL, CD matrix) and the keywords
  FILTER, RUN, CAMCOL, FIELD, NMGY (mean nanomaggies per count), EXPTIME, BUNIT.
* HDU1: the calibration vector, 2048 float32 (nanomaggies per count, per column).
* HDU2: a one-row binary table with the coarse sky in counts, ``ALLSKY`` (~192 x 256),
  and ``XINTERP`` (2048) / ``YINTERP`` (1489), the positions of each column / row in
  the ALLSKY grid.

:func:`frame_ivar` is the data model's noise recipe:
``dn = img / calib + sky``, ``dn_err = sqrt(dn / gain + darkVariance)``,
``ivar = 1 / (dn_err * calib)**2``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "FRAME_SHAPE",
    "FRAME_NAME",
    "FrameError",
    "SdssFrame",
    "parse_frame_name",
    "frame_file_name",
    "read_frame",
    "read_frame_header",
    "frame_ivar",
    "sdss_gain",
    "sdss_dark_variance",
    "write_frame",
]

FRAME_SHAPE = (1489, 2048)  # (y, x) = (rows along the scan, columns across it)
FRAME_NAME = re.compile(r"^frame-(?P<band>[ugriz])-(?P<run>\d{6})-(?P<camcol>[1-6])-(?P<field>\d{4})\.fits(\.bz2)?$")

# Gain (electrons/count) and dark variance (counts^2, dark current + read noise) per
# camcol (rows 1-6) and band (u, g, r, i, z), from the SDSS "frame" data model page.
_GAIN = np.array([
    [1.62, 3.32, 4.71, 5.165, 4.745],
    [1.595, 3.855, 4.6, 6.565, 5.155],
    [1.59, 3.845, 4.72, 4.86, 4.885],
    [1.6, 3.995, 4.76, 4.885, 4.775],
    [1.47, 4.05, 4.725, 4.64, 3.48],
    [2.17, 4.035, 4.895, 4.76, 4.69],
])
_DARK_VARIANCE = np.array([
    [9.61, 15.6025, 1.8225, 7.84, 0.81],
    [12.6025, 1.44, 1.00, 5.76, 1.0],
    [8.7025, 1.3225, 1.3225, 4.6225, 1.0],
    [12.6025, 1.96, 1.3225, 6.25, 9.61],
    [9.3025, 1.1025, 0.81, 7.84, 1.8225],
    [7.0225, 1.8225, 0.9025, 5.0625, 1.21],
])
_BAND_INDEX = {b: i for i, b in enumerate("ugriz")}


class FrameError(ValueError):
    """A frame file that cannot be used as it is; the message names the file and the fix."""


def sdss_gain(band: str, camcol: int, run: int) -> float:
    """Electrons per count of one camera chip (the run-dependent chips of camcol 2 included)."""
    if camcol == 2 and band == "u" and run > 1100:  # the data model's run-dependent chip
        return 1.825
    return float(_GAIN[camcol - 1, _BAND_INDEX[band]])


def sdss_dark_variance(band: str, camcol: int, run: int) -> float:
    """Dark variance (counts^2) of one camera chip."""
    if camcol == 2 and band == "i" and run > 1500:  # the data model's run-dependent chip
        return 6.25
    return float(_DARK_VARIANCE[camcol - 1, _BAND_INDEX[band]])


@dataclass(frozen=True)
class FrameName:
    band: str
    run: int
    camcol: int
    field: int


def parse_frame_name(path: str | os.PathLike[str]) -> FrameName | None:
    """Band, run, camcol and field from a frame's file name; None if it is not one."""
    m = FRAME_NAME.match(Path(path).name)
    if not m:
        return None
    return FrameName(m["band"], int(m["run"]), int(m["camcol"]), int(m["field"]))


def frame_file_name(band: str, run: int, camcol: int, field: int, *, bz2: bool = False) -> str:
    return f"frame-{band}-{run:06d}-{camcol}-{field:04d}.fits" + (".bz2" if bz2 else "")


@dataclass
class SdssFrame:
    """One corrected frame in memory.

    Attributes:
        image: (1489, 2048) float32, nanomaggies.
        header: HDU0's header (holds the WCS).
        calib: (2048,) nanomaggies per count, per column.
        allsky, xinterp, yinterp: the coarse sky (counts) and its interpolation grid.
    """

    path: str
    band: str
    run: int
    camcol: int
    field: int
    image: np.ndarray
    header: object
    calib: np.ndarray
    allsky: np.ndarray
    xinterp: np.ndarray
    yinterp: np.ndarray

    def wcs(self):
        from astropy.wcs import WCS

        return WCS(self.header)


def _check_header(path: str, header, expected_band: str | None) -> FrameName:
    name = parse_frame_name(path)
    band = str(header.get("FILTER", "")).strip()
    if band not in _BAND_INDEX:
        raise FrameError(f"frame {path}: header keyword FILTER={band!r} is not an SDSS band (u, g, r, i, z)")
    if name is not None and name.band != band:
        raise FrameError(
            f"frame {path}: its file name says band {name.band!r} but its FILTER keyword says {band!r}; "
            f"the file is in the wrong band's slot. Replace it with the {name.band}-band frame."
        )
    if expected_band is not None and band != expected_band:
        raise FrameError(f"frame {path}: FILTER={band!r}, expected band {expected_band!r}")
    ctypes = (str(header.get("CTYPE1", "")), str(header.get("CTYPE2", "")))
    if ctypes != ("RA---TAN", "DEC--TAN") or "CRVAL1" not in header or not (
        "CD1_1" in header or "CDELT1" in header
    ):
        raise FrameError(
            f"frame {path}: no usable TAN WCS in HDU0 (CTYPE1/2 = {ctypes}, CRVAL/CD keywords "
            f"{'present' if 'CRVAL1' in header else 'missing'}); corrected frames carry one. Download "
            f"the frame again from the SAS."
        )
    try:
        run, camcol, field = (int(header[k]) for k in ("RUN", "CAMCOL", "FIELD"))
    except (KeyError, ValueError):
        if name is None:
            raise FrameError(f"frame {path}: keywords RUN, CAMCOL, FIELD missing and the file name is not "
                             f"frame-<band>-<run6>-<camcol>-<field4>.fits") from None
        run, camcol, field = name.run, name.camcol, name.field
    return FrameName(band, run, camcol, field)


def read_frame_header(path: str | os.PathLike[str], expected_band: str | None = None):
    """HDU0's header of a frame, checked (band, WCS); returns (FrameName, header).

    Raises:
        FrameError: unreadable file, no TAN WCS, or a FILTER that contradicts the file
            name or ``expected_band``.
    """
    from astropy.io import fits

    path = str(path)
    try:
        header = fits.getheader(path, 0)
    except (OSError, ValueError, EOFError) as exc:
        raise FrameError(f"frame {path}: not a readable FITS file ({type(exc).__name__}: {exc})") from None
    return _check_header(path, header, expected_band), header


def read_frame(path: str | os.PathLike[str], expected_band: str | None = None) -> SdssFrame:
    """Read a whole frame (``.bz2`` is decompressed by astropy).

    Raises:
        FrameError: as :func:`read_frame_header`, or HDU0/1/2 missing or of the wrong shape.
    """
    from astropy.io import fits

    path = str(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            name = _check_header(path, hdul[0].header, expected_band)
            if len(hdul) < 3:
                raise FrameError(f"frame {path}: {len(hdul)} HDUs; a corrected frame has the image, the "
                                 f"calibration vector and the sky table (HDU0-2)")
            image = np.asarray(hdul[0].data, dtype=np.float32)
            calib = np.asarray(hdul[1].data, dtype=np.float32)
            sky = hdul[2].data
            allsky = np.asarray(sky["ALLSKY"][0], dtype=np.float32)
            xinterp = np.asarray(sky["XINTERP"][0], dtype=np.float32)
            yinterp = np.asarray(sky["YINTERP"][0], dtype=np.float32)
            header = hdul[0].header.copy()
    except FrameError:
        raise
    except (OSError, ValueError, EOFError, KeyError, TypeError, IndexError) as exc:
        raise FrameError(f"frame {path}: not a readable corrected frame ({type(exc).__name__}: {exc})") from None
    if image.ndim != 2 or calib.shape != (image.shape[1],):
        raise FrameError(f"frame {path}: image {image.shape} and calibration vector {calib.shape} do not match")
    return SdssFrame(path, name.band, name.run, name.camcol, name.field, image, header, calib,
                     allsky, xinterp, yinterp)


def sky_counts(frame: SdssFrame) -> np.ndarray:
    """The full-size sky image in counts: ALLSKY bilinearly interpolated at (YINTERP, XINTERP)."""
    from scipy.ndimage import map_coordinates

    yy, xx = np.meshgrid(frame.yinterp, frame.xinterp, indexing="ij")
    return map_coordinates(frame.allsky, [yy, xx], order=1, mode="nearest").astype(np.float32)


def frame_ivar(frame: SdssFrame) -> np.ndarray:
    """Inverse variance (nanomaggies^-2) per pixel, shape of ``frame.image``.

    Sky and source Poisson noise (through the gain) plus the chip's dark variance,
    converted to nanomaggies with the calibration vector; 0 where the variance is not
    positive (never in a valid frame).
    """
    cimg = frame.calib[None, :].astype(np.float64)
    dn = frame.image / cimg + sky_counts(frame)
    gain = sdss_gain(frame.band, frame.camcol, frame.run)
    dn_var = np.clip(dn, 0.0, None) / gain + sdss_dark_variance(frame.band, frame.camcol, frame.run)
    var = dn_var * cimg**2
    return np.where(var > 0, 1.0 / np.where(var > 0, var, 1.0), 0.0).astype(np.float32)


def write_frame(
    directory: str | os.PathLike[str],
    *,
    band: str,
    run: int,
    camcol: int,
    field: int,
    image: np.ndarray,
    wcs,
    calib: np.ndarray,
    allsky: np.ndarray,
    bz2: bool = False,
    rerun: str = "301",
) -> Path:
    """Write one corrected frame in the data model's layout; returns its path.

    Args:
        image: (1489, 2048) nanomaggies.
        wcs: the frame's TAN WCS (astropy ``WCS``), written with a CD matrix as SDSS does.
        calib: (2048,) nanomaggies per count.
        allsky: coarse sky in counts, (ny, nx) with nx = 256 spanning the 2048 columns.
    """
    from astropy.io import fits

    if image.shape != FRAME_SHAPE:
        raise ValueError(f"a corrected frame is {FRAME_SHAPE} (y, x), not {image.shape}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hdu0 = fits.PrimaryHDU(image.astype(np.float32))
    h = hdu0.header
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    h["CRPIX1"], h["CRPIX2"] = (float(v) for v in wcs.wcs.crpix)
    h["CRVAL1"], h["CRVAL2"] = (float(v) for v in wcs.wcs.crval)
    cd = wcs.pixel_scale_matrix
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = (float(v) for v in cd.ravel())
    h["RADESYS"], h["EQUINOX"] = "ICRS", 2000.0
    h["FILTER"] = (band, "filter used")
    h["CAMCOL"] = (camcol, "column in the imaging camera")
    h["RUN"] = (run, "imaging run number")
    h["FIELD"] = (field, "field number")
    h["RERUN"] = (rerun, "processing rerun")
    h["EXPTIME"] = (53.907456, "exposure time (seconds)")
    h["NMGY"] = (float(np.mean(calib)), "calibration factor [nMgy per count]")
    h["BUNIT"] = ("nanomaggy", "1 nanomaggy = 3.631e-6 Jy")
    hdu1 = fits.ImageHDU(calib.astype(np.float32))
    ny, nx = allsky.shape
    # Column/row positions in the ALLSKY grid: one sky cell per 8 x 8 pixels.
    xinterp = ((np.arange(FRAME_SHAPE[1]) + 0.5) / 8.0 - 0.5).astype(np.float32)
    yinterp = ((np.arange(FRAME_SHAPE[0]) + 0.5) / 8.0 - 0.5).astype(np.float32)
    cols = fits.ColDefs([
        fits.Column(name="ALLSKY", format=f"{nx * ny}E", dim=f"({nx},{ny})", array=allsky[None].astype(np.float32)),
        fits.Column(name="XINTERP", format=f"{FRAME_SHAPE[1]}E", array=xinterp[None]),
        fits.Column(name="YINTERP", format=f"{FRAME_SHAPE[0]}E", array=yinterp[None]),
    ])
    hdu2 = fits.BinTableHDU.from_columns(cols)
    path = directory / frame_file_name(band, run, camcol, field, bz2=bz2)
    from simobs.io import atomic_path

    with atomic_path(path, suffix=".fits.bz2" if bz2 else ".fits") as tmp:
        fits.HDUList([hdu0, hdu1, hdu2]).writeto(tmp, overwrite=True)
    return path
