"""The GRPO clipped surrogate loss (DanceGRPO / Flow-GRPO) and Flow-GRPO's KL term."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from ..checks import check_positive, require
from .advantages import clamp_advantages


def grpo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    adv_clip_max: Optional[float],
    kl: Optional[torch.Tensor] = None,
    kl_coef: float = 0.0,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """mean_b max(-A_b r_b, -A_b clip(r_b, 1 - c, 1 + c)) [+ kl_coef * mean_b kl_b],
    r_b = exp(log_prob_b - old_log_prob_b), A clamped to +-adv_clip_max.

    A mean over the batch; the trainer scales it by 1 / (grad_accum * trained
    timesteps) as DanceGRPO does. Returns (loss, stats) with detached scalar stats:
    policy_loss, kl, clip_fraction, approx_kl (0.5 E[(log r)^2]), ratio_mean, ratio_max.
    """
    require(log_prob.dim() == 1, f"grpo_loss: log_prob must be 1-D [B]; got {tuple(log_prob.shape)}")
    for name, t in (("old_log_prob", old_log_prob), ("advantages", advantages)):
        require(t.shape == log_prob.shape, f"grpo_loss: {name} shape {tuple(t.shape)} must equal log_prob shape {tuple(log_prob.shape)}")
    check_positive("grpo_loss", "clip_range", clip_range)
    adv = clamp_advantages(advantages.to(log_prob.dtype), adv_clip_max)
    log_ratio = log_prob - old_log_prob.detach()
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    policy_loss = torch.maximum(unclipped, clipped).mean()
    loss = policy_loss
    kl_mean = torch.zeros((), dtype=log_prob.dtype, device=log_prob.device)
    if kl is not None:
        require(kl.shape == log_prob.shape, f"grpo_loss: kl shape {tuple(kl.shape)} must equal log_prob shape {tuple(log_prob.shape)}")
        kl_mean = kl.mean()
        loss = loss + kl_coef * kl_mean
    with torch.no_grad():
        stats = {
            "policy_loss": policy_loss.detach(),
            "kl": kl_mean.detach(),
            "clip_fraction": ((ratio - 1.0).abs() > clip_range).float().mean(),
            "approx_kl": 0.5 * (log_ratio**2).mean(),
            "ratio_mean": ratio.mean(),
            "ratio_max": ratio.max(),
        }
    return loss, stats


def kl_penalty(mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Flow-GRPO's per-sample KL between the policy's and the reference model's
    Gaussian transitions (same std): mean over elements of (mean - mean_ref)^2, over 2 std^2."""
    require(mean.shape == mean_ref.shape, f"kl_penalty: mean shape {tuple(mean.shape)} != mean_ref shape {tuple(mean_ref.shape)}")
    sq = ((mean - mean_ref) ** 2).mean(dim=tuple(range(1, mean.dim())))
    return sq / (2 * std.to(sq.dtype) ** 2)
