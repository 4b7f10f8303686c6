"""Training the k-sparse VAE on the observed images (rule ``train_embedding``).

The loop is written for both ends of the scale: a few thousand images on two CPU
cores (the demo) and ~600k images on one GPU (the paper).  On CUDA it runs in bf16
autocast with channels-last tensors; metrics are accumulated on the device and read
back once per epoch (plus every few steps for the progress bar) so the GPU is not
stalled by host syncs.

Crash safety: after every epoch the full training state (weights, optimiser,
scheduler, RNG, early-stopping state, dead-latent tracker, history) is written
atomically to ``checkpoint_dir/last.pt``.  A rerun with the same settings and the same
training data resumes after the last completed epoch (and says so in the log); a
rerun with different settings starts over.  The checkpoint is deleted once the model
file is written: a finished run leaves none, so a forced rerun trains from epoch 1.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TextIO

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from simobs.embedding.checkpoint import load_checkpoint, save_checkpoint, save_model
from simobs.embedding.data import (
    Block,
    BlockShuffleDataset,
    SourceInfo,
    make_loader,
    read_source_info,
    split_blocks,
    split_record,
)
from simobs.embedding.model import KSparseVAE, VAEOutput, loss_terms, rbf_mmd, top_k_mask
from simobs.embedding.settings import EmbeddingSettings
from simobs.io import config_digest
from simobs.devices import resolve_device

__all__ = [
    "TrainingResult",
    "train_embedding",
    "k_at_step",
    "auxiliary_loss",
    "objective_loss",
    "evaluate",
    "latent_statistics",
    "training_sources",
]

log = logging.getLogger(__name__)

EpochCallback = Callable[[Mapping[str, float], int], Any]


@dataclass
class TrainingResult:
    """What :func:`train_embedding` returns.

    Attributes:
        model: The trained model (best validation epoch), in eval mode on the CPU.
        history: One metrics dict per completed epoch (including resumed ones).
        best_epoch: 1-based epoch whose weights were kept.
        resumed_from_epoch: Completed epochs found in the checkpoint, or ``None``.
        stopped_early: Whether early stopping ended training.
        final_metrics: Validation metrics of the kept model at training k and at
            inference k (``val_fve``, ``val_fve_inference``, ...), plus the dead
            latent fraction and the training wall time of this invocation.
        train_sources: Names of the sources trained on.
        val_blocks: The held-out blocks (for figures).
        train_blocks: The training blocks.
        model_digest: The written model's digest (what its embeddings carry as ``vae_digest``).
    """

    model: KSparseVAE
    history: list[dict[str, float]]
    best_epoch: int
    resumed_from_epoch: int | None
    stopped_early: bool
    final_metrics: dict[str, float]
    train_sources: list[str]
    val_blocks: list[Block] = field(repr=False)
    train_blocks: list[Block] = field(repr=False)
    model_digest: str = ""


class _LogLines:
    """A text stream for tqdm that turns its carriage returns into new lines.

    In a log file a bar redrawn with ``\r`` becomes one endless line; here every
    redraw (at most one every ``mininterval`` seconds) is a line of its own.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        text = text.replace("\r", "\n")
        while "\n\n" in text:
            text = text.replace("\n\n", "\n")
        if text.strip():
            self._stream.write(text if text.endswith("\n") else text + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


def _num_workers(settings: EmbeddingSettings, device: torch.device) -> int:
    # Auto (-1): in-process reading on the CPU, where the workers would compete with the
    # model for the same cores; a few workers on a GPU node to keep the device fed.
    if settings.num_workers >= 0:
        return settings.num_workers
    if device.type != "cuda":
        return 0
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def k_at_step(step: int, steps_per_epoch: int, settings: EmbeddingSettings) -> int:
    """Active units at optimisation step ``step`` (0-based).

    Geometric interpolation from ``k_start`` to ``k`` over ``k_anneal_epochs``: every
    halving of k takes equally long, so the network is not rushed through the last,
    most selective stretch.
    """
    anneal_steps = settings.k_anneal_epochs * steps_per_epoch
    if anneal_steps <= 0 or step >= anneal_steps:
        return settings.k
    frac = step / anneal_steps
    log_k = (1.0 - frac) * math.log(settings.k_start) + frac * math.log(settings.k)
    return max(settings.k, min(settings.k_start, int(round(math.exp(log_k)))))


def _lr_factor(step: int, steps_per_epoch: int, settings: EmbeddingSettings) -> float:
    warmup = settings.warmup_epochs * steps_per_epoch
    total = max(settings.max_epochs * steps_per_epoch, 1)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(total - warmup, 1))
    floor = settings.lr_min_factor
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def auxiliary_loss(model: KSparseVAE, x: Tensor, out: VAEOutput, dead: Tensor, aux_k: int) -> Tensor:
    """Auxiliary loss that revives dead latents, as Gao et al. (2024, "AuxK") publish it.

    The ``aux_k`` dead latents with the largest ``|mu|`` of each image must explain the
    *detached* residual ``e = x - x_hat`` of the main reconstruction.  Gao et al.'s
    decoder is linear, ``e_hat = W_dead z_dead``; for this nonlinear decoder the dead
    units' contribution enters the decoder's first (linear) layer beside the detached
    active code, and the rest of the decoder is frozen for this pass::

        e_hat = dec_frozen(W z_active + b + W_dead z_dead) - x_hat

    so gradients reach only the dead units' encoder outputs (``mu`` at those entries)
    and their decoder weights (those columns of ``from_latent.weight``); the decoder
    never learns from codes the main loss does not show it.  As in Gao et al. the error
    is a normalised MSE, ``||e - e_hat||^2 / ||e||^2``; the training step converts it to
    the main loss's units (:func:`_normaliser`) so that ``aux_coef`` weighs it as in
    the paper (``L = nmse + aux_coef * nmse_aux``).

    Args:
        model: The VAE.
        x: ``(N, B, H, W)`` images.
        out: The forward pass of ``x``.
        dead: ``(D,)`` bool, the latents currently counted as dead.
        aux_k: Dead latents used per image.

    Returns:
        Scalar normalised MSE of the residual fit (1 when no latent is dead: no gradient).
    """
    # No host sync on the number of dead latents: a fixed-size top-k, and candidates
    # that are not dead are zeroed by the mask afterwards.
    candidates = dead.unsqueeze(0) & (out.mask == 0)
    scores = out.mu.detach().abs().masked_fill(~candidates, -1.0)
    idx = torch.topk(scores, min(aux_k, scores.shape[-1]), dim=-1).indices
    aux_mask = torch.zeros_like(out.mu).scatter_(-1, idx, 1.0) * candidates
    linear = model.from_latent
    weight = linear.weight
    z_active = out.z.detach().to(weight.dtype)
    z_dead = (out.mu * aux_mask).to(weight.dtype)
    h = nn.functional.linear(z_active, weight.detach(), linear.bias.detach()) + nn.functional.linear(z_dead, weight)
    h = h.view(-1, model.bottom_channels, model.bottom_side, model.bottom_side)
    frozen = {name: param.detach() for name, param in model.decoder.named_parameters()}
    x_aux = torch.func.functional_call(model.decoder, frozen, (h,))
    residual = (x.float() - out.x_hat.detach().float()).square().sum()
    return (x.float() - x_aux.float()).square().sum() / residual.clamp_min(1e-12)


