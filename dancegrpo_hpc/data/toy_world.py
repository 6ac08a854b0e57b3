"""The embedded toy world as a World: toy text encoder, fixed toy VAE, committed toy DiT."""

from __future__ import annotations

from typing import List, Optional

import torch

from ..checks import require
from ..conditioning import Conditioning
from ..models.family import get_family
from .world import World


class ToyWorldAdapter(World):
    """The procedural shapes world: toy text encoder, fixed toy VAE, committed toy DiT."""

    def __init__(self, config):
        from ..models.toy import ToyTextEncoder, ToyVAE, ToyWorld

        d = config.data
        self.config = config
        self.world = ToyWorld(frames=d.frames, height=d.height, width=d.width, seed=config.seed)
        self.model_config = get_family(config.model.family).preset(config.model.preset)
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
            cond = Conditioning(embeds=embeds.to(device), mask=mask.to(device), pooled=pooled.to(device))
            if negative:
                ne, nm, npool = self.text.encode([""] * len(prompts))
                cond.negative = Conditioning(embeds=ne.to(device), mask=nm.to(device), pooled=npool.to(device))
        return cond

    def decode(self, latents: torch.Tensor, cond: Optional[Conditioning] = None) -> torch.Tensor:
        with torch.no_grad():
            return self.vae.decode(latents.float().cpu())

    def load_policy(self, **options):
        from ..models.toy import TOY_CHECKPOINT, load_toy_model

        return load_toy_model(self.config.model.path or TOY_CHECKPOINT, **options)
