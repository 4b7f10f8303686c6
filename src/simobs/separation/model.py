"""The trained noise predictors: U-Net (plus an optional closed-form Gaussian part), save and load.

:class:`NoisePredictor` is the known-φ model (one CMB power ``Σ``, rule ``train_score_model``);
:class:`ConditionalNoisePredictor` is conditioned on the CMB parameters φ for the blind
(Gibbs diffusion) stage, where ``Σ_φ`` changes from chain to chain (rule
``train_blind_score_model``).

Files written by :func:`save_noise_predictor` and :func:`save_conditional_predictor` hold
only tensors and plain Python values, so ``torch.load(path, weights_only=True)`` reads
them (no pickled code).
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
from simobs.separation.gibbs import GaussianDustPredictor
from simobs.separation.sde import LinearBetaSchedule
from simobs.separation.unet import UNet
from simobs.separation.wiener import GaussianNoisePredictor

__all__ = [
    "NoisePredictor", "build_noise_predictor", "save_noise_predictor", "load_noise_predictor", "parameter_count",
    "ConditionalNoisePredictor", "build_conditional_predictor", "save_conditional_predictor",
    "load_conditional_predictor", "project_onto_support",
]

FORMAT = "simobs.separation.noise_predictor/2"  # /2: the CMB support buffer (projection of the output)
CONDITIONAL_FORMAT = "simobs.separation.conditional_noise_predictor/1"


def project_onto_support(eta: torch.Tensor, support_half: torch.Tensor) -> torch.Tensor:
    """Keep the Fourier modes of ``eta`` (B, npix, npix) where ``support_half`` (rfft half, 0/1) is 1.

    ``support_half`` is ``(npix, npix // 2 + 1)`` (one CMB power) or ``(B, npix, npix // 2 + 1)``
    (one per row).  Computes in float32, or float64 for a float64 ``eta``.
    """
    eta = eta if eta.dtype == torch.float64 else eta.float()
    npix = eta.shape[-1]
    spec = torch.fft.rfft2(eta, norm="ortho") * support_half.to(eta.dtype)
    return torch.fft.irfft2(spec, s=(npix, npix), norm="ortho")


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
        return project_onto_support(eta, self.cmb_support_half)

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


def _write_payload(
    fmt: str, model: nn.Module, config: dict[str, Any], path: str | os.PathLike[str], extra: Mapping[str, Any] | None
) -> None:
    payload = {
        "format": fmt,
        "config": config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _read_payload(path: str | os.PathLike[str], fmt: str, rule: str) -> dict[str, Any]:
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: cannot read a noise-predictor checkpoint ({err}); rerun {rule}") from err
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise ValueError(f"{path}: not a {fmt} file; rerun {rule}")
    return payload


def save_noise_predictor(
    model: NoisePredictor, config: Mapping[str, Any], path: str | os.PathLike[str], extra: Mapping[str, Any] | None = None
) -> None:
    """Write weights + architecture config atomically (loadable with ``weights_only=True``)."""
    _write_payload(FORMAT, model, _plain_config(config), path, extra)


def load_noise_predictor(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> NoisePredictor:
    """Load a predictor saved by :func:`save_noise_predictor` (eval mode, on ``device``)."""
    payload = _read_payload(path, FORMAT, "train_score_model")
    model = build_noise_predictor(payload["config"])
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)



class ConditionalNoisePredictor(nn.Module):
    """``η̂(z, t, φ) = U-Net(z, t, φ̃) [+ E_Gauss[η | z; Σ_φ]]``: the noise predictor of the blind stage.

    Implements :data:`simobs.separation.gibbs.ConditionalPredictor`: called with states ``z``
    (B, npix, npix), times ``t`` (B,), parameters ``phi`` (B, P) and each row's CMB power
    ``power_half`` (B, npix, npix // 2 + 1, rfft half, e.g. from
    :class:`~simobs.separation.spectra_grid.SpectrumInterpolator`).  The network sees φ mapped
    to ``φ̃ = 2 (φ − lower) / (upper − lower) − 1`` (``[-1, 1]`` on the prior box it was
    trained on); it is not trained outside the box.

    As in :class:`NoisePredictor`, the network's output is projected onto each row's CMB
    support (``Σ_φ > 0``), and with ``gaussian_part`` it only learns the correction to the
    exact predictor of a Gaussian dust with the training maps' power and mean
    (:class:`~simobs.separation.gibbs.GaussianDustPredictor` at the row's ``Σ_φ``): with the
    zero output layer of an untrained U-Net the Gibbs sampler runs the Gaussian-dust
    approximation exactly.

    Args:
        unet: the network (1 input / output channel, ``cond_dim = P``).
        schedule: β schedule (kept with the weights; sampling must use the same).
        lower, upper: the prior box of φ, shape ``(P,)`` (buffers ``lower``, ``upper``, float64).
        dust_power: ``D`` of the Gaussian part, shape ``(npix, npix)``; ``None``: no Gaussian part.
        dust_mean: ``μ`` of the Gaussian part.
    """

    def __init__(
        self, unet: UNet, schedule: LinearBetaSchedule, lower: np.ndarray | torch.Tensor,
        upper: np.ndarray | torch.Tensor, dust_power: np.ndarray | torch.Tensor | None = None, dust_mean: float = 0.0,
    ) -> None:
        super().__init__()
        lo = torch.as_tensor(lower, dtype=torch.float64).reshape(-1)
        hi = torch.as_tensor(upper, dtype=torch.float64).reshape(-1)
        if lo.shape != hi.shape or torch.any(hi <= lo):
            raise ValueError(f"prior box of phi needs upper > lower elementwise, got {lo.tolist()} and {hi.tolist()}")
        if unet.cond_dim != lo.numel():
            raise ValueError(f"the U-Net is conditioned on {unet.cond_dim} values, the prior box has {lo.numel()}")
        self.unet = unet
        self.schedule = schedule
        self.register_buffer("lower", lo)
        self.register_buffer("upper", hi)
        self.gaussian_part = dust_power is not None
        if dust_power is not None:
            d = torch.as_tensor(dust_power, dtype=torch.float64)
            self.register_buffer("dust_half", d[:, : d.shape[-1] // 2 + 1].clone())
            self.register_buffer("dust_mean", torch.tensor(float(dust_mean), dtype=torch.float64))

    def normalise(self, phi: torch.Tensor) -> torch.Tensor:
        """φ (B, P) → ``[-1, 1]`` on the prior box (what the network sees)."""
        lo, hi = self.lower.to(phi.device), self.upper.to(phi.device)
        return 2.0 * (phi.to(lo.dtype) - lo) / (hi - lo) - 1.0

    def gaussian_predictor(self, dtype: torch.dtype = torch.float64) -> GaussianDustPredictor | None:
        """The closed-form part alone (the Gaussian-dust approximation) computing in ``dtype``, or ``None``."""
        if not self.gaussian_part:
            return None
        return GaussianDustPredictor(self.dust_half.to(dtype), self.schedule, float(self.dust_mean))

    def forward(self, z: torch.Tensor, t: torch.Tensor, phi: torch.Tensor, power_half: torch.Tensor) -> torch.Tensor:
        """Predicted coloured noise (B, npix, npix); see the class docstring for the arguments."""
        if power_half.shape != (z.shape[0], z.shape[-2], z.shape[-1] // 2 + 1):
            raise ValueError(f"power_half must have shape {(z.shape[0], z.shape[-2], z.shape[-1] // 2 + 1)} "
                             f"(one rfft-half power per row), got {tuple(power_half.shape)}")
        x = z[:, None]
        if z.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = next(self.unet.parameters()).dtype
        out = self.unet(x.to(dtype), t, self.normalise(phi).to(dtype))[:, 0]
        # FFTs do not run in bf16: projection and linear part stay in float32 (or the input's float64).
        with torch.autocast(device_type=z.device.type, enabled=False):
            out = project_onto_support(out.to(torch.float64) if z.dtype == torch.float64 else out, power_half > 0)
            zf = z if z.dtype == torch.float64 else z.float()
            gaussian = self.gaussian_predictor(zf.dtype)
            if gaussian is not None:
                out = out + gaussian(zf, t, phi, power_half.to(zf.dtype)).to(out.dtype)
        return out


def build_conditional_predictor(config: Mapping[str, Any]) -> ConditionalNoisePredictor:
    """Build an (untrained) φ-conditioned predictor from a plain config.

    ``config`` keys: those of :func:`build_noise_predictor` but ``cmb_power`` (``npix``,
    ``base_channels``, ``channel_mults``, ``num_res_blocks``, ``beta_min``, ``beta_max``,
    ``gaussian_part``), plus ``cond_embedding_dim`` (hidden width of the φ MLP) and the
    prior box ``lower``, ``upper`` (length P each); when ``gaussian_part``, ``dust_power``
    (npix, npix) and ``dust_mean`` (if absent, zero buffers, to be filled by ``load_state_dict``).
    """
    lower = np.asarray(config["lower"], dtype=np.float64)
    unet = UNet(
        in_channels=1,
        base_channels=int(config["base_channels"]),
        channel_mults=tuple(int(m) for m in config["channel_mults"]),
        num_res_blocks=int(config["num_res_blocks"]),
        cond_dim=lower.size,
        cond_embedding_dim=int(config["cond_embedding_dim"]),
    )
    schedule = LinearBetaSchedule(float(config["beta_min"]), float(config["beta_max"]))
    npix = int(config["npix"])
    dust_power = config.get("dust_power", np.zeros((npix, npix))) if config.get("gaussian_part", False) else None
    return ConditionalNoisePredictor(unet, schedule, lower, config["upper"], dust_power,
                                     float(config.get("dust_mean", 0.0)))


def save_conditional_predictor(
    model: ConditionalNoisePredictor, config: Mapping[str, Any], path: str | os.PathLike[str],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write weights + architecture config + prior box atomically (loadable with ``weights_only=True``)."""
    plain = {**_plain_config(config), "cond_embedding_dim": int(config["cond_embedding_dim"]),
             "lower": [float(v) for v in np.asarray(config["lower"]).ravel()],
             "upper": [float(v) for v in np.asarray(config["upper"]).ravel()]}
    _write_payload(CONDITIONAL_FORMAT, model, plain, path, extra)


def load_conditional_predictor(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> ConditionalNoisePredictor:
    """Load a predictor saved by :func:`save_conditional_predictor` (eval mode, on ``device``).

    The result is a :data:`~simobs.separation.gibbs.ConditionalPredictor` with ``.schedule``,
    ``.lower`` and ``.upper`` (the prior box of φ it was trained on).
    """
    payload = _read_payload(path, CONDITIONAL_FORMAT, "train_blind_score_model")
    model = build_conditional_predictor(payload["config"])
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()