def _normaliser(x: Tensor, beta: float) -> Tensor:
    # Converts a normalised MSE (error / variance about the batch's per-pixel mean, Gao
    # et al.'s unit) into the units of the main loss, SSE / (2 beta^2) per image.
    xf = x.detach().float()
    return (xf - xf.mean(dim=0, keepdim=True)).square().sum() / (2.0 * beta**2 * x.shape[0])


def objective_loss(
    model: KSparseVAE, x: Tensor, k: int, settings: EmbeddingSettings
) -> tuple[VAEOutput, dict[str, Tensor], Tensor, Tensor]:
    """One batch's forward pass and training loss under ``settings.objective``.

    ``elbo``: a sampled code, loss ``SSE / (2 beta^2) + KL_active`` per image.
    ``infovae`` (Zhou et al.'s code): the deterministic code ``mask * mu``, loss
    ``P / (2 beta^2) * (MSE + mmd_coef * MMD(mu, prior draws))``, i.e. Zhou et al.'s
    ``MSE + MMD`` in the units of the ELBO's reconstruction term (so the learning rate,
    clipping and early stopping keep their meaning).  The MMD compares the dense codes
    ``mu`` with as many draws of ``N(0, I)``: the aggregate code distribution, not each
    posterior, is pulled to the prior.

    Returns:
        ``(out, terms, loss, mmd)``: the :class:`VAEOutput`, the per-image
        :func:`loss_terms` (KL 0 for ``infovae``), the scalar batch loss and the MMD
        (0 for ``elbo``).
    """
    if settings.objective == "infovae":
        out = model(x, k=k, sample=False)
        terms = loss_terms(x, out.x_hat, torch.zeros_like(out.kl), settings.beta)
        mmd = rbf_mmd(out.mu, torch.randn_like(out.mu))
        n_pixels = x[0].numel()
        loss = terms["loss"].mean() + settings.mmd_coef * n_pixels / (2.0 * settings.beta**2) * mmd
        return out, terms, loss, mmd
    out = model(x, k=k, sample=True)
    terms = loss_terms(x, out.x_hat, out.kl, settings.beta)
    return out, terms, terms["loss"].mean(), x.new_zeros(())


