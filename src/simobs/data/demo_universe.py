"""The demo universe: SDSS-like observations and four mock "simulations", drawn with GalSim.

Real SDSS cutouts and NIHAO/IllustrisTNG mocks cannot be downloaded on every machine, so
the default study generates a small universe with known truth.  Every galaxy is a bulge
(Sérsic) + disk (exponential, inclined thick disk) system whose components have their
own spectral energy distribution (GalSim's CWW templates, redshifted and integrated
through GalSim's LSST g, r, i bandpasses), so that colours and colour gradients follow
from physics rather than from a colour table.  Images are convolved with a per-image
Kolmogorov seeing PSF and receive sky + source noise at SDSS-like depth, and are stored
in nanomaggies (SDSS's linear flux unit, m = 22.5 − 2.5 log10 f).

The simulation models differ in physically meaningful ways (see :data:`MODELS`):

=========  ===========================================================================
fiducial   disk-dominated, size–mass relation of late-type galaxies (Shen et al. 2003)
compact    galaxies ~0.55× smaller at fixed mass (the over-compactness of some runs)
extended   ~1.6× larger, low-concentration bulges (n≈1.5), bluer disks
bulgy      bulge-dominated (B/T≈0.6), red disks: an over-quenched population
clumpy     (hidden) blue star-forming disks with a few giant clumps (70 % of the disk light) — no simulation has them
=========  ===========================================================================

The observed survey is drawn from the model named by the config (``observed_from``):
one of the four (well-specified case) or ``clumpy`` (misspecified case).

File conventions (the ingestion stage reads both):

* observations: one multi-extension FITS file per galaxy, one float32 image HDU per
  band (EXTNAME = band, keywords OBJID, BAND, PIXSCALE, BUNIT);
* simulations: one FITS file per projection holding a (bands, y, x) cube with SIMNAME,
  GALID, PROJ, BANDS in the header; the ``bulgy`` model is written as 16-bit integers
  with BSCALE/BZERO and the ``extended`` model stores its bands in i, r, g order, as real
  mock pipelines do.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "GalaxyModel",
    "MODELS",
    "DemoSettings",
    "sample_galaxies",
    "galaxy_profiles",
    "render_galaxy",
    "write_demo_source",
    "generate_from_settings",
]

log = logging.getLogger(__name__)

SDSS_PIXEL_SCALE = 0.396  # arcsec / pixel
SDSS_MAG_LIMIT = 17.77  # r-band limit of the SDSS main spectroscopic sample
BANDS = ("g", "r", "i")
# 1σ sky noise per pixel in nanomaggies, and electrons per nanomaggy (for source noise),
# close to SDSS frames (sky-subtracted, ~54 s exposures).
SKY_SIGMA = {"g": 0.022, "r": 0.027, "i": 0.040}
ELECTRONS_PER_NMGY = 940.0


@dataclass(frozen=True)
class GalaxyModel:
    """Population parameters of one galaxy-formation model (all sizes in kpc).

    Attributes:
        size_norm: disk half-light radius at log10(M*/Msun) = 10.5.
        size_slope: d log10(r_e) / d log10(M*).
        size_scatter: log-normal scatter of r_e (dex).
        bt_alpha, bt_beta: Beta distribution of the r-band bulge-to-total ratio; its
            mean rises with mass by ``bt_mass_slope`` per dex.
        bulge_n: Sérsic index of the bulge.
        bulge_size: bulge r_e / disk r_e.
        disk_sed: CWW template of the disk (``Sbc``, ``Scd``, ``Im``).
        red_disk_fraction: fraction of disks with the elliptical template (quenched).
        knot_fraction: fraction of the disk light in star-forming knots (0 = none).
        n_knots: number of knots when ``knot_fraction`` > 0.
        thickness: intrinsic disk axis ratio q0.
    """

    size_norm: float = 4.0
    size_slope: float = 0.22
    size_scatter: float = 0.12
    bt_alpha: float = 2.0
    bt_beta: float = 6.0
    bt_mass_slope: float = 0.10
    bulge_n: float = 4.0
    bulge_size: float = 0.35
    disk_sed: str = "Sbc"
    red_disk_fraction: float = 0.1
    knot_fraction: float = 0.0
    n_knots: int = 0
    thickness: float = 0.2


MODELS: dict[str, GalaxyModel] = {
    "fiducial": GalaxyModel(),
    "compact": GalaxyModel(size_norm=2.2, size_slope=0.30, bt_alpha=2.5, bt_beta=5.0),
    "extended": GalaxyModel(size_norm=6.4, size_slope=0.15, bt_alpha=1.2, bt_beta=8.0, bulge_n=1.5,
                            bulge_size=0.5, disk_sed="Scd", red_disk_fraction=0.0),
    "bulgy": GalaxyModel(bt_alpha=6.0, bt_beta=4.0, bt_mass_slope=0.05, size_norm=3.2,
                         red_disk_fraction=0.7),
    "clumpy": GalaxyModel(size_norm=6.0, bt_alpha=1.0, bt_beta=12.0, disk_sed="Im", red_disk_fraction=0.0,
                          knot_fraction=0.7, n_knots=8, thickness=0.25),
}


@dataclass(frozen=True)
class DemoSettings:
    """How a demo source is drawn and written (sizes, depth, seeing)."""

    image_size: int = 64
    pixel_scale: float = SDSS_PIXEL_SCALE
    seeing_fwhm: float = 1.4  # arcsec, median
    seeing_scatter: float = 0.15  # arcsec, 1σ
    log_mass_range: tuple[float, float] = (9.8, 11.4)
    redshift_range: tuple[float, float] = (0.02, 0.12)
    mag_limit: float = SDSS_MAG_LIMIT
    noise_scale: float = 1.0  # multiplies the sky noise (1 = SDSS depth)


# --------------------------------------------------------------------------- photometry


class _Photometry:
    """Per-band flux ratios (relative to r) of the CWW templates versus redshift."""

    def __init__(self, redshifts: np.ndarray) -> None:
        import galsim

        self.z = redshifts
        bps = {b: galsim.Bandpass(f"LSST_{b}.dat", wave_type="nm").thin().withZeropoint("AB") for b in BANDS}
        self.ratio: dict[str, dict[str, np.ndarray]] = {}
        for tpl in ("E", "Sbc", "Scd", "Im"):
            sed = galsim.SED(f"CWW_{tpl}_ext.sed", wave_type="Ang", flux_type="flambda")
            mags = {b: np.array([sed.atRedshift(z).calculateMagnitude(bps[b]) for z in redshifts]) for b in BANDS}
            self.ratio[tpl] = {b: 10 ** (-0.4 * (mags[b] - mags["r"])) for b in BANDS}

    def band_ratio(self, template: str, band: str, z: np.ndarray | float) -> np.ndarray:
        return np.interp(z, self.z, self.ratio[template][band])


_PHOT: _Photometry | None = None


def _photometry() -> _Photometry:
    global _PHOT
    if _PHOT is None:
        _PHOT = _Photometry(np.linspace(0.0, 0.3, 31))
    return _PHOT


# --------------------------------------------------------------------------- sampling


def sample_galaxies(
    model: str,
    n_galaxies: int,
    n_projections: int,
    rng: np.random.Generator,
    settings: DemoSettings = DemoSettings(),
) -> pd.DataFrame:
    """Draw intrinsic galaxies of ``model`` and their projections.

    Galaxies are drawn until ``n_galaxies`` pass the survey's r-band magnitude limit
    (a flux-limited sample, like SDSS).  Each galaxy is seen ``n_projections`` times
    with independent inclination and position angle (the same intrinsic galaxy, as a
    simulation provides several projections of each halo).

    Returns:
        One row per image with the galaxy's parameters: ``galaxy_id``, ``projection``,
        ``log_mass``, ``redshift``, ``r_mag``, ``flux_r`` (nanomaggies), ``bt_r``,
        ``disk_hlr``/``bulge_hlr`` (arcsec), ``bulge_n``, ``disk_sed``, ``inclination``
        (deg), ``axis_ratio``, ``position_angle`` (deg), ``seeing_fwhm_<band>``,
        ``knot_fraction``, ``seed`` (per-image noise/knot seed).
    """
    from astropy.cosmology import Planck18

    if model not in MODELS:
        raise ValueError(f"unknown demo model {model!r}; choose one of {sorted(MODELS)}")
    m = MODELS[model]
    rows: list[pd.DataFrame] = []
    have = 0
    while have < n_galaxies:
        n = max(64, 2 * (n_galaxies - have))
        log_mass = rng.uniform(*settings.log_mass_range, n)
        # Volume-weighted redshifts (dN/dz ∝ z² at low z): a flux-limited sample.
        zlo, zhi = settings.redshift_range
        z = (zlo**3 + rng.uniform(0, 1, n) * (zhi**3 - zlo**3)) ** (1 / 3)
        # r-band absolute magnitude from mass (M/L rising with B/T is ignored: demo).
        abs_mag = -21.0 - 1.9 * (log_mass - 10.5) + rng.normal(0, 0.2, n)
        r_mag = abs_mag + Planck18.distmod(z).value
        keep = r_mag < settings.mag_limit
        bt_mean_shift = m.bt_mass_slope * (log_mass - 10.5)
        bt = np.clip(rng.beta(m.bt_alpha, m.bt_beta, n) + bt_mean_shift, 0.0, 0.95)
        r_kpc = m.size_norm * 10 ** (m.size_slope * (log_mass - 10.5) + rng.normal(0, m.size_scatter, n))
        kpc_per_arcsec = Planck18.kpc_proper_per_arcmin(z).value / 60.0
        disk_hlr = r_kpc / kpc_per_arcsec
        red = rng.uniform(0, 1, n) < m.red_disk_fraction
        frame = pd.DataFrame(
            {
                "log_mass": log_mass,
                "redshift": z,
                "r_mag": r_mag,
                "bt_r": bt,
                "disk_hlr": np.clip(disk_hlr, 0.3, 9.0),
                "bulge_hlr": np.clip(disk_hlr * m.bulge_size, 0.15, 5.0),
                "bulge_n": m.bulge_n,
                "disk_sed": np.where(red, "E", m.disk_sed),
                "knot_fraction": m.knot_fraction,
            }
        )[keep]
        rows.append(frame)
        have += len(frame)
    gal = pd.concat(rows, ignore_index=True).iloc[:n_galaxies]
    gal.insert(0, "galaxy_id", np.arange(n_galaxies))
    gal["flux_r"] = 10 ** (-0.4 * (gal["r_mag"] - 22.5))

    proj = gal.loc[gal.index.repeat(n_projections)].reset_index(drop=True)
    proj.insert(1, "projection", np.tile(np.arange(n_projections), n_galaxies))
    n_img = len(proj)
    cos_i = rng.uniform(0, 1, n_img)
    q0 = m.thickness
    proj["inclination"] = np.degrees(np.arccos(cos_i))
    proj["axis_ratio"] = np.sqrt(cos_i**2 * (1 - q0**2) + q0**2)
    proj["position_angle"] = rng.uniform(0, 180, n_img)
    base = rng.normal(settings.seeing_fwhm, settings.seeing_scatter, n_img)
    for band, factor in zip(BANDS, (1.08, 1.0, 0.95)):  # seeing improves to the red
        proj[f"seeing_fwhm_{band}"] = np.clip(base * factor, 0.9, 2.2)
    proj["seed"] = rng.integers(0, 2**31 - 1, n_img)
    proj.insert(0, "model", model)
    return proj


# --------------------------------------------------------------------------- rendering


def galaxy_profiles(row: pd.Series | dict, *, psf: bool = True) -> dict[str, object]:
    """The galaxy of one truth row as a GalSim profile per band (fluxes in nanomaggies).

    The bulge and disk fluxes per band follow from their templates at the galaxy's
    redshift; each band has its own seeing PSF, unless ``psf`` is False (the intrinsic light).
    """
    import galsim

    row = dict(row)
    phot = _photometry()
    shear = galsim.Shear(q=float(row["axis_ratio"]), beta=float(row["position_angle"]) * galsim.degrees)
    flux_r = float(row["flux_r"])
    bt = float(row["bt_r"])
    bulge = galsim.Sersic(n=float(row["bulge_n"]), half_light_radius=float(row["bulge_hlr"]), trunc=0)
    # The bulge is mildly flattened and shares the disk's position angle.
    bulge = bulge.shear(q=max(0.7, float(row["axis_ratio"])), beta=float(row["position_angle"]) * galsim.degrees)
    disk = galsim.Exponential(half_light_radius=float(row["disk_hlr"])).shear(shear)
    knots = None
    kf = float(row.get("knot_fraction", 0.0))
    if kf > 0:
        knots = galsim.RandomKnots(
            npoints=MODELS["clumpy"].n_knots or 20,
            half_light_radius=float(row["disk_hlr"]),
            rng=galsim.BaseDeviate(int(row["seed"])),
        ).shear(shear)
    profiles = {}
    for band in BANDS:
        f_bulge = flux_r * bt * float(phot.band_ratio("E", band, row["redshift"]))
        disk_tpl = str(row["disk_sed"])
        f_disk = flux_r * (1 - bt) * float(phot.band_ratio(disk_tpl, band, row["redshift"]))
        parts = [bulge.withFlux(f_bulge)]
        if knots is not None:
            # Knots are young: their light follows the bluest template.
            f_knots = flux_r * (1 - bt) * kf * float(phot.band_ratio("Im", band, row["redshift"]))
            parts += [disk.withFlux(f_disk * (1 - kf)), knots.withFlux(f_knots)]
        else:
            parts.append(disk.withFlux(f_disk))
        profiles[band] = galsim.Add(parts)
        if psf:
            profiles[band] = galsim.Convolve(profiles[band], galsim.Kolmogorov(fwhm=float(row[f"seeing_fwhm_{band}"])))
    return profiles


def render_galaxy(row: pd.Series | dict, settings: DemoSettings = DemoSettings(), *,
                  idealised: bool = False) -> np.ndarray:
    """Render one galaxy image in nanomaggies, shape (3, size, size) in g, r, i order.

    The profiles of :func:`galaxy_profiles` get Gaussian sky noise plus Poisson-like
    source noise, unless ``idealised`` (no PSF, no noise: a simulation mock as radiative
    transfer gives it, see :mod:`simobs.data.demo_skirt`).
    """
    rng = np.random.default_rng(int(row["seed"]))
    size = settings.image_size
    image = np.empty((len(BANDS), size, size), dtype=np.float32)
    if idealised:
        for b, gal in enumerate(galaxy_profiles(row, psf=False).values()):
            # Sampled at pixel centres: without a PSF an FFT of the cuspy bulge would be huge.
            image[b] = gal.drawImage(nx=size, ny=size, scale=settings.pixel_scale, method="no_pixel").array
        return image
    for b, (band, gal) in enumerate(galaxy_profiles(row).items()):
        img = gal.drawImage(nx=size, ny=size, scale=settings.pixel_scale).array
        sigma = SKY_SIGMA[band] * settings.noise_scale
        var = sigma**2 + np.clip(img, 0, None) / ELECTRONS_PER_NMGY
        image[b] = img + rng.normal(0.0, 1.0, img.shape) * np.sqrt(var)
    return image


def _sdss_objid(galaxy_id: int, seed: int) -> str:
    # 18-digit, SDSS-looking object ids; unique per galaxy within a source.
    return str(1237650000000000000 + seed % 1000 * 10**9 + galaxy_id)


def _write_observation(path: Path, image: np.ndarray, objid: str, row: dict, settings: DemoSettings) -> None:
    from astropy.io import fits

    primary = fits.PrimaryHDU()
    primary.header["OBJID"] = (objid, "object id")
    primary.header["Z"] = (float(row["redshift"]), "redshift")
    primary.header["ORIGIN"] = "simobs demo universe"
    hdus = [primary]
    for b, band in enumerate(BANDS):
        hdu = fits.ImageHDU(image[b], name=band.upper())
        hdu.header["OBJID"] = (objid, "object id")
        hdu.header["BAND"] = (band, "filter")
        hdu.header["PIXSCALE"] = (settings.pixel_scale, "arcsec / pixel")
        hdu.header["BUNIT"] = "nanomaggy"
        hdu.header["PSF_FWHM"] = (float(row[f"seeing_fwhm_{band}"]), "arcsec")
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(path, overwrite=True)


def _write_simulation(path: Path, image: np.ndarray, model: str, source: str, row: dict,
                      band_order: Sequence[str], integer: bool, settings: DemoSettings) -> None:
    from astropy.io import fits

    cube = image[[BANDS.index(b) for b in band_order]]
    hdu = fits.PrimaryHDU(cube.astype(np.float32))
    if integer:
        # 16-bit integers with BSCALE/BZERO, as archival mocks are often stored.
        lo, hi = float(cube.min()), float(cube.max())
        hdu.scale("int16", bscale=(hi - lo) / 65000.0 or 1.0, bzero=(hi + lo) / 2.0)
    h = hdu.header
    h["SIMNAME"] = (source, "simulation")
    h["MODEL"] = (model, "demo galaxy-formation model")
    h["GALID"] = (f"{source}-{int(row['galaxy_id']):05d}", "simulated galaxy id")
    h["PROJ"] = (int(row["projection"]), "projection index")
    h["BANDS"] = (",".join(band_order), "band order along axis 1 (FITS NAXIS3)")
    h["PIXSCALE"] = (settings.pixel_scale, "arcsec / pixel")
    h["BUNIT"] = "nanomaggy"
    hdu.writeto(path, overwrite=True)


def _render_chunk(args: tuple) -> list[np.ndarray]:
    rows, settings = args
    return [render_galaxy(r, settings) for r in rows]


def write_demo_source(
    out_dir: str | os.PathLike[str],
    *,
    source: str,
    kind: str,
    model: str,
    n_galaxies: int,
    n_projections: int,
    seed: int,
    settings: DemoSettings = DemoSettings(),
    band_order: Sequence[str] | None = None,
    integer: bool = False,
    workers: int = 1,
) -> pd.DataFrame:
    """Generate one demo source into ``out_dir`` (written atomically) and return its truth table.

    Args:
        out_dir: folder to create; the source's FITS files and ``truth.csv`` go there.
        source: source name (written into headers and ids).
        kind: ``observation`` (multi-extension files, one projection per galaxy) or
            ``simulation`` (band cubes, ``n_projections`` per galaxy).
        model: galaxy model name in :data:`MODELS`.
        n_galaxies, n_projections: sample size.
        seed: random seed; the same seed gives bit-identical files.
        band_order: band order of simulation cubes (default g, r, i).
        integer: store simulation cubes as int16 with BSCALE/BZERO.
        workers: processes used to render.
    """
    if kind not in ("observation", "simulation"):
        raise ValueError(f"source {source!r}: kind must be 'observation' or 'simulation', not {kind!r}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    n_proj = 1 if kind == "observation" else n_projections
    truth = sample_galaxies(model, n_galaxies, n_proj, rng, settings)
    records = truth.to_dict("records")
    n_chunks = max(1, workers * 4)
    chunks = [records[i::n_chunks] for i in range(n_chunks)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            rendered = list(pool.map(_render_chunk, [(c, settings) for c in chunks]))
    else:
        rendered = [_render_chunk((c, settings)) for c in chunks]
    images: list[np.ndarray] = [None] * len(records)  # type: ignore[list-item]
    for i, chunk in enumerate(rendered):
        for j, img in enumerate(chunk):
            images[i + j * n_chunks] = img

    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = []
    for row, img in zip(records, images):
        if kind == "observation":
            objid = _sdss_objid(int(row["galaxy_id"]), seed)
            name = f"{objid}.fits"
            _write_observation(tmp / name, img, objid, row, settings)
            files.append((objid, objid, name))
        else:
            gid = f"{source}-{int(row['galaxy_id']):05d}"
            name = f"{gid}_p{int(row['projection'])}.fits"
            _write_simulation(tmp / name, img, model, source, row, band_order or BANDS, integer, settings)
            files.append((f"{gid}_p{int(row['projection'])}", gid, name))
    truth.insert(0, "image_id", [f[0] for f in files])
    truth.insert(1, "galaxy_key", [f[1] for f in files])
    truth.insert(2, "file", [f[2] for f in files])
    truth.insert(3, "source", source)
    truth.to_csv(tmp / "truth.csv", index=False)
    (tmp / "settings.json").write_text(
        pd.Series({**asdict(settings), "model": model, "seed": seed, "kind": kind}).to_json(indent=1)
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    log.info("wrote %d images of model %r to %s", len(records), model, out_dir)
    return truth


def generate_from_settings(
    out_dir: str | os.PathLike[str],
    *,
    source: str,
    kind: str,
    model: str,
    n_galaxies: int,
    n_projections: int,
    seed: int,
    image_size: int = 64,
    pixel_scale: float = SDSS_PIXEL_SCALE,
    seeing_fwhm: float = 1.4,
    noise_scale: float = 1.0,
    band_order: Sequence[str] = BANDS,
    integer: bool = False,
    workers: int = 1,
    layout: str = "cube",
) -> pd.DataFrame:
    """:func:`write_demo_source` from the flat settings the workflow passes.

    A simulation source with ``layout: skirt_tng`` is written as idealised TNG SKIRT
    files instead (:mod:`simobs.data.demo_skirt`), for the realism stage, and an observed
    survey with ``layout: sdss_frames`` as SDSS frames plus a catalogue
    (:mod:`simobs.data.demo_frames`), for the cutout stage.
    """
    settings = DemoSettings(image_size=image_size, pixel_scale=pixel_scale, seeing_fwhm=seeing_fwhm,
                            noise_scale=noise_scale)
    if layout == "sdss_frames":
        from simobs.data.demo_frames import write_demo_frames

        return write_demo_frames(out_dir, source=source, model=model, n_galaxies=n_galaxies, seed=seed,
                                 settings=settings, workers=workers)
    if layout == "skirt_tng":
        from simobs.data.demo_skirt import write_tng_skirt_source

        return write_tng_skirt_source(out_dir, source=source, model=model, n_galaxies=n_galaxies,
                                      n_projections=n_projections, seed=seed, settings=settings)
    return write_demo_source(out_dir, source=source, kind=kind, model=model, n_galaxies=n_galaxies,
                             n_projections=n_projections, seed=seed, settings=settings,
                             band_order=tuple(band_order), integer=integer, workers=workers)
