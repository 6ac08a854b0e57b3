"""HunyuanVideo's own layers: the 3D patch embedding and its RoPE over the (t, h, w) token
grid. The layers it shares with FLUX (norms, modulation, embeddings, applying RoPE) live in
models/common/layers.py and are re-exported here.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.layers import (EPS, MLPEmbedder, RMSNorm, _apply_rope_real, add_gated, apply_rope, gelu_tanh,
                             layer_norm, modulate, rope_rotations, timestep_features)

__all__ = ["EPS", "MLPEmbedder", "PatchEmbed", "RMSNorm", "_apply_rope_real", "add_gated", "apply_rope", "gelu_tanh",
           "layer_norm", "modulate", "rope_tables", "timestep_features"]


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
    """Rotations [N, head_dim / 2] (complex64) for the N = t*h*w video tokens in (frame, row,
    column) order; angles in float32, as the released model computes them."""
    coords = torch.meshgrid(*[torch.arange(n, device=device, dtype=torch.float32) for n in grid], indexing="ij")
    return rope_rotations(torch.stack([c.reshape(-1) for c in coords], dim=1), axes_dim, theta)
