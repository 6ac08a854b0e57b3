"""Registers the real reward models under the names the configs use. Each factory
imports its module (and transformers) only when a run builds that reward, so
`validate` and the toy world never import transformers.

  clip_score            CLIP image-text cosine                       (clip.py)
  pickscore             PickScore: logit_scale * cosine              (clip.py)
  hps_v2.1, hpsv2       HPS-v2.1 (open_clip ViT-H-14 weights)        (hps.py)
  videoalign            VideoAlign VQ/MQ/TA, options.head or .heads  (videoalign.py)
  videoalign_vq/_mq/_ta one VideoAlign head each; one loaded model serves all of them
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from .registry import register_reward


def _lazy(module: str, function: str, name: str, **fixed: Any) -> Callable[..., Any]:
    def factory(**options: Any):
        build = getattr(importlib.import_module(f"{__package__}.{module}"), function)
        reward = build(**options, **fixed) if fixed else build(**options)
        reward.name = name  # scores and errors carry the name the config used
        return reward

    factory.__name__ = f"build_{name}"
    return factory


_BUILTIN = {
    "clip_score": _lazy("clip", "build_clip_score", "clip_score"),
    "pickscore": _lazy("clip", "build_pickscore", "pickscore"),
    "hps_v2.1": _lazy("hps", "build_hps", "hps_v2.1"),
    "hpsv2": _lazy("hps", "build_hps", "hpsv2"),
    "videoalign": _lazy("videoalign", "build_videoalign", "videoalign"),
    "videoalign_vq": _lazy("videoalign", "build_videoalign", "videoalign_vq", _fixed_head="VQ"),
    "videoalign_mq": _lazy("videoalign", "build_videoalign", "videoalign_mq", _fixed_head="MQ"),
    "videoalign_ta": _lazy("videoalign", "build_videoalign", "videoalign_ta", _fixed_head="TA"),
}


def register_builtin_rewards() -> None:
    for name, factory in _BUILTIN.items():
        register_reward(name, factory, replace=True)


BUILTIN_REWARDS = tuple(_BUILTIN)
