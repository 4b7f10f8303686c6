"""Denoising score matching on the coloured VP process, with atomic checkpoints and resume.

Loss: ``E_{x, t, ε} |η̂(√ᾱ x + √(1−ᾱ) η, t) − η|²`` with ``η = Σ^{1/2} ε`` the coloured
noise, ``t ~ U(t_min, t_max)``.  ``t_max`` need only reach ``t*`` of the largest σ one
will separate at (:func:`training_t_max`), which concentrates a small training budget
where it is used.

Resume: the checkpoint's key is the settings *and* a fingerprint of the training data
(the dust maps and the CMB power, :func:`training_fingerprint`): new fields, a new
cosmology or pixel size mean a new training run.  A checkpoint exists to survive a crash:
it is deleted once the model file is written, so a finished run never stands in for
training that a user asks for (``--forcerun train_score_model`` trains from epoch 1).

Reproducibility: every random draw (order, augmentation, t, ε) comes from one CPU
``torch.Generator`` whose state is checkpointed, so a run that is killed and resumed
ends with the same weights as an uninterrupted one, and a CPU rerun gives the same
weights.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simobs.io import atomic_path
from simobs.separation.model import NoisePredictor, build_noise_predictor, parameter_count, save_noise_predictor
from simobs.separation.sde import ColouredNoise, LinearBetaSchedule, observation_to_state
from simobs.separation.wiener import GaussianNoisePredictor, estimate_power_2d
from simobs.devices import resolve_device

__all__ = [
    "TrainSettings", "TrainResult", "train_score_model", "training_t_max", "training_fingerprint", "denoising_examples",
]

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    """Training hyper-parameters (the ``separation.model`` / ``separation.training`` config).

    Attributes:
        epochs: passes over the training maps.
        batch_size: maps per step.
        learning_rate: peak Adam learning rate (cosine decay to 5 % after a short warm-up).
        weight_decay: AdamW weight decay.
        ema_decay: decay of the exponential moving average of the weights that is saved
            (0 saves the raw weights).
        t_min: smallest diffusion time trained on.
        t_max: largest diffusion time trained on (see :func:`training_t_max`).
        val_fraction: fraction of the training maps held out for the validation loss.
        augment: random dihedral transforms and periodic shifts (valid for statistically
            isotropic, periodic fields).
        grad_clip: gradient-norm clip.
        seed: seed of all randomness.
        base_channels, channel_mults, num_res_blocks: U-Net size.
        gaussian_part: add the closed-form Gaussian predictor (see ``NoisePredictor``).
        beta_min, beta_max: the β schedule.
    """

    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    ema_decay: float = 0.99
    t_min: float = 1e-3
    t_max: float = 1.0
    val_fraction: float = 0.05
    augment: bool = True
    grad_clip: float = 1.0
    seed: int = 0
    base_channels: int = 16
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    gaussian_part: bool = True
    beta_min: float = 0.1
    beta_max: float = 20.0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TrainSettings:
        """Build from a config mapping; unknown keys raise ``ValueError`` naming them."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(known)}")
        return cls(**values)


@dataclass
class TrainResult:
    """What :func:`train_score_model` returns."""

    model: NoisePredictor
    history: list[dict[str, float]]
    resumed_from_epoch: int
    seconds: float
    n_parameters: int
    device: str


