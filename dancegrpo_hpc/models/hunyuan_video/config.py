"""HunyuanVideo DiT configuration: the released presets and tiny test configs.

Field names and defaults follow diffusers' HunyuanVideoTransformer3DModel config,
so a checkpoint's config.json maps onto this dataclass one to one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional, Tuple

from ...checks import InputError, check_choice, require

IMAGE_CONDITION_TYPES = (None, "latent_concat", "token_replace")
REFINER_MLP_RATIO = 4.0  # HunyuanVideoTokenRefiner's default, which HunyuanVideoTransformer3DModel does not override


@dataclass(frozen=True)
class HunyuanVideoConfig:
    family: ClassVar[str] = "hunyuan_video"  # models/family.py
    in_channels: int = 16
    out_channels: int = 16
    num_attention_heads: int = 24
    attention_head_dim: int = 128
    num_layers: int = 20  # dual-stream blocks
    num_single_layers: int = 40
    num_refiner_layers: int = 2
    mlp_ratio: float = 4.0
    patch_size: int = 2
    patch_size_t: int = 1
    qk_norm: str = "rms_norm"
    guidance_embeds: bool = True
    text_embed_dim: int = 4096
    pooled_projection_dim: int = 768
    rope_theta: float = 256.0
    rope_axes_dim: Tuple[int, int, int] = (16, 56, 56)
    image_condition_type: Optional[str] = None
    variant: str = field(default="custom", compare=False)  # name used in messages

    def __post_init__(self):
        check_choice("HunyuanVideoConfig", "image_condition_type", self.image_condition_type, IMAGE_CONDITION_TYPES)
        require(self.qk_norm == "rms_norm", f"HunyuanVideoConfig: qk_norm must be 'rms_norm'; got {self.qk_norm!r}")
        require(sum(self.rope_axes_dim) == self.attention_head_dim,
                f"HunyuanVideoConfig: rope_axes_dim {tuple(self.rope_axes_dim)} must sum to attention_head_dim "
                f"{self.attention_head_dim}")
        require(all(d % 2 == 0 for d in self.rope_axes_dim),
                f"HunyuanVideoConfig: rope_axes_dim entries must be even; got {tuple(self.rope_axes_dim)}")

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def refiner_mlp_hidden(self) -> int:
        """The token refiner's MLP width: diffusers builds HunyuanVideoTokenRefiner with its
        default mlp_ratio 4.0 whatever the model's mlp_ratio (transformer_hunyuan_video.py)."""
        return int(self.hidden_size * REFINER_MLP_RATIO)

    @classmethod
    def from_diffusers(cls, config: Dict[str, Any], variant: str = "diffusers checkpoint") -> "HunyuanVideoConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"variant"}
        kwargs = {k: v for k, v in config.items() if k in names}
        if "rope_axes_dim" in kwargs:
            kwargs["rope_axes_dim"] = tuple(kwargs["rope_axes_dim"])
        return cls(**kwargs, variant=variant)

    def to_diffusers(self) -> Dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "variant"}
        out["rope_axes_dim"] = list(self.rope_axes_dim)
        return out

    def replace(self, **changes) -> "HunyuanVideoConfig":
        return dataclasses.replace(self, **changes)


_T2V = HunyuanVideoConfig(variant="hunyuan-t2v-13b")
PRESETS: Dict[str, HunyuanVideoConfig] = {
    # HunyuanVideo T2V 13B (CFG-distilled: guidance embedding, no real CFG at rollout)
    "hunyuan-t2v-13b": _T2V,
    # text-to-image: the same network run on one latent frame
    "hunyuan-t2i-13b": _T2V.replace(variant="hunyuan-t2i-13b"),
    # HunyuanVideo-I2V: [noisy latent | image latent | mask] concatenated on channels
    "hunyuan-i2v-33ch": _T2V.replace(in_channels=33, image_condition_type="latent_concat", guidance_embeds=False,
                                     variant="hunyuan-i2v-33ch"),
    # SkyReels-V1 I2V: [noisy latent | image latent], real CFG
    "skyreels-i2v-32ch": _T2V.replace(in_channels=32, variant="skyreels-i2v-32ch"),
    # HunyuanVideo-I2V token replace: the first latent frame is the clean image latent
    "hunyuan-i2v-token-replace": _T2V.replace(image_condition_type="token_replace", variant="hunyuan-i2v-token-replace"),
}

# Small configurations of the same architecture for tests and CPU runs.
TINY = HunyuanVideoConfig(
    in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=16, num_layers=2, num_single_layers=2,
    num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=24, pooled_projection_dim=12,
    rope_axes_dim=(4, 6, 6), variant="tiny",
)
PRESETS["tiny"] = TINY
PRESETS["tiny-i2v-concat"] = TINY.replace(in_channels=9, image_condition_type="latent_concat", guidance_embeds=False,
                                          variant="tiny-i2v-concat")
PRESETS["tiny-i2v-token-replace"] = TINY.replace(image_condition_type="token_replace", variant="tiny-i2v-token-replace")
PRESETS["tiny-i2v-32ch"] = TINY.replace(in_channels=8, variant="tiny-i2v-32ch")  # SkyReels' layout: [latent | image]
# The embedded toy world's model (dancegrpo_hpc.models.toy): latents of ToyVAE (12 channels,
# 8 x 16 x 16 for a 32x32 clip of 8 frames: 256 tokens at patch 2x2x2, which trains 2.5x
# faster on CPU than 512 at 1x2x2), ToyTextEncoder's 32-d tokens and pooled vector, no
# guidance embedding. Width 96 = the patch size (12 x 2 x 2 x 2): a narrower model cannot
# carry a token's noise through to its velocity and leaves speckle in its samples.
PRESETS["toy"] = HunyuanVideoConfig(
    in_channels=12, out_channels=12, num_attention_heads=4, attention_head_dim=24, num_layers=2, num_single_layers=2,
    num_refiner_layers=1, patch_size=2, patch_size_t=2, guidance_embeds=False, text_embed_dim=32,
    pooled_projection_dim=32, rope_axes_dim=(8, 8, 8), variant="toy",
)


def preset(name: str) -> HunyuanVideoConfig:
    if name not in PRESETS:
        raise InputError(f"HunyuanVideo config: unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
