"""The embedded toy world: procedural clips of a coloured shape moving across a dark
frame (world), a fixed text encoder and VAE for them, and a tiny HunyuanVideo DiT
pretrained by flow matching (tools/pretrain_toy.py) whose checkpoint ships here.
Its rewards live in dancegrpo_hpc.rewards.toy."""

from __future__ import annotations

import os

from ...checks import require
from .text import ToyTextEncoder
from .vae import ToyVAE
from .world import ToyWorld

TOY_CHECKPOINT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoint")


def load_toy_model(path: str = TOY_CHECKPOINT, **options):
    """The pretrained toy HunyuanVideoDiT; options go to HunyuanVideoDiT.from_diffusers
    (dtype, device, sequence_parallel, attention, ...)."""
    from ..hunyuan_video.model import HunyuanVideoDiT  # megatron-core: imported only when a model is wanted

    require(os.path.isdir(path), f"load_toy_model: checkpoint folder {path!r} not found; run tools/pretrain_toy.py "
                                 "to create it")
    return HunyuanVideoDiT.from_diffusers(path, **options)


__all__ = ["ToyWorld", "ToyTextEncoder", "ToyVAE", "TOY_CHECKPOINT", "load_toy_model"]
