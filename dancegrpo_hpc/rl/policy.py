"""The policy's velocity: the model under its conditioning (through its family's adapter,
models/family.py), optional real CFG and embedded guidance. The same function serves
rollout and training, so recomputed log-probs match the rollout's exactly."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Optional

import torch

from ..conditioning import Conditioning, cat
from ..models.family import family_of


@dataclass(frozen=True)
class VelocityOptions:
    cfg_scale: float = 1.0
    guidance: Optional[float] = None  # embedded guidance scale, in the family's units (HunyuanVideo: x1000 in)
    autocast: Optional[torch.dtype] = None
    train_uncond: bool = True  # under CFG in training: gradients through the unconditional branch too

    def with_(self, **changes) -> "VelocityOptions":
        return replace(self, **changes)


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _forward(model, x, sigma, cond: Conditioning, opts: VelocityOptions) -> torch.Tensor:
    with _autocast(x.device, opts.autocast):
        return family_of(model).velocity(model, x, sigma, cond, opts.guidance)


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
        both = _forward(model, torch.cat([x, x]), torch.cat([sigma, sigma]), cat(cond, cond.negative), opts)
        c, u = both.chunk(2)
    else:
        c = _forward(model, x, sigma, cond, opts)
        with torch.no_grad():
            u = _forward(model, x, sigma, cond.negative, opts)
    return u + opts.cfg_scale * (c - u)
