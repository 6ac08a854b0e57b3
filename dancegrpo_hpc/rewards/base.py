"""The reward interface: what a reward model is, how the trainer configures one
(RewardSpec), and two small adapters (FunctionReward, BinaryReward).

A reward scores decoded videos: `reward(videos, prompts, **conditioning)` with
videos float [B, F, C, H, W] in [0, 1] (an image is a 1-frame video) and one prompt
per sample; it returns a float Tensor[B], one score per sample, higher is better.
Conditioning carries per-batch extras (e.g. reference images for image-to-video).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Protocol, Sequence, runtime_checkable

import torch

from ..checks import check_positive, require


def binary_reward(rewards: torch.Tensor, threshold: float) -> torch.Tensor:
    """DanceGRPO's binary reward: 1 where the reward exceeds the threshold, else 0."""
    require(isinstance(rewards, torch.Tensor), "binary_reward: rewards must be a tensor")
    return (rewards > threshold).to(torch.float32)



@runtime_checkable
class Reward(Protocol):
    name: str

    def __call__(self, videos: torch.Tensor, prompts: Sequence[str], **conditioning: Any) -> torch.Tensor:
        """Float Tensor[B]: one score per sample."""


@dataclass
class RewardSpec:
    """One item of the trainer config's `rewards:` list.

    weight: this reward's coefficient in the multi-reward advantage sum.
    timeout_s: a call on one batch that runs longer fails those samples.
    binary_threshold: if set, scores become 1.0 above it and 0.0 otherwise.
    options: keyword arguments for the reward's factory (checkpoint path, ...).
    """

    name: str
    weight: float = 1.0
    timeout_s: float = 60.0
    binary_threshold: Optional[float] = None
    options: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, item: Mapping[str, Any], where: str = "rewards[]") -> "RewardSpec":
        """From a YAML item such as {name: toy_motion, weight: 0.5}."""
        require(isinstance(item, Mapping), f"{where}: must be a mapping like {{name: ..., weight: ...}}; got {item!r}")
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(item) - set(fields))
        require(not unknown, f"{where}: unknown field(s) {', '.join(map(str, unknown))}; allowed: {', '.join(fields)}")
        require("name" in item, f"{where}: missing 'name' (the registered reward to use)")
        return cls(**item)

    def validate(self, where: str = "RewardSpec") -> None:
        require(isinstance(self.name, str) and self.name != "",
                f"{where}.name: must be a non-empty string; got {self.name!r}")
        check_positive(f"{where} ({self.name})", "weight", self.weight)
        check_positive(f"{where} ({self.name})", "timeout_s", self.timeout_s)
        require(self.binary_threshold is None
                or (isinstance(self.binary_threshold, (int, float)) and math.isfinite(self.binary_threshold)),
                f"{where} ({self.name}): binary_threshold must be a finite number or null; got {self.binary_threshold!r}")
        require(isinstance(self.options, Mapping),
                f"{where} ({self.name}): options must be a mapping of factory arguments; got {self.options!r}")


def check_unique_names(where: str, names: Iterable[str]) -> None:
    """Scores are keyed by reward name, so two rewards may not share one."""
    seen, repeated = set(), []
    for name in names:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    require(not repeated, f"{where}: reward name(s) {', '.join(map(repr, repeated))} appear more than once; "
                          f"list each reward once (combine weights instead)")


def keyword_names(fn: Callable) -> Optional[frozenset]:
    """The keyword arguments fn takes beyond (videos, prompts); None if it takes
    any (**kwargs) or its signature cannot be read."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    skipped = {p.name for p in positional[:2]}
    return frozenset(p.name for p in params
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in skipped)


class FunctionReward:
    """Wraps fn(videos, prompts, **kw) -> Tensor[B] as a named reward. Conditioning
    keys fn does not name are not passed, so plain fn(videos, prompts) functions
    work in image-to-video runs too."""

    def __init__(self, name: str, fn: Callable[..., torch.Tensor]):
        require(isinstance(name, str) and name != "", f"FunctionReward: name must be a non-empty string; got {name!r}")
        require(callable(fn), f"FunctionReward ({name}): fn must be callable; got {type(fn).__name__}")
        self.name = name
        self.fn = fn
        self._accepted = keyword_names(fn)

    def __call__(self, videos: torch.Tensor, prompts: Sequence[str], **conditioning: Any) -> torch.Tensor:
        if self._accepted is not None:
            conditioning = {k: v for k, v in conditioning.items() if k in self._accepted}
        return self.fn(videos, prompts, **conditioning)

    def __repr__(self) -> str:
        return f"FunctionReward({self.name!r}, {getattr(self.fn, '__name__', self.fn)!r})"


class BinaryReward:
    """DanceGRPO's binary reward: 1.0 where the wrapped score exceeds threshold,
    else 0.0. Non-finite scores (NaN and +-inf) become NaN, so the runner still
    reports them as failures instead of turning a broken +inf into a clean 1.0."""

    def __init__(self, reward: Reward, threshold: float):
        require(callable(reward) and isinstance(getattr(reward, "name", None), str),
                f"BinaryReward: reward must be a callable with a str name; got {reward!r}")
        require(isinstance(threshold, (int, float)) and math.isfinite(threshold),
                f"BinaryReward ({reward.name}): threshold must be a finite number; got {threshold!r}")
        self.reward = reward
        self.threshold = float(threshold)
        self.name = reward.name

    def __call__(self, videos: torch.Tensor, prompts: Sequence[str], **conditioning: Any) -> torch.Tensor:
        scores = self.reward(videos, prompts, **conditioning)
        binary = binary_reward(scores, self.threshold)
        return binary.masked_fill(~torch.isfinite(scores), float("nan"))

    def __repr__(self) -> str:
        return f"BinaryReward({self.reward!r}, threshold={self.threshold})"
