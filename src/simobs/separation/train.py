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

The blind stage's φ-conditioned model (:func:`train_conditional_score_model`) is trained
the same way, with one φ per example drawn uniformly from the prior box and the noise
coloured by its ``Σ_φ``; both trainers share the epoch loop (:func:`_fit`).

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
from torch import nn

from simobs.io import atomic_path
from simobs.separation.gibbs import RowColouredNoise, SpectrumFn
from simobs.separation.model import (
    ConditionalNoisePredictor,
    NoisePredictor,
    build_conditional_predictor,
    build_noise_predictor,
    parameter_count,
    save_conditional_predictor,
    save_noise_predictor,
)
from simobs.separation.sde import ColouredNoise, LinearBetaSchedule, observation_to_state
from simobs.separation.wiener import estimate_power_2d
from simobs.devices import resolve_device

__all__ = [
    "TrainSettings", "TrainResult", "train_score_model", "training_t_max", "training_fingerprint", "denoising_examples",
    "ConditionalTrainSettings", "train_conditional_score_model",
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

    @classmethod
    def from_rule_config(cls, values: Mapping[str, Any], *, seed: int, sigma_max: float) -> tuple[TrainSettings, str]:
        """Settings and device from a training rule's merged config (``separation.model``, ``.sde``, ``.training``...).

        ``values`` holds ``device`` and ``sigma_max`` besides the settings; ``t_max`` is
        :func:`training_t_max` of ``sigma_max`` (the largest σ the model will be used at).

        Returns:
            ``(settings, device)``.
        """
        values = dict(values)
        device = values.pop("device")
        values.pop("sigma_max", None)
        schedule = LinearBetaSchedule(values["beta_min"], values["beta_max"])
        return cls.from_mapping({**values, "seed": seed, "t_max": training_t_max(schedule, sigma_max)}), device


@dataclass
class ConditionalTrainSettings(TrainSettings):
    """:class:`TrainSettings` of the φ-conditioned model (``separation.conditional`` over ``separation.training``).

    Attributes:
        cond_embedding_dim: hidden width of the MLP that maps φ (scaled to [-1, 1] on the
            prior box) into the U-Net's time embedding.
    """

    cond_embedding_dim: int = 64


@dataclass
class TrainResult:
    """What :func:`train_score_model` and :func:`train_conditional_score_model` return."""

    model: NoisePredictor | ConditionalNoisePredictor
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
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor,
    eta: torch.Tensor,
    schedule: LinearBetaSchedule,
    autocast: bool,
) -> torch.Tensor:
    """``mean |predict(√ᾱ x + √(1−ᾱ) η, t) − η|²`` for clean maps ``x``, times ``t`` and coloured noise ``η``."""
    abar = schedule.alpha_bar(t)[:, None, None]
    z = torch.sqrt(abar) * x + torch.sqrt(1 - abar) * eta
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=autocast):
        pred = predict(z, t)
    return torch.mean((pred.float() - eta) ** 2)


