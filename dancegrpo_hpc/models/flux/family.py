"""FLUX.1 (text-to-image) behind the family seam (models/family.py)."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch

from ...checks import InputError, require
from ...conditioning import Conditioning
from ..common.family import check_latent_grid, check_layout
from ..family import ModelFamily, register
from . import cost as flux_cost
from .config import PRESETS, FluxConfig
from .packing import image_ids, pack, text_ids, unpack

TEXT_TOKENS = 512  # T5-XXL's padded length in FluxPipeline (max_sequence_length)
# FluxPipeline's resolution-dependent shift (calculate_shift with the FLUX.1 scheduler config):
# mu linear in the image tokens from (256, 0.5) to (4096, 1.15), shift = exp(mu)
BASE_SEQ_LEN, MAX_SEQ_LEN, BASE_SHIFT, MAX_SHIFT = 256, 4096, 0.5, 1.15


def dynamic_shift(image_tokens: int) -> float:
    """exp(mu) for `image_tokens` packed tokens (diffusers' calculate_shift, then the
    scheduler's exponential time shift, which equals a fixed shift of exp(mu))."""
    slope = (MAX_SHIFT - BASE_SHIFT) / (MAX_SEQ_LEN - BASE_SEQ_LEN)
    return math.exp(image_tokens * slope + BASE_SHIFT - slope * BASE_SEQ_LEN)


class FluxFamily(ModelFamily):
    name = "flux"
    diffusers_class = "FluxTransformer2DModel"
    default_preset = "flux-dev"
    image_to_video = False

    @property
    def model_class(self):
        from .model import FluxDiT  # megatron-core: imported only when a model is wanted

        return FluxDiT

    def presets(self) -> Dict[str, FluxConfig]:
        return PRESETS

    def config_from_diffusers(self, raw: Dict, variant: Optional[str] = None) -> FluxConfig:
        return FluxConfig.from_diffusers(raw, variant=variant or "diffusers checkpoint")

    def save_diffusers(self, model, directory: str) -> None:
        model.save_diffusers(directory)

    def check_model(self, model: FluxConfig, tensor: int, ulysses: int, shape, where: str) -> None:
        check_layout(model, tensor, ulysses, where)
        require(model.patch_size == 1 and model.output_channels == model.in_channels and model.in_channels % 4 == 0,
                f"config: {where} takes {model.in_channels} channels per token and predicts {model.output_channels} "
                f"(patch_size {model.patch_size}); the FLUX family samples text-to-image models whose tokens are 2x2 "
                "latent patches in and out (in_channels = out_channels = 4 x latent channels, patch_size 1)")
        require(model.latent_channels == shape[0],
                f"config: {where} takes {model.latent_channels} latent channels but the data has {shape[0]}; pick a "
                "preset for this data")
        require(shape[1] == 1, f"config: FLUX is an image model but the data gives {shape[1]} latent frames; use "
                               "data.frames=1")
        check_latent_grid(shape, 2)

    def describe(self, model: FluxConfig) -> str:
        return (f"{model.num_attention_heads} heads x {model.attention_head_dim}, {model.num_layers} double + "
                f"{model.num_single_layers} single blocks, guidance embedding "
                f"{'on' if model.guidance_embeds else 'off'}")

    def velocity(self, model, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning,
                 guidance: Optional[float]) -> torch.Tensor:
        """FluxPipeline's call: latents packed 2x2, timestep = sigma (FLUX multiplies by 1000
        inside), guidance = the guidance scale (x1000 inside), image / text position ids;
        the output unpacked to [B, C, 1, H, W], float32."""
        cfg: FluxConfig = model.config
        if cfg.guidance_embeds and guidance is None:
            raise InputError(f"velocity: FLUX {cfg.variant!r} embeds the guidance scale; set model.guidance "
                             "(FLUX.1-dev samples at 3.5)")
        if not cfg.guidance_embeds and guidance is not None:
            raise InputError(f"velocity: FLUX {cfg.variant!r} has no guidance embedding; leave model.guidance unset")
        dtype = next(model.parameters()).dtype
        b, _, _, h, w = x.shape
        scale = None if guidance is None else torch.full((b,), float(guidance), device=x.device, dtype=torch.float32)
        out = model(hidden_states=pack(x).to(dtype), encoder_hidden_states=cond.embeds.to(dtype),
                    pooled_projections=cond.pooled.to(dtype), timestep=sigma.to(x.device, torch.float32),
                    img_ids=image_ids(h, w, x.device), txt_ids=text_ids(cond.embeds.shape[1], x.device),
                    guidance=scale)
        return unpack(out, h, w).float()

    def latent_tokens(self, model_config: FluxConfig, latent_shape: Tuple[int, int, int, int]) -> int:
        _, f, h, w = latent_shape
        return f * (h // 2) * (w // 2)

    def sampling_shift(self, model_config: FluxConfig, latent_shape: Tuple[int, int, int, int], shift: float,
                       mode: str) -> float:
        if mode == "dynamic":
            return dynamic_shift(self.latent_tokens(model_config, latent_shape))
        return super().sampling_shift(model_config, latent_shape, shift, mode)

    def cost(self, model_config: FluxConfig):
        return flux_cost.cost(model_config, TEXT_TOKENS)

    def conditioning_fields(self, model_config: FluxConfig) -> List[str]:
        return ["embeds", "pooled"]


FAMILY = register(FluxFamily())
