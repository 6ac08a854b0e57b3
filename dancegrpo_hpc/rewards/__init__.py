"""Rewards: the reward interface, the name -> factory registry (toy rewards are
registered on first use, the real reward models of builtin.py on import, without
importing transformers) and the asynchronous runner that scores rollout batches
while the sampler keeps going."""

from .base import BinaryReward, FunctionReward, Reward, RewardSpec
from .registry import (
    build_rewards,
    function_reward_factory,
    known_rewards,
    register_reward,
    unregister_reward,
)
from .runner import AsyncRewardRunner, RewardResults, group_failures
from .builtin import register_builtin_rewards

register_builtin_rewards()

__all__ = [
    "Reward", "RewardSpec", "BinaryReward", "FunctionReward",
    "register_reward", "unregister_reward", "known_rewards", "build_rewards", "function_reward_factory",
    "AsyncRewardRunner", "RewardResults", "group_failures",
]
