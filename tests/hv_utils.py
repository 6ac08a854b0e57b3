"""Shared helpers for the HunyuanVideo DiT tests: a random diffusers reference model
and inputs with a padded text mask, an odd frame count and guidance."""

import torch

from dancegrpo_hpc.models.hunyuan_video import PRESETS


def diffusers_model(preset="tiny", seed=0, **changes):
    from diffusers import HunyuanVideoTransformer3DModel

    cfg = PRESETS[preset].replace(**changes)
    torch.manual_seed(seed)
    model = HunyuanVideoTransformer3DModel(**cfg.to_diffusers()).eval()
    with torch.no_grad():  # non-trivial values everywhere (diffusers zero-inits some layers)
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


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


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()
