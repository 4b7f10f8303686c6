"""What a latent feature looks like: decoding traversals of single latents.

As in the interpretation figure of Zhou et al. (2025), one latent at a time is moved
while the others stay fixed, and the decoded images show what that feature encodes.
The starting point is a code the decoder was trained on: the sparse code of a typical
training image in which the latent is active (``model.traversal_codes``; typicality
loss closest to the median), not the dense mean code, in which nearly all units are
non-zero.  The latent is moved within its spread *while active*
(``model.latent_mean ± n_sigma * model.latent_std``, moments over the images in which
it is among the top k), so the traversal stays where the decoder has seen the unit.
The comparison stage calls :func:`decode_latent_traversal` for the latents with the
largest SHAP importances.
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
    """Decode typical sparse codes with one latent at a time moved across its active spread.

    Latent ``i`` takes the values ``latent_mean[i] + t * latent_std[i]`` for ``n_steps``
    values of ``t`` in ``[-n_sigma, n_sigma]``, in the code ``traversal_codes[i]``.

    Args:
        model: A trained VAE (from :func:`simobs.embedding.checkpoint.load_model`);
            its ``traversal_codes``, ``latent_mean`` and ``latent_std`` buffers give the
            defaults below.
        latent_indices: Latents to traverse, each in ``[0, latent_dim)``.
        n_steps: Images per traversal (odd values include the latent's active mean).
        n_sigma: Half-width of the traversal in units of the latent's active spread.
        base_code: ``(D,)`` code to start every traversal from instead of the latent's
            own typical code.
        sigma: ``(D,)`` spread per latent instead of ``model.latent_std``.  A latent that
            was never active (a dead one) has no typical code and no spread: it is moved
            by ``±n_sigma`` prior units around 0 in the typical code of the most used
            latent, so that its (lack of) effect is still visible.

    Returns:
        ``(images, offsets)``: ``images`` of shape ``(len(latent_indices), n_steps,
        B, H, W)`` float32 in the normalised pixel units, and ``offsets`` of shape
        ``(len(latent_indices), n_steps)``, the value the latent takes minus its value
        in the starting code.

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
    spread = model.latent_std if sigma is None else torch.as_tensor(sigma, dtype=torch.float32)
    spread = spread.to(device).float()
    usage = model.latent_usage.to(device)
    fallback = model.traversal_codes[most_used_latents(model, 1)[0]].float()
    steps = torch.linspace(-n_sigma, n_sigma, n_steps, device=device)
    was_training = model.training
    model.eval()
    images = []
    offsets = []
    for i in indices:
        active = bool(usage[i] > 0)
        if base_code is not None:
            base = torch.as_tensor(base_code, dtype=torch.float32).to(device)
        else:
            base = model.traversal_codes[i].float() if active else fallback
        if active and spread[i] > 0:
            values = model.latent_mean[i].float() + steps * spread[i]
        else:
            values = steps.clone()
        codes = base.expand(n_steps, d).clone()
        codes[:, i] = values
        images.append(model.decode(codes).float().cpu().numpy())
        offsets.append((values - base[i]).cpu().numpy())
    model.train(was_training)
    shape = (0, n_steps, model.arch.bands, model.arch.image_size, model.arch.image_size)
    stacked = np.stack(images) if images else np.zeros(shape, np.float32)
    return stacked.astype(np.float32), np.stack(offsets) if offsets else np.zeros((0, n_steps), np.float32)


def most_used_latents(model: KSparseVAE, n: int) -> list[int]:
    """The ``n`` latents active in the largest fraction of training images."""
    usage = model.latent_usage.detach().cpu()
    n = min(int(n), usage.numel())
    return torch.argsort(usage, descending=True, stable=True)[:n].tolist()
