"""HunyuanVideo's text token refiner block. The dual- and single-stream blocks it shares
with FLUX live in models/common/blocks.py and are re-exported here.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.blocks import (DualStreamBlock, FeedForward, ForwardContext, Modulation, SingleStreamBlock, heads,
                             mark_tp_partial, qkv_heads)
from ..common.layers import add_gated

__all__ = ["DualStreamBlock", "FeedForward", "ForwardContext", "Modulation", "RefinerBlock", "SingleStreamBlock",
           "heads", "mark_tp_partial", "qkv_heads"]


class RefinerBlock(nn.Module):
    """Token refiner block (text only, tensor parallel without sequence parallelism)."""

    def __init__(self, cfg, build):
        super().__init__()
        d = cfg.hidden_size
        self.head_dim = cfg.attention_head_dim
        self.qkv_widths = [d // build.tp] * 3
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.attn = nn.Module()
        self.attn.to_qkv = build.plain.column(d, 3 * d)
        self.attn.to_out = build.plain.row(d, d)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.ff = FeedForward(d, cfg.refiner_mlp_hidden, build, partial=False)
        self.norm_out = nn.Module()
        self.norm_out.linear = nn.Linear(d, 2 * d)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, pair_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x [L, B, D]; pair_mask [B, 1, L, L] bool."""
        q, k, v = (heads(t, self.head_dim) for t in self.attn.to_qkv.forward_split(self.norm1(x), self.qkv_widths))
        out = F.scaled_dot_product_attention(*(t.permute(1, 2, 0, 3) for t in (q, k, v)), attn_mask=pair_mask)
        out = self.attn.to_out(out.permute(2, 0, 1, 3).flatten(2))
        gate_msa, gate_mlp = self.norm_out.linear(F.silu(temb)).chunk(2, dim=-1)
        x = add_gated(x, out, gate_msa)
        return add_gated(x, self.ff.fc2(F.silu(self.ff.fc1(self.norm2(x)))), gate_mlp)

