"""The k-sparse Gaussian variational autoencoder (after Zhou et al. 2025, A&A 701, A44).

The encoder maps a ``(bands, H, W)`` image to a diagonal Gaussian posterior
``q(z|x) = N(mu, diag(sigma^2))`` over ``latent_dim`` units.  A top-k mask keeps, per
image, only the ``k`` units whose posterior mean ``|mu|`` is largest; the decoder
sees the masked sample ``m * z`` and the KL term covers only the active units, so
every image is described by ``k`` latent features out of ``latent_dim``.

The loss is the negative ELBO with a Gaussian decoder of fixed width ``beta``
(in the units of the normalised pixels)::

    -ELBO = sum_pixels (x - x_hat)^2 / (2 beta^2) + (P/2) log(2 pi beta^2) + KL_active

The constant term does not change the gradients; it is kept so that the per-image
*typicality loss* reported by :func:`loss_terms` is in nats, comparable between
sources (the "typicality" score of the misspecification stage).  It is not a bound on
``-log p(x)``: it is evaluated at the posterior mean, and the mask depends on ``x``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

__all__ = [
    "VAEArchitecture",
    "KSparseVAE",
    "VAEOutput",
    "top_k_mask",
    "gaussian_kl",
    "loss_terms",
    "rbf_mmd",
]


@dataclass(frozen=True)
class VAEArchitecture:
    """Shape of the network; stored as JSON next to the weights.

    Attributes:
        bands: Number of image bands (input channels).
        image_size: Height = width of the images in pixels; must be divisible by
            ``2**depth``.
        width: Channels of the first convolution; doubled at each further level up to
            ``max_width``.
        depth: Number of halvings of the image side: a space-to-depth stem, then
            ``depth - 1`` stride-2 convolutions (mirrored in the decoder).
        max_width: Upper bound on the channels of any level.
        latent_dim: Number of latent units (512 in the paper).
        k: Active latent units per image during training.
    """

    bands: int = 3
    image_size: int = 64
    width: int = 32
    depth: int = 4
    max_width: int = 256
    latent_dim: int = 512
    k: int = 32

    def __post_init__(self) -> None:
        if self.image_size % (2**self.depth) != 0:
            raise ValueError(
                f"embedding: image_size={self.image_size} is not divisible by 2**depth="
                f"{2**self.depth}; choose a depth with image_size / 2**depth an integer"
            )
        if not 1 <= self.k <= self.latent_dim:
            raise ValueError(
                f"embedding: k={self.k} must lie in [1, latent_dim={self.latent_dim}]"
            )
        for name in ("bands", "width", "depth", "max_width", "latent_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"embedding: {name}={getattr(self, name)} must be >= 1")

    def channels(self) -> list[int]:
        """Channels after each of the ``depth`` downsampling levels."""
        return [min(self.width * 2**i, self.max_width) for i in range(self.depth)]

    def to_dict(self) -> dict[str, int]:
        """JSON-serialisable form (round-trips through :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "VAEArchitecture":
        """Build from a mapping; unknown keys are an error that names them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(
                f"embedding architecture: unknown keys {sorted(unknown)}; known keys are {sorted(known)}"
            )
        return cls(**{key: int(value) for key, value in values.items()})


def top_k_mask(scores: Tensor, k: int) -> Tensor:
    """Mask of the ``k`` largest entries of each row.

    Args:
        scores: ``(N, D)`` selection scores (here ``|mu|``).
        k: Units to keep per row, ``1 <= k <= D``.

    Returns:
        ``(N, D)`` tensor of the dtype of ``scores`` with exactly ``k`` ones per row
        and zeros elsewhere.  It carries no gradient: the selection is a discrete
        choice, and gradients reach only the kept units through ``mask * z``.
    """
    n_units = scores.shape[-1]
    if not 1 <= k <= n_units:
        raise ValueError(f"top_k_mask: k={k} must lie in [1, {n_units}]")
    indices = torch.topk(scores.detach(), k, dim=-1, sorted=False).indices
    mask = torch.zeros_like(scores, dtype=scores.dtype)
    return mask.scatter_(-1, indices, 1.0).detach()


def gaussian_kl(mu: Tensor, logvar: Tensor, mask: Tensor | None = None) -> Tensor:
    """KL divergence ``KL(N(mu, diag(exp(logvar))) || N(0, I))`` per image.

    Closed form for a diagonal Gaussian: ``0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2)``.

    Args:
        mu: ``(N, D)`` posterior means.
        logvar: ``(N, D)`` posterior log-variances.
        mask: Optional ``(N, D)`` 0/1 mask; only units with mask 1 contribute (the
            inactive units are not seen by the decoder, so they carry no information).

    Returns:
        ``(N,)`` KL in nats.
    """
    per_unit = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)
    if mask is not None:
        per_unit = per_unit * mask
    return per_unit.sum(dim=-1)


def loss_terms(x: Tensor, x_hat: Tensor, kl: Tensor, beta: float) -> dict[str, Tensor]:
    """Per-image terms of the loss for a Gaussian decoder of width ``beta``.

    Args:
        x: ``(N, B, H, W)`` images.
        x_hat: ``(N, B, H, W)`` reconstructions (decoder means).
        kl: ``(N,)`` KL of the active units.
        beta: Decoder standard deviation in normalised pixel units.

    Returns:
        Dict of ``(N,)`` float32 tensors: ``sse`` (summed squared error), ``mse``
        (mean squared error per pixel), ``recon`` (``sse / (2 beta^2)``, the
        reconstruction part of the loss in nats), ``kl``, ``loss`` (``recon + kl``,
        the negative ELBO minimised by ``objective: elbo``) and ``typicality_loss``
        (``recon + (P/2) log(2 pi beta^2) + kl`` in nats, the Gaussian normalisation
        constant included; lower = more typical of the training images).  At the
        posterior mean with an ``x``-dependent mask it is a typicality score, not a
        bound on ``-log p(x)``.
    """
    diff = (x.float() - x_hat.float()).flatten(1)
    sse = diff.square().sum(dim=1)
    n_pixels = diff.shape[1]
    recon = sse / (2.0 * beta**2)
    log_norm = 0.5 * n_pixels * math.log(2.0 * math.pi * beta**2)
    kl = kl.float()
    return {
        "sse": sse,
        "mse": sse / n_pixels,
        "recon": recon,
        "kl": kl,
        "loss": recon + kl,
        "typicality_loss": recon + log_norm + kl,
    }


def rbf_mmd(z: Tensor, prior: Tensor) -> Tensor:
    """Squared maximum mean discrepancy between two samples, RBF kernel (InfoVAE).

    The kernel is ``exp(-||a - b||^2 / D^2)`` (``D`` = code dimension), the scale of
    Zhou et al.'s InfoVAE code, and the estimator the plain (biased) V-statistic
    ``mean K(z, z) + mean K(p, p) - 2 mean K(z, p)`` over all pairs, as there.

    Args:
        z: ``(N, D)`` codes of a batch (samples of the aggregate posterior).
        prior: ``(M, D)`` draws from the prior ``N(0, I)``.

    Returns:
        Scalar, >= 0 up to rounding.
    """
    d = z.shape[-1]

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(a, b).square() / d**2)

    z = z.float()
    prior = prior.float()
    return kernel(z, z).mean() + kernel(prior, prior).mean() - 2.0 * kernel(z, prior).mean()


@dataclass
class VAEOutput:
    """What one forward pass returns (all batch-first).

    Attributes:
        x_hat: ``(N, B, H, W)`` reconstruction from the masked code.
        mu: ``(N, D)`` posterior means (unmasked).
        logvar: ``(N, D)`` posterior log-variances (unmasked).
        mask: ``(N, D)`` 0/1 top-k mask.
        z: ``(N, D)`` masked code the decoder saw (a sample when sampling, else ``mask * mu``).
        kl: ``(N,)`` KL of the active units in nats.
    """

    x_hat: Tensor
    mu: Tensor
    logvar: Tensor
    mask: Tensor
    z: Tensor
    kl: Tensor

    @property
    def embedding(self) -> Tensor:
        """``(N, D)`` masked posterior mean, the embedding used downstream."""
        return self.mu * self.mask


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    # 4x4 stride-2 kernels halve the side without the checkerboard bias of 3x3/stride 2.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1),
        nn.GroupNorm(_groups(c_out), c_out),
        nn.SiLU(),
    )


def _deconv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1),
        nn.GroupNorm(_groups(c_out), c_out),
        nn.SiLU(),
    )


def _groups(channels: int) -> int:
    # GroupNorm rather than BatchNorm: per-image statistics keep the encoder's output
    # independent of the batch, so embeddings do not depend on what else is in a batch.
    for groups in (8, 4, 2):
        if channels % groups == 0:
            return groups
    return 1


class KSparseVAE(nn.Module):
    """Convolutional Gaussian VAE with a top-k sparse latent.

    Buffers filled at the end of training (at the inference ``k``) travel with the
    weights; :func:`~simobs.embedding.traversal.decode_latent_traversal` uses them:
    ``latent_mean``, ``latent_std`` (``(D,)``, mean and spread of each unit's posterior
    mean over the training images in which it is *active*; 0 for a unit never active),
    ``latent_usage`` (``(D,)``, fraction of training images in which it is active) and
    ``traversal_codes`` (``(D, D)``, row ``i``: the sparse code of the most typical
    training image in which unit ``i`` is active, "most typical" = typicality loss
    closest to the median; zeros for a unit never active).
    """

    def __init__(self, arch: VAEArchitecture) -> None:
        super().__init__()
        self.arch = arch
        channels = arch.channels()
        self.bottom_side = arch.image_size // 2**arch.depth
        self.bottom_channels = channels[-1]
        flat = self.bottom_channels * self.bottom_side**2

        # Stem: space-to-depth (2x2 pixel blocks -> 4*bands channels) and a 3x3 convolution.
        # It halves the side like a stride-2 convolution, but without a convolution
        # with 3 input (and, in the decoder, 3 output) channels at full resolution,
        # which oneDNN runs at a few percent of its peak: 3-4x faster on CPUs.
        layers: list[nn.Module] = [
            nn.PixelUnshuffle(2),
            nn.Conv2d(4 * arch.bands, channels[0], kernel_size=3, padding=1),
            nn.GroupNorm(_groups(channels[0]), channels[0]),
            nn.SiLU(),
        ]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers.append(_conv_block(c_in, c_out))
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        self.to_posterior = nn.Linear(flat, 2 * arch.latent_dim)

        self.from_latent = nn.Linear(arch.latent_dim, flat)
        up: list[nn.Module] = []
        reversed_channels = channels[::-1]
        for c_in_up, c_out_up in zip(reversed_channels[:-1], reversed_channels[1:]):
            up.append(_deconv_block(c_in_up, c_out_up))
        # Mirror of the stem (depth-to-space).  The output is linear: asinh-normalised
        # pixels are signed and unbounded.
        up += [
            nn.Conv2d(reversed_channels[-1], 4 * arch.bands, kernel_size=3, padding=1),
            nn.PixelShuffle(2),
        ]
        self.decoder = nn.Sequential(*up)

        self.register_buffer("latent_mean", torch.zeros(arch.latent_dim))
        self.register_buffer("latent_std", torch.ones(arch.latent_dim))
        self.register_buffer("latent_usage", torch.zeros(arch.latent_dim))
        self.register_buffer("traversal_codes", torch.zeros(arch.latent_dim, arch.latent_dim))

    @property
    def latent_dim(self) -> int:
        return self.arch.latent_dim

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters.

        Args:
            x: ``(N, B, H, W)`` images.

        Returns:
            ``(mu, logvar)``, each ``(N, D)`` float32.
        """
        h = self.to_posterior(self.encoder(x)).float()
        mu, logvar = h.chunk(2, dim=-1)
        # Bound the log-variance: exp() of an unbounded value overflows in bf16 early in
        # training.  e^-12 .. e^4 covers any sensible posterior width.
        logvar = logvar.clamp(-12.0, 4.0)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """Decoder mean ``(N, B, H, W)`` for codes ``z`` of shape ``(N, D)``."""
        h = self.from_latent(z.to(self.from_latent.weight.dtype))
        h = h.view(-1, self.bottom_channels, self.bottom_side, self.bottom_side)
        return self.decoder(h)

    def forward(self, x: Tensor, k: int | None = None, sample: bool | None = None) -> VAEOutput:
        """Encode, mask to the top ``k`` units, decode.

        Args:
            x: ``(N, B, H, W)`` images.
            k: Active units per image; default ``arch.k``.
            sample: Draw ``z ~ q(z|x)`` (reparameterised) rather than use the mean;
                default: sample in training mode only.

        Returns:
            A :class:`VAEOutput`.
        """
        k = self.arch.k if k is None else int(k)
        sample = self.training if sample is None else sample
        mu, logvar = self.encode(x)
        mask = top_k_mask(mu.abs(), k)
        if sample:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        else:
            z = mu
        z = z * mask
        x_hat = self.decode(z)
        kl = gaussian_kl(mu, logvar, mask)
        return VAEOutput(x_hat=x_hat, mu=mu, logvar=logvar, mask=mask, z=z, kl=kl)
