"""World interface, the embedded toy world adapter and build_world."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ..checks import require
from ..rl.policy import Conditioning


class World:
    """train_prompts / eval_prompts: lists of prompts; latent_shape: (C, F, H, W)."""

    train_prompts: List[str]
    eval_prompts: List[str]
    latent_shape: Tuple[int, int, int, int]

    def encode(self, prompts: List[str], device, negative: bool = False) -> Conditioning:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor, cond: Optional[Conditioning] = None) -> torch.Tensor:
        """[B, C, F, H, W] latents -> [B, F, 3, H, W] videos in [0, 1]. cond: the samples'
        conditioning (image-to-video worlds whose first frame is the reference image's)."""
        raise NotImplementedError

    def load_policy(self, **options):
        raise NotImplementedError


class ToyWorldAdapter(World):
    """The procedural shapes world: toy text encoder, fixed toy VAE, committed toy DiT."""

    def __init__(self, config):
        from ..models.toy import ToyTextEncoder, ToyVAE, ToyWorld
        from ..models.hunyuan_video.config import preset

        d = config.data
        self.config = config
        self.world = ToyWorld(frames=d.frames, height=d.height, width=d.width, seed=config.seed)
        self.model_config = preset(config.model.preset)
        self.text = ToyTextEncoder.for_model(self.model_config) if hasattr(ToyTextEncoder, "for_model") else ToyTextEncoder()
        self.vae = ToyVAE()
        self.train_prompts = self.world.prompts("train")
        held_out = self.world.prompts("eval")
        require(d.eval_prompts <= len(held_out),
                f"config: data.eval_prompts={d.eval_prompts} but the toy world has {len(held_out)} held-out "
                f"prompts; set data.eval_prompts <= {len(held_out)}")
        self.eval_prompts = held_out[: d.eval_prompts]
        probe = self.vae.encode(torch.zeros(1, d.frames, 3, d.height, d.width))
        self.latent_shape = tuple(probe.shape[1:])

    def encode(self, prompts: List[str], device, negative: bool = False) -> Conditioning:
        with torch.no_grad():
            embeds, mask, pooled = self.text.encode(prompts)
            cond = Conditioning(embeds.to(device), mask.to(device), pooled.to(device))
            if negative:
                ne, nm, npool = self.text.encode([""] * len(prompts))
                cond.negative = Conditioning(ne.to(device), nm.to(device), npool.to(device))
        return cond

    def decode(self, latents: torch.Tensor, cond: Optional[Conditioning] = None) -> torch.Tensor:
        with torch.no_grad():
            return self.vae.decode(latents.float().cpu())

    def load_policy(self, **options):
        from ..models.toy import TOY_CHECKPOINT, load_toy_model

        return load_toy_model(self.config.model.path or TOY_CHECKPOINT, **options)


def build_world(config, device="cpu") -> World:
    """The world config.data names; device: where the real world's VAE and text encoders run."""
    if config.data.source == "toy":
        return ToyWorldAdapter(config)
    if config.data.source == "prompts":
        from .real_world import PromptWorld

        return PromptWorld(config, device)
    raise ValueError(f"data.source {config.data.source!r} is not supported")
