"""The policy's velocity: the DiT under its conditioning, optional real CFG and
embedded guidance. The same function serves rollout and training, so recomputed
log-probs match the rollout's exactly."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Optional

import torch


@dataclass
class Conditioning:
    """Text conditioning per sample: embeds [N, L, D], mask [N, L], pooled [N, P];
    `negative` holds the unconditional branch for real CFG."""

    embeds: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    negative: Optional["Conditioning"] = None

    def select(self, index) -> "Conditioning":
        neg = self.negative.select(index) if self.negative is not None else None
        return Conditioning(self.embeds[index], self.mask[index], self.pooled[index], neg)

    def to(self, device) -> "Conditioning":
        neg = self.negative.to(device) if self.negative is not None else None
        return Conditioning(self.embeds.to(device), self.mask.to(device), self.pooled.to(device), neg)

    def __len__(self) -> int:
        return self.embeds.shape[0]


def _cat(a: Conditioning, b: Conditioning) -> Conditioning:
    return Conditioning(torch.cat([a.embeds, b.embeds]), torch.cat([a.mask, b.mask]), torch.cat([a.pooled, b.pooled]))


@dataclass(frozen=True)
class VelocityOptions:
    cfg_scale: float = 1.0
    guidance: Optional[float] = None  # embedded guidance scale (the DiT gets guidance * 1000)
    autocast: Optional[torch.dtype] = None
    train_uncond: bool = True  # under CFG in training: gradients through the unconditional branch too

    def with_(self, **changes) -> "VelocityOptions":
        return replace(self, **changes)


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _forward(model, x, sigma, cond: Conditioning, opts: VelocityOptions) -> torch.Tensor:
    dtype = next(model.parameters()).dtype
    timestep = (sigma.to(torch.float32) * 1000.0).to(x.device)
    guidance = None
    if opts.guidance is not None:
        guidance = torch.full((x.shape[0],), opts.guidance * 1000.0, device=x.device, dtype=torch.float32)
    with _autocast(x.device, opts.autocast):
        out = model(x.to(dtype), timestep, cond.embeds.to(dtype), cond.mask, cond.pooled.to(dtype), guidance)
    return out.float()


def velocity(model, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, opts: VelocityOptions) -> torch.Tensor:
    """Model velocity at x [B, C, F, H, W], sigma [B]; float32.

    With cfg_scale > 1: uncond + s * (cond - uncond). Cond and uncond run as one
    batch when both need gradients (or none does); with train_uncond=False the
    unconditional branch runs without autograd (same value, no gradient through it)."""
    if opts.cfg_scale == 1.0:
        return _forward(model, x, sigma, cond, opts)
    if cond.negative is None:
        raise ValueError("velocity: cfg_scale > 1 needs unconditional conditioning (Conditioning.negative)")
    if opts.train_uncond or not torch.is_grad_enabled():
        both = _forward(model, torch.cat([x, x]), torch.cat([sigma, sigma]), _cat(cond, cond.negative), opts)
        c, u = both.chunk(2)
    else:
        c = _forward(model, x, sigma, cond, opts)
        with torch.no_grad():
            u = _forward(model, x, sigma, cond.negative, opts)
    return u + opts.cfg_scale * (c - u)
