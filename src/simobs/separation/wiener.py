"""The Fourier-space Wiener filter and the closed-form noise predictor of Gaussian dust.

For stationary dust with mean ``μ`` and 2-D power ``D`` and the standardised CMB with
power ``C``, the observation ``y = x + σ c`` has, per Fourier mode k,

    posterior mean      μ + D_k / (D_k + σ² C_k) · (y − μ)_k
    posterior variance  D_k σ² C_k / (D_k + σ² C_k)

This is the exact posterior when the dust is Gaussian and the best *linear* estimator
otherwise: the baseline the diffusion posterior has to beat.  Powers follow the
orthonormal-FFT convention of :mod:`simobs.separation.spectra`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from simobs.separation.sde import LinearBetaSchedule

__all__ = ["estimate_power_2d", "wiener_filter", "wiener_posterior_variance", "GaussianNoisePredictor"]


def estimate_power_2d(maps: np.ndarray, *, chunk: int = 256) -> tuple[float, np.ndarray]:
    """Mean and per-mode 2-D power of a set of stationary maps (e.g. the training dust).

    Args:
        maps: shape ``(n, npix, npix)``.
        chunk: maps per FFT batch (bounds memory for large training sets).

    Returns:
        ``(mean, power)``: the pixel mean (a scalar, stationarity) and the power of the
        mean-subtracted maps, shape ``(npix, npix)``, float64.
    """
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise ValueError(f"maps must have shape (n>0, npix, npix), got {maps.shape}")
    mean = float(np.mean(maps, dtype=np.float64))
    acc = np.zeros(maps.shape[1:], dtype=np.float64)
    for start in range(0, maps.shape[0], chunk):
        block = np.asarray(maps[start : start + chunk], dtype=np.float64) - mean
        acc += (np.abs(np.fft.fft2(block, norm="ortho")) ** 2).sum(axis=0)
    return mean, acc / maps.shape[0]


def _gain(dust_power: np.ndarray, cmb_power: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    s2 = np.asarray(sigma, dtype=np.float64).reshape(-1, 1, 1) ** 2
    denom = dust_power + s2 * cmb_power
    # Where neither component has power the mode carries nothing; where only the CMB
    # has none the observation *is* dust.  Both cases: gain 1 if C_k = 0.
    with np.errstate(invalid="ignore", divide="ignore"):
        gain = np.where(denom > 0, dust_power / np.where(denom > 0, denom, 1.0), 1.0)
    return np.where(cmb_power > 0, gain, 1.0)


def wiener_filter(
    y: np.ndarray,
    sigma: np.ndarray | float,
    dust_power: np.ndarray,
    cmb_power: np.ndarray,
    dust_mean: float = 0.0,
) -> np.ndarray:
    """Wiener estimate of the dust in ``y = dust + σ·cmb``.

    Args:
        y: observations, shape ``(n, npix, npix)``.
        sigma: σ per observation, shape ``(n,)`` or scalar.
        dust_power: dust 2-D power ``D``, shape ``(npix, npix)``.
        cmb_power: normalised CMB 2-D power ``C``, shape ``(npix, npix)``.
        dust_mean: dust pixel mean ``μ``.

    Returns:
        Dust estimate, shape ``(n, npix, npix)``, float64 (the CMB estimate is ``(y − x̂)/σ``).
    """
    y = np.asarray(y, dtype=np.float64)
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (y.shape[0],))
    gain = _gain(dust_power, cmb_power, sigma)
    spec = np.fft.fft2(y - dust_mean, norm="ortho") * gain
    return dust_mean + np.fft.ifft2(spec, norm="ortho").real


def wiener_posterior_variance(
    sigma: np.ndarray | float, dust_power: np.ndarray, cmb_power: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-mode and per-pixel posterior variance of the Gaussian (Wiener) posterior.

    Returns:
        ``(mode_variance (n, npix, npix), pixel_variance (n,))``; the pixel variance is
        the mean over modes (the posterior is stationary).
    """
    sigma = np.atleast_1d(np.asarray(sigma, dtype=np.float64))
    gain = _gain(dust_power, cmb_power, sigma)
    mode_var = gain * (sigma.reshape(-1, 1, 1) ** 2) * cmb_power
    return mode_var, mode_var.mean(axis=(1, 2))


class GaussianNoisePredictor(nn.Module):
    """The exact ``E[η | z_t]`` when the dust is Gaussian: the optimal noise predictor.

    With ``z_t = √ᾱ x + √(1−ᾱ) η``, ``x ~ N(μ, D)``, ``η ~ N(0, C)``, per Fourier mode

        η̂_k = √(1−ᾱ) C_k / (ᾱ D_k + (1−ᾱ) C_k) · (z − √ᾱ μ)_k.

    Plugged into the sampler instead of a network it makes the reverse SDE sample the
    Wiener posterior exactly (up to discretisation), which is what the exactness test
    checks.  It also serves as the linear part of :class:`~simobs.separation.model.NoisePredictor`.

    Args:
        dust_power: ``D``, shape ``(npix, npix)``.
        cmb_power: ``C``, shape ``(npix, npix)``.
        schedule: the β schedule.
        dust_mean: ``μ``.
    """

    def __init__(
        self,
        dust_power: np.ndarray | torch.Tensor,
        cmb_power: np.ndarray | torch.Tensor,
        schedule: LinearBetaSchedule,
        dust_mean: float = 0.0,
    ) -> None:
        super().__init__()
        d = torch.as_tensor(dust_power, dtype=torch.float64)
        c = torch.as_tensor(cmb_power, dtype=torch.float64)
        half = d.shape[-1] // 2 + 1
        self.register_buffer("dust_half", d[:, :half].clone())
        self.register_buffer("cmb_half", c[:, :half].clone())
        self.register_buffer("dust_mean", torch.tensor(float(dust_mean), dtype=torch.float64))
        self.schedule = schedule
        self.npix = int(d.shape[-1])

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted coloured noise for states ``z`` (B, npix, npix) at times ``t`` (B,)."""
        dtype = z.dtype if z.dtype in (torch.float32, torch.float64) else torch.float32
        a = self.schedule.alpha_bar(t.to(torch.float64)).reshape(-1, 1, 1)
        d, c = self.dust_half, self.cmb_half
        denom = a * d + (1 - a) * c
        gain = torch.where(denom > 0, torch.sqrt(1 - a) * c / torch.where(denom > 0, denom, 1.0), 0.0)
        centred = z.to(dtype) - (torch.sqrt(a) * self.dust_mean).to(dtype)
        spec = torch.fft.rfft2(centred, norm="ortho") * gain.to(dtype)
        return torch.fft.irfft2(spec, s=(self.npix, self.npix), norm="ortho")
