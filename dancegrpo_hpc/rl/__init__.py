"""GRPO mathematics: group advantages, multi-reward aggregation,
best-of-N selection, timestep selection and the clipped surrogate loss."""

from .advantages import (
    ADVANTAGE_MODES,
    best_of_n_indices,
    clamp_advantages,
    combine_advantages,
    group_advantages,
    zero_variance_mask,
)
from .loss import grpo_loss, kl_penalty
from .timesteps import SELECTION_MODES, TimestepSelector, num_train_timesteps, select_timesteps

__all__ = [
    "ADVANTAGE_MODES", "group_advantages", "zero_variance_mask", "combine_advantages",
    "best_of_n_indices", "clamp_advantages", "grpo_loss", "kl_penalty",
    "SELECTION_MODES", "TimestepSelector", "num_train_timesteps", "select_timesteps",
]
