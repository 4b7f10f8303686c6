"""Picking the torch device of a rule: one rule for every stage."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(spec: str | torch.device | None = "auto", *, key: str = "device") -> torch.device:
    """``auto`` (or None) → the first CUDA device when torch sees one, else the CPU.

    The framework is asked, not ``CUDA_VISIBLE_DEVICES``: a SLURM GPU job with a CPU
    build of torch, or without a working driver, runs on the CPU.

    Raises:
        RuntimeError: CUDA was asked for explicitly (config key ``key``) but none is visible.
    """
    if spec is None or str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{key}={str(spec)!r} but no CUDA device is visible; set {key}: auto or cpu")
    return device
