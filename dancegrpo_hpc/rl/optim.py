"""Optimizer side of training: ZeRO-1 AdamW over the data-parallel ranks, gradient
reduction for DP x TP x Ulysses, global-norm clipping, LR warmup and EMA.

Why ZeRO-1 (torch's ZeroRedundancyOptimizer) rather than megatron-core's
distributed optimizer or FSDP2: a GRPO iteration runs T x (samples / micro-batch)
no-grad rollout forwards before each training pass. FSDP2 would all-gather every
block's weights for each of them (or keep them gathered, giving the memory back);
megatron-core's distributed optimizer needs its DDP grad buffers, which assume
CUDA and would fork the CPU and GPU paths. ZeRO-1 shards the largest state (AdamW
moments, 8 bytes per parameter) over the dp x ulysses group with one broadcast
per step, keeps the weights whole for sampling, and runs the same on gloo and nccl.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def _adamw_kwargs(params: List[torch.nn.Parameter]) -> Dict:
    # fused AdamW where torch has it for these tensors (CUDA; CPU float32/bf16 in recent torch),
    # else the foreach implementation
    if params and all(p.device.type in ("cuda", "cpu") for p in params):
        return {"fused": True}
    return {"foreach": True}


class MasterWeightAdamW(torch.optim.AdamW):
    """AdamW that updates float32 master copies of low-precision (bf16 / fp16)
    parameters and writes them back rounded. Updating bf16 weights in place loses
    every step smaller than half a bf16 ulp (2^-8 relative): at lr 1e-5 most weights
    of a bf16 DiT would never move. As Megatron's mixed-precision optimizer, but
    under ZeRO-1 the masters exist only for the parameters this rank's shard owns
    (ZeroRedundancyOptimizer builds its inner optimizer from that shard), so they
    cost 4 bytes per parameter / (dp x ulysses). float32 parameters are updated
    directly. The masters are part of state_dict(), so a resume continues them."""

    def __init__(self, params, **kwargs):
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self._model_params = [list(g["params"]) for g in groups]
        masters = [dict(g, params=[_master(p) for p in g["params"]]) for g in groups]
        super().__init__(masters, **kwargs)

    def _pairs(self):
        for group, model_params in zip(self.param_groups, self._model_params):
            for master, p in zip(group["params"], model_params):
                if master is not p:
                    yield master, p

    @torch.no_grad()
    def step(self, closure=None):
        for master, p in self._pairs():
            master.grad = None if p.grad is None else p.grad.float()
        loss = super().step(closure)
        for master, p in self._pairs():
            p.copy_(master)
            master.grad = None
        return loss

    def state_dict(self):
        state = super().state_dict()
        state["master_params"] = [m.detach().clone() for m, _ in self._pairs()]
        return state

    @torch.no_grad()
    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        masters = state_dict.pop("master_params", None)
        super().load_state_dict(state_dict)
        pairs = list(self._pairs())
        if masters is None:  # a checkpoint from before master weights: start them from the weights
            masters = [p.float() for _, p in pairs]
        if len(masters) != len(pairs):
            raise ValueError(f"optimizer state: {len(masters)} master weights for {len(pairs)} low-precision "
                             "parameters; the checkpoint was written with another model.dtype or layout")
        for (master, _), saved in zip(pairs, masters):
            master.copy_(saved)


def _master(p: torch.nn.Parameter) -> torch.nn.Parameter:
    if p.dtype in (torch.bfloat16, torch.float16):
        return torch.nn.Parameter(p.detach().float().clone(), requires_grad=p.requires_grad)
    return p


def build_optimizer(params: List[torch.nn.Parameter], *, lr: float, betas, eps: float, weight_decay: float,
                    group: Optional[dist.ProcessGroup], zero: bool) -> torch.optim.Optimizer:
    kwargs = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, **_adamw_kwargs(params))
    size = dist.get_world_size(group) if dist.is_initialized() else 1
    if zero and size > 1:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(params, optimizer_class=MasterWeightAdamW, process_group=group, **kwargs)
    return MasterWeightAdamW(params, **kwargs)


def local_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer holding this rank's state (ZeRO's local shard, or the optimizer itself)."""
    return getattr(optimizer, "optim", optimizer)


def warmup_schedule(optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup_steps)))


def reduce_gradients(params: List[torch.nn.Parameter], model, dp_group: Optional[dist.ProcessGroup]) -> None:
    """Sum over the data-parallel x Ulysses group (Ulysses ranks hold partial sums over
    their sequence pieces), then sum TP-partial grads over the TP group. The loss is
    already scaled by 1 / global sample count, so sums give the global mean."""
    grads = [p.grad for p in params if p.grad is not None]
    if dist.is_initialized() and dp_group is not None and dist.get_world_size(dp_group) > 1 and grads:
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat, group=dp_group)
        for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(reduced)
    from ..distributed.grads import allreduce_tp_partial_grads

    allreduce_tp_partial_grads(model)


def global_grad_norm(params: List[torch.nn.Parameter], sharded: List[bool],
                     tp_group: Optional[dist.ProcessGroup]) -> torch.Tensor:
    """L2 norm over the whole model: TP-sharded parameters (sharded[i]) summed over the
    TP group, replicated ones counted once."""
    device = params[0].device
    split_sq = torch.zeros((), dtype=torch.float32, device=device)
    replicated = torch.zeros((), dtype=torch.float32, device=device)
    for p, split in zip(params, sharded):
        if p.grad is None:
            continue
        sq = p.grad.detach().float().pow(2).sum()
        if split:
            split_sq += sq
        else:
            replicated += sq
    if tp_group is not None and dist.is_initialized() and dist.get_world_size(tp_group) > 1:
        dist.all_reduce(split_sq, group=tp_group)
    return (split_sq + replicated).sqrt()


def clip_gradients(params: List[torch.nn.Parameter], norm: torch.Tensor, max_norm: float) -> None:
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for p in params:
        if p.grad is not None:
            p.grad.mul_(coef.to(p.grad.dtype))


class EMA:
    """Exponential moving average of this rank's parameter shards, kept in float32."""

    def __init__(self, params: List[torch.nn.Parameter], decay: float):
        self.decay = decay
        self.params = params
        self.shadow = [p.detach().float().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().float(), 1.0 - self.decay)

    def state(self, names: List[str]) -> Dict[str, torch.Tensor]:
        return {n: s for n, s in zip(names, self.shadow)}

    def load(self, state: Dict[str, torch.Tensor], names: List[str]) -> None:
        for i, n in enumerate(names):
            self.shadow[i].copy_(state[n])

    @torch.no_grad()
    def swap(self) -> None:
        """Exchanges model weights and EMA weights (call twice to restore)."""
        for s, p in zip(self.shadow, self.params):
            tmp = p.detach().float().clone()
            p.copy_(s.to(p.dtype))
            s.copy_(tmp)


def is_finite(value: torch.Tensor) -> bool:
    return bool(torch.isfinite(value).all()) and not math.isnan(float(value))
