r"""The variance-preserving SDE with coloured noise, and how an observation maps onto it.

Forward process (Heurtel-Depeiges et al. 2023):

.. math::  dz = -\tfrac12 β(t)\, z\, dt + \sqrt{β(t)}\, Σ^{1/2} dw,

with ``Σ`` diagonal in Fourier space (the normalised CMB power).  Its marginals are

.. math::  z_t = \sqrt{\bar α_t}\, x + \sqrt{1 - \bar α_t}\; Σ^{1/2} ε,\qquad
           \bar α_t = e^{-B(t)},\; B(t) = \int_0^t β.

**Observation ↔ state.**  An observation ``y = x + σ Σ^{1/2} ε`` (dust plus σ times the
standardised CMB) satisfies ``√ᾱ y = √ᾱ x + √ᾱ σ Σ^{1/2} ε``; this is distributed as
``z_t`` exactly when ``ᾱ σ² = 1 − ᾱ``, i.e. ``σ² = e^{B(t*)} − 1``.  So
``z_{t*} = y / √(1 + σ²)`` with ``B(t*) = log(1 + σ²)``, and running the reverse SDE
from ``t*`` to 0 draws ``x ~ p(x | y)``.

**Parameterisation.**  The network predicts the coloured noise ``η = Σ^{1/2} ε``.  The
score is ``∇ log p_t(z) = −Σ^{-1} E[η | z] / √(1 − ᾱ)``; the reverse drift only needs
``Σ ∇ log p_t = −η̂ / √(1 − ᾱ)``, so ``Σ^{-1}`` (huge in the CMB damping tail) never
appears.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["LinearBetaSchedule", "ColouredNoise", "observation_to_state"]


@dataclass(frozen=True)
class LinearBetaSchedule:
    """Linear ``β(t) = β_min + t (β_max − β_min)`` on ``t ∈ [0, 1]`` (Song et al. 2021 defaults).

    The largest representable noise level is ``σ_max = √(e^{B(1)} − 1)`` (≈ 150 for the
    defaults); observations with larger σ are rejected by :meth:`t_star`.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self) -> None:
        if not 0 < self.beta_min <= self.beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max, got {self.beta_min}, {self.beta_max}")

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """β(t), same shape as ``t``."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral(self, t: torch.Tensor) -> torch.Tensor:
        """``B(t) = ∫_0^t β = β_min t + ½ (β_max − β_min) t²``."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """``ᾱ(t) = exp(−B(t))``: the signal fraction of the variance."""
        return torch.exp(-self.integral(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise level in observation units, ``σ(t) = √(e^{B(t)} − 1)``."""
        return torch.sqrt(torch.expm1(self.integral(t)))

    def t_star(self, sigma: torch.Tensor | np.ndarray | float) -> torch.Tensor:
        """Time at which the forward process has noise level σ: solves ``B(t*) = log(1 + σ²)``.

        Args:
            sigma: noise level(s) σ ≥ 0 (CMB amplitude relative to dust), any shape.

        Returns:
            ``t*`` in ``[0, 1]``, float64 tensor of the same shape.

        Raises:
            ValueError: σ < 0 or σ beyond the schedule's ``σ(1)`` (raise ``beta_max``).
        """
        s = torch.as_tensor(sigma, dtype=torch.float64)
        if torch.any(s < 0):
            raise ValueError(f"noise levels must be >= 0, got min {float(s.min())}")
        target = torch.log1p(s**2)
        b_one = self.integral(torch.tensor(1.0, dtype=torch.float64))
        if torch.any(target > b_one + 1e-12):
            raise ValueError(
                f"sigma={float(s.max()):.4g} exceeds the schedule's maximum "
                f"{math.sqrt(math.expm1(float(b_one))):.4g}; increase separation.sde.beta_max"
            )
        a = 0.5 * (self.beta_max - self.beta_min)
        if a == 0:
            return target / self.beta_min
        # Stable root of a t² + β_min t − target = 0 (no cancellation for small targets).
        return 2.0 * target / (self.beta_min + torch.sqrt(self.beta_min**2 + 4.0 * a * target))


class ColouredNoise:
    """Draws and applies ``Σ^{1/2}`` for a power ``Σ`` diagonal in Fourier space.

    Args:
        power: 2-D power ``Σ``, shape ``(npix, npix)`` on the full FFT grid (only its
            ``rfft`` half is used), orthonormal-FFT convention.
        dtype: real dtype of the fields (float64 for exactness tests).
        device: where the fields live.
    """

    def __init__(
        self, power: np.ndarray | torch.Tensor, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> None:
        p = torch.as_tensor(power, dtype=torch.float64)
        if p.ndim != 2 or p.shape[0] != p.shape[1]:
            raise ValueError(f"power must have shape (npix, npix), got {tuple(p.shape)}")
        if torch.any(p < 0):
            raise ValueError("power must be non-negative")
        self.npix = int(p.shape[0])
        self.dtype = dtype
        self.device = torch.device(device)
        self.power = p.to(device=self.device, dtype=dtype)
        self.sqrt_half = torch.sqrt(p[:, : self.npix // 2 + 1]).to(device=self.device, dtype=dtype)

    def colour(self, white: torch.Tensor) -> torch.Tensor:
        """``Σ^{1/2} w`` for white fields ``w`` of shape ``(..., npix, npix)``."""
        spec = torch.fft.rfft2(white.to(self.dtype), norm="ortho") * self.sqrt_half
        return torch.fft.irfft2(spec, s=(self.npix, self.npix), norm="ortho")

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        """Coloured noise ``Σ^{1/2} ε``, ``ε ~ N(0, I)``, of shape ``(*shape, npix, npix)``."""
        white = torch.randn(
            (*shape, self.npix, self.npix), generator=generator, dtype=self.dtype, device=self.device
        )
        return self.colour(white)


def observation_to_state(
    y: torch.Tensor, sigma: torch.Tensor | float, schedule: LinearBetaSchedule
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map observations ``y = x + σ·cmb`` to VP states: ``z_{t*} = y / √(1 + σ²)``, ``B(t*) = log(1 + σ²)``.

    Args:
        y: observations, shape ``(B, npix, npix)``.
        sigma: σ per observation, shape ``(B,)`` or a scalar.
        schedule: the β schedule.

    Returns:
        ``(z, t_star)``: states of ``y``'s shape and dtype, times of shape ``(B,)``.
    """
    s = torch.as_tensor(sigma, dtype=torch.float64).expand(y.shape[0])
    t_star = schedule.t_star(s).to(device=y.device, dtype=y.dtype)
    scale = (1.0 / torch.sqrt(1.0 + s**2)).to(device=y.device, dtype=y.dtype)
    return y * scale[:, None, None], t_star
