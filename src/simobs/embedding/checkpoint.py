"""Saving and loading the model and the training state.

Everything is written with ``torch.save`` of plain containers (dicts, lists, str,
numbers, tensors) through :func:`simobs.io.atomic_path`, so that both files load
with ``torch.load(..., weights_only=True)`` (no arbitrary pickle is ever executed)
and a crash mid-write never leaves a truncated file.

The model file carries ``model_digest`` (:func:`model_digest`: weights + architecture),
which :func:`load_model` recomputes and checks; every embeddings file records the
digest of the VAE that made it (attr ``vae_digest``), so that downstream stages can
refuse embeddings of two different models (:mod:`simobs.provenance`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from simobs.embedding.model import KSparseVAE, VAEArchitecture
from simobs.io import atomic_path, write_text_atomic

__all__ = [
    "MODEL_FORMAT",
    "model_digest",
    "save_model",
    "load_model",
    "read_model_file",
    "save_checkpoint",
    "load_checkpoint",
]

log = logging.getLogger(__name__)

#: Version tag of the model file layout; bump it when the layout changes.
MODEL_FORMAT = "simobs.ksparse_vae/2"  # 2: traversal codes, active-unit statistics, split
CHECKPOINT_FORMAT = "simobs.ksparse_vae.checkpoint/1"


def model_digest(state_dict: Mapping[str, torch.Tensor], architecture: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a model's content: its architecture and every tensor of its state.

    Tensors enter in sorted key order with their name, dtype and shape, then their raw
    bytes (on the CPU, contiguous), so the digest depends on the values only: the same
    weights give the same digest on any device, one changed weight another digest.

    Args:
        state_dict: The model's ``state_dict()`` (parameters and buffers).
        architecture: :meth:`VAEArchitecture.to_dict` of the model.
    """
    h = hashlib.sha256(json.dumps(dict(architecture), sort_keys=True).encode())
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"\0{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_model(
    path: str | Path,
    model: KSparseVAE,
    *,
    alpha: float,
    beta: float,
    extra: Mapping[str, Any] | None = None,
    architecture_json: str | Path | None = None,
) -> str:
    """Write the trained model (weights + architecture + inference settings); return its ``model_digest``.

    Args:
        path: Target ``.pt`` file.
        model: The trained model (its buffers hold the latent statistics).
        alpha: Inference multiplier of k.
        beta: Decoder width used in training (the ELBO needs it).
        extra: JSON-like metadata (settings, training sources, final metrics).
        architecture_json: Also write the architecture (plus alpha, beta) as JSON here.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    digest = model_digest(state, model.arch.to_dict())
    payload = {
        "format": MODEL_FORMAT,
        "architecture": model.arch.to_dict(),
        "model_digest": digest,
        "alpha": float(alpha),
        "beta": float(beta),
        "state_dict": state,
        "extra": json.loads(json.dumps(dict(extra or {}), default=str)),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    if architecture_json is not None:
        doc = {"format": MODEL_FORMAT, "architecture": model.arch.to_dict(), "alpha": alpha, "beta": beta}
        write_text_atomic(architecture_json, json.dumps(doc, indent=2) + "\n")
    return digest


def read_model_file(path: str | Path) -> dict[str, Any]:
    """Load a model file's payload with ``weights_only=True``.

    Raises:
        FileNotFoundError: if ``path`` is missing.
        ValueError: if it is not a simobs k-sparse VAE file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding model {path} does not exist; run the train_embedding rule first")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: format {found!r} is not {MODEL_FORMAT!r}; retrain with train_embedding")
    return payload


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[KSparseVAE, dict[str, Any]]:
    """Rebuild the model from a file written by :func:`save_model`.

    Returns:
        ``(model, info)`` with the model in eval mode on ``device`` and ``info`` the
        payload without the weights (``architecture``, ``alpha``, ``beta``, ``extra``,
        ``model_digest``: :func:`model_digest` of the weights read, also for files
        written before the digest was stored).

    Raises:
        ValueError: if the weights do not fit the architecture the file records (naming
            both), or do not match the digest stored at save time (the file was altered).
    """
    payload = read_model_file(path)
    arch = VAEArchitecture.from_dict(payload["architecture"])
    state = payload.pop("state_dict")
    model = KSparseVAE(arch)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # torch lists every key that does not fit; the first few say enough
        detail = "; ".join(line.strip() for line in str(exc).strip().splitlines()[1:4])
        raise ValueError(
            f"{path}: its weights do not fit the architecture it records ({arch.to_dict()}): {detail}; the file "
            "mixes two models, retrain with train_embedding"
        ) from exc
    digest = model_digest(state, payload["architecture"])
    stored = payload.get("model_digest")
    if stored is not None and stored != digest:
        raise ValueError(
            f"{path}: the weights have model_digest {digest} but the file was saved with {stored}; it was altered "
            "after train_embedding wrote it: retrain (snakemake --forcerun train_embedding)"
        )
    payload["model_digest"] = digest
    model.to(device).eval()
    return model, payload


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """Write the training state atomically (a kill mid-write leaves the previous one)."""
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The training state at ``path``, or ``None`` when there is none or it is unreadable.

    An unreadable checkpoint (from another simobs version, say) is logged and ignored:
    training then starts over rather than failing.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file means "start over"
        log.warning("checkpoint %s is unreadable (%s); starting training from scratch", path, exc)
        return None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        log.warning("checkpoint %s has an unknown format; starting training from scratch", path)
        return None
    return state
