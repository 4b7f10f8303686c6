"""Settings of the embedding stage (the ``embedding:`` section of config/config.yaml).

Defaults train the demo universe (~4000 observed 3x64x64 images) to a useful
reconstruction in a few minutes on 2 CPU cores and carry over to the paper's ~600k
images on one GPU (raise ``batch_size`` and ``lr`` together there; the rest scales
with the epoch, not with the number of images).

Why ``k = 32`` of ``latent_dim = 512``: the paper's 512 latents; k sets how many
features describe one galaxy.  A 64x64 galaxy image has a few dozen degrees of freedom
that matter for the comparison (position angle, axis ratio, size, profile shape,
colour gradient, bulge/disc ratio, arms or clumps, companions, sky and noise
structure); k must cover them, or the reconstruction, and with it the typicality
score, degrades.  Much larger k spreads each feature over many units, which makes
single latents (and the SHAP attributions of the comparison stage, which are read
one latent at a time) less interpretable and costs KL.  k = 32 (1/16 of the latents)
is the usual middle ground of k-sparse autoencoders (Makhzani & Frey 2013 use k/D of
1/10 to 1/40).  At inference ``alpha`` may raise it (Gao et al. 2024).

Objectives: ``elbo`` (default) minimises the negative ELBO of a Gaussian decoder of
width ``beta`` over the active units; ``infovae`` is the objective of Zhou et al.'s own
code: a deterministic code (the posterior mean), per-pixel MSE plus ``mmd_coef`` times
an RBF-kernel MMD between the batch's codes and draws of the prior N(0, I), with the
same annealed top-k mask on ``|z|``.

Dead latents: a unit outside every image's top k receives no gradient and can stay
unused for ever.  Two remedies, both on by default: k starts at ``k_start`` and is
annealed to ``k`` over ``k_anneal_epochs`` (every unit is trained early), and the
auxiliary loss of Gao et al. (2024, "AuxK"): the ``aux_k`` largest dead units of each
image must explain the detached residual of the main reconstruction, with gradients
reaching only those units' encoder outputs and decoder weights (weight ``aux_coef``
relative to the main loss in Gao et al.'s normalised units).  The fraction of dead
latents is a logged metric, per epoch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from simobs.embedding.model import VAEArchitecture

__all__ = ["EmbeddingSettings", "WORKFLOW_KEYS", "OBJECTIVES"]

#: Training objectives (``embedding.objective``).
OBJECTIVES = ("elbo", "infovae")

#: Keys of the config section that the workflow reads and the library ignores.
WORKFLOW_KEYS = frozenset({"train_sources", "embed_batch_size"})


@dataclass(frozen=True)
class EmbeddingSettings:
    """Every knob of training and encoding.

    Attributes:
        latent_dim: Latent units (512 in the paper).
        k: Active units per image at the end of training.
        alpha: Inference uses ``round(alpha * k)`` active units (``alpha >= 1``; Gao et
            al. 2024 find a slightly larger k at inference lowers the error).
        width: Channels of the first convolution (doubled per level up to ``max_width``).
        depth: Stride-2 convolutions in the encoder (and transposed ones in the decoder).
        max_width: Channel cap.
        objective: ``elbo`` (Gaussian-decoder ELBO) or ``infovae`` (MSE + MMD, Zhou et al.'s code).
        mmd_coef: ``infovae`` only: weight of the MMD relative to the per-pixel MSE (1 in
            Zhou et al.'s code).
        beta: Width of the Gaussian decoder in normalised pixel units: the loss is
            ``SSE / (2 beta^2) + KL``.  Smaller values favour reconstruction over a
            regular latent.  The default lies below the sky noise of asinh-normalised
            SDSS-like images (~0.25), which keeps faint structure in the code.
        batch_size: Images per optimisation step.
        max_epochs: Upper bound on epochs.
        patience: Stop after this many epochs without a validation improvement of more
            than ``min_delta`` (counted only once k has reached its target).
        min_delta: Relative improvement of the validation loss that counts.
        lr: Peak learning rate of AdamW.
        lr_min_factor: Final learning rate as a fraction of ``lr`` (cosine decay).
        warmup_epochs: Linear learning-rate warm-up (fractional epochs allowed).
        weight_decay: AdamW weight decay.
        grad_clip: Clip the gradient norm to this value (0 turns clipping off).
        k_start: Active units at the start (annealed geometrically to ``k``), so that
            every latent receives gradients early (Makhzani & Frey 2013).
        k_anneal_epochs: Epochs over which k goes from ``k_start`` to ``k``.
        aux_k: Dead latents per image in the auxiliary loss (Gao et al. 2024: ~latent_dim/2).
        aux_coef: Weight of the auxiliary loss relative to the main loss, both as
            normalised MSE (Gao et al.: 1/32; 0 turns it off).
        dead_window_epochs: A latent inactive in this many epochs' worth of training
            images counts as dead.
        val_fraction: Fraction of the observed images held out for validation.
        block_rows: Images per contiguous read (rounded up to whole HDF5 chunks).
        shuffle_buffer_blocks: Blocks mixed in memory for the within-buffer shuffle.
        num_workers: DataLoader worker processes; 0 reads in the training process,
            -1 (auto) means 0 on the CPU and up to 4 on a GPU.
        seed: Seed of the initialisation, the split, the shuffle and the sampling.
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        mixed_precision: bf16 autocast on CUDA (ignored on CPU).
        channels_last: channels-last memory format on CUDA (ignored on CPU).
    """

    latent_dim: int = 512
    k: int = 32
    alpha: float = 1.0
    objective: str = "elbo"
    mmd_coef: float = 1.0
    width: int = 16
    depth: int = 4
    max_width: int = 128
    beta: float = 0.1
    batch_size: int = 64
    max_epochs: int = 15
    patience: int = 3
    min_delta: float = 0.002
    lr: float = 2e-3
    lr_min_factor: float = 0.05
    warmup_epochs: float = 0.5
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    k_start: int = 256
    k_anneal_epochs: float = 3.0
    aux_k: int = 256
    aux_coef: float = 0.03125
    dead_window_epochs: float = 0.25
    val_fraction: float = 0.1
    block_rows: int = 64
    shuffle_buffer_blocks: int = 16
    num_workers: int = -1
    seed: int = 0
    device: str = "auto"
    mixed_precision: bool = True
    channels_last: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.alpha >= 1.0, "alpha", "must be >= 1"),
            (self.objective in OBJECTIVES, "objective", f"must be one of {list(OBJECTIVES)}"),
            (self.mmd_coef >= 0, "mmd_coef", "must be >= 0"),
            (self.beta > 0, "beta", "must be > 0"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.max_epochs >= 1, "max_epochs", "must be >= 1"),
            (self.patience >= 1, "patience", "must be >= 1"),
            (self.lr > 0, "lr", "must be > 0"),
            (0 < self.lr_min_factor <= 1, "lr_min_factor", "must lie in (0, 1]"),
            (self.k_start >= self.k, "k_start", f"must be >= k={self.k}"),
            (self.k_start <= self.latent_dim, "k_start", f"must be <= latent_dim={self.latent_dim}"),
            (self.aux_k >= 0, "aux_k", "must be >= 0"),
            (self.aux_coef >= 0, "aux_coef", "must be >= 0"),
            (self.k_anneal_epochs >= 0, "k_anneal_epochs", "must be >= 0"),
            (0 < self.val_fraction < 1, "val_fraction", "must lie in (0, 1)"),
            (self.num_workers >= -1, "num_workers", "must be >= 0, or -1 for auto"),
        ]
        for ok, key, why in checks:
            if not ok:
                raise ValueError(f"embedding.{key}={getattr(self, key)!r} {why}")
        if round(self.alpha * self.k) > self.latent_dim:
            raise ValueError(
                f"embedding.alpha={self.alpha} * k={self.k} exceeds latent_dim={self.latent_dim}; lower alpha"
            )

    @property
    def k_inference(self) -> int:
        """Active units per image at inference, ``round(alpha * k)``."""
        return int(round(self.alpha * self.k))

    def architecture(self, bands: int, image_size: int) -> VAEArchitecture:
        """The network shape for images of ``bands`` x ``image_size`` x ``image_size``."""
        return VAEArchitecture(
            bands=bands,
            image_size=image_size,
            width=self.width,
            depth=self.depth,
            max_width=self.max_width,
            latent_dim=self.latent_dim,
            k=self.k,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> "EmbeddingSettings":
        """Build from the ``embedding:`` config section (workflow-only keys are skipped).

        Raises:
            ValueError: naming any unknown key.
        """
        section = dict(section or {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(section) - set(known) - WORKFLOW_KEYS
        if unknown:
            raise ValueError(
                f"config embedding: unknown keys {sorted(unknown)}; known keys are "
                f"{sorted(set(known) | WORKFLOW_KEYS)}"
            )
        values = {}
        for name, value in section.items():
            if name in WORKFLOW_KEYS:
                continue
            kind = type(known[name].default)
            values[name] = kind(value) if kind in (int, float, bool, str) else value
        return cls(**values)
