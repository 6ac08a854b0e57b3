"""HunyuanVideo (T2V, I2V, T2I as one frame) behind the family seam (models/family.py)."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch

from ...checks import require
from ...conditioning import Conditioning
from ..common.family import check_latent_grid, check_layout
from ..family import ModelFamily, register
from . import cost as hv_cost
from .config import PRESETS, HunyuanVideoConfig

TEXT_TOKENS = 256  # the LLaVA text encoder's padded length (diffusers' max_sequence_length)


def dit_input(config: HunyuanVideoConfig, x: torch.Tensor, image_latents: Optional[torch.Tensor]) -> torch.Tensor:
    """The DiT input for the sampled state x [B, C, F, H, W], as diffusers' image-to-video
    pipelines build it (HunyuanVideoImageToVideoPipeline, HunyuanSkyreelsImageToVideoPipeline).
    Channel concatenation (in_channels > out_channels): [x | image latent in frame 0, zeros
    after | mask, 1 in frame 0], cut to in_channels (SkyReels 32: no mask; HunyuanVideo-I2V
    33: with mask). token_replace: the image latent is frame 0 and x the frames after it
    (the state holds only the generated frames). Text-to-video: x."""
    extra = config.in_channels - config.out_channels
    token_replace = config.image_condition_type == "token_replace"
    if not (extra or token_replace):
        if image_latents is not None:
            raise ValueError(f"velocity: model {config.variant!r} is text-to-video but the conditioning has image "
                             "latents")
        return x
    if image_latents is None:
        raise ValueError(f"velocity: image-to-video model {config.variant!r} needs Conditioning.image_latents")
    if not token_replace and extra not in (config.out_channels, config.out_channels + 1):
        raise ValueError(f"velocity: model {config.variant!r} takes {config.in_channels} input channels for "
                         f"{config.out_channels} latent channels; image concatenation needs 2x (+1 for the mask)")
    image = image_latents.to(x.dtype)
    if token_replace:
        return torch.cat([image, x], dim=2)
    b, _, f, h, w = x.shape
    first = torch.zeros(b, 1, f, h, w, dtype=x.dtype, device=x.device)
    first[:, :, 0] = 1
    padded = torch.cat([image, image.new_zeros(b, image.shape[1], f - 1, h, w)], dim=2)
    return torch.cat([x, padded, first], dim=1)[:, :config.in_channels]


class HunyuanVideoFamily(ModelFamily):
    name = "hunyuan_video"
    diffusers_class = "HunyuanVideoTransformer3DModel"
    default_preset = "hunyuan-t2v-13b"
    image_to_video = True

    @property
    def model_class(self):
        from .model import HunyuanVideoDiT  # megatron-core: imported only when a model is wanted

        return HunyuanVideoDiT

    def presets(self) -> Dict[str, HunyuanVideoConfig]:
        return PRESETS

    def config_from_diffusers(self, raw: Dict, variant: Optional[str] = None) -> HunyuanVideoConfig:
        return HunyuanVideoConfig.from_diffusers(raw, variant=variant or "diffusers checkpoint")

    def is_image_model(self, model_config: HunyuanVideoConfig) -> bool:
        return model_config.in_channels != model_config.out_channels or model_config.image_condition_type is not None

    def save_diffusers(self, model, directory: str) -> None:
        from .weights import save_diffusers

        save_diffusers(model, directory)

    def velocity(self, model, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning,
                 guidance: Optional[float]) -> torch.Tensor:
        """Timestep sigma x 1000 (float, diffusers' units; the official code truncates to an
        int), embedded guidance x 1000 as DanceGRPO passes it, image-to-video layout."""
        dtype = next(model.parameters()).dtype
        timestep = (sigma.to(torch.float32) * 1000.0).to(x.device)
        scale = None
        if guidance is not None:
            scale = torch.full((x.shape[0],), guidance * 1000.0, device=x.device, dtype=torch.float32)
        hidden = dit_input(model.config, x, cond.image_latents)
        out = model(hidden.to(dtype), timestep, cond.embeds.to(dtype), cond.mask, cond.pooled.to(dtype), scale)
        # the velocity of the sampled frames only: token_replace's image frame is a fixed condition
        return out[:, :, out.shape[2] - x.shape[2]:].float()

    def latent_tokens(self, model_config: HunyuanVideoConfig, latent_shape: Tuple[int, int, int, int]) -> int:
        _, f, h, w = latent_shape
        return (math.ceil(f / model_config.patch_size_t) * (h // model_config.patch_size)
                * (w // model_config.patch_size))

    def cost(self, model_config: HunyuanVideoConfig):
        return hv_cost.cost(model_config, TEXT_TOKENS)

    def conditioning_fields(self, model_config: HunyuanVideoConfig) -> List[str]:
        return ["embeds", "mask", "pooled"] + (["image_latents"] if self.is_image_model(model_config) else [])

    def check_model(self, model, tensor: int, ulysses: int, shape, where: str) -> None:
        check_layout(model, tensor, ulysses, where)
        require(model.out_channels == shape[0],
                f"config: {where} predicts {model.out_channels} latent channels but the data has {shape[0]}; pick a "
                "preset for this data")
        check_latent_grid(shape, model.patch_size)

    def describe(self, model: HunyuanVideoConfig) -> str:
        return (f"{model.num_attention_heads} heads x {model.attention_head_dim}, {model.num_layers} dual + "
                f"{model.num_single_layers} single blocks")


FAMILY = register(HunyuanVideoFamily())
