"""Small building blocks of the HunyuanVideo DiT: norms, modulation, embeddings, RoPE.

Plain math; the same functions as diffusers' modules of the same names (the
parity tests load diffusers weights into them). Token tensors are
sequence-first, [S, B, D], as in Megatron.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-6


class RMSNorm(nn.Module):
    """RMS norm over the last dim, computed in float32 (qk-norm over the head dim)."""

    def __init__(self, dim: int, eps: float = EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine parameters, eps 1e-6 (AdaLN's inner norm)."""
    return F.layer_norm(x, (x.shape[-1],), eps=EPS)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """LN(x) * (1 + scale) + shift; x [S, B, D], shift/scale [B, D] or per token [S, B, D]."""
    if shift.dim() == 2:
        shift, scale = shift.unsqueeze(0), scale.unsqueeze(0)
    return layer_norm(x) * (1 + scale) + shift


def gated(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return x * (gate.unsqueeze(0) if gate.dim() == 2 else gate)


def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [cos | sin] of (fractional) timesteps, float32 (diffusers'
    Timesteps with flip_sin_to_cos=True, downscale_freq_shift=0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float().view(-1, 1) * freqs.view(1, -1)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MLPEmbedder(nn.Module):
    """linear_1 -> SiLU -> linear_2 (diffusers' TimestepEmbedding / PixArtAlphaTextProjection)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class PatchEmbed(nn.Module):
    """[B, C, F, H, W] -> [B, N, D] tokens in (frame, row, column) order."""

    def __init__(self, patch: Tuple[int, int, int], in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def rope_tables(grid: Sequence[int], axes_dim: Sequence[int], theta: float, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [N, head_dim] for the N = t*h*w video tokens, float32. Each axis gets
    axes_dim[i] channels whose frequencies are theta^(-2k/d), every value repeated
    twice (interleaved real/imaginary pairs). Angles in float32, as the released model."""
    coords = torch.meshgrid(*[torch.arange(n, device=device, dtype=torch.float32) for n in grid], indexing="ij")
    cos, sin = [], []
    for c, d in zip(coords, axes_dim):
        freqs = 1.0 / (theta ** (torch.arange(0, d, 2, device=device, dtype=torch.float32)[: d // 2] / d))
        angles = torch.outer(c.reshape(-1), freqs)
        cos.append(angles.cos().repeat_interleave(2, dim=1))
        sin.append(angles.sin().repeat_interleave(2, dim=1))
    return torch.cat(cos, dim=1), torch.cat(sin, dim=1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates interleaved pairs; x [S, B, H, D], cos/sin [S, D] (float32 math)."""
    pairs = x.float().unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    c, s = cos[:, None, None, :], sin[:, None, None, :]
    return (x.float() * c + rotated * s).to(x.dtype)

