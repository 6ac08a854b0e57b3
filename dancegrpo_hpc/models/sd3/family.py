"""Stable Diffusion 3 / 3.5 (text-to-image) behind the family seam (models/family.py)."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from ...checks import InputError, require
from ...conditioning import Conditioning
from ..common.family import check_latent_grid, check_layout
from ..family import ModelFamily, register
from . import cost as sd3_cost
from .config import PRESETS, SD3Config

VAE_SPACE = 8  # SD3's VAE: 8x spatial, 16 latent channels, (x - 0.0609) * 1.5305


class SD3Family(ModelFamily):
    name = "sd3"
    diffusers_class = "SD3Transformer2DModel"
    default_preset = "sd3.5-medium"

    @property
    def model_class(self):
        from .model import SD3DiT  # megatron-core: imported only when a model is wanted

        return SD3DiT

    def presets(self) -> Dict[str, SD3Config]:
        return PRESETS

    def config_from_diffusers(self, raw: Dict, variant: Optional[str] = None) -> SD3Config:
        return SD3Config.from_diffusers(raw, variant=variant or "diffusers checkpoint")

    def save_diffusers(self, model, directory: str) -> None:
        from .weights import save_diffusers

        save_diffusers(model, directory)

    def velocity(self, model, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning,
                 guidance: Optional[float]) -> torch.Tensor:
        """The SD3 transformer at timestep sigma x 1000 (diffusers' FlowMatchEulerDiscreteScheduler
        timesteps) on the one latent frame of x [B, C, 1, H, W], with cond.embeds [B, L, 4096]
        (CLIP-L + CLIP-G padded, then T5) and cond.pooled [B, 2048]."""
        if guidance is not None:
            raise InputError(f"config: model.guidance={guidance}: SD3 has no guidance embedding; leave model.guidance "
                             "unset and use sampling.cfg_scale for classifier-free guidance")
        require(x.dim() == 5 and x.shape[2] == 1,
                f"velocity: SD3 generates images: the state must be [B, C, 1, H, W]; got {tuple(x.shape)}")
        dtype = next(model.parameters()).dtype
        timestep = (sigma.to(torch.float32) * 1000.0).to(x.device)
        out = model(x[:, :, 0].to(dtype), cond.embeds.to(dtype), cond.pooled.to(dtype), timestep)
        return out.unsqueeze(2).float()

    def latent_tokens(self, model_config: SD3Config, latent_shape: Tuple[int, int, int, int]) -> int:
        _, f, h, w = latent_shape
        p = model_config.patch_size
        return f * (h // p) * (w // p)

    def cost(self, model_config: SD3Config):
        return sd3_cost.cost(model_config)

    def conditioning_fields(self, model_config: SD3Config) -> List[str]:
        return ["embeds", "pooled"]

    def check_model(self, model: SD3Config, tensor: int, ulysses: int, shape, where: str) -> None:
        check_layout(model, tensor, ulysses, where)
        require(model.output_channels == shape[0],
                f"config: {where} predicts {model.output_channels} latent channels but the data has {shape[0]}; pick "
                "a preset for this data")
        require(shape[1] == 1, f"config: {where} generates images: set data.frames=1 (got {shape[1]} latent frames)")
        check_latent_grid(shape, model.patch_size)
        limit = model.pos_embed_max_size
        if limit is not None:
            for axis, size in (("height", shape[2]), ("width", shape[3])):
                require(size // model.patch_size <= limit,
                        f"config: data.{axis} gives {size // model.patch_size} latent patches, more than "
                        f"pos_embed_max_size={limit} of {where}; use data.{axis} <= "
                        f"{limit * model.patch_size * VAE_SPACE}")

    def describe(self, model: SD3Config) -> str:
        dual = f", dual attention in {len(model.dual_attention_layers)}" if model.dual_attention_layers else ""
        return (f"{model.num_attention_heads} heads x {model.attention_head_dim}, {model.num_layers} joint blocks"
                f"{dual}, qk_norm {model.qk_norm}")


FAMILY = register(SD3Family())
