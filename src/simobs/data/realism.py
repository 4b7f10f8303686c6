"""The realism forward model: an idealised simulation mock → an SDSS-like cutout.

Pure functions on arrays (no file I/O), after RealSim (Bottrell et al. 2019, MNRAS 490,
5390; github.com/cbottrell/RealSim, ``ObsRealism.py``) and the SDSS realism of Zhou et
al. 2025 (A&A 701, A44):

1. flux calibration to nanomaggies (:func:`to_nanomaggies`);
2. placement at a target redshift (:func:`place_at_redshift`): angular pixel size from
   the cosmology, flux ∝ D_L⁻² (which is the (1+z)⁻⁴ surface-brightness dimming);
3. flux-conserving resampling to the survey pixel scale (:func:`rebin_flux`);
4. centring on the light and cropping/padding (``fixed_scale``), or resampling the whole
   field of view to the output size (``resample_fov``, what Zhou et al. did);
5. PSF convolution, Gaussian, Moffat or Kolmogorov drawn with GalSim, per-band FWHM
   drawn from a distribution (:func:`convolve_psf`);
6. sky and Poisson noise at SDSS depth through the SDSS gain, exposure time, zero
   points, extinction and airmass, then sky subtraction (:func:`add_sky_and_noise`).

Every drawn number is returned per image (:func:`make_survey_like`), so the dataset
records which seeing and sky each image got.  Seeds come from the study seed and the
image id (:func:`image_seed`): reruns are bit-identical and independent of sharding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "JY_PER_NMGY",
    "TNG_FLUXMAG0",
    "SDSS",
    "RealismSettings",
    "to_nanomaggies",
    "place_at_redshift",
    "rebin_flux",
    "centre_and_crop",
    "psf_kernel",
    "convolve_psf",
    "sky_sigma_nmgy",
    "electrons_per_nmgy",
    "add_sky_and_noise",
    "draw_parameters",
    "image_seed",
    "make_survey_like",
]

#: One nanomaggy in Jansky (m_AB = 22.5 - 2.5 log10 f; 3631 Jy at m = 0).
JY_PER_NMGY = 3.631e-6
#: counts/s of a magnitude-0 source in the SKIRT SDSS images of the TNG data release
#: (TNG documentation, "SKIRT synthetic images"): nanomaggies = counts/s / fluxmag0 × 1e9.
TNG_FLUXMAG0 = {"g": 2.40238e10, "r": 2.3826e10, "i": 1.59001e10, "z": 2.66542e9}

#: SDSS defaults, RealSim's ``ObsRealism.py`` (field averages from the DR7 Field table:
#: airmass, zero point aa, extinction kk, gain in e-/ADU; exposure 53.907456 s); seeing
#: FWHM and sky-noise surface brightness (mean, σ) per band as used by RealSim
#: (Bottrell et al. 2019).
SDSS: dict[str, Any] = {
    "pixel_scale": 0.396,
    "exptime": 53.907456,
    "airmass": {"u": 1.178, "g": 1.178, "r": 1.177, "i": 1.177, "z": 1.178},
    "zeropoint": {"u": -23.80, "g": -24.44, "r": -24.03, "i": -23.67, "z": -21.98},
    "extinction": {"u": 0.5082, "g": 0.1898, "r": 0.1032, "i": 0.0612, "z": 0.0587},
    "gain": {"u": 1.680, "g": 3.850, "r": 4.735, "i": 5.111, "z": 4.622},
    "seeing_fwhm": {"g": (1.469, 0.221), "r": (1.356, 0.221), "i": (1.286, 0.222)},
    "sky_sigma_mag": {"g": (24.880, 0.137), "r": (24.384, 0.109), "i": (23.820, 0.119)},
}


@dataclass(frozen=True)
class RealismSettings:
    """One source's realism settings (the ``realism`` block of its config entry).

    Attributes:
        redshift: target redshift; None keeps the file's (TNG ``USE_Z``).
        cosmology: name of an astropy.cosmology realisation.
        flux_distance_mpc: distance the file's fluxes are computed at, for files without
            a redshift (NIHAO); with ``redshift``, fluxes scale by (d / D_L(z))².
        pixel_scale: survey pixel scale, arcsec.
        psf: ``gaussian``, ``moffat`` or ``kolmogorov``; ``moffat_beta`` its β.
        seeing_fwhm: band → (mean, σ) of the PSF FWHM in arcsec (normal, clipped to
            ``seeing_range``).
        sky_sigma_mag: band → (mean, σ) of the 1σ sky fluctuation as a surface
            brightness in mag/arcsec² (RealSim's ``false_sky_sig``): the depth.
        exptime, gain, zeropoint, extinction, airmass: SDSS photometric constants.
        geometry: ``fixed_scale`` (survey pixel scale, centre and crop/pad) or
            ``resample_fov`` (the whole field of view resampled to ``image_size``).
        image_size: (H, W) of the output.
    """

    redshift: float | None = None
    cosmology: str = "Planck18"
    flux_distance_mpc: float | None = None
    pixel_scale: float = SDSS["pixel_scale"]
    psf: str = "kolmogorov"
    moffat_beta: float = 4.765
    seeing_fwhm: Mapping[str, Sequence[float]] = field(default_factory=lambda: dict(SDSS["seeing_fwhm"]))
    seeing_range: Sequence[float] = (0.5, 3.0)
    sky_sigma_mag: Mapping[str, Sequence[float]] = field(default_factory=lambda: dict(SDSS["sky_sigma_mag"]))
    exptime: float = SDSS["exptime"]
    gain: Mapping[str, float] = field(default_factory=lambda: dict(SDSS["gain"]))
    zeropoint: Mapping[str, float] = field(default_factory=lambda: dict(SDSS["zeropoint"]))
    extinction: Mapping[str, float] = field(default_factory=lambda: dict(SDSS["extinction"]))
    airmass: Mapping[str, float] = field(default_factory=lambda: dict(SDSS["airmass"]))
    geometry: str = "fixed_scale"
    image_size: Sequence[int] = (64, 64)

    def __post_init__(self) -> None:
        if self.psf not in ("gaussian", "moffat", "kolmogorov"):
            raise ValueError(f"realism.psf must be gaussian, moffat or kolmogorov, not {self.psf!r}")
        if self.geometry not in ("fixed_scale", "resample_fov"):
            raise ValueError(f"realism.geometry must be fixed_scale or resample_fov, not {self.geometry!r}")

    @classmethod
    def from_config(cls, block: Mapping[str, Any], image_size: Sequence[int]) -> RealismSettings:
        """From a source's ``realism`` block (keys as here; the schema fills defaults)."""
        known = set(cls.__dataclass_fields__) - {"image_size"}
        kwargs = {k: v for k, v in block.items() if k in known}
        for key in ("seeing_fwhm", "sky_sigma_mag"):
            if key in kwargs:
                kwargs[key] = {b: tuple(v) for b, v in kwargs[key].items()}
        return cls(**kwargs, image_size=tuple(int(n) for n in image_size))

    def check_bands(self, bands: Sequence[str]) -> None:
        """Raises ValueError naming the ``realism`` key that lacks a band."""
        for key in ("seeing_fwhm", "sky_sigma_mag", "gain", "zeropoint", "extinction", "airmass"):
            missing = [b for b in bands if b not in getattr(self, key)]
            if missing:
                raise ValueError(f"realism.{key} has no value for band(s) {missing}; add them to the source's "
                                 f"realism block")


# --------------------------------------------------------------------------- calibration


def to_nanomaggies(pixels: np.ndarray, unit: str, bands: Sequence[str]) -> np.ndarray:
    """(bands, y, x) pixels in ``unit`` → nanomaggies per pixel.

    Units: ``counts/s/pixel`` (TNG SKIRT SDSS images, via :data:`TNG_FLUXMAG0`), ``Jy``
    (per pixel), ``nanomaggy``/``nmgy``.

    Raises:
        ValueError: another unit, or a band without a fluxmag0.
    """
    u = unit.replace(" ", "").lower()
    if u in ("counts/s/pixel", "counts/s"):
        missing = [b for b in bands if b not in TNG_FLUXMAG0]
        if missing:
            raise ValueError(f"no TNG fluxmag0 for band(s) {missing} (known: {sorted(TNG_FLUXMAG0)})")
        f0 = np.asarray([TNG_FLUXMAG0[b] for b in bands])[:, None, None]
        return (pixels / f0 * 1e9).astype(np.float64)
    if u in ("jy", "jy/pixel"):
        return pixels.astype(np.float64) / JY_PER_NMGY
    if u in ("nanomaggy", "nanomaggies", "nmgy"):
        return pixels.astype(np.float64)
    raise ValueError(f"unit {unit!r} cannot be calibrated to nanomaggies (known: counts/s/pixel, Jy, nanomaggy)")


def _cosmology(name: str):
    import astropy.cosmology

    try:
        return getattr(astropy.cosmology, name)
    except AttributeError:
        raise ValueError(f"realism.cosmology {name!r} is not an astropy.cosmology realisation "
                         f"(e.g. Planck18, Planck15, WMAP9)") from None


def place_at_redshift(pixels: np.ndarray, *, pixel_size_pc: float | None, pixel_scale: float | None,
                      file_redshift: float | None, redshift: float | None, cosmology: str = "Planck18",
                      flux_distance_mpc: float | None = None) -> tuple[np.ndarray, float, float]:
    """Place an image (nanomaggies) at ``redshift``; return (pixels, arcsec/pixel, redshift).

    Without a target (``redshift`` None) the file's redshift and pixel scale are kept.
    Otherwise the angular pixel size is ``pixel_size_pc`` over the angular-diameter
    distance, and fluxes scale by (D_L(file) / D_L(target))², or (d / D_L(target))² for
    fluxes computed at a distance d (``flux_distance_mpc``); with D_L = (1+z)² D_A this is
    the (1+z)⁻⁴ surface-brightness dimming.  Bands are not K-corrected: the mock's filters
    are taken as observed-frame at the target redshift.

    Raises:
        ValueError: the information needed is missing (naming the setting to add).
    """
    if redshift is None:
        if file_redshift is None or pixel_scale is None:
            raise ValueError("the file has no redshift and pixel scale (e.g. NIHAO); set realism.redshift")
        return pixels, float(pixel_scale), float(file_redshift)
    if file_redshift is not None and np.isclose(redshift, file_redshift, rtol=0, atol=1e-9) and pixel_scale:
        return pixels, float(pixel_scale), float(redshift)
    if pixel_size_pc is None:
        raise ValueError("the file has no physical pixel size (CDELT1 in pc); cannot place it at another redshift")
    cosmo = _cosmology(cosmology)
    d_a_pc = cosmo.angular_diameter_distance(redshift).to_value("pc")
    scale = float(np.degrees(pixel_size_pc / d_a_pc) * 3600.0)
    d_l = cosmo.luminosity_distance(redshift).to_value("Mpc")
    if file_redshift is not None:
        factor = (cosmo.luminosity_distance(file_redshift).to_value("Mpc") / d_l) ** 2
    elif flux_distance_mpc is not None:
        factor = (flux_distance_mpc / d_l) ** 2
    else:
        raise ValueError("the file's fluxes have no distance or redshift; set realism.flux_distance_mpc")
    return pixels * factor, scale, float(redshift)


# --------------------------------------------------------------------------- geometry


def _overlap_matrix(n_in: int, n_out: int, ratio: float) -> np.ndarray:
    """(n_out, n_in) fraction of input pixel j falling into output pixel i.

    Output pixels are ``ratio`` input pixels wide, centred on the input grid.
    """
    edges_in = np.arange(n_in + 1, dtype=np.float64)
    edges_out = (np.arange(n_out + 1) - n_out / 2.0) * ratio + n_in / 2.0
    lo = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
    hi = np.minimum(edges_out[1:, None], edges_in[None, 1:])
    return np.clip(hi - lo, 0.0, None)


def rebin_flux(image: np.ndarray, ratio_y: float, ratio_x: float | None = None,
               shape: Sequence[int] | None = None) -> np.ndarray:
    """Flux-conserving resampling of (..., y, x) pixels onto pixels ``ratio`` times larger.

    Each input pixel's flux is shared among the output pixels it overlaps, in proportion
    to the overlap area (pixels as boxes): the exact, separable form of RealSim's
    ``rebin``.  Without ``shape`` the output grid covers the input (ceil(n / ratio)
    pixels), so the sum is preserved to rounding.
    """
    ratio_x = ratio_y if ratio_x is None else ratio_x
    ny, nx = image.shape[-2:]
    my, mx = shape if shape is not None else (int(np.ceil(ny / ratio_y - 1e-9)), int(np.ceil(nx / ratio_x - 1e-9)))
    ay = _overlap_matrix(ny, int(my), ratio_y)
    ax = _overlap_matrix(nx, int(mx), ratio_x)
    return ay @ image @ ax.T


def centre_and_crop(image: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, tuple[float, float]]:
    """Shift (bands, y, x) so the light's centroid is at the centre of ``shape``; crop/pad with 0.

    The centroid is that of the positive flux summed over bands, shifted by whole pixels
    (no interpolation, so fluxes and noise stay untouched).  Returns the image and the
    (y, x) centroid in input pixels.
    """
    light = np.clip(image.sum(axis=0), 0, None)
    total = light.sum()
    ny, nx = light.shape
    if total > 0:
        cy = float((light.sum(axis=1) * np.arange(ny)).sum() / total)
        cx = float((light.sum(axis=0) * np.arange(nx)).sum() / total)
    else:
        cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    h, w = int(shape[0]), int(shape[1])
    y0 = int(np.floor(cy + 0.5)) - h // 2
    x0 = int(np.floor(cx + 0.5)) - w // 2
    out = np.zeros((image.shape[0], h, w), dtype=image.dtype)
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + h, ny), min(x0 + w, nx)
    if sy1 > sy0 and sx1 > sx0:
        out[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[:, sy0:sy1, sx0:sx1]
    return out, (cy, cx)


# --------------------------------------------------------------------------- PSF


def psf_kernel(model: str, fwhm: float, pixel_scale: float, *, beta: float = 4.765,
               size: int | None = None) -> np.ndarray:
    """PSF image (size, size) sampled at pixel centres, summing to 1, drawn with GalSim.

    ``fwhm`` in arcsec.  Sampled without the pixel response (``method='no_pixel'``): the
    idealised image is already pixel-integrated, so convolving it with this kernel gives
    the pixel-integrated seeing-convolved image.
    """
    import galsim

    if model == "gaussian":
        psf = galsim.Gaussian(fwhm=fwhm)
    elif model == "moffat":
        psf = galsim.Moffat(beta=beta, fwhm=fwhm)
    elif model == "kolmogorov":
        psf = galsim.Kolmogorov(fwhm=fwhm)
    else:
        raise ValueError(f"PSF model must be gaussian, moffat or kolmogorov, not {model!r}")
    if size is None:
        size = 2 * int(np.ceil(4.0 * fwhm / pixel_scale)) + 1
    kernel = psf.drawImage(nx=size, ny=size, scale=pixel_scale, method="no_pixel").array.astype(np.float64)
    return kernel / kernel.sum()


def convolve_psf(plane: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve one (y, x) plane with a normalised kernel (same size output, zero outside)."""
    from scipy.signal import fftconvolve

    return fftconvolve(plane, kernel, mode="same")


# --------------------------------------------------------------------------- noise


def sky_sigma_nmgy(sky_sigma_mag: float, pixel_scale: float) -> float:
    """1σ sky fluctuation per pixel in nanomaggies from its surface brightness (mag/arcsec²).

    As RealSim: σ = 10^(-0.4 (m - 22.5)) nmgy/arcsec² × (arcsec/pixel)².
    """
    return float(10 ** (-0.4 * (sky_sigma_mag - 22.5)) * pixel_scale**2)


def electrons_per_nmgy(settings: RealismSettings, band: str) -> float:
    """Photo-electrons per nanomaggy: exptime × 10^(-0.4 (22.5 + aa + kk × airmass)) × gain."""
    counts = settings.exptime * 10 ** (-0.4 * (22.5 + settings.zeropoint[band]
                                              + settings.extinction[band] * settings.airmass[band]))
    return float(counts * settings.gain[band])


def add_sky_and_noise(plane: np.ndarray, sigma_nmgy: float, e_per_nmgy: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sky + Poisson noise of source and sky, then sky subtraction; returns (image, ivar) in nmgy.

    The sky level is the one whose Poisson noise is ``sigma_nmgy``: s = (σ e)² electrons
    per pixel.  Electrons ~ Poisson(max(f, 0) e + s); the image is electrons / e − s / e,
    so blank pixels have standard deviation σ and mean 0, like SDSS corrected frames.
    ivar = e² / (max(f, 0) e + s).
    """
    sky_e = (sigma_nmgy * e_per_nmgy) ** 2
    mean_e = np.clip(plane, 0, None) * e_per_nmgy + sky_e
    counts = rng.poisson(mean_e).astype(np.float64)
    return (counts - sky_e) / e_per_nmgy, e_per_nmgy**2 / mean_e


# --------------------------------------------------------------------------- the forward model


def image_seed(seed: int, source: str, image_id: str) -> int:
    """A 64-bit seed from the study seed, the source and the image id (not from its position)."""
    digest = hashlib.sha256(f"{int(seed)}\0{source}\0{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def draw_parameters(settings: RealismSettings, bands: Sequence[str], rng: np.random.Generator) -> dict[str, float]:
    """Per-band seeing FWHM (arcsec) and sky depth (mag/arcsec²) for one image."""
    lo, hi = settings.seeing_range
    out: dict[str, float] = {}
    for b in bands:
        mean, sigma = settings.seeing_fwhm[b]
        out[f"seeing_fwhm_{b}"] = float(np.clip(rng.normal(mean, sigma), lo, hi))
    for b in bands:
        mean, sigma = settings.sky_sigma_mag[b]
        out[f"sky_sigma_mag_{b}"] = float(rng.normal(mean, sigma))
    return out


def make_survey_like(pixels_nmgy: np.ndarray, pixel_scale: float, bands: Sequence[str],
                     settings: RealismSettings, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Resample, centre/crop, convolve and add noise to an idealised (bands, y, x) image in nmgy.

    Returns (image, ivar, params): float32 (bands, H, W) in nanomaggies at the survey's
    pixel scale (``fixed_scale``) or at the field of view / H (``resample_fov``), its
    inverse variance, and the per-image parameters drawn and derived (seeing FWHM and sky
    depth per band, sky σ in nmgy, output pixel scale, centroid).
    """
    settings.check_bands(bands)
    params = draw_parameters(settings, bands, rng)
    h, w = map(int, settings.image_size)
    if settings.geometry == "fixed_scale":
        ratio = settings.pixel_scale / pixel_scale
        scaled = pixels_nmgy if np.isclose(ratio, 1.0, rtol=1e-6) else rebin_flux(pixels_nmgy, ratio)
        out_scale = settings.pixel_scale
        margin = max(int(np.ceil(4.0 * params[f"seeing_fwhm_{b}"] / out_scale)) for b in bands)
        framed, (cy, cx) = centre_and_crop(scaled, (h + 2 * margin, w + 2 * margin))
    else:
        ny, nx = pixels_nmgy.shape[-2:]
        framed = rebin_flux(pixels_nmgy, ny / h, nx / w, shape=(h, w))
        out_scale = pixel_scale * ny / h
        margin, (cy, cx) = 0, ((ny - 1) / 2.0, (nx - 1) / 2.0)
    image = np.empty((len(bands), h, w), dtype=np.float32)
    ivar = np.empty_like(image)
    for k, b in enumerate(bands):
        kernel = psf_kernel(settings.psf, params[f"seeing_fwhm_{b}"], out_scale, beta=settings.moffat_beta)
        plane = convolve_psf(framed[k], kernel)[margin : margin + h, margin : margin + w]
        sigma = sky_sigma_nmgy(params[f"sky_sigma_mag_{b}"], out_scale)
        params[f"sky_sigma_nmgy_{b}"] = sigma
        image[k], ivar[k] = add_sky_and_noise(plane, sigma, electrons_per_nmgy(settings, b), rng)
    params.update({"pixel_scale_arcsec": float(out_scale), "centroid_y": cy, "centroid_x": cx})
    return image, ivar, params
