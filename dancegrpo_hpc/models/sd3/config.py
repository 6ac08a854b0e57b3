"""Stable Diffusion 3 / 3.5 transformer (MMDiT) configuration: the released presets and
tiny test configs.

Field names and defaults follow diffusers' SD3Transformer2DModel config (its __init__
arguments), so a checkpoint's config.json maps onto this dataclass one to one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional, Tuple

from ...checks import InputError, require

MLP_RATIO = 4  # diffusers' FeedForward default (mult=4), not a config field
QK_NORMS = (None, "rms_norm")  # what the SD3 (None) and SD3.5 ("rms_norm") checkpoints use


@dataclass(frozen=True)
class SD3Config:
    family: ClassVar[str] = "sd3"  # models/family.py
    sample_size: int = 128  # latent side the position embedding was trained at (its scale: sample_size / patch_size)
    patch_size: int = 2
    in_channels: int = 16
    num_layers: int = 18  # joint (MMDiT) blocks; the last one is context_pre_only
    attention_head_dim: int = 64
    num_attention_heads: int = 18
    joint_attention_dim: int = 4096  # text embedding width (CLIP-L + CLIP-G padded, T5-XXL)
    caption_projection_dim: int = 1152  # context_embedder's width: must equal the hidden size
    pooled_projection_dim: int = 2048  # CLIP-L + CLIP-G pooled
    out_channels: Optional[int] = 16  # None: in_channels
    pos_embed_max_size: Optional[int] = 96  # side of the stored sin-cos table cropped per latent; None: computed
    dual_attention_layers: Tuple[int, ...] = ()  # blocks with a second, image-only attention (SD3.5 medium: 0..12)
    qk_norm: Optional[str] = None  # None (SD3) or "rms_norm" (SD3.5)
    variant: str = field(default="custom", compare=False)  # name used in messages

    def __post_init__(self):
        where = f"SD3Config ({self.variant})"
        for name in ("sample_size", "patch_size", "in_channels", "num_layers", "attention_head_dim",
                     "num_attention_heads", "joint_attention_dim", "caption_projection_dim", "pooled_projection_dim"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                    f"{where}: {name} must be a positive integer; got {value!r}")
        require(self.out_channels is None or (isinstance(self.out_channels, int) and self.out_channels >= 1),
                f"{where}: out_channels must be a positive integer or None (= in_channels); got {self.out_channels!r}")
        require(self.pos_embed_max_size is None
                or (isinstance(self.pos_embed_max_size, int) and self.pos_embed_max_size >= 1),
                f"{where}: pos_embed_max_size must be a positive integer (latent patches per side of the stored "
                f"position table) or None; got {self.pos_embed_max_size!r}")
        require(self.caption_projection_dim == self.hidden_size,
                f"{where}: caption_projection_dim {self.caption_projection_dim} must equal num_attention_heads x "
                f"attention_head_dim = {self.hidden_size} (the text stream's width in the joint blocks); set "
                f"caption_projection_dim={self.hidden_size}")
        require(self.hidden_size % 4 == 0,
                f"{where}: the hidden size {self.hidden_size} (num_attention_heads x attention_head_dim) must divide "
                "by 4 for the 2D sin-cos position embedding; change attention_head_dim")
        require(self.qk_norm in QK_NORMS,
                f"{where}: qk_norm must be None (SD3) or 'rms_norm' (SD3.5); got {self.qk_norm!r}")
        layers = self.dual_attention_layers
        if isinstance(layers, list):  # config.json holds a list
            object.__setattr__(self, "dual_attention_layers", layers := tuple(layers))
        require(isinstance(layers, tuple) and all(isinstance(i, int) and 0 <= i < self.num_layers for i in layers),
                f"{where}: dual_attention_layers must list block indices in 0..{self.num_layers - 1} (num_layers="
                f"{self.num_layers}); got {layers!r}")

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mlp_hidden(self) -> int:
        return self.hidden_size * MLP_RATIO

    @property
    def output_channels(self) -> int:
        """Channels of the predicted velocity: out_channels, or in_channels when None."""
        return self.out_channels if self.out_channels is not None else self.in_channels

    def dual_attention(self, block: int) -> bool:
        return block in self.dual_attention_layers

    def context_pre_only(self, block: int) -> bool:
        """The last block only reads the text stream (no text output, no text MLP)."""
        return block == self.num_layers - 1

    @classmethod
    def from_diffusers(cls, config: Dict[str, Any], variant: str = "diffusers checkpoint") -> "SD3Config":
        names = {f.name for f in dataclasses.fields(cls)} - {"variant"}
        kwargs = {k: v for k, v in config.items() if k in names}
        return cls(**kwargs, variant=variant)

    def to_diffusers(self) -> Dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "variant"}
        out["dual_attention_layers"] = list(self.dual_attention_layers)
        return out

    def replace(self, **changes) -> "SD3Config":
        return dataclasses.replace(self, **changes)


# The released transformer configs (transformer/config.json of the diffusers repositories).
_SD3_MEDIUM = SD3Config(sample_size=128, num_layers=24, num_attention_heads=24, caption_projection_dim=1536,
                        pos_embed_max_size=192, variant="sd3-medium")
PRESETS: Dict[str, SD3Config] = {
    # Stable Diffusion 3 medium: 24 blocks, 24 heads x 64, no qk-norm
    "sd3-medium": _SD3_MEDIUM,
    # SD3.5 medium (MMDiT-X): qk RMSNorm, a second image-only attention in blocks 0-12, a 384 x 384 table
    "sd3.5-medium": _SD3_MEDIUM.replace(pos_embed_max_size=384, dual_attention_layers=tuple(range(13)),
                                        qk_norm="rms_norm", variant="sd3.5-medium"),
    # SD3.5 large (and large-turbo): 38 blocks, 38 heads x 64, qk RMSNorm
    "sd3.5-large": _SD3_MEDIUM.replace(num_layers=38, num_attention_heads=38, caption_projection_dim=2432,
                                       qk_norm="rms_norm", variant="sd3.5-large"),
}

# Small configurations of the same architectures for tests and CPU runs: 4 latent channels,
# 4 heads x 8, a 12 x 12 position table scaled as for 16 x 16 latents (sample_size 16).
TINY = SD3Config(sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                 num_attention_heads=4, joint_attention_dim=24, caption_projection_dim=32, pooled_projection_dim=12,
                 out_channels=4, pos_embed_max_size=12, variant="sd3-tiny")
PRESETS["sd3-tiny"] = TINY
PRESETS["sd3.5-large-tiny"] = TINY.replace(qk_norm="rms_norm", variant="sd3.5-large-tiny")
PRESETS["sd3.5-medium-tiny"] = TINY.replace(num_layers=3, dual_attention_layers=(0, 1), qk_norm="rms_norm",
                                            variant="sd3.5-medium-tiny")


def preset(name: str) -> SD3Config:
    if name not in PRESETS:
        raise InputError(f"SD3 config: unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
