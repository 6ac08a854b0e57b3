"""Group-relative advantages and reward selection for GRPO.

Rewards are flat [N] tensors laid out group by group: samples g*G .. g*G+G-1 share
one prompt (and one initial noise), G = group_size.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import torch

from ..checks import check_choice, check_positive, require

ADVANTAGE_MODES = ("group", "global_std")


def _groups(where: str, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    require(isinstance(rewards, torch.Tensor) and rewards.dim() == 1,
            f"{where}: rewards must be a 1-D tensor [num_groups * group_size]; got "
            f"{tuple(rewards.shape) if isinstance(rewards, torch.Tensor) else type(rewards).__name__}")
    require(isinstance(group_size, int) and group_size >= 2,
            f"{where}: group_size must be an int >= 2 (GRPO compares samples within a group); got {group_size!r}")
    require(rewards.numel() % group_size == 0,
            f"{where}: {rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-8, mode: str = "group") -> torch.Tensor:
    """(r - group mean) / (std + eps).

    mode "group": std of each group, unbiased (DanceGRPO: torch.std of the group).
    mode "global_std": population std of the whole batch (Flow-GRPO's global_std,
    numpy std; use eps=1e-4 as Flow-GRPO does). Mean is per group in both modes.
    """
    check_choice("group_advantages", "mode", mode, ADVANTAGE_MODES)
    groups = _groups("group_advantages", rewards, group_size).float()
    centred = groups - groups.mean(dim=1, keepdim=True)
    if mode == "group":
        std = groups.std(dim=1, keepdim=True)
    else:
        std = groups.std(correction=0)
    return (centred / (std + eps)).view(-1)


def zero_variance_mask(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N] bool, True for samples whose group's rewards are all equal: they carry no
    learning signal (zero advantage) and Flow-GRPO drops them."""
    groups = _groups("zero_variance_mask", rewards, group_size)
    flat = (groups == groups[:, :1]).all(dim=1, keepdim=True)
    return flat.expand_as(groups).reshape(-1)


def combine_advantages(
    rewards: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    group_size: int,
    eps: float = 1e-8,
    mode: str = "group",
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Multi-reward GRPO: one group-normalised advantage per reward model, then their
    weighted sum (DanceGRPO's VQ/MQ coefficients). Returns (total, per_reward)."""
    require(len(rewards) > 0, "combine_advantages: rewards is empty; give at least one reward model's scores")
    missing = [k for k in weights if k not in rewards]
    require(not missing, f"combine_advantages: weights name rewards that were not computed: {missing}; "
                         f"computed: {sorted(rewards)}")
    unweighted = [k for k in rewards if k not in weights]
    require(not unweighted, f"combine_advantages: no weight given for rewards {unweighted}; set a weight (0 to ignore)")
    sizes = {k: v.numel() for k, v in rewards.items()}
    require(len(set(sizes.values())) == 1, f"combine_advantages: reward tensors differ in length: {sizes}")
    per_reward = {k: group_advantages(r, group_size, eps, mode) for k, r in rewards.items()}
    total = sum(weights[k] * adv for k, adv in per_reward.items())
    return total, per_reward


def best_of_n_indices(rewards: torch.Tensor, group_size: int, keep: int) -> torch.Tensor:
    """Indices (into the flat batch, ascending) of the samples best-of-N keeps: in each
    group the keep/2 highest and keep/2 lowest rewards. Compute advantages over all
    N samples first, then train on these."""
    groups = _groups("best_of_n_indices", rewards, group_size)
    require(isinstance(keep, int) and keep >= 2 and keep % 2 == 0 and keep <= group_size,
            f"best_of_n_indices: keep must be an even int in [2, group_size={group_size}]; got {keep!r}")
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices
    half = keep // 2
    chosen = torch.cat([order[:, :half], order[:, group_size - half:]], dim=1)
    offsets = torch.arange(groups.shape[0], device=rewards.device).view(-1, 1) * group_size
    return (chosen + offsets).reshape(-1).sort().values


def clamp_advantages(advantages: torch.Tensor, max_abs: Optional[float]) -> torch.Tensor:
    if max_abs is None:
        return advantages
    check_positive("clamp_advantages", "max_abs", max_abs)
    return advantages.clamp(-max_abs, max_abs)


def process_advantages(process_scores: torch.Tensor, group_size: int, eps: float = 1e-8) -> torch.Tensor:
    """Euphonium's per-step process advantages [N, T] from process-reward scores of the
    states x_0..x_T ([N, T+1]): step t is credited with the score of the state it
    produced (x_{t+1}), normalised within the group at the same step (unbiased std,
    as group_advantages)."""
    require(isinstance(process_scores, torch.Tensor) and process_scores.dim() == 2 and process_scores.shape[1] >= 2,
            "process_advantages: process_scores must be [N, T+1] (one score per state)")
    n, steps = process_scores.shape[0], process_scores.shape[1] - 1
    # step-major [T * N]: each step's N scores still lie group by group
    produced = process_scores[:, 1:].float().t().reshape(-1)
    return group_advantages(produced, group_size, eps).view(steps, n).t().contiguous()
