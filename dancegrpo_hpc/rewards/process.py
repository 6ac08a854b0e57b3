"""Process reward models (Euphonium): differentiable rewards on latents at any noise
level, r(x_t, sigma, prompts, denoised) -> [B] (see sampling.guidance).

Registry: config `guidance.process_reward: NAME` with `guidance.process_options`;
a factory is called as factory(world, **options), since a latent reward needs the
world's decoder.

`toy_latent`: the toy world's rewards on the decoded one-step denoised estimate.
The toy VAE is linear, so decoding is differentiable and cheap, and the toy
rewards are smooth statistics of a soft mask: an analytic PRM with no training.
"""

from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence

import torch

from ..checks import require

ProcessRewardFactory = Callable[..., object]
_FACTORIES: Dict[str, ProcessRewardFactory] = {}


def register_process_reward(name: str, factory: ProcessRewardFactory, replace: bool = False) -> None:
    require(replace or name not in _FACTORIES,
            f"register_process_reward: {name!r} is already registered; pick another name or pass replace=True")
    _FACTORIES[name] = factory


def known_process_rewards():
    return sorted(_FACTORIES)


def build_process_reward(name: str, world, options: Optional[Mapping] = None):
    require(name in _FACTORIES, f"guidance.process_reward: unknown process reward {name!r}; known: "
                                f"{', '.join(known_process_rewards())}")
    return _FACTORIES[name](world, **dict(options or {}))


class ToyLatentProcessReward:
    """Weighted toy rewards (text alignment by default) of the decoded denoised estimate."""

    name = "toy_latent"

    def __init__(self, vae, toy_world, weights: Optional[Mapping[str, float]] = None):
        from . import toy

        self.vae, self.toy_world = vae, toy_world
        self.weights = dict(weights or {"toy_text_alignment": 1.0})
        unknown = sorted(set(self.weights) - set(toy.TOY_REWARDS))
        require(not unknown, f"guidance.process_options.weights: unknown toy rewards {unknown}; "
                             f"known: {sorted(toy.TOY_REWARDS)}")
        self.fns = {"toy_text_alignment": lambda v, p: toy.text_alignment(v, p, toy_world),
                    "toy_motion": toy.motion_quality, "toy_visual": toy.visual_quality}

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, prompts: Sequence[str],
                 denoised: torch.Tensor) -> torch.Tensor:
        videos = self.vae.to(denoised.device).decode(denoised.float())
        total = sum(w * self.fns[k](videos, list(prompts)) for k, w in self.weights.items())
        return total / sum(self.weights.values())


def _toy_latent(world, weights: Optional[Mapping[str, float]] = None):
    require(hasattr(world, "vae") and hasattr(world, "world"),
            "guidance.process_reward: toy_latent needs data.source: toy (it decodes with the toy VAE)")
    return ToyLatentProcessReward(world.vae, world.world, weights)


register_process_reward("toy_latent", _toy_latent)
