"""Shared fixtures of the separation tests: tiny grids and known spectra (no camb)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simobs.separation.fields import power_law_power_2d
from simobs.separation.spectra import fourier_wavenumbers


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def cmb_like_power(npix: int) -> np.ndarray:
    """A CMB-like normalised 2-D power: falls with k and has a damping tail spanning ~7 decades."""
    k = fourier_wavenumbers(npix)
    power = np.where(k > 0, np.exp(-((k / 0.15) ** 2)) / (k + 0.05), 0.0)
    return power / power.mean()


@pytest.fixture
def spectra16() -> tuple[np.ndarray, np.ndarray]:
    """(dust power ∝ k^-2.5, CMB-like power) on a 16x16 grid, both with mean 1."""
    return power_law_power_2d(16, -2.5), cmb_like_power(16)
