"""Transformer blocks of the joint-attention DiTs (HunyuanVideo, FLUX): dual-stream
(separate video / image and text weights, joint attention) and single-stream (one set
of weights over the joint sequence, attention and MLP in parallel).

Tensor parallel plan (megatron-core linears): q/k/v (fused), add_q/k/v (fused), MLP
fc1 and the single block's [q | k | v | mlp-in] (fused) are column-parallel; the
output projections and MLP fc2 are row-parallel. In a dual-stream block the video
and text partial sums of each half are reduced together (one collective per half);
the single block's output projection is a packed [attention | mlp] row split, one
collective per block. Communication goes through ctx.router; the blocks are math.

The joint sequence is [video | video padding | text] whatever order a family's
reference model uses: with RoPE per token and no positional dependence elsewhere,
attention does not depend on the order of its keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...attention import AttentionConfig, JointMask, attention
from ...distributed.sequence import TokenRouter, deinterleave, interleave
from .layers import RMSNorm, add_gated, apply_rope, gelu_tanh, modulate


@dataclass
class ForwardContext:
    """What the blocks need to know about one forward pass."""

    router: TokenRouter
    mask: JointMask
    attention: AttentionConfig
    rope: torch.Tensor  # rotations [video chunk, head_dim / 2] (complex) for this rank's Ulysses chunk
    video_chunk: int  # video tokens in this rank's Ulysses chunk (padded stream / ulysses)
    text_chunk: int
    head_ids: torch.Tensor  # global indices of the heads attended on this rank
    first_frame: Optional[torch.Tensor] = None  # [video piece] bool, token_replace only
    text_rope: Optional[torch.Tensor] = None  # rotations [text chunk, head_dim / 2] (FLUX); None: text not rotated

    def attend(self, q_v, k_v, v_v, q_t, k_t, v_t) -> Tuple[torch.Tensor, torch.Tensor]:
        """Joint attention. Inputs [chunk, B, H_local, D] (this rank's Ulysses chunk of
        each stream, its TP heads); returns the video and text outputs, same layout."""
        return self._from_canonical(self._attention(q_v, k_v, v_v, q_t, k_t, v_t))

    def attend_joint(self, q_v, k_v, v_v, q_t, k_t, v_t) -> torch.Tensor:
        """Joint attention returning [video; text] in the order a column-parallel gather
        produced them (what a single block's packed output projection consumes)."""
        out = self._attention(q_v, k_v, v_v, q_t, k_t, v_t)
        if self.router.ulysses == 1 and self.router.gather_groups == 1:
            return out  # already [video; text]
        return interleave(list(self._from_canonical(out)), self.router.gather_groups)

    def _attention(self, q_v, k_v, v_v, q_t, k_t, v_t) -> torch.Tensor:
        q, k, v = (self._to_canonical(a, b) for a, b in ((q_v, q_t), (k_v, k_t), (v_v, v_t)))
        return attention(q, k, v, self.mask, self.attention, self.head_ids).transpose(0, 1)

    def _to_canonical(self, video, text) -> torch.Tensor:
        """This rank's chunks -> [B, S, h, D] over the whole [video | padding | text] sequence,
        batch-first in memory (CPU SDPA runs ~10% slower on sequence-first strides)."""
        u = self.router.ulysses
        if u > 1:
            joint = self.router.seq_to_heads(torch.cat([video, text], dim=0))
            parts = deinterleave(joint, [self.video_chunk, self.text_chunk], u)
        else:
            parts = [video, text]
        return torch.cat([p.transpose(0, 1) for p in parts], dim=1)

    def _from_canonical(self, out) -> Tuple[torch.Tensor, torch.Tensor]:
        """[S, B, h, D] canonical -> this rank's (video chunk, text chunk), all local heads."""
        u = self.router.ulysses
        if u > 1:
            video, text = out.split([self.mask.video_span, self.mask.text_tokens], dim=0)
            out = self.router.heads_to_seq(interleave([video, text], u))
        out_v, out_t = out.split([self.video_chunk, self.text_chunk], dim=0)
        return out_v, out_t

    def per_token(self, first_frame_value: Optional[torch.Tensor], value: torch.Tensor) -> torch.Tensor:
        """Token replace: first-frame video tokens take their own modulation."""
        if first_frame_value is None:
            return value
        return torch.where(self.first_frame[:, None, None], first_frame_value.unsqueeze(0), value.unsqueeze(0))


class Modulation(nn.Module):
    """AdaLN modulation: linear(silu(emb)) split into `chunks` [B, D] vectors. The
    linear is replicated, or column-parallel with a gathered output (adaln="column")."""

    def __init__(self, dim: int, chunks: int, build):
        super().__init__()
        self.chunks = chunks
        if build.adaln == "column":
            self.linear = build.plain.column(dim, chunks * dim, gather_output=True)
        else:
            self.linear = nn.Linear(dim, chunks * dim)

    def forward(self, emb: torch.Tensor, ctx: ForwardContext) -> List[torch.Tensor]:
        out = ctx.router.sync_replicated(self.linear(F.silu(emb)))
        return list(out.chunk(self.chunks, dim=-1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, build, partial: bool):
        super().__init__()
        factory = build.linear if partial else build.plain
        self.fc1 = factory.column(dim, hidden)
        self.fc2 = build.linear.partial_row(hidden, dim) if partial else build.plain.row(hidden, dim)


def heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    return x.unflatten(-1, (-1, head_dim))


def qkv_heads(qkv, head_dim: int, norm_q: nn.Module, norm_k: nn.Module, rope=None):
    """q, k, v projections [S, B, H * D] (this rank's heads) -> normed, rotated [S, B, H, D]."""
    q, k, v = (heads(t, head_dim) for t in qkv)
    q, k = norm_q(q), norm_k(k)
    if rope is not None:
        q, k = apply_rope(q, rope), apply_rope(k, rope)
    return q, k, v


def mark_tp_partial(module: nn.Module, tp: int) -> None:
    """Replicated weights that only see this rank's heads get partial gradients over
    the TP group; megatron's `sequence_parallel` flag marks such parameters."""
    if tp > 1:
        for p in module.parameters():
            setattr(p, "sequence_parallel", True)


class DualStreamBlock(nn.Module):
    """cfg: hidden_size, attention_head_dim, mlp_hidden. token_replace: first-frame video
    tokens take the modulation of timestep 0 (HunyuanVideo-I2V)."""

    def __init__(self, cfg, build, token_replace: bool = False):
        super().__init__()
        d, hd = cfg.hidden_size, cfg.attention_head_dim
        self.head_dim = hd
        self.qkv_widths = [d // build.tp] * 3
        self.token_replace = token_replace
        self.norm1 = Modulation(d, 6, build)
        self.norm1_context = Modulation(d, 6, build)
        self.attn = nn.Module()
        self.attn.to_qkv = build.linear.column(d, 3 * d)
        self.attn.add_qkv = build.linear.column(d, 3 * d)
        for name in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            norm = RMSNorm(hd)
            mark_tp_partial(norm, build.tp)
            setattr(self.attn, name, norm)
        self.attn.to_out = build.linear.partial_row(d, d)
        self.attn.to_add_out = build.linear.partial_row(d, d)
        self.ff = FeedForward(d, cfg.mlp_hidden, build, partial=True)
        self.ff_context = FeedForward(d, cfg.mlp_hidden, build, partial=True)

    def _video_mods(self, temb, tr_emb, ctx):
        mods = self.norm1(temb, ctx)
        if not self.token_replace:
            return mods
        tr = self.norm1(tr_emb, ctx)
        return [ctx.per_token(a, b) for a, b in zip(tr, mods)]

    def forward(self, video, text, temb, tr_emb, ctx: ForwardContext):
        shift, scale, gate, shift2, scale2, gate2 = self._video_mods(temb, tr_emb, ctx)
        c_shift, c_scale, c_gate, c_shift2, c_scale2, c_gate2 = self.norm1_context(temb, ctx)
        a = self.attn
        q_v, k_v, v_v = qkv_heads(a.to_qkv.forward_split(modulate(video, shift, scale), self.qkv_widths), self.head_dim,
                                  a.norm_q, a.norm_k, ctx.rope)
        q_t, k_t, v_t = qkv_heads(a.add_qkv.forward_split(modulate(text, c_shift, c_scale), self.qkv_widths),
                                  self.head_dim, a.norm_added_q, a.norm_added_k, ctx.text_rope)
        out_v, out_t = ctx.attend(q_v, k_v, v_v, q_t, k_t, v_t)
        attn_v, attn_t = ctx.router.project([(a.to_out, out_v.flatten(2)), (a.to_add_out, out_t.flatten(2))])
        video, text = add_gated(video, attn_v, gate), add_gated(text, attn_t, c_gate)

        h_v = gelu_tanh(self.ff.fc1(modulate(video, shift2, scale2)))
        h_t = gelu_tanh(self.ff_context.fc1(modulate(text, c_shift2, c_scale2)))
        mlp_v, mlp_t = ctx.router.project([(self.ff.fc2, h_v), (self.ff_context.fc2, h_t)])
        return add_gated(video, mlp_v, gate2), add_gated(text, mlp_t, c_gate2)


class SingleStreamBlock(nn.Module):
    """One set of weights over the joint sequence; attention and MLP in parallel."""

    def __init__(self, cfg, build, token_replace: bool = False):
        super().__init__()
        d, hd = cfg.hidden_size, cfg.attention_head_dim
        self.head_dim = hd
        self.token_replace = token_replace
        self.widths = [d // build.tp] * 3 + [cfg.mlp_hidden // build.tp]  # this rank's q, k, v and mlp-in columns
        self.norm = Modulation(d, 3, build)
        self.qkv_mlp = build.linear.column(d, 3 * d + cfg.mlp_hidden)
        self.attn = nn.Module()
        self.attn.norm_q, self.attn.norm_k = RMSNorm(hd), RMSNorm(hd)
        mark_tp_partial(self.attn, build.tp)
        self.proj_out = build.linear.row(d + cfg.mlp_hidden, d)

    def forward(self, video, text, temb, tr_emb, ctx: ForwardContext):
        shift, scale, gate = self.norm(temb, ctx)
        n_video = video.shape[0]
        if self.token_replace:
            tr_shift, tr_scale, tr_gate = self.norm(tr_emb, ctx)
            normed = torch.cat([modulate(video, ctx.per_token(tr_shift, shift), ctx.per_token(tr_scale, scale)),
                                modulate(text, shift, scale)], dim=0)
        else:
            normed = modulate(torch.cat([video, text], dim=0), shift, scale)
        *qkv, mlp = self.qkv_mlp.forward_split(normed, self.widths)  # gathered [v_0, t_0, v_1, t_1, ...] under SP
        sizes, groups = [n_video, text.shape[0]], ctx.router.gather_groups
        video_qkv, text_qkv = zip(*(deinterleave(t, sizes, groups) for t in qkv))
        q_v, k_v, v_v = qkv_heads(video_qkv, self.head_dim, self.attn.norm_q, self.attn.norm_k, ctx.rope)
        q_t, k_t, v_t = qkv_heads(text_qkv, self.head_dim, self.attn.norm_q, self.attn.norm_k, ctx.text_rope)
        attn = ctx.attend_joint(q_v, k_v, v_v, q_t, k_t, v_t).flatten(2)
        out = self.proj_out(torch.cat([attn, gelu_tanh(mlp)], dim=-1))
        out_v, out_t = out.split([n_video, text.shape[0]], dim=0)
        gate_v = ctx.per_token(tr_gate, gate) if self.token_replace else gate
        return add_gated(video, out_v, gate_v), add_gated(text, out_t, gate)
