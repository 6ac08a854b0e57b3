"""Shared helpers for the FLUX tests: a random diffusers FluxTransformer2DModel and inputs
as FluxPipeline builds them, with non-square latents and non-zero text ids (FluxPipeline's
are zero, which would leave RoPE on the text untested)."""

import torch
from dit_parity import random_diffusers_model

from dancegrpo_hpc.models.flux import PRESETS


def diffusers_model(preset="flux-tiny", seed=0, **changes):
    from diffusers import FluxTransformer2DModel

    return random_diffusers_model(FluxTransformer2DModel, PRESETS[preset].replace(**changes), seed)


def inputs(cfg, batch=2, height=6, width=10, text_len=7, seed=1):
    """Packed latents of a height x width latent image ((height / 2) x (width / 2) tokens)."""
    gen = torch.Generator().manual_seed(seed)
    rows, cols = height // 2, width // 2
    axes = len(cfg.axes_dims_rope)
    img_ids = torch.zeros(rows, cols, axes)
    img_ids[..., -2] = torch.arange(rows)[:, None]
    img_ids[..., -1] = torch.arange(cols)[None, :]
    return dict(
        hidden_states=torch.randn(batch, rows * cols, cfg.in_channels, generator=gen),
        encoder_hidden_states=torch.randn(batch, text_len, cfg.joint_attention_dim, generator=gen),
        pooled_projections=torch.randn(batch, cfg.pooled_projection_dim, generator=gen),
        timestep=torch.linspace(0.9, 0.2, batch),
        img_ids=img_ids.reshape(rows * cols, axes),
        txt_ids=torch.randint(0, 9, (text_len, axes), generator=gen).float(),
        guidance=torch.full((batch,), 3.5) if cfg.guidance_embeds else None,
    )
