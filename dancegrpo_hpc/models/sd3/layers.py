"""SD3's own layers: the 2D patch embedding with its sin-cos position table, cropped to
each latent's size (diffusers' PatchEmbed with pos_embed_max_size). The layers it shares
with the other joint-attention DiTs (norms, modulation, timestep embedding) live in
models/common/layers.py.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def _sincos(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """[sin | cos] features [N, dim] of float32 positions [N] at frequencies 10000^(-2k/dim),
    computed in float64 and returned in float32 (diffusers' get_1d_sincos_pos_embed_from_grid)."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2.0)
    angles = torch.outer(positions.reshape(-1).double(), 1.0 / 10000 ** omega)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_table(dim: int, rows: int, columns: int, base_size: int, device=None) -> torch.Tensor:
    """The 2D sin-cos position embedding [rows * columns, dim] (row-major) of a grid whose
    positions are scaled so that base_size patches span the trained range: channels
    [0, dim/2) encode the column, [dim/2, dim) the row (diffusers' get_2d_sincos_pos_embed,
    interpolation_scale 1)."""
    column = torch.arange(columns, device=device, dtype=torch.float32) / (columns / base_size)
    row = torch.arange(rows, device=device, dtype=torch.float32) / (rows / base_size)
    by_column, by_row = _sincos(column, dim // 2), _sincos(row, dim // 2)
    table = torch.cat([by_column.unsqueeze(0).expand(rows, -1, -1), by_row.unsqueeze(1).expand(-1, columns, -1)],
                      dim=-1)
    return table.reshape(rows * columns, dim).float()


class PatchEmbed(nn.Module):
    """[B, C, H, W] -> [B, N, D] patch tokens (row-major) plus their position embedding.

    The weights are diffusers' Conv2d (kernel = stride = patch), applied as one GEMM over
    the non-overlapping patches, as HunyuanVideo's PatchEmbed does (the same function;
    float32 stays float32 where cuDNN convolutions default to TF32). With max_size the
    position table [1, max_size^2, D] is a persistent buffer (it is in the checkpoints),
    and a latent of h x w patches takes its centred h x w crop; without it the table of
    the latent's own grid is computed at each call."""

    def __init__(self, patch: int, in_channels: int, dim: int, base_size: int, max_size: Optional[int]):
        super().__init__()
        self.patch, self.base_size, self.max_size = patch, base_size, max_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        if max_size is not None:
            self.register_buffer("pos_embed", sincos_table(dim, max_size, max_size, base_size).unsqueeze(0))

    def position_embedding(self, rows: int, columns: int) -> torch.Tensor:
        """[rows * columns, D] for a latent of rows x columns patches."""
        if self.max_size is None:
            return sincos_table(self.proj.out_channels, rows, columns, self.base_size, self.proj.weight.device)
        top, left = (self.max_size - rows) // 2, (self.max_size - columns) // 2
        table = self.pos_embed.view(self.max_size, self.max_size, -1)
        return table[top:top + rows, left:left + columns].reshape(rows * columns, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.patch
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
        tokens = F.linear(patches, self.proj.weight.flatten(1), self.proj.bias)
        return (tokens + self.position_embedding(h // p, w // p)).to(tokens.dtype)
