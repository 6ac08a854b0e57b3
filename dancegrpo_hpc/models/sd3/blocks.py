"""SD3's joint transformer block (diffusers' JointTransformerBlock with JointAttnProcessor2_0):
image and text streams with their own weights attend jointly; SD3.5 medium's blocks in
dual_attention_layers add a second attention among the image tokens only (attn2, modulated by
SD35AdaLayerNormZeroX's extra shift / scale / gate); the last block is context_pre_only (it
reads the text stream but neither updates nor returns it: AdaLayerNormContinuous on the text,
no to_add_out, no text MLP).

Tensor parallel plan (megatron-core linears), as models/common/blocks.py: q/k/v of each
attention (fused) and MLP fc1 column-parallel, the output projections and MLP fc2
row-parallel, qk-norms and AdaLN replicated (or AdaLN column-parallel, gathered). The image,
text and attn2 output projections of a block are reduced in one collective, the two MLPs in
another. No RoPE: positions enter once, in the patch embedding.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ...attention import JointMask, attention
from ..common.blocks import FeedForward, ForwardContext, Modulation, mark_tp_partial, qkv_heads
from ..common.layers import RMSNorm, add_gated, gelu_tanh, modulate


def _qk_norms(module: nn.Module, names, head_dim: int, qk_norm, tp: int) -> None:
    """RMSNorm over the head dim (SD3.5), or none (SD3); replicated, so their gradients from
    this rank's heads are partial over TP."""
    for name in names:
        norm = RMSNorm(head_dim) if qk_norm == "rms_norm" else nn.Identity()
        mark_tp_partial(norm, tp)
        setattr(module, name, norm)


def image_attention(ctx: ForwardContext, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention among the image tokens only (attn2). q, k, v [chunk, B, H_local, D]: this
    rank's Ulysses chunk of the (padded) image stream; returns the same layout."""
    router = ctx.router
    mask = JointMask(ctx.mask.video_tokens, ctx.mask.video_padding, 0, None, ctx.mask.grid)
    q, k, v = (router.seq_to_heads(t).transpose(0, 1).contiguous() for t in (q, k, v))  # [B, S, h, D], all chunks
    out = attention(q, k, v, mask, ctx.attention, ctx.head_ids).transpose(0, 1)
    return router.heads_to_seq(out)


class JointBlock(nn.Module):
    """cfg: an SD3Config; index: the block's position (dual attention, context_pre_only)."""

    def __init__(self, cfg, build, index: int):
        super().__init__()
        d, hd = cfg.hidden_size, cfg.attention_head_dim
        self.head_dim = hd
        self.qkv_widths = [d // build.tp] * 3
        self.dual = cfg.dual_attention(index)
        self.context_pre_only = cfg.context_pre_only(index)
        self.norm1 = Modulation(d, 9 if self.dual else 6, build)  # SD35AdaLayerNormZeroX / AdaLayerNormZero
        # AdaLayerNormContinuous (scale, shift) / AdaLayerNormZero
        self.norm1_context = Modulation(d, 2 if self.context_pre_only else 6, build)
        self.attn = nn.Module()
        self.attn.to_qkv = build.linear.column(d, 3 * d)
        self.attn.add_qkv = build.linear.column(d, 3 * d)
        _qk_norms(self.attn, ("norm_q", "norm_k", "norm_added_q", "norm_added_k"), hd, cfg.qk_norm, build.tp)
        self.attn.to_out = build.linear.partial_row(d, d)
        if not self.context_pre_only:
            self.attn.to_add_out = build.linear.partial_row(d, d)
        if self.dual:
            self.attn2 = nn.Module()
            self.attn2.to_qkv = build.linear.column(d, 3 * d)
            _qk_norms(self.attn2, ("norm_q", "norm_k"), hd, cfg.qk_norm, build.tp)
            self.attn2.to_out = build.linear.partial_row(d, d)
        self.ff = FeedForward(d, cfg.mlp_hidden, build, partial=True)
        if not self.context_pre_only:
            self.ff_context = FeedForward(d, cfg.mlp_hidden, build, partial=True)

    def forward(self, image, text, temb, tr_emb, ctx: ForwardContext):
        """image, text: this rank's pieces [S, B, D]; returns them updated (text as given
        when context_pre_only: nothing downstream reads it)."""
        mods = self.norm1(temb, ctx)
        shift, scale, gate, shift2, scale2, gate2 = mods[:6]
        a = self.attn
        q_i, k_i, v_i = qkv_heads(a.to_qkv.forward_split(modulate(image, shift, scale), self.qkv_widths),
                                  self.head_dim, a.norm_q, a.norm_k)
        if self.context_pre_only:
            c_scale, c_shift = self.norm1_context(temb, ctx)
        else:
            c_shift, c_scale, c_gate, c_shift2, c_scale2, c_gate2 = self.norm1_context(temb, ctx)
        q_t, k_t, v_t = qkv_heads(a.add_qkv.forward_split(modulate(text, c_shift, c_scale), self.qkv_widths),
                                  self.head_dim, a.norm_added_q, a.norm_added_k)
        out_i, out_t = ctx.attend(q_i, k_i, v_i, q_t, k_t, v_t)
        pairs = [(a.to_out, out_i.flatten(2))]
        if not self.context_pre_only:
            pairs.append((a.to_add_out, out_t.flatten(2)))
        if self.dual:  # from the block's input image stream, like the joint attention
            shift_a2, scale_a2, gate_a2 = mods[6:]
            b = self.attn2
            q, k, v = qkv_heads(b.to_qkv.forward_split(modulate(image, shift_a2, scale_a2), self.qkv_widths),
                                self.head_dim, b.norm_q, b.norm_k)
            pairs.append((b.to_out, image_attention(ctx, q, k, v).flatten(2)))
        projected = ctx.router.project(pairs)
        image = add_gated(image, projected[0], gate)
        if self.dual:
            image = add_gated(image, projected[-1], gate_a2)

        mlp_pairs = [(self.ff.fc2, gelu_tanh(self.ff.fc1(modulate(image, shift2, scale2))))]
        if not self.context_pre_only:
            text = add_gated(text, projected[1], c_gate)
            mlp_pairs.append((self.ff_context.fc2, gelu_tanh(self.ff_context.fc1(modulate(text, c_shift2, c_scale2)))))
        mlp = ctx.router.project(mlp_pairs)
        image = add_gated(image, mlp[0], gate2)
        if not self.context_pre_only:
            text = add_gated(text, mlp[1], c_gate2)
        return image, text
