"""Building blocks shared by the joint-attention DiTs (HunyuanVideo, FLUX): norms,
modulation, timestep embeddings, RoPE.

Plain math; the same functions as diffusers' modules of the same names (the
parity tests load diffusers weights into them). Token tensors are
sequence-first, [S, B, D], as in Megatron.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-6


class RMSNorm(nn.Module):
    """RMS norm over the last dim (qk-norm over the head dim); torch's fused kernel."""

    def __init__(self, dim: int, eps: float = EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine parameters, eps 1e-6 (AdaLN's inner norm)."""
    return F.layer_norm(x, (x.shape[-1],), eps=EPS)


# Rollouts run the model with no autograd graph: there the elementwise steps below
# work in place, saving an allocation and a memory pass each (on CPU a fresh
# allocation also costs page faults). With autograd on they allocate as usual.


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """LN(x) * (1 + scale) + shift in one pass; x [S, B, D], shift/scale [B, D] or per token."""
    if shift.dim() == 2:
        shift, scale = shift.unsqueeze(0), scale.unsqueeze(0)
    return torch.addcmul(shift, layer_norm(x), 1 + scale)


def add_gated(residual: torch.Tensor, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """residual + x * gate; gate [B, D] or per token [S, B, D]. Updates residual in place
    when no autograd graph is recorded (the caller replaces it with the result)."""
    gate = gate.unsqueeze(0) if gate.dim() == 2 else gate
    if not torch.is_grad_enabled():
        return residual.addcmul_(x, gate)
    return torch.addcmul(residual, x, gate)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU (tanh approximation); in place on x when no autograd graph is recorded."""
    if not torch.is_grad_enabled():
        return torch._C._nn.gelu_(x, approximate="tanh")
    return F.gelu(x, approximate="tanh")


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


def rope_rotations(positions: torch.Tensor, axes_dim: Sequence[int], theta: float,
                   freqs_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rotations [N, sum(axes_dim) / 2] (complex64) for N tokens at `positions` [N, axes]:
    axis i gets axes_dim[i] channels (pairs) at frequencies theta^(-2k/d), angles
    position x frequency computed in freqs_dtype (HunyuanVideo float32, FLUX float64,
    as their released models and diffusers compute them), cos / sin kept in float32."""
    angles = []
    for i, d in enumerate(axes_dim):
        freqs = 1.0 / (theta ** (torch.arange(0, d, 2, device=positions.device, dtype=freqs_dtype)[: d // 2] / d))
        angles.append(torch.outer(positions[:, i].float().to(freqs_dtype), freqs))
    angle = torch.cat(angles, dim=1)
    return torch.complex(angle.cos().float(), angle.sin().float())


def apply_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotates interleaved (real, imaginary) channel pairs; x [S, B, H, D], rotation
    [S, D / 2] complex. Eager: one complex multiply, the same arithmetic as
    x * cos + rotate_half(x) * sin in one pass instead of five (float32 math). Under
    torch.compile the real form, which Inductor fuses with the qk-norm (it does not
    generate code for complex tensors)."""
    if torch.compiler.is_compiling():
        return _apply_rope_real(x, rotation)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotation[:, None, None, :]).flatten(-2).to(x.dtype)


def _apply_rope_real(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """apply_rope in real arithmetic: (a, b) -> (a cos - b sin, a sin + b cos) per pair."""
    cos = rotation.real[:, None, None, :]
    sin = rotation.imag[:, None, None, :]
    a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2).to(x.dtype)
