"""A small U-Net for periodic maps: circular padding everywhere and a sinusoidal time embedding.

Optionally conditioned on a parameter vector (the CMB parameters φ of the blind stage): an
MLP of the parameters is added to the time embedding, so every residual block sees them.

Circular padding matches the periodic (torus) geometry of the fields and of the
Fourier-diagonal noise: no pixel is special, so the network stays translation
equivariant, as the stationary posterior is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNet", "sinusoidal_embedding"]


def sinusoidal_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Transformer-style embedding of diffusion times ``t`` (B,) in [0, 1] → (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = scale * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class _CircularConv3(nn.Conv2d):
    """3×3 convolution on a torus.

    Pads by concatenating the opposite edges: the same result as
    ``padding_mode="circular"``, whose slice-and-copy backward is ~3× slower on CPU.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, 3, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[..., -1:, :], x, x[..., :1, :]], dim=-2)
        x = torch.cat([x[..., -1:], x, x[..., :1]], dim=-1)
        return super().forward(x)


def _conv3(c_in: int, c_out: int) -> nn.Conv2d:
    return _CircularConv3(c_in, c_out)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, t_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = _conv3(c_in, c_out)
        self.time = nn.Linear(t_dim, c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = _conv3(c_out, c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """U-Net ``(B, C, H, W), t (B,) → (B, C, H, W)`` with circular padding.

    ``H`` and ``W`` must be divisible by ``2^(len(channel_mults) − 1)``.

    Args:
        in_channels: channels of the input and output maps.
        base_channels: width of the first level (the main cost knob: 16 trains the
            32×32 demo in about 3 minutes on 2 CPU cores, where 8 left the largest
            scales ~10 % low; 64 suits 256×256 on a GPU).
        channel_mults: width multipliers per resolution level.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        cond_dim: length of the conditioning vector (0: none, the known-φ architecture with
            exactly its parameters).  It should be of order 1 (e.g. φ mapped to [-1, 1]).
        cond_embedding_dim: hidden width of the conditioning MLP
            ``Linear(cond_dim, ·) → SiLU → Linear(·, 4·base_channels)``; default ``4·base_channels``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        cond_dim: int = 0,
        cond_embedding_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.t_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, self.t_dim), nn.SiLU(), nn.Linear(self.t_dim, self.t_dim)
        )
        self.cond_dim = int(cond_dim)
        if self.cond_dim > 0:  # only then: cond_dim 0 keeps the state-dict keys of existing checkpoints
            hidden = int(cond_embedding_dim or self.t_dim)
            self.cond_mlp = nn.Sequential(nn.Linear(self.cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, self.t_dim))
        self.base_channels = base_channels
        self.stem = _conv3(in_channels, base_channels)
        self.down = nn.ModuleList()
        skips = [base_channels]
        ch = base_channels
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(_ResBlock(ch, base_channels * mult, self.t_dim))
                ch = base_channels * mult
                skips.append(ch)
            if level < len(channel_mults) - 1:
                self.down.append(nn.AvgPool2d(2))
                skips.append(ch)
        self.mid = _ResBlock(ch, ch, self.t_dim)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(_ResBlock(ch + skips.pop(), base_channels * mult, self.t_dim))
                ch = base_channels * mult
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.out_norm = nn.GroupNorm(_groups(ch), ch)
        self.out = _conv3(ch, in_channels)
        # Zero output layer: the network starts as "predict no correction" (see NoisePredictor).
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.factor = 2 ** (len(channel_mults) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Maps ``x`` (B, C, H, W), times ``t`` (B,), conditioning ``cond`` (B, cond_dim) when ``cond_dim > 0``."""
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"map size {tuple(x.shape[-2:])} must be divisible by {self.factor}")
        if (cond is None) != (self.cond_dim == 0):
            got = None if cond is None else tuple(cond.shape)
            raise ValueError(f"this U-Net has cond_dim={self.cond_dim}; got cond={got}")
        temb = self.time_mlp(sinusoidal_embedding(t, self.base_channels))
        if cond is not None:
            if cond.shape != (x.shape[0], self.cond_dim):
                raise ValueError(f"cond must have shape ({x.shape[0]}, {self.cond_dim}), got {tuple(cond.shape)}")
            temb = temb + self.cond_mlp(cond.to(temb.dtype))
        h = self.stem(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, temb) if isinstance(layer, _ResBlock) else layer(h)
            hs.append(h)
        h = self.mid(h, temb)
        for layer in self.up:
            if isinstance(layer, _ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), temb)
            else:
                h = layer(h)
        return self.out(F.silu(self.out_norm(h)))