def _autocast(device: torch.device, settings: EmbeddingSettings) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and settings.mixed_precision:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_device(x: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def evaluate(
    model: KSparseVAE,
    blocks: Sequence[Block],
    k: int,
    beta: float,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    settings: EmbeddingSettings | None = None,
    num_workers: int = 0,
) -> dict[str, float]:
    """Validation metrics with the posterior mean as code (deterministic).

    Args:
        model: The VAE.
        blocks: Images to evaluate.
        k: Active units per image.
        beta: Decoder width of the loss.
        batch_size: Images per forward pass.
        device: Where to run.
        settings: Used for the autocast / channels-last choice on CUDA.
        num_workers: Loader workers.

    Returns:
        ``loss``, ``recon``, ``kl`` (means per image, nats; for ``infovae`` the loss is
        the reconstruction term alone, the MMD being a property of batches), ``mse`` (per pixel),
        ``fve`` (fraction of the pixel variance about the per-band mean that the
        reconstruction explains, ``1 - SSE / SST``), ``images_per_s``.
    """
    device = torch.device(device)
    settings = settings or EmbeddingSettings()
    channels_last = device.type == "cuda" and settings.channels_last
    was_training = model.training
    model.eval()
    ds = BlockShuffleDataset(blocks, batch_size, shuffle=False)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, recon, kl, sse
    band_sum: Tensor | None = None
    band_sq: Tensor | None = None
    n = 0
    n_pixels = 0
    start = time.perf_counter()
    for x in make_loader(ds, num_workers=num_workers, pin_memory=device.type == "cuda"):
        x = _to_device(x, device, channels_last)
        with _autocast(device, settings):
            out = model(x, k=k, sample=False)
        kl = torch.zeros_like(out.kl) if settings.objective == "infovae" else out.kl
        terms = loss_terms(x, out.x_hat, kl, beta)
        sums += torch.stack([terms[name].sum().double() for name in ("loss", "recon", "kl", "sse")])
        xd = x.double()
        if band_sum is None:
            band_sum = torch.zeros(x.shape[1], dtype=torch.float64, device=device)
            band_sq = torch.zeros_like(band_sum)
        band_sum += xd.sum(dim=(0, 2, 3))
        band_sq += xd.square().sum(dim=(0, 2, 3))  # type: ignore[operator]
        n += x.shape[0]
        n_pixels = x[0].numel()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    model.train(was_training)
    if n == 0:
        raise ValueError("evaluate: no images in the given blocks")
    loss, recon, kl, sse = (sums / n).tolist()
    per_band = n * n_pixels // band_sum.shape[0]  # type: ignore[union-attr]
    sst = float((band_sq - band_sum.square() / per_band).sum())  # type: ignore[operator,union-attr]
    total_sse = sse * n
    return {
        "loss": loss,
        "recon": recon,
        "kl": kl,
        "mse": total_sse / (n * n_pixels),
        "fve": 1.0 - total_sse / sst if sst > 0 else float("nan"),
        "images_per_s": n / max(elapsed, 1e-9),
    }


@torch.no_grad()
def latent_statistics(
    model: KSparseVAE,
    blocks: Sequence[Block],
    k: int,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    settings: EmbeddingSettings | None = None,
) -> dict[str, Tensor]:
    """Statistics of the sparse codes at ``k`` active units, for latent traversals.

    Two passes over ``blocks`` with the posterior mean as code: the first gives each
    image's typicality loss and each unit's moments *while active*; the second picks,
    per unit, the image closest to the median typicality loss among those in which the
    unit is active, and keeps its sparse code (a code the decoder was trained on, not a
    dense mean code).

    Args:
        model: The trained VAE.
        blocks: The training images.
        k: Active units per image (the inference k, ``round(alpha * k)``).
        batch_size: Images per forward pass.
        device: Where to run.
        settings: Autocast / channels-last choice, ``beta`` and ``objective`` of the
            typicality loss.

    Returns:
        CPU float32 tensors: ``mean``, ``std`` (``(D,)``, moments of each unit's value
        over the images in which it is active; 0 where never active), ``usage``
        (``(D,)``, fraction of images in which it is active) and ``codes`` (``(D, D)``,
        row ``i`` the sparse code of unit ``i``'s most typical image; zeros where never
        active).
    """
    device = torch.device(device)
    settings = settings or EmbeddingSettings()
    channels_last = device.type == "cuda" and settings.channels_last
    model.eval()
    d = model.latent_dim
    s1 = torch.zeros(d, dtype=torch.float64, device=device)
    s2 = torch.zeros_like(s1)
    used = torch.zeros_like(s1)
    losses: list[Tensor] = []

    def batches():
        for x in make_loader(BlockShuffleDataset(blocks, batch_size, shuffle=False)):
            x = _to_device(x, device, channels_last)
            with _autocast(device, settings):
                out = model(x, k=k, sample=False)
            yield x, out

    for x, out in batches():
        kl = torch.zeros_like(out.kl) if settings.objective == "infovae" else out.kl
        losses.append(loss_terms(x, out.x_hat, kl, settings.beta)["typicality_loss"].double())
        emb = out.embedding.double()
        s1 += emb.sum(0)
        s2 += emb.square().sum(0)
        used += out.mask.double().sum(0)
    loss = torch.cat(losses)
    n = loss.numel()
    count = used.clamp_min(1)
    mean = s1 / count
    std = (s2 / count - mean.square()).clamp_min(0).sqrt()
    median = loss.median()
    best = torch.full((d,), math.inf, dtype=torch.float64, device=device)
    codes = torch.zeros(d, d, dtype=torch.float32, device=device)
    start = 0
    for x, out in batches():
        distance = (loss[start : start + x.shape[0]] - median).abs()
        start += x.shape[0]
        masked = torch.where(out.mask > 0, distance[:, None], torch.full_like(out.mask, math.inf, dtype=torch.float64))
        value, row = masked.min(dim=0)
        better = value < best
        best = torch.where(better, value, best)
        codes[better] = out.embedding.float()[row[better]]
    return {
        "mean": mean.float().cpu(),
        "std": std.float().cpu(),
        "usage": (used / n).float().cpu(),
        "codes": codes.cpu(),
    }


def training_sources(paths: Sequence[str | Path], allow_simulations: bool = False) -> list[SourceInfo]:
    """Read and check the training datasets: observations only, one image shape.

    Raises:
        ValueError: if a dataset is a simulation (the method trains on observations
            only, so that adding a simulation never changes the embedding), if shapes
            or bands disagree, or if images are not square.
    """
    if not paths:
        raise ValueError("train_embedding: no training datasets given; list observation sources in embedding.train_sources")
    infos = [read_source_info(p) for p in paths]
    for info in infos:
        if info.kind != "observation" and not allow_simulations:
            raise ValueError(
                f"{info.path}: kind={info.kind!r}; the embedding is trained on observations only. "
                "Remove this source from embedding.train_sources."
            )
    first = infos[0]
    for info in infos[1:]:
        if info.image_shape != first.image_shape or (info.bands and first.bands and info.bands != first.bands):
            raise ValueError(
                f"{info.path}: images {info.image_shape} bands {info.bands} differ from "
                f"{first.path}: {first.image_shape} {first.bands}; ingest all sources with the same settings"
            )
    _, h, w = first.image_shape
    if h != w:
        raise ValueError(f"{first.path}: images are {h}x{w}; the VAE expects square images")
    return infos


def _fingerprint(settings: EmbeddingSettings, infos: Sequence[SourceInfo], num_workers: int) -> str:
    # The device is left out on purpose: a run started on one GPU node may resume on
    # another, or on the CPU.  The *resolved* number of loader workers goes in: each
    # worker reads every n-th block and shuffles its own buffer, so the batch stream
    # depends on it, and `num_workers: -1` resolves from the node's CPU count; resuming
    # with another count would silently change the stream, so it starts over instead.
    # The data enter by name, size and modification time: a re-ingested source means
    # a new training run.
    values = settings.to_dict()
    values.pop("device")
    values["num_workers"] = num_workers
    sources = []
    for info in infos:
        stat = Path(info.path).stat()
        sources.append([info.source, info.n_images, stat.st_size, stat.st_mtime_ns])
    return config_digest({"settings": values, "sources": sources})


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _cpu_state(model: KSparseVAE) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def train_embedding(
    dataset_paths: Sequence[str | Path],
    model_path: str | Path,
    settings: EmbeddingSettings,
    *,
    checkpoint_dir: str | Path | None = None,
    architecture_json: str | Path | None = None,
    on_epoch: EpochCallback | None = None,
    progress_file: TextIO | None = None,
    show_progress: bool = True,
    allow_simulations: bool = False,
) -> TrainingResult:
    """Train the k-sparse VAE on observed images and write the model file.

    Args:
        dataset_paths: Image datasets (docs/contracts.md) of the observation sources.
        model_path: Where the final model goes (see :func:`~simobs.embedding.checkpoint.save_model`).
        settings: Training settings.
        checkpoint_dir: Folder of the per-epoch checkpoint ``last.pt``; default
            ``<model folder>/checkpoints``.  Not a Snakemake output, so it survives a
            failed job and the rerun resumes from it.
        architecture_json: Also write the architecture as JSON here.
        on_epoch: Called after each epoch as ``on_epoch(metrics, epoch)`` (1-based),
            e.g. ``JobRun.log_metrics``.
        progress_file: Stream of the tqdm bar (default stderr).
        show_progress: Show the bar at all.
        allow_simulations: Accept simulation datasets (tests only; the study never does).

    Returns:
        A :class:`TrainingResult`.
    """
    wall_start = time.perf_counter()
    infos = training_sources(dataset_paths, allow_simulations)
    bands, image_size, _ = infos[0].image_shape
    arch = settings.architecture(bands=bands, image_size=image_size)
    device = resolve_device(settings.device, key="embedding.device")
    channels_last = device.type == "cuda" and settings.channels_last
    if device.type == "cuda":
        # TF32 for the fp32 parts (loss, optimiser); the convolutions run in bf16.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    train_blocks, val_blocks = split_blocks(infos, settings.val_fraction, settings.seed, settings.block_rows)
    train_ds = BlockShuffleDataset(
        train_blocks, settings.batch_size, shuffle=True, buffer_blocks=settings.shuffle_buffer_blocks,
        seed=settings.seed,
    )
    n_train = train_ds.n_images
    n_val = sum(b.size for b in val_blocks)
    steps_per_epoch = max(1, math.ceil(n_train / settings.batch_size))
    dead_window = settings.dead_window_epochs * n_train
    log.info(
        "training the k-sparse VAE on %d images of %s (%d held out), %s on %s, k=%d of %d latents",
        n_train, ", ".join(i.source for i in infos), n_val, arch.channels(), device, arch.k, arch.latent_dim,
    )

    torch.manual_seed(settings.seed)
    model = KSparseVAE(arch).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, steps_per_epoch, settings)
    )

    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else Path(model_path).parent / "checkpoints"
    checkpoint_path = checkpoint_dir / "last.pt"
    num_workers = _num_workers(settings, device)
    fingerprint = _fingerprint(settings, infos, num_workers)
    since_active = torch.zeros(arch.latent_dim, device=device)
    history: list[dict[str, float]] = []
    start_epoch = 0
    step = 0
    best_val = math.inf
    best_epoch = 0
    best_state: dict[str, Tensor] | None = None
    bad_epochs = 0
    finished = False
    stopped_early = False
    resumed_from: int | None = None

    state = load_checkpoint(checkpoint_path)
    saved_arch = state.get("architecture") if state is not None else None
    if saved_arch is not None and saved_arch != arch.to_dict():
        # its weights cannot be loaded into this network: name both shapes, then start over
        log.warning(
            "checkpoint %s holds a network of another architecture (%s; now %s); starting training from scratch",
            checkpoint_path, saved_arch, arch.to_dict(),
        )
        state = None
    if state is not None and state.get("fingerprint") != fingerprint:
        log.warning(
            "checkpoint %s was written for other settings, data or loader workers (fingerprint %s, now %s); "
            "starting training from scratch", checkpoint_path, state.get("fingerprint"), fingerprint,
        )
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"], device)
        since_active = state["since_active"].to(device)
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        step = int(state["step"])
        best_val = float(state["best_val"])
        best_epoch = int(state["best_epoch"])
        best_state = state["best_state"]
        bad_epochs = int(state["bad_epochs"])
        finished = bool(state["finished"])
        stopped_early = bool(state["stopped_early"])
        resumed_from = start_epoch
        log.info(
            "resuming from checkpoint %s: %d of at most %d epochs done%s", checkpoint_path, start_epoch,
            settings.max_epochs, " (training had finished; rebuilding the model file)" if finished else "",
        )

    stream = progress_file if progress_file is not None else sys.stderr
    interactive = hasattr(stream, "isatty") and stream.isatty()
    if not interactive:
        stream = _LogLines(stream)  # type: ignore[assignment]
    anneal_end_epoch = math.ceil(settings.k_anneal_epochs)

    epoch = start_epoch
    while not finished and epoch < settings.max_epochs:
        model.train()
        # Refreshed at each epoch start (and every 20 steps), so that a resumed run
        # takes the same decisions as an uninterrupted one.
        any_dead = bool((since_active > dead_window).any())
        train_ds.set_epoch(epoch)
        loader = make_loader(train_ds, num_workers, pin_memory=device.type == "cuda")
        sums = torch.zeros(6, dtype=torch.float64, device=device)  # loss, recon, kl, sse, aux, mmd
        used = torch.zeros(arch.latent_dim, device=device)
        n_seen = 0
        k_sum = 0
        t0 = time.perf_counter()
        bar = tqdm(
            loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{settings.max_epochs}", file=stream,
            disable=not show_progress, mininterval=0.5 if interactive else 30.0, leave=interactive,
            dynamic_ncols=interactive, ascii=not interactive,
        )
        for x in bar:
            x = _to_device(x, device, channels_last)
            k_now = k_at_step(step, steps_per_epoch, settings)
            with _autocast(device, settings):
                out, terms, loss, mmd = objective_loss(model, x, k_now, settings)
                aux = x.new_zeros(())
                if any_dead and settings.aux_coef > 0 and settings.aux_k > 0:
                    aux = auxiliary_loss(model, x, out, since_active > dead_window, settings.aux_k)
                    loss = loss + settings.aux_coef * _normaliser(x, settings.beta) * aux
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1

            batch = x.shape[0]
            active = out.mask.detach().sum(0)
            used += active
            since_active += batch
            since_active[active > 0] = 0
            sums += torch.stack(
                [terms[name].detach().sum().double() for name in ("loss", "recon", "kl", "sse")]
                + [aux.detach().double() * batch, mmd.detach().double() * batch]
            )
            n_seen += batch
            k_sum += k_now * batch
            if step % 20 == 0 or step == 1:
                # One host sync every 20 steps, not every step: is any latent dead (the
                # auxiliary loss costs a decoder pass), and is the loss still finite.
                any_dead = bool((since_active > dead_window).any())
                if not torch.isfinite(sums[0]):
                    raise FloatingPointError(
                        f"train_embedding: the loss became {sums[0].item()} in epoch {epoch + 1} (step {step}); "
                        "lower embedding.lr or raise embedding.beta"
                    )
            if show_progress and step % 20 == 0:
                bar.set_postfix(
                    loss=f"{sums[0].item() / n_seen:.4g}", k=k_now,
                    img_s=f"{n_seen / (time.perf_counter() - t0):.0f}", refresh=False,
                )
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time = time.perf_counter() - t0
        loss_m, recon_m, kl_m, sse_m, aux_m, mmd_m = (sums / max(n_seen, 1)).tolist()
        val = evaluate(
            model, val_blocks, arch.k, settings.beta, batch_size=max(settings.batch_size, 256), device=device,
            settings=settings, num_workers=num_workers,
        )
        epoch += 1
        metrics = {
            "loss": loss_m,
            "recon": recon_m,
            "kl": kl_m,
            "mse": sse_m / (arch.bands * image_size**2),
            "aux_loss": aux_m,  # normalised MSE of the dead latents' residual fit (1: nothing explained)
            "mmd": mmd_m,  # infovae: MMD between the codes and the prior (0 for elbo)
            "val_loss": val["loss"],
            "val_recon": val["recon"],
            "val_kl": val["kl"],
            "val_mse": val["mse"],
            "val_fve": val["fve"],
            "k": k_at_step(step - 1, steps_per_epoch, settings),
            "l0": k_sum / max(n_seen, 1),
            "dead_fraction": float((used == 0).float().mean()),
            "dead_fraction_window": float((since_active > dead_window).float().mean()),
            "lr": optimizer.param_groups[0]["lr"],
            "train_images_per_s": n_seen / max(train_time, 1e-9),
            "val_images_per_s": val["images_per_s"],
            "epoch_seconds": train_time,
        }
        history.append({"epoch": float(epoch), **metrics})

        # Early stopping looks only at epochs trained entirely at the target k: the loss
        # of an epoch with more active units is not comparable.
        if epoch > anneal_end_epoch:
            if val["loss"] < best_val - settings.min_delta * abs(best_val) or best_state is None:
                best_val, best_epoch, bad_epochs = val["loss"], epoch, 0
                best_state = _cpu_state(model)
            else:
                bad_epochs += 1
                if bad_epochs >= settings.patience:
                    stopped_early = True
        finished = stopped_early or epoch >= settings.max_epochs
        log.info(
            "epoch %d: loss %.4g (recon %.4g, kl %.4g), val loss %.4g, val FVE %.4f, k %d, dead %.3f, "
            "%.0f img/s%s", epoch, loss_m, recon_m, kl_m, val["loss"], val["fve"], metrics["k"],
            metrics["dead_fraction"], metrics["train_images_per_s"],
            f"; stopping early, best epoch {best_epoch}" if stopped_early else "",
        )
        save_checkpoint(
            checkpoint_path,
            {
                "fingerprint": fingerprint,
                "architecture": arch.to_dict(),
                "epoch": epoch,
                "step": step,
                "model": _cpu_state(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(device),
                "since_active": since_active.cpu(),
                "history": history,
                "best_val": best_val,
                "best_epoch": best_epoch,
                "best_state": best_state,
                "bad_epochs": bad_epochs,
                "finished": finished,
                "stopped_early": stopped_early,
            },
        )
        if on_epoch is not None:
            on_epoch(metrics, epoch)

    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = epoch
        log.warning(
            "no epoch was trained entirely at the target k=%d (max_epochs=%d <= k_anneal_epochs=%s); "
            "keeping the last weights", arch.k, settings.max_epochs, settings.k_anneal_epochs,
        )
    model.eval()
    stats = latent_statistics(
        model, train_blocks, settings.k_inference, batch_size=max(settings.batch_size, 256), device=device,
        settings=settings,
    )
    model.latent_mean.copy_(stats["mean"])
    model.latent_std.copy_(stats["std"])
    model.latent_usage.copy_(stats["usage"])
    model.traversal_codes.copy_(stats["codes"])
    usage = stats["usage"]
    eval_kwargs = dict(batch_size=max(settings.batch_size, 256), device=device, settings=settings)
    val_train_k = evaluate(model, val_blocks, arch.k, settings.beta, **eval_kwargs)
    val_inference = (
        val_train_k
        if settings.k_inference == arch.k
        else evaluate(model, val_blocks, settings.k_inference, settings.beta, **eval_kwargs)
    )
    final = {
        "val_fve": val_train_k["fve"],
        "val_loss": val_train_k["loss"],
        "val_mse": val_train_k["mse"],
        "val_fve_inference": val_inference["fve"],
        "val_loss_inference": val_inference["loss"],
        "dead_fraction": float((usage == 0).float().mean()),
        "best_epoch": float(best_epoch),
        "epochs": float(epoch),
        "n_train": float(n_train),
        "n_val": float(n_val),
        "train_wall_seconds": time.perf_counter() - wall_start,
    }
    model.cpu()
    model = model.to(memory_format=torch.contiguous_format)
    digest = save_model(
        model_path,
        model,
        alpha=settings.alpha,
        beta=settings.beta,
        extra={
            "settings": settings.to_dict(),
            "train_sources": [i.source for i in infos],
            "split": split_record(infos, train_blocks, val_blocks),
            "metrics": final,
            "fingerprint": fingerprint,
        },
        architecture_json=architecture_json,
    )
    # The checkpoint exists to survive a crash; once the model is written it must never
    # stand in for a training run a user asks for (snakemake --forcerun train_embedding).
    checkpoint_path.unlink(missing_ok=True)
    log.info(
        "kept epoch %d: val FVE %.4f (%.4f at inference k=%d), dead latents %.3f; model written to %s",
        best_epoch, final["val_fve"], final["val_fve_inference"], settings.k_inference, final["dead_fraction"],
        model_path,
    )
    return TrainingResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        resumed_from_epoch=resumed_from,
        stopped_early=stopped_early,
        final_metrics=final,
        train_sources=[i.source for i in infos],
        val_blocks=list(val_blocks),
        train_blocks=list(train_blocks),
        model_digest=digest,
    )
