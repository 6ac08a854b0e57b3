"""Sampling videos from a toy DiT: prompts -> text embeddings -> ODE/SDE integration
of the flow from noise (sigma = 1) to data (sigma = 0) -> ToyVAE decode."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ...checks import require
from ...sampling import flow_sigmas, sample
from .text import ToyTextEncoder
from .vae import ToyVAE
from .world import ToyWorld


def velocity_fn(model, embeds: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor):
    """The sampler's model_fn: (x, sigma [B] float64, step) -> the DiT's velocity at timestep sigma*1000."""
    def fn(x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
        return model(x, (sigma * 1000.0).to(x.dtype), embeds, mask, pooled).to(x.dtype)
    return fn


@torch.no_grad()
def sample_videos(model, prompts: Sequence[str], *, steps: int = 12, shift: float = 3.0, kind: str = "ode",
                  eta: float = 0.3, generator: Optional[torch.Generator] = None, world: Optional[ToyWorld] = None,
                  text_encoder: Optional[ToyTextEncoder] = None, vae: Optional[ToyVAE] = None,
                  batch_size: int = 16) -> torch.Tensor:
    """Videos [B, F, 3, H, W] in [0, 1] for the prompts, at the world's clip size. The
    initial noise of all prompts is drawn from `generator` up front, so ODE samples do
    not depend on batch_size (SDE kinds draw their step noise chunk by chunk)."""
    require(not isinstance(prompts, str) and len(prompts) > 0, "sample_videos: prompts must be a non-empty list of str")
    world = world or ToyWorld()
    encoder = text_encoder or ToyTextEncoder(model.config.text_embed_dim, model.config.pooled_projection_dim)
    device = next(model.parameters()).device
    vae = (vae or ToyVAE()).to(device)
    shape = vae.latent_shape(world.frames, world.height, world.width)
    noise = torch.randn(len(prompts), *shape, generator=generator).to(device)
    sigmas = flow_sigmas(steps, shift)
    videos = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        embeds, mask, pooled = encoder.encode(chunk, device=device)
        trajectory = sample(velocity_fn(model, embeds, mask, pooled), noise[start:start + len(chunk)], sigmas, kind,
                            eta, generator=generator, store_latents=False)
        videos.append(vae.decode(trajectory.final))
    return torch.cat(videos).cpu()
