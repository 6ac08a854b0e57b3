"""Gradient reductions a tensor/sequence-parallel model needs after backward.

- Replicated parameters whose inputs are split over the TP group (sequence-parallel
  pieces, or one rank's attention heads for qk-norm) hold partial gradients: they
  carry megatron's `sequence_parallel` flag and are summed over the TP group
  (megatron's finalize_model_grads does the same for its models).
- Under Ulysses every parameter sees only this rank's part of the sequence: all
  gradients are summed over the Ulysses group. In training that sum is part of the
  data-parallel reduction (megatron's dp x cp group); tests call it directly.
"""

from __future__ import annotations

import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def _allreduce(grads, group) -> None:
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat, group=group)
    for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(reduced)


def allreduce_tp_partial_grads(model) -> None:
    ctx = model.ctx
    if ctx.layout.tp == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None and getattr(p, "sequence_parallel", False)]
    _allreduce(grads, ctx.tp_group)


def allreduce_ulysses_grads(model) -> None:
    ctx = model.ctx
    if ctx.layout.ulysses == 1:
        return
    _allreduce([p.grad for p in model.parameters() if p.grad is not None], ctx.ulysses_group)
