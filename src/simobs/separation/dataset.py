"""The field dataset of the separation stage (rule ``make_fields``) and the posterior shards.

``results/separation/fields.h5``:

| name | type | meaning |
|---|---|---|
| ``train/dust`` | float32 (n_train, npix, npix) | standardised dust maps for the prior |
| ``test/dust`` | float32 (n_test, npix, npix) | true dust of each observation |
| ``test/cmb`` | float32 (n_test, npix, npix) | true standardised CMB (unit pixel variance) |
| ``test/sigma`` | float64 (n_test,) | σ of each observation |
| ``test/observation`` | float32 (n_test, npix, npix) | ``y = dust + σ·cmb`` |
| ``cmb_power`` | float64 (npix, npix) | normalised CMB 2-D power Σ (``mean = 1``, orthonormal FFT) |
| ``cmb_cl`` | float64 (lmax+1,) | lensed TT ``C_ℓ`` from camb, μK² |
| attrs | | ``npix``, ``pixel_size_arcmin``, ``cmb_pixel_variance_muK2`` (multiply the CMB by its square root for μK), ``cosmology`` (JSON), ``dust`` (JSON settings), ``dust_fits_mean``/``dust_fits_std`` (FITS units, of the training maps), ``seed``, ``sigma`` (JSON) |

``results/separation/posterior/shard{k}.h5`` (rule ``separate``): ``indices`` (n,) into
``test/*`` and the array fields of :class:`~simobs.separation.sample.PosteriorSummary` as
datasets, its scalars (``method``, ``n_samples``) as attributes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from simobs.data.ingest import MANIFEST_COLUMNS, write_manifest
from simobs.io import atomic_path
from simobs.separation.fields import (
    dust_fits_files,
    gaussian_dust,
    gaussian_random_field,
    lognormal_dust,
    read_dust_fits,
    standardise_dust,
)
from simobs.separation.sample import PosteriorSummary
from simobs.separation.spectra import DEFAULT_COSMOLOGY, cmb_power_2d

__all__ = [
    "DustSettings",
    "FieldSettings",
    "FieldDataset",
    "draw_sigmas",
    "make_field_dataset",
    "read_field_dataset",
    "write_posterior_shard",
    "read_posterior_shards",
    "shard_indices",
]

DUST_KINDS = ("lognormal", "gaussian", "fits")


@dataclass
class DustSettings:
    """Dust model (config ``separation.fields.dust``).

    Attributes:
        kind: ``lognormal`` (default, non-Gaussian), ``gaussian`` (exactly solvable) or
            ``fits`` (the user's maps).
        slope: power-law slope of the (underlying Gaussian) field, ``P ∝ k^slope``.
        log_scatter: standard deviation of the log of the log-normal field (non-Gaussianity).
        fits_files: paths or glob patterns of the FITS maps (``kind: fits``).
        test_fraction: fraction of the FITS maps held out as test truths (``kind: fits``).
    """

    kind: str = "lognormal"
    slope: float = -2.5
    log_scatter: float = 0.8
    fits_files: list[str] = field(default_factory=list)
    test_fraction: float = 0.1


@dataclass
class FieldSettings:
    """Field generation (config ``separation.fields``); see ``config/config.yaml`` for each key."""

    npix: int = 64
    pixel_size_arcmin: float = 8.0
    n_train: int = 2000
    n_test: int = 32
    sigma: float | list[float] = 1.0
    seed: int = 0
    cosmology: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_COSMOLOGY))
    dust: DustSettings = field(default_factory=DustSettings)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> FieldSettings:
        values = dict(values)
        dust = DustSettings(**dict(values.pop("dust", {})))
        if dust.kind not in DUST_KINDS:
            raise ValueError(f"separation.fields.dust.kind={dust.kind!r}; choose one of {DUST_KINDS}")
        return cls(**values, dust=dust)


@dataclass
class FieldDataset:
    """In-memory view of ``fields.h5`` (see the module docstring for meanings and shapes)."""

    train_dust: np.ndarray
    test_dust: np.ndarray
    test_cmb: np.ndarray
    sigma: np.ndarray
    observation: np.ndarray
    cmb_power: np.ndarray
    attrs: dict[str, Any]


def draw_sigmas(spec: float | Sequence[float], n: int, rng: np.random.Generator) -> np.ndarray:
    """σ per observation: one value, or ``[low, high]`` drawn uniformly."""
    if isinstance(spec, (int, float)):
        values = np.full(n, float(spec))
    elif len(spec) == 1:
        values = np.full(n, float(spec[0]))
    elif len(spec) == 2 and 0 <= spec[0] <= spec[1]:
        values = rng.uniform(float(spec[0]), float(spec[1]), n)
    else:
        raise ValueError(f"separation.fields.sigma={spec!r}: give one value or a range [low, high] with 0 <= low <= high")
    if np.any(values < 0):
        raise ValueError(f"separation.fields.sigma={spec!r} must be >= 0")
    return values


def make_field_dataset(
    settings: FieldSettings,
    out_path: str | os.PathLike[str],
    *,
    rejected_path: str | os.PathLike[str] | None = None,
    on_bad_file: str = "fail",
    max_rejected_fraction: float = 0.5,
) -> dict[str, Any]:
    """Generate CMB and dust maps, split train/test, form observations and write ``fields.h5`` atomically.

    Args:
        settings: the ``separation.fields`` config.
        out_path: the field dataset (HDF5).
        rejected_path: where to list the user dust files left out (``dust.kind: fits``
            under ``on_bad_file='skip'``); written, header only when none, for every kind.
        on_bad_file, max_rejected_fraction: the image ingestion's bad-file policy
            (config ``ingest``), applied to the dust FITS files.

    Returns:
        A summary (counts, σ range, dust skewness, CMB pixel variance, rejected files) for logging.
    """
    rng = np.random.default_rng(settings.seed)
    npix = settings.npix
    cmb_power, cl, cmb_var = cmb_power_2d(npix, settings.pixel_size_arcmin, settings.cosmology)
    attrs: dict[str, Any] = {"dust_fits_mean": 0.0, "dust_fits_std": 1.0}
    dust = settings.dust
    rejected = pd.DataFrame(columns=MANIFEST_COLUMNS)
    if dust.kind == "fits":
        maps, rejected = read_dust_fits(
            dust_fits_files(asdict(dust)), npix, settings.pixel_size_arcmin,
            on_bad_file=on_bad_file, max_rejected_fraction=max_rejected_fraction,
        )
        maps = maps[rng.permutation(len(maps))]
        n_test = max(1, int(round(dust.test_fraction * len(maps))))
        if len(maps) - n_test < 1:
            raise ValueError(f"{len(maps)} FITS dust maps: too few to hold out {n_test} for testing")
        train_dust, test_dust, attrs["dust_fits_mean"], attrs["dust_fits_std"] = standardise_dust(
            maps[n_test:], maps[:n_test])
    else:
        n_total = settings.n_train + settings.n_test
        if dust.kind == "lognormal":
            maps = lognormal_dust(n_total, npix, slope=dust.slope, log_scatter=dust.log_scatter, rng=rng)
        else:
            maps = gaussian_dust(n_total, npix, slope=dust.slope, rng=rng)
        train_dust, test_dust = maps[: settings.n_train], maps[settings.n_train :]
    sigma = draw_sigmas(settings.sigma, len(test_dust), rng)
    cmb = gaussian_random_field(cmb_power, len(test_dust), rng)
    observation = test_dust + sigma[:, None, None] * cmb

    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        chunk = (1, npix, npix)
        f.create_dataset("train/dust", data=train_dust.astype(np.float32), chunks=chunk)
        f.create_dataset("test/dust", data=test_dust.astype(np.float32), chunks=chunk)
        f.create_dataset("test/cmb", data=cmb.astype(np.float32), chunks=chunk)
        f.create_dataset("test/sigma", data=sigma)
        f.create_dataset("test/observation", data=observation.astype(np.float32), chunks=chunk)
        f.create_dataset("cmb_power", data=cmb_power)
        f.create_dataset("cmb_cl", data=cl)
        f.attrs.update(attrs)
        f.attrs["npix"] = npix
        f.attrs["pixel_size_arcmin"] = settings.pixel_size_arcmin
        f.attrs["cmb_pixel_variance_muK2"] = cmb_var
        f.attrs["cosmology"] = json.dumps({**DEFAULT_COSMOLOGY, **settings.cosmology})
        f.attrs["dust"] = json.dumps(asdict(dust))
        f.attrs["sigma"] = json.dumps(settings.sigma)
        f.attrs["seed"] = settings.seed
    if rejected_path is not None:
        write_manifest(rejected, rejected_path)
    return {
        "n_rejected_dust_files": len(rejected),
        "n_train": len(train_dust),
        "n_test": len(test_dust),
        "sigma_min": float(sigma.min()),
        "sigma_max": float(sigma.max()),
        "dust_skewness": float(np.mean(train_dust**3) / np.mean(train_dust**2) ** 1.5),
        "cmb_pixel_std_muK": float(np.sqrt(cmb_var)),
    }


def read_field_dataset(path: str | os.PathLike[str], *, with_train: bool = True) -> FieldDataset:
    """Read ``fields.h5`` into memory (``with_train=False`` skips the training maps)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: field dataset missing; run the make_fields rule")
    with h5py.File(path, "r") as f:
        return FieldDataset(
            train_dust=f["train/dust"][...] if with_train else np.empty((0, *f["cmb_power"].shape), np.float32),
            test_dust=f["test/dust"][...],
            test_cmb=f["test/cmb"][...],
            sigma=f["test/sigma"][...],
            observation=f["test/observation"][...],
            cmb_power=f["cmb_power"][...],
            attrs={**dict(f.attrs), "cmb_cl": f["cmb_cl"][...]},
        )


def shard_indices(n: int, n_shards: int, shard: int) -> np.ndarray:
    """Contiguous block of observation indices handled by ``shard`` (0-based) of ``n_shards``."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} outside 0..{n_shards - 1}")
    return np.array_split(np.arange(n), n_shards)[shard]


_SUMMARY_SCALARS = ("method", "n_samples")


def write_posterior_shard(
    path: str | os.PathLike[str], indices: np.ndarray, summary: PosteriorSummary, attrs: Mapping[str, Any]
) -> None:
    """Write one shard of posterior summaries atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("indices", data=np.asarray(indices, dtype=np.int64))
        for name, value in asdict(summary).items():
            if name in _SUMMARY_SCALARS:
                f.attrs[name] = value
            else:
                f.create_dataset(name, data=value)
        for key, value in attrs.items():
            f.attrs[key] = value


def read_posterior_shards(paths: Sequence[str | os.PathLike[str]]) -> tuple[np.ndarray, PosteriorSummary]:
    """Concatenate shards, ordered by observation index: ``(indices, summary)``."""
    if not paths:
        raise ValueError("no posterior shards given")
    parts: list[dict[str, Any]] = []
    for p in paths:
        with h5py.File(p, "r") as f:
            missing = [name for name in _SUMMARY_SCALARS if name not in f.attrs]
            if missing:
                raise ValueError(f"{p}: posterior shard lacks the attributes {missing} (written before they were "
                                 "recorded); rerun the separate rule")
            parts.append({**{name: f[name][...] for name in f}, **{n: f.attrs[n] for n in _SUMMARY_SCALARS}})
    for name in _SUMMARY_SCALARS:
        values = {str(part[name]) for part in parts}
        if len(values) > 1:
            raise ValueError(f"posterior shards {list(map(str, paths))} disagree on {name}: {sorted(values)}; "
                             "rerun the separate rule for all shards")
    indices = np.concatenate([p["indices"] for p in parts])
    order = np.argsort(indices)
    fields = PosteriorSummary.__dataclass_fields__
    merged = {}
    for name in fields:
        if name == "method":
            merged[name] = str(parts[0][name])
        elif name == "n_samples":
            merged[name] = int(parts[0][name])
        elif name in ("credible_levels", "k_centres"):
            merged[name] = parts[0][name]
        else:
            merged[name] = np.concatenate([p[name] for p in parts])[order]
    return indices[order], PosteriorSummary(**merged)
