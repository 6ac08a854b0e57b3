"""From per-reward scores of a rollout to per-sample advantages and the samples kept.

Runs on the global batch (every data-parallel rank's scores gathered), so both
advantage modes and best-of-N see exactly what a single-rank run would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping

import torch

from .advantages import best_of_n_indices, combine_advantages, zero_variance_mask


@dataclass
class Assignment:
    advantages: torch.Tensor  # [N] float32 (0 where not kept)
    keep: torch.Tensor  # [N] bool: trained on
    reward_total: torch.Tensor  # [N] weighted mean of the rewards (NaN for failed samples)
    dropped_groups: int  # groups dropped for a failed / NaN reward
    zero_variance_groups: int  # groups dropped because every sample scored the same (flow_grpo)


def assign_advantages(scores: Mapping[str, torch.Tensor], failed: torch.Tensor, weights: Mapping[str, float],
                      group_size: int, algorithm: str, best_of_n: int) -> Assignment:
    n = failed.numel()
    groups = n // group_size
    total_weight = sum(weights.values())
    reward_total = sum(weights[k] * scores[k].float() for k in weights) / total_weight
    bad_group = failed.view(groups, group_size).any(dim=1)
    keep_group = ~bad_group
    zero_var = 0
    if algorithm == "flow_grpo" and keep_group.any():
        flat = torch.zeros(groups, dtype=torch.bool)
        flat[keep_group] = zero_variance_mask(reward_total[keep_group.repeat_interleave(group_size)], group_size)[::group_size]
        zero_var = int(flat.sum())
        keep_group &= ~flat
    advantages = torch.zeros(n, dtype=torch.float32)
    keep = keep_group.repeat_interleave(group_size)
    if keep_group.any():
        mode, eps = ("global_std", 1e-4) if algorithm == "flow_grpo" else ("group", 1e-8)
        kept_scores: Dict[str, torch.Tensor] = {k: scores[k].float()[keep] for k in weights}
        adv, _ = combine_advantages(kept_scores, weights, group_size, eps=eps, mode=mode)
        advantages[keep] = adv.float()
        if best_of_n:
            chosen = best_of_n_indices(reward_total[keep], group_size, best_of_n)
            kept_idx = torch.nonzero(keep).flatten()
            keep = torch.zeros(n, dtype=torch.bool)
            keep[kept_idx[chosen]] = True
            advantages[~keep] = 0.0
    return Assignment(advantages, keep, reward_total, int(bad_group.sum()), zero_var)
