"""What a latent feature looks like: decoding traversals of single latents.

As in the interpretation figure of Zhou et al. (2025): start from the mean code of
the observed images and move one latent by up to ``±n_sigma`` of its spread over the
observed images, keeping all others fixed; the decoded images show what that
feature encodes.  The comparison stage calls :func:`decode_latent_traversal` for
the latents with the largest SHAP importances.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from simobs.embedding.model import KSparseVAE

__all__ = ["decode_latent_traversal", "most_used_latents"]


@torch.no_grad()
def decode_latent_traversal(
    model: KSparseVAE,
    latent_indices: Sequence[int],
    *,
    n_steps: int = 7,
    n_sigma: float = 3.0,
    base_code: np.ndarray | torch.Tensor | None = None,
    sigma: np.ndarray | torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode the mean code with one latent at a time moved across ``±n_sigma``.

    Args:
        model: A trained VAE (from :func:`simobs.embedding.checkpoint.load_model`);
            its ``latent_mean`` / ``latent_std`` buffers give the defaults below.
        latent_indices: Latents to traverse, each in ``[0, latent_dim)``.
        n_steps: Images per traversal (odd values include the unmoved mean code).
        n_sigma: Half-width of the traversal in units of the latent's spread.
        base_code: ``(D,)`` code to start from; default ``model.latent_mean`` (the
            mean embedding of the training images).
        sigma: ``(D,)`` spread per latent; default ``model.latent_std``.  A latent
            that never varied (spread 0, e.g. a dead one) is moved by ``±n_sigma``
            prior units instead, so that its (lack of) effect is still visible.

    Returns:
        ``(images, offsets)``: ``images`` of shape ``(len(latent_indices), n_steps,
        B, H, W)`` float32 in the normalised pixel units, and ``offsets`` of shape
        ``(len(latent_indices), n_steps)``, the value added to each latent.

    Raises:
        IndexError: naming a latent index outside ``[0, latent_dim)``.
    """
    d = model.latent_dim
    indices = [int(i) for i in latent_indices]
    bad = [i for i in indices if not 0 <= i < d]
    if bad:
        raise IndexError(f"decode_latent_traversal: latent indices {bad} outside [0, {d})")
    if n_steps < 2:
        raise ValueError(f"decode_latent_traversal: n_steps={n_steps} must be >= 2")
    device = model.latent_mean.device
    base = model.latent_mean if base_code is None else torch.as_tensor(base_code, dtype=torch.float32)
    spread = model.latent_std if sigma is None else torch.as_tensor(sigma, dtype=torch.float32)
    base = base.to(device).float()
    spread = torch.where(spread.to(device).float() > 0, spread.to(device).float(), torch.ones_like(base))
    steps = torch.linspace(-n_sigma, n_sigma, n_steps, device=device)
    was_training = model.training
    model.eval()
    images = []
    offsets = []
    for i in indices:
        codes = base.expand(n_steps, d).clone()
        offset = steps * spread[i]
        codes[:, i] += offset
        images.append(model.decode(codes).float().cpu().numpy())
        offsets.append(offset.cpu().numpy())
    model.train(was_training)
    shape = (0, n_steps, model.arch.bands, model.arch.image_size, model.arch.image_size)
    stacked = np.stack(images) if images else np.zeros(shape, np.float32)
    return stacked.astype(np.float32), np.stack(offsets) if offsets else np.zeros((0, n_steps), np.float32)


def most_used_latents(model: KSparseVAE, n: int) -> list[int]:
    """The ``n`` latents active in the largest fraction of training images."""
    usage = model.latent_usage.detach().cpu()
    n = min(int(n), usage.numel())
    return torch.argsort(usage, descending=True, stable=True)[:n].tolist()
