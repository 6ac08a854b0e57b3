"""Moving token sequences between ranks: sharding, gathering, fused reductions and
the Ulysses all-to-all. The collectives are megatron-core's mappings; this module
only arranges the data around them.

Layout. A block sees two streams, video and text, each [S, B, D] (sequence-first).
Between blocks every rank holds one piece of each stream: piece index
`ulysses_rank * tp + tp_rank` under Megatron sequence parallelism (SP), else
`ulysses_rank`. A collective over g ranks that gathers the pieces [v_r ; t_r] of
both streams returns them rank by rank, [v_0, t_0, v_1, t_1, ...];
`interleave` / `deinterleave` convert between that order and whole streams.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import mappings

from .parallel import ParallelContext


def interleave(parts: Sequence[torch.Tensor], groups: int) -> torch.Tensor:
    """Streams [g*n_i, ...] -> one tensor ordered [part pieces of rank 0, of rank 1, ...]."""
    if groups == 1:
        return torch.cat(list(parts), dim=0)
    return torch.cat([p.reshape(groups, -1, *p.shape[1:]) for p in parts], dim=1).flatten(0, 1)


def deinterleave(x: torch.Tensor, sizes: Sequence[int], groups: int) -> List[torch.Tensor]:
    """Inverse of interleave: sizes are the per-rank piece lengths of each stream."""
    if groups == 1:
        return list(x.split(list(sizes), dim=0))
    per_rank = x.reshape(groups, sum(sizes), *x.shape[1:])
    return [piece.flatten(0, 1) for piece in per_rank.split(list(sizes), dim=1)]


class TokenRouter:
    """The collectives of one model replica (TP group, SP flag, Ulysses group)."""

    def __init__(self, ctx: ParallelContext):
        self.ctx = ctx
        self.tp = ctx.layout.tp
        self.sp = ctx.layout.sequence_parallel
        self.ulysses = ctx.layout.ulysses

    # ---- entering and leaving the sharded region -----------------------------------------
    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """Full stream [S, B, D] (replicated on all ranks) -> this rank's piece. Ulysses pieces
        are plain slices (their gradients are partial sums, reduced with data parallelism);
        the SP split is megatron's scatter, whose backward gathers."""
        if self.ulysses > 1:
            x = x.chunk(self.ulysses, dim=0)[self.ctx.ulysses_rank]
        if self.sp:
            x = mappings.scatter_to_sequence_parallel_region(x, group=self.ctx.tp_group)
        return x

    def unshard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's piece -> the full stream on every rank (backward: take the piece)."""
        if self.sp:
            x = mappings.gather_from_sequence_parallel_region(x, tensor_parallel_output_grad=False, group=self.ctx.tp_group)
        if self.ulysses > 1:
            x = mappings.gather_from_sequence_parallel_region(x, tensor_parallel_output_grad=False,
                                                              group=self.ctx.ulysses_group)
        return x

    def sync_replicated(self, x: torch.Tensor) -> torch.Tensor:
        """For a tensor computed identically on every TP rank but consumed by sequence
        pieces (e.g. AdaLN modulation under SP): its gradient is summed over the TP group."""
        if self.sp:
            return mappings.copy_to_tensor_model_parallel_region(x, group=self.ctx.tp_group)
        return x

    # ---- row-parallel outputs ----------------------------------------------------------
    @property
    def gather_groups(self) -> int:
        """How many pieces a column-parallel linear's (SP) gather puts side by side."""
        return self.tp if self.sp else 1

    def project(self, pairs: Sequence[Tuple[torch.nn.Module, torch.Tensor]]) -> List[torch.Tensor]:
        """Row-parallel projections (layer, input) reduced in one collective (e.g. the
        video and text output projections of a dual-stream block): their partial sums
        are all-reduced together, or reduce-scattered back to this rank's pieces under
        SP, then the biases are added. Inputs are whole Ulysses-chunk streams. With one
        TP rank it is a plain linear with fused bias."""
        if self.tp == 1:  # a layer that adds a term of its own (LoRA, distributed/lora.py) does so in partial()
            return [layer.partial(x) + layer.bias if getattr(layer, "extends_partial", False)
                    else F.linear(x, layer.weight, layer.bias) for layer, x in pairs]
        partials = [layer.partial(x) for layer, x in pairs]
        sizes = [p.shape[0] // self.gather_groups for p in partials]
        joint = interleave(partials, self.gather_groups)
        if self.sp:
            joint = mappings.reduce_scatter_to_sequence_parallel_region(joint, group=self.ctx.tp_group)
        else:
            joint = mappings.reduce_from_tensor_model_parallel_region(joint, group=self.ctx.tp_group)
        return [out + layer.bias for out, (layer, _) in zip(joint.split(sizes, dim=0), pairs)]

    # ---- Ulysses ------------------------------------------------------------------------
    def seq_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[S_c, B, H, D] (this rank's sequence chunk, all local heads) ->
        [u * S_c, B, H / u, D] (chunks of every rank, rank by rank; a 1/u share of the heads)."""
        u = self.ulysses
        if u == 1:
            return x
        s, b, h, d = x.shape
        send = x.reshape(s, b, u, h // u, d).permute(2, 0, 1, 3, 4).reshape(u * s, b, h // u, d)
        return mappings.all_to_all(self.ctx.ulysses_group, send)

    def heads_to_seq(self, y: torch.Tensor) -> torch.Tensor:
        """Inverse of seq_to_heads."""
        u = self.ulysses
        if u == 1:
            return y
        n, b, h, d = y.shape
        got = mappings.all_to_all(self.ctx.ulysses_group, y.contiguous())
        return got.reshape(u, n // u, b, h, d).permute(1, 2, 0, 3, 4).reshape(n // u, b, u * h, d)


def padded_length(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_tokens(x: torch.Tensor, length: int) -> torch.Tensor:
    """[S, B, D] -> [length, B, D] with zero tokens appended."""
    if x.shape[0] == length:
        return x
    return torch.cat([x, x.new_zeros(length - x.shape[0], *x.shape[1:])], dim=0)

