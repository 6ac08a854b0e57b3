"""Shared helpers for the HunyuanVideo DiT tests: a random diffusers reference model
and inputs with a padded text mask, an odd frame count and guidance."""

import torch
from dit_parity import random_diffusers_model, rel  # noqa: F401  (rel: re-exported for the HunyuanVideo tests)

from dancegrpo_hpc.models.hunyuan_video import PRESETS


def diffusers_model(preset="tiny", seed=0, **changes):
    from diffusers import HunyuanVideoTransformer3DModel

    return random_diffusers_model(HunyuanVideoTransformer3DModel, PRESETS[preset].replace(**changes), seed)


def inputs(cfg, batch=2, frames=3, height=8, width=6, text_len=7, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, frames, height, width, generator=gen)
    mask = torch.ones(batch, text_len, dtype=torch.long)
    mask[-1, text_len // 2 + 1:] = 0  # padded text in the last sample
    return dict(
        hidden_states=x,
        timestep=torch.linspace(900.0, 100.0, batch),
        encoder_hidden_states=torch.randn(batch, text_len, cfg.text_embed_dim, generator=gen),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(batch, cfg.pooled_projection_dim, generator=gen),
        guidance=torch.full((batch,), 6000.0) if cfg.guidance_embeds else None,
    )

