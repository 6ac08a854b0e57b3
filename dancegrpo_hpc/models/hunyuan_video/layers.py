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


class PatchEmbed(nn.Module):
    """[B, C, F, H, W] -> [B, N, D] tokens in (frame, row, column) order.

    The weights are diffusers' Conv3d (kernel = stride = patch), but the product runs as
    one GEMM over the non-overlapping patches: the same function, under torch's matmul
    precision (float32 stays float32; cuDNN convolutions default to TF32 on Ampere and
    later, whose 10-bit inputs, with algorithms picked per batch size, made a float32
    model's velocity depend on the batch) and without cuDNN's layout conversions."""

    def __init__(self, patch: Tuple[int, int, int], in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        pt, ph, pw = self.proj.kernel_size
        patches = x.reshape(b, c, f // pt, pt, h // ph, ph, w // pw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return F.linear(patches.reshape(b, -1, c * pt * ph * pw), self.proj.weight.flatten(1), self.proj.bias)


def rope_tables(grid: Sequence[int], axes_dim: Sequence[int], theta: float, device) -> torch.Tensor:
    """Rotations [N, head_dim / 2] (complex64) for the N = t*h*w video tokens. Each axis
    gets axes_dim[i] channels (pairs) at frequencies theta^(-2k/d); angles in float32,
    as the released model computes them."""
    coords = torch.meshgrid(*[torch.arange(n, device=device, dtype=torch.float32) for n in grid], indexing="ij")
    angles = []
    for c, d in zip(coords, axes_dim):
        freqs = 1.0 / (theta ** (torch.arange(0, d, 2, device=device, dtype=torch.float32)[: d // 2] / d))
        angles.append(torch.outer(c.reshape(-1), freqs))
    return torch.polar(torch.ones(1, device=device), torch.cat(angles, dim=1))


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