#: ``(predictor, x, t, white, generator) -> loss``: one batch's DSM loss; colours ``white`` (and may
#: draw more from ``generator``, e.g. φ), so that training and validation share it.
BatchLoss = Callable[[Any, torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def _checkpoint_payload(
    epoch: int, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
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


def _split_maps(train_maps: np.ndarray, settings: TrainSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) maps as float32 tensors; the last ``val_fraction`` are held out."""
    n = train_maps.shape[0]
    n_val = int(round(settings.val_fraction * n))
    if n - n_val < 1:
        raise ValueError(f"{n} training maps leave none after holding out val_fraction={settings.val_fraction}")
    maps = torch.as_tensor(np.asarray(train_maps, dtype=np.float32))
    return maps[: n - n_val], maps[n - n_val :]


def _model_and_ema(build: Callable[[Mapping[str, Any]], nn.Module], config: Mapping[str, Any], dev: torch.device,
                   seed: int) -> tuple[nn.Module, nn.Module]:
    """The trained model and its EMA copy, initialised from ``seed``."""
    torch.manual_seed(seed)  # parameter initialisation
    model = build(config).to(dev)
    ema = build(config).to(dev)
    ema.load_state_dict(model.state_dict())
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        ema = ema.to(memory_format=torch.channels_last)
    return model, ema


def _fit(
    model: nn.Module,
    ema: nn.Module,
    train_x: torch.Tensor,
    val_x: torch.Tensor,
    settings: TrainSettings,
    *,
    batch_loss: BatchLoss,
    gaussian: Any,
    fingerprint: str,
    checkpoint_path: str | os.PathLike[str],
    dev: torch.device,
    on_epoch: Callable[[dict[str, float], int], None] | None,
) -> tuple[list[dict[str, float]], int]:
    """The epochs of denoising score matching on ``model.unet`` (AdamW, EMA, per-epoch checkpoint, resume).

    Returns:
        ``(history, resumed_from_epoch)``; ``ema`` holds the weights to save.
    """
    opt = torch.optim.AdamW(model.unet.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(settings.seed)
    history: list[dict[str, float]] = []
    start_epoch = 0
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

    n_val = val_x.shape[0]
    # The loss of the closed-form Gaussian predictor alone (= the Wiener filter's): the
    # network's validation loss below it measures what it learned beyond second order.
    gaussian_val_loss = (
        _validation_loss(gaussian, val_x, batch_loss, settings, dev) if gaussian is not None and n_val else float("nan")
    )
    steps_per_epoch = math.ceil(train_x.shape[0] / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    npix = train_x.shape[-1]
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
            loss = batch_loss(model, x.to(dev), t.to(dev), white.to(dev), gen)
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
            "val_loss": _validation_loss(ema, val_x, batch_loss, settings, dev) if n_val else float("nan"),
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
    return history, start_epoch


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
    train_x, val_x = _split_maps(train_maps, settings)
    schedule = LinearBetaSchedule(settings.beta_min, settings.beta_max)
    noise = ColouredNoise(cmb_power, dtype=torch.float32, device=dev)
    dust_mean, dust_power = estimate_power_2d(train_x.numpy())
    config = {**asdict(settings), "npix": train_maps.shape[-1], "dust_power": dust_power, "cmb_power": cmb_power,
              "dust_mean": dust_mean}
    model, ema = _model_and_ema(build_noise_predictor, config, dev, settings.seed)

    def batch_loss(predictor, x, t, white, gen):
        return _dsm_loss(predictor, x, t, noise.colour(white), schedule, use_cuda)

    fingerprint = training_fingerprint(train_maps, cmb_power)
    history, start_epoch = _fit(model, ema, train_x, val_x, settings, batch_loss=batch_loss,
                                gaussian=model.gaussian_part, fingerprint=fingerprint,
                                checkpoint_path=checkpoint_path, dev=dev, on_epoch=on_epoch)
    save_noise_predictor(ema, config, model_path,
                         extra={"history": history, "device": str(dev), "training_fingerprint": fingerprint})
    # The model is written: the checkpoint has done its job (surviving a crash) and must
    # not stand in for the training of a forced rerun.
    Path(checkpoint_path).unlink(missing_ok=True)
    return TrainResult(ema, history, start_epoch, time.perf_counter() - start_time, parameter_count(ema.unet), str(dev))


def _probe_points(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """The corners and the centre of the prior box, shape ``(2^P + 1, P)``: where the fingerprint reads ``Σ_φ``."""
    corners = torch.cartesian_prod(*[torch.stack([lo, hi]) for lo, hi in zip(lower, upper, strict=True)])
    return torch.cat([corners.reshape(-1, lower.numel()), (0.5 * (lower + upper))[None]])


def train_conditional_score_model(
    train_maps: np.ndarray,
    spectrum: SpectrumFn,
    lower: np.ndarray,
    upper: np.ndarray,
    settings: ConditionalTrainSettings,
    *,
    model_path: str | os.PathLike[str],
    checkpoint_path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    on_epoch: Callable[[dict[str, float], int], None] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train the φ-conditioned noise predictor of the blind stage; resume if a checkpoint exists.

    As :func:`train_score_model` (same loss, learning-rate schedule, EMA, augmentation,
    checkpoint and resume), but every training example draws its own φ uniformly from the
    prior box and its noise is coloured by that row's ``Σ_φ``; the network sees φ
    (:class:`~simobs.separation.model.ConditionalNoisePredictor`).  The resume key's data
    half is :func:`training_fingerprint` of the maps and of ``Σ_φ`` at the box's corners
    and centre (a new grid, patch or box means a new run).

    Args:
        train_maps: standardised dust maps, shape ``(n, npix, npix)``.
        spectrum: ``φ (B, P) → Σ_φ`` on the rfft half ``(B, npix, npix // 2 + 1)``, e.g. a
            :class:`~simobs.separation.spectra_grid.SpectrumInterpolator` (moved to the device
            when it is a module).
        lower, upper: the prior box of φ, shape ``(P,)`` (stored with the model).
        settings: hyper-parameters (``t_max`` from the largest σ of the blind prior, :func:`training_t_max`).
        model_path, checkpoint_path, device, on_epoch: as in :func:`train_score_model`.
        extra: plain values stored with the model (e.g. the grid's file and the fiducial cosmology).

    Returns:
        :class:`TrainResult` with the EMA :class:`~simobs.separation.model.ConditionalNoisePredictor`.
    """
    start_time = time.perf_counter()
    dev = resolve_device(device, key="separation.training.device")
    use_cuda = dev.type == "cuda"
    train_x, val_x = _split_maps(train_maps, settings)
    schedule = LinearBetaSchedule(settings.beta_min, settings.beta_max)
    lo = torch.as_tensor(np.asarray(lower, dtype=np.float64)).reshape(-1)
    hi = torch.as_tensor(np.asarray(upper, dtype=np.float64)).reshape(-1)
    if isinstance(spectrum, nn.Module):
        spectrum = spectrum.to(dev)
    dust_mean, dust_power = estimate_power_2d(train_x.numpy())
    config = {**asdict(settings), "npix": train_maps.shape[-1], "dust_power": dust_power, "dust_mean": dust_mean,
              "lower": lo.numpy(), "upper": hi.numpy()}
    model, ema = _model_and_ema(build_conditional_predictor, config, dev, settings.seed)

    def batch_loss(predictor, x, t, white, gen):
        u = torch.rand((x.shape[0], lo.numel()), generator=gen, dtype=torch.float64)
        phi = (lo + (hi - lo) * u).to(dev)
        with torch.no_grad():
            power = spectrum(phi).to(torch.float32)
        eta = RowColouredNoise(power).colour(white)
        return _dsm_loss(lambda z, tt: predictor(z, tt, phi, power), x, t, eta, schedule, use_cuda)

    with torch.no_grad():
        probe = spectrum(_probe_points(lo, hi).to(dev)).double().cpu().numpy()
    fingerprint = training_fingerprint(train_maps, probe)
    history, start_epoch = _fit(model, ema, train_x, val_x, settings, batch_loss=batch_loss,
                                gaussian=model.gaussian_predictor(torch.float32), fingerprint=fingerprint,
                                checkpoint_path=checkpoint_path, dev=dev, on_epoch=on_epoch)
    save_conditional_predictor(ema, config, model_path, extra={
        **dict(extra or {}), "history": history, "device": str(dev), "training_fingerprint": fingerprint,
        "t_max": settings.t_max})
    Path(checkpoint_path).unlink(missing_ok=True)  # as in train_score_model: only a crash resumes
    return TrainResult(ema, history, start_epoch, time.perf_counter() - start_time, parameter_count(ema.unet), str(dev))


@torch.no_grad()
def _validation_loss(
    predictor: Any, val_x: torch.Tensor, batch_loss: BatchLoss, settings: TrainSettings, dev: torch.device,
) -> float:
    # Fixed draws (own generator) so that the curve compares epochs, not noise realisations.
    if isinstance(predictor, nn.Module):
        predictor.eval()
    gen = torch.Generator().manual_seed(settings.seed + 1)
    total, count = 0.0, 0
    for start in range(0, val_x.shape[0], settings.batch_size):
        x = val_x[start : start + settings.batch_size]
        t = settings.t_min + (settings.t_max - settings.t_min) * torch.rand(x.shape[0], generator=gen)
        white = torch.randn(x.shape, generator=gen)
        loss = batch_loss(predictor, x.to(dev), t.to(dev), white.to(dev), gen)
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
