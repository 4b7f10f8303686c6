"""The trained noise predictor: U-Net (plus an optional closed-form Gaussian part), save and load.

Files written by :func:`save_noise_predictor` hold only tensors and plain Python
values, so ``torch.load(path, weights_only=True)`` reads them (no pickled code).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from simobs.io import atomic_path
from simobs.separation.sde import LinearBetaSchedule
from simobs.separation.unet import UNet
from simobs.separation.wiener import GaussianNoisePredictor

__all__ = ["NoisePredictor", "build_noise_predictor", "save_noise_predictor", "load_noise_predictor", "parameter_count"]

FORMAT = "simobs.separation.noise_predictor/2"  # /2: the CMB support buffer (projection of the output)


class NoisePredictor(nn.Module):
    """``η̂(z, t) = U-Net(z, t) [+ E_Gauss[η | z]]``: the coloured noise in a VP state.

    With ``gaussian_part`` the network only learns the *non-Gaussian correction* to
    the exact predictor of a Gaussian dust with the training maps' power (a
    preconditioning: at initialisation — zero output layer — sampling gives exactly the
    Wiener posterior, and training time goes into what the Wiener filter cannot do).

    The network's output is projected onto the modes where the CMB has power (``Σ_k > 0``):
    the true coloured noise has none elsewhere — in particular no mean, ``Σ_00 = 0`` — and
    whatever the network (with its biases) put there would enter ``x̂ = y − σ η̂`` directly.

    Args:
        unet: the network (1 input / output channel).
        schedule: β schedule (kept with the weights; sampling must use the same).
        cmb_power: the normalised CMB power ``Σ``, shape ``(npix, npix)`` (its support is kept).
        gaussian_part: optional closed-form Gaussian predictor.
    """

    def __init__(
        self, unet: UNet, schedule: LinearBetaSchedule, cmb_power: np.ndarray | torch.Tensor,
        gaussian_part: GaussianNoisePredictor | None = None,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.schedule = schedule
        self.gaussian_part = gaussian_part
        c = torch.as_tensor(cmb_power, dtype=torch.float64)
        self.npix = int(c.shape[-1])
        self.register_buffer("cmb_support_half", (c[:, : self.npix // 2 + 1] > 0).to(torch.float32))

    def project(self, eta: torch.Tensor) -> torch.Tensor:
        """Keep the Fourier modes of ``eta`` (B, npix, npix) where ``Σ > 0`` (float32, or the input's float64)."""
        eta = eta if eta.dtype == torch.float64 else eta.float()
        spec = torch.fft.rfft2(eta, norm="ortho") * self.cmb_support_half.to(eta.dtype)
        return torch.fft.irfft2(spec, s=(self.npix, self.npix), norm="ortho")

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """States ``z`` (B, npix, npix), times ``t`` (B,) → predicted coloured noise (B, npix, npix)."""
        x = z[:, None]
        if z.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.unet(x.to(next(self.unet.parameters()).dtype), t)[:, 0]
        # FFTs do not run in bf16: projection and linear part stay in float32 (or the input's float64).
        with torch.autocast(device_type=z.device.type, enabled=False):
            out = self.project(out.to(torch.float64) if z.dtype == torch.float64 else out)
            if self.gaussian_part is not None:
                out = out + self.gaussian_part(z if z.dtype == torch.float64 else z.float(), t).to(out.dtype)
        return out


def build_noise_predictor(config: Mapping[str, Any]) -> NoisePredictor:
    """Build an (untrained) predictor from a plain config.

    ``config`` keys: ``npix``, ``base_channels``, ``channel_mults``, ``num_res_blocks``,
    ``beta_min``, ``beta_max``, ``gaussian_part`` (bool), the array ``cmb_power``
    (npix, npix) and, when ``gaussian_part``, ``dust_power`` (npix, npix) and
    ``dust_mean`` (if absent, zero buffers are made, to be filled by ``load_state_dict``).
    """
    unet = UNet(
        in_channels=1,
        base_channels=int(config["base_channels"]),
        channel_mults=tuple(int(m) for m in config["channel_mults"]),
        num_res_blocks=int(config["num_res_blocks"]),
    )
    schedule = LinearBetaSchedule(float(config["beta_min"]), float(config["beta_max"]))
    gaussian = None
    npix = int(config["npix"])
    zeros = np.zeros((npix, npix))
    if config.get("gaussian_part", False):
        gaussian = GaussianNoisePredictor(
            config.get("dust_power", zeros), config.get("cmb_power", zeros), schedule, float(config.get("dust_mean", 0.0))
        )
    return NoisePredictor(unet, schedule, config.get("cmb_power", zeros), gaussian)


def _plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("npix", "base_channels", "channel_mults", "num_res_blocks", "beta_min", "beta_max", "gaussian_part")
    out = {k: config[k] for k in keys}
    out["channel_mults"] = [int(m) for m in out["channel_mults"]]
    return out


def save_noise_predictor(
    model: NoisePredictor, config: Mapping[str, Any], path: str | os.PathLike[str], extra: Mapping[str, Any] | None = None
) -> None:
    """Write weights + architecture config atomically (loadable with ``weights_only=True``)."""
    payload = {
        "format": FORMAT,
        "config": _plain_config(config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_noise_predictor(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> NoisePredictor:
    """Load a predictor saved by :func:`save_noise_predictor` (eval mode, on ``device``)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: cannot read a noise-predictor checkpoint ({err}); rerun train_score_model") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file; rerun train_score_model")
    model = build_noise_predictor(payload["config"])
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

