"""Reward registry: names in the trainer config -> factories that build rewards.

A factory is called as factory(**spec.options) and returns a Reward. The toy
rewards (dancegrpo_hpc.rewards.toy.TOY_REWARDS) are registered on first use, so
this package imports even where that module is absent. Model-based rewards
register themselves the same way with register_reward.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple, Union

import torch

from ..checks import require
from .base import BinaryReward, FunctionReward, Reward, RewardSpec, check_unique_names, keyword_names

RewardFactory = Callable[..., Reward]

_FACTORIES: Dict[str, RewardFactory] = {}
_TOY_MODULE = f"{__package__}.toy"
_toy_loaded = False


def register_reward(name: str, factory: RewardFactory, replace: bool = False) -> None:
    """Make `name` usable in RewardSpec; factory(**options) must return a Reward."""
    require(isinstance(name, str) and name != "", f"register_reward: name must be a non-empty string; got {name!r}")
    require(callable(factory), f"register_reward ({name}): factory must be callable; got {type(factory).__name__}")
    require(replace or name not in _FACTORIES,
            f"register_reward: {name!r} is already registered; pick another name or pass replace=True")
    _FACTORIES[name] = factory


def unregister_reward(name: str) -> None:
    require(name in _FACTORIES, f"unregister_reward: {name!r} is not registered; known rewards: {_known_text()}")
    del _FACTORIES[name]


def known_rewards() -> List[str]:
    _load_toy_rewards()
    return sorted(_FACTORIES)


def function_reward_factory(name: str, fn: Callable[..., torch.Tensor]) -> RewardFactory:
    """Factory for a plain function reward: options become keyword arguments of fn,
    and an option fn does not take is an error rather than silently ignored."""
    accepted = keyword_names(fn)

    def build(**options: Any) -> Reward:
        if accepted is not None:
            unknown = sorted(set(options) - accepted)
            require(not unknown, f"rewards ({name}).options: {', '.join(unknown)} not accepted; "
                                 f"{name} takes {', '.join(sorted(accepted)) or 'no options'}")
        return FunctionReward(name, functools.partial(fn, **options) if options else fn)

    return build


def build_rewards(specs: Sequence[Union[RewardSpec, Mapping[str, Any]]]) -> List[Tuple[RewardSpec, Reward]]:
    """Check every spec, then build each reward (wrapped in BinaryReward when the
    spec sets binary_threshold). Items may be RewardSpec or YAML mappings."""
    require(isinstance(specs, Sequence) and not isinstance(specs, (str, bytes)) and len(specs) > 0,
            f"rewards: must be a non-empty list of {{name: ..., weight: ...}} items; got {specs!r}")
    specs = [s if isinstance(s, RewardSpec) else RewardSpec.from_dict(s, f"rewards[{i}]") for i, s in enumerate(specs)]
    _load_toy_rewards()
    for i, spec in enumerate(specs):
        spec.validate(f"rewards[{i}]")
        require(spec.name in _FACTORIES,
                f"rewards[{i}].name: unknown reward {spec.name!r}; known rewards: {_known_text()}")
    check_unique_names("rewards", (s.name for s in specs))
    built = []
    for spec in specs:
        reward = _FACTORIES[spec.name](**spec.options)
        if spec.binary_threshold is not None:
            reward = BinaryReward(reward, spec.binary_threshold)
        built.append((spec, reward))
    return built


def _known_text() -> str:
    return ", ".join(sorted(_FACTORIES)) or "(none registered)"


def _load_toy_rewards() -> None:
    global _toy_loaded
    if _toy_loaded:
        return
    try:
        toy = importlib.import_module(_TOY_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != _TOY_MODULE:
            raise
        return  # not written yet: nothing to register, look again next time
    for name, fn in toy.TOY_REWARDS.items():
        _FACTORIES.setdefault(name, function_reward_factory(name, fn))
    _toy_loaded = True
