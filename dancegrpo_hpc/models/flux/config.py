"""FLUX.1 transformer configuration: the released presets and a tiny test config.

Field names and defaults follow diffusers' FluxTransformer2DModel config (its __init__
arguments), so a checkpoint's config.json maps onto this dataclass one to one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional, Tuple

from ...checks import InputError, require

ROPE_THETA = 10000.0  # FluxPosEmbed(theta=10000), not a config field
MLP_RATIO = 4.0  # FeedForward's mult and FluxSingleTransformerBlock's mlp_ratio, not config fields


@dataclass(frozen=True)
class FluxConfig:
    family: ClassVar[str] = "flux"  # models/family.py
    patch_size: int = 1
    in_channels: int = 64  # packed 2x2 latent patches: 16 latent channels x 4
    out_channels: Optional[int] = None  # None: in_channels
    num_layers: int = 19  # dual-stream blocks
    num_single_layers: int = 38
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 4096  # T5 text embedding width
    pooled_projection_dim: int = 768  # CLIP pooled embedding width
    guidance_embeds: bool = False
    axes_dims_rope: Tuple[int, ...] = (16, 56, 56)
    variant: str = field(default="custom", compare=False)  # name used in messages

    def __post_init__(self):
        where = f"FluxConfig ({self.variant})"
        for name in ("patch_size", "in_channels", "num_attention_heads", "attention_head_dim", "joint_attention_dim",
                     "pooled_projection_dim"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, f"{where}: {name} must be a positive integer; got {value!r}")
        for name in ("num_layers", "num_single_layers"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 0, f"{where}: {name} must be an integer >= 0; got {value!r}")
        require(self.out_channels is None or (isinstance(self.out_channels, int) and self.out_channels >= 1),
                f"{where}: out_channels must be a positive integer or None (= in_channels); got {self.out_channels!r}")
        axes = tuple(self.axes_dims_rope)
        require(len(axes) >= 1 and all(isinstance(d, int) and d > 0 and d % 2 == 0 for d in axes),
                f"{where}: axes_dims_rope entries must be positive even integers (RoPE rotates channel pairs); "
                f"got {axes}")
        require(sum(axes) == self.attention_head_dim,
                f"{where}: axes_dims_rope {axes} sums to {sum(axes)} but must equal attention_head_dim "
                f"{self.attention_head_dim}; change one so they agree (FLUX.1: (16, 56, 56) for 128)")

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * MLP_RATIO)

    @property
    def latent_channels(self) -> int:
        """Channels of the latent image the 2x2 packing makes the in_channels of (16 for FLUX.1)."""
        return self.in_channels // 4

    @property
    def output_channels(self) -> int:
        """Channels per output token before the patch: out_channels, or in_channels when None."""
        return self.out_channels or self.in_channels

    @property
    def rope_theta(self) -> float:
        return ROPE_THETA

    @classmethod
    def from_diffusers(cls, config: Dict[str, Any], variant: str = "diffusers checkpoint") -> "FluxConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"variant"}
        kwargs = {k: v for k, v in config.items() if k in names}
        if "axes_dims_rope" in kwargs:
            kwargs["axes_dims_rope"] = tuple(kwargs["axes_dims_rope"])
        return cls(**kwargs, variant=variant)

    def to_diffusers(self) -> Dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "variant"}
        out["axes_dims_rope"] = list(self.axes_dims_rope)
        return out

    def replace(self, **changes) -> "FluxConfig":
        return dataclasses.replace(self, **changes)


_DEV = FluxConfig(guidance_embeds=True, variant="flux-dev")
PRESETS: Dict[str, FluxConfig] = {
    # FLUX.1-dev: guidance-distilled (embedded guidance scale, no real CFG)
    "flux-dev": _DEV,
    # FLUX.1-schnell: timestep-distilled, no guidance embedding
    "flux-schnell": _DEV.replace(guidance_embeds=False, variant="flux-schnell"),
    # the same architecture, tiny: 4 latent channels (16 packed), 4 heads x 16, 2 + 2 blocks
    "flux-tiny": FluxConfig(in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
                            num_attention_heads=4, joint_attention_dim=24, pooled_projection_dim=12,
                            guidance_embeds=True, axes_dims_rope=(4, 6, 6), variant="flux-tiny"),
}


def preset(name: str) -> FluxConfig:
    if name not in PRESETS:
        raise InputError(f"FLUX config: unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