def training_t_max(schedule: LinearBetaSchedule, sigma_max: float, margin: float = 1.1) -> float:
    """``min(1, margin · t*(σ_max))``: the largest time the sampler will query, with a margin."""
    return float(min(1.0, margin * float(schedule.t_star(sigma_max))))


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random rotation, flip and periodic shift *per map* of ``x`` (B, npix, npix)."""
    draws = torch.randint(0, 1 << 30, (x.shape[0], 4), generator=gen)
    out = torch.empty_like(x)
    for i, (k, flip, dy, dx) in enumerate(draws.tolist()):
        m = torch.rot90(x[i], k % 4, dims=(-2, -1))
        if flip % 2:
            m = torch.flip(m, dims=(-1,))
        out[i] = torch.roll(m, shifts=(dy % x.shape[-2], dx % x.shape[-1]), dims=(-2, -1))
    return out


def training_fingerprint(train_maps: np.ndarray, cmb_power: np.ndarray) -> str:
    """SHA-256 (16 hex digits) of the training maps and the CMB power: the data half of the resume key.

    Any change of the dust model, cosmology, pixel size, ``n_train`` or seed changes the maps
    or the spectrum, hence the fingerprint (and the Gaussian part's buffers are rebuilt).
    """
    digest = hashlib.sha256()
    for array in (train_maps, cmb_power):
        a = np.ascontiguousarray(array, dtype=np.float64 if array is cmb_power else np.float32)
        digest.update(repr(a.shape).encode())
        digest.update(a.tobytes())
    return digest.hexdigest()[:16]


def _lr_factor(step: int, total: int) -> float:
    warmup = max(1, total // 50)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _dsm_loss(
    model: NoisePredictor | GaussianNoisePredictor,
    x: torch.Tensor,
    t: torch.Tensor,
    white: torch.Tensor,
    noise: ColouredNoise,
    schedule: LinearBetaSchedule,
    autocast: bool,
) -> torch.Tensor:
    eta = noise.colour(white)
    abar = schedule.alpha_bar(t)[:, None, None]
    z = torch.sqrt(abar) * x + torch.sqrt(1 - abar) * eta
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=autocast):
        pred = model(z, t)
    return torch.mean((pred.float() - eta) ** 2)


def _checkpoint_payload(
    epoch: int, model: NoisePredictor, ema: NoisePredictor, opt: torch.optim.Optimizer,
    gen: torch.Generator, history: list[dict[str, float]], settings: TrainSettings, fingerprint: str,
) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": opt.state_dict(),
        "generator": gen.get_state(),
        "history": history,
        "settings": asdict(settings),
        "fingerprint": fingerprint,
    }


def train_score_model(
    train_maps: np.ndarray,
    cmb_power: np.ndarray,
    settings: TrainSettings,
    *,
    model_path: str | os.PathLike[str],
    checkpoint_path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    on_epoch: Callable[[dict[str, float], int], None] | None = None,
) -> TrainResult:
    """Train the noise predictor on dust maps by denoising score matching; resume if a checkpoint exists.

    Args:
        train_maps: standardised dust maps, shape ``(n, npix, npix)``.
        cmb_power: normalised CMB 2-D power ``Σ``, shape ``(npix, npix)``.
        settings: hyper-parameters.
        model_path: final weights (EMA), written atomically at the end.
        checkpoint_path: per-epoch checkpoint (atomic); if present and written with the
            same settings and training data (:func:`training_fingerprint`), training
            resumes after its epoch (logged at INFO level).  Deleted once ``model_path``
            is written: only an interrupted run resumes.
        device: ``None``/"auto" picks CUDA if available, else CPU.
        on_epoch: called with ``(metrics, epoch)`` after every epoch (e.g. MLflow logging).

    Returns:
        :class:`TrainResult` with the EMA model (eval mode) and the per-epoch history.
    """
    start_time = time.perf_counter()
    dev = resolve_device(device, key="separation.training.device")
    use_cuda = dev.type == "cuda"
    n, npix = train_maps.shape[0], train_maps.shape[-1]
    n_val = int(round(settings.val_fraction * n))
    if n - n_val < 1:
        raise ValueError(f"{n} training maps leave none after holding out val_fraction={settings.val_fraction}")
    maps = torch.as_tensor(np.asarray(train_maps, dtype=np.float32))
    train_x, val_x = maps[: n - n_val], maps[n - n_val :]
    schedule = LinearBetaSchedule(settings.beta_min, settings.beta_max)
    noise = ColouredNoise(cmb_power, dtype=torch.float32, device=dev)

    torch.manual_seed(settings.seed)  # parameter initialisation
    dust_mean, dust_power = estimate_power_2d(train_x.numpy())
    config = {**asdict(settings), "npix": npix, "dust_power": dust_power, "cmb_power": cmb_power, "dust_mean": dust_mean}
    model = build_noise_predictor(config).to(dev)
    ema = build_noise_predictor(config).to(dev)
    ema.load_state_dict(model.state_dict())
    if use_cuda:
        model = model.to(memory_format=torch.channels_last)
        ema = ema.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.unet.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(settings.seed)
    history: list[dict[str, float]] = []
    start_epoch = 0

    fingerprint = training_fingerprint(train_maps, cmb_power)
    checkpoint_path = Path(checkpoint_path)
    if checkpoint_path.exists():
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if ckpt.get("settings") == asdict(settings) and ckpt.get("fingerprint") == fingerprint:
            model.load_state_dict(ckpt["model"])
            ema.load_state_dict(ckpt["ema"])
            opt.load_state_dict(ckpt["optimizer"])
            gen.set_state(ckpt["generator"])
            history = list(ckpt["history"])
            start_epoch = int(ckpt["epoch"])
            log.info("resuming training from checkpoint %s after epoch %d of %d", checkpoint_path, start_epoch,
                     settings.epochs)
        else:
            log.warning("checkpoint %s was written with other settings or training data (fingerprint %s, now %s); "
                        "starting from scratch", checkpoint_path, ckpt.get("fingerprint"), fingerprint)

    # The loss of the closed-form Gaussian predictor alone (= the Wiener filter's): the
    # network's validation loss below it measures what it learned beyond second order.
    gaussian_val_loss = (
        _validation_loss(model.gaussian_part, val_x, noise, schedule, settings, dev)
        if model.gaussian_part is not None and n_val else float("nan")
    )
    steps_per_epoch = math.ceil(train_x.shape[0] / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    log.info("training noise predictor: %d parameters, %d train / %d val maps of %dx%d, device %s, t in [%g, %g]",
             parameter_count(model.unet), train_x.shape[0], n_val, npix, npix, dev, settings.t_min, settings.t_max)
    for epoch in range(start_epoch, settings.epochs):
        epoch_start = time.perf_counter()
        model.train()
        order = torch.randperm(train_x.shape[0], generator=gen)
        losses = []
        for step in range(steps_per_epoch):
            idx = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            x = train_x[idx]
            if settings.augment:
                x = _augment(x, gen)
            t = settings.t_min + (settings.t_max - settings.t_min) * torch.rand(x.shape[0], generator=gen)
            white = torch.randn(x.shape, generator=gen)
            for group in opt.param_groups:
                group["lr"] = settings.learning_rate * _lr_factor(epoch * steps_per_epoch + step, total_steps)
            loss = _dsm_loss(model, x.to(dev), t.to(dev), white.to(dev), noise, schedule, use_cuda)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.unet.parameters(), settings.grad_clip)
            opt.step()
            with torch.no_grad():
                for p_ema, p in zip(ema.unet.parameters(), model.unet.parameters(), strict=True):
                    p_ema.lerp_(p, 1.0 - settings.ema_decay)
            losses.append(float(loss.detach()))
        metrics = {
            "train_loss": float(np.mean(losses)),
            "val_loss": _validation_loss(ema, val_x, noise, schedule, settings, dev) if n_val else float("nan"),
            "val_loss_gaussian_part": gaussian_val_loss,
            "learning_rate": float(opt.param_groups[0]["lr"]),
            "epoch_seconds": time.perf_counter() - epoch_start,
        }
        history.append(metrics)
        with atomic_path(checkpoint_path) as tmp:
            torch.save(_checkpoint_payload(epoch + 1, model, ema, opt, gen, history, settings, fingerprint), tmp)
        log.info("epoch %d/%d: train_loss %.5f val_loss %.5f (Gaussian part alone %.5f) %.1f s", epoch + 1,
                 settings.epochs, metrics["train_loss"], metrics["val_loss"], gaussian_val_loss,
                 metrics["epoch_seconds"])
        if on_epoch is not None:
            on_epoch(metrics, epoch + 1)

    ema.eval()
    save_noise_predictor(ema, config, model_path,
                         extra={"history": history, "device": str(dev), "training_fingerprint": fingerprint})
    # The model is written: the checkpoint has done its job (surviving a crash) and must
    # not stand in for the training of a forced rerun.
    checkpoint_path.unlink(missing_ok=True)
    return TrainResult(ema, history, start_epoch, time.perf_counter() - start_time, parameter_count(ema.unet), str(dev))


@torch.no_grad()
def _validation_loss(
    model: NoisePredictor | GaussianNoisePredictor, val_x: torch.Tensor, noise: ColouredNoise, schedule: LinearBetaSchedule,
    settings: TrainSettings, dev: torch.device,
) -> float:
    # Fixed draws (own generator) so that the curve compares epochs, not noise realisations.
    model.eval()
    gen = torch.Generator().manual_seed(settings.seed + 1)
    total, count = 0.0, 0
    for start in range(0, val_x.shape[0], settings.batch_size):
        x = val_x[start : start + settings.batch_size]
        t = settings.t_min + (settings.t_max - settings.t_min) * torch.rand(x.shape[0], generator=gen)
        white = torch.randn(x.shape, generator=gen)
        loss = _dsm_loss(model, x.to(dev), t.to(dev), white.to(dev), noise, schedule, dev.type == "cuda")
        total += float(loss) * x.shape[0]
        count += x.shape[0]
    return total / count


@torch.no_grad()
def denoising_examples(
    model: NoisePredictor, dust: np.ndarray, cmb_power: np.ndarray, *, sigmas: tuple[float, ...], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, ...]]:
    """One-step Tweedie estimates ``E[x | y]`` of one dust map at several σ (a training check).

    Args:
        model: trained predictor (eval mode).
        dust: a clean map, shape ``(npix, npix)``.
        cmb_power: normalised CMB power ``Σ``.
        sigmas: noise levels.
        seed: seed of the CMB draws.

    Returns:
        ``(dust, noisy (m, npix, npix), denoised (m, npix, npix), sigmas)``.
    """
    dev = next(model.parameters()).device
    noise = ColouredNoise(cmb_power, dtype=torch.float32, device=dev)
    cmb = noise.sample((len(sigmas),), generator=torch.Generator(device=dev).manual_seed(seed))
    sig = torch.tensor(sigmas, dtype=torch.float32, device=dev)
    y = torch.as_tensor(dust, dtype=torch.float32, device=dev)[None] + sig[:, None, None] * cmb
    z, t_star = observation_to_state(y, sig, model.schedule)
    denoised = y - sig[:, None, None] * model(z, t_star).float()
    return dust, y.cpu().numpy(), denoised.cpu().numpy(), tuple(sigmas)
