"""FLUX.1 transformer (diffusers' FluxTransformer2DModel), tensor parallel (megatron-core,
optional Megatron sequence parallelism) and Ulysses sequence parallel, with a layer spec
choosing local or Transformer Engine linears and a config choosing the attention backend.

The blocks are the joint-attention blocks it shares with HunyuanVideo (models/common),
RoPE applied to text and image tokens from their position ids. forward() takes
diffusers' forward keyword arguments (packed latents [B, N, in_channels], T5 embeddings,
CLIP pooled embedding, timestep in [0, 1] and guidance scale, both x1000 inside, img_ids,
txt_ids) and returns the tensor diffusers returns as `.sample`, on every rank.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from ...attention import AttentionConfig
from ...checks import InputError, require
from ...distributed.spec import LayerSpec
from ..common.blocks import DualStreamBlock, SingleStreamBlock
from ..common.dit import ConditionEmbedding, JointDiT
from ..common.layers import rope_rotations
from .config import FluxConfig

__all__ = ["FluxDiT"]


def rope_from_ids(ids: torch.Tensor, cfg: FluxConfig) -> torch.Tensor:
    """Rotations [N, head_dim / 2] for position ids [N, axes] (FluxPosEmbed: angles in float64,
    float32 where the device has no float64)."""
    wide = ids.device.type not in ("mps", "npu")
    return rope_rotations(ids, cfg.axes_dims_rope, cfg.rope_theta, torch.float64 if wide else torch.float32)


class FluxDiT(JointDiT):
    family = "flux"  # models/family.py
    diffusers_class = "FluxTransformer2DModel"
    display_name = "FLUX"
    config_class = FluxConfig

    def __init__(self, config: FluxConfig, *, sequence_parallel: bool = False, spec: LayerSpec = LayerSpec(),
                 attention: AttentionConfig = AttentionConfig(), adaln: str = "replicated",
                 dtype: torch.dtype = torch.float32, device=None, init_weights: bool = True,
                 checkpoint_fraction: float = 0.0, compile: bool = False):
        super().__init__()
        require(attention.backend != "sliding_tile",
                "FluxDiT: attention backend 'sliding_tile' needs a video token grid, which FLUX's tokens (placed by "
                "img_ids) do not have; use model.attention=sdpa (or flash, xformers, te)")
        build, device = self._setup(config, sequence_parallel=sequence_parallel, spec=spec, attention=attention,
                                    adaln=adaln, dtype=dtype, device=device, init_weights=init_weights)
        d = config.hidden_size
        with torch.device(device):
            self.time_text_embed = ConditionEmbedding(d, config.pooled_projection_dim, config.guidance_embeds,
                                                      guidance_first=True)
            self.context_embedder = nn.Linear(config.joint_attention_dim, d)
            self.x_embedder = nn.Linear(config.in_channels, d)
            self.transformer_blocks = nn.ModuleList(DualStreamBlock(config, build) for _ in range(config.num_layers))
            self.single_transformer_blocks = nn.ModuleList(SingleStreamBlock(config, build)
                                                           for _ in range(config.num_single_layers))
            self._build_head(config.patch_size ** 2 * config.output_channels)
        self._finish(dtype, checkpoint_fraction, compile)

    # ------------------------------------------------------------------------------------------
    def _ids(self, ids, name: str, tokens: int, from_name: str) -> torch.Tensor:
        axes = len(self.config.axes_dims_rope)
        where = f"FluxDiT ({self.config.variant})"
        require(isinstance(ids, torch.Tensor), f"{where}: {name} must be a tensor [{tokens}, {axes}] of position ids")
        if ids.dim() == 3:  # diffusers takes the first sample's ids, with a deprecation warning
            warnings.warn(f"FluxDiT: {name} with a batch dimension is deprecated (as in diffusers); pass [N, {axes}]",
                          FutureWarning, stacklevel=3)
            ids = ids[0]
        require(ids.dim() == 2 and tuple(ids.shape) == (tokens, axes),
                f"{where}: {name} must be [{tokens}, {axes}] (one id per token of {from_name}, one column per RoPE axis "
                f"of axes_dims_rope {tuple(self.config.axes_dims_rope)}); got {tuple(ids.shape)}")
        return ids

    def check_inputs(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, guidance) -> None:
        cfg = self.config
        where = f"FluxDiT ({cfg.variant})"
        require(isinstance(hidden_states, torch.Tensor) and hidden_states.dim() == 3,
                f"{where}: hidden_states must be packed latents [B, N, {cfg.in_channels}] (models/flux/packing.pack); "
                f"got {tuple(getattr(hidden_states, 'shape', ()))}")
        b, _, c = hidden_states.shape
        require(c == cfg.in_channels, f"{where}: hidden_states has {c} channels per token but in_channels="
                                      f"{cfg.in_channels} (16 latent channels x a 2x2 patch = 64 for FLUX.1)")
        require(isinstance(encoder_hidden_states, torch.Tensor) and encoder_hidden_states.dim() == 3
                and encoder_hidden_states.shape[0] == b and encoder_hidden_states.shape[2] == cfg.joint_attention_dim,
                f"{where}: encoder_hidden_states must be [B={b}, L, joint_attention_dim={cfg.joint_attention_dim}]; "
                f"got {tuple(getattr(encoder_hidden_states, 'shape', ()))}")
        require(isinstance(pooled_projections, torch.Tensor)
                and tuple(pooled_projections.shape) == (b, cfg.pooled_projection_dim),
                f"{where}: pooled_projections must be [B={b}, pooled_projection_dim={cfg.pooled_projection_dim}]; "
                f"got {tuple(getattr(pooled_projections, 'shape', ()))}")
        require(isinstance(timestep, torch.Tensor) and timestep.dim() <= 1 and timestep.numel() in (1, b),
                f"{where}: timestep must be a tensor [B={b}] (or one value) in [0, 1] (sigma; x1000 inside, as "
                f"diffusers); got {tuple(getattr(timestep, 'shape', ())) if timestep is not None else None}")
        if cfg.guidance_embeds:
            require(guidance is not None, f"{where}: this model embeds the guidance scale; pass guidance, e.g. "
                                          "torch.full((B,), 3.5) (x1000 inside, as diffusers)")
            require(isinstance(guidance, torch.Tensor) and guidance.dim() <= 1 and guidance.numel() in (1, b),
                    f"{where}: guidance must be a tensor [B={b}] (or one value); got {guidance!r}"[:300])
        elif guidance is not None:
            raise InputError(f"{where}: this model has no guidance embedding (guidance_embeds=False, e.g. "
                             "FLUX.1-schnell); pass guidance=None")

    def forward(self, hidden_states, encoder_hidden_states=None, pooled_projections=None, timestep=None,
                img_ids=None, txt_ids=None, guidance=None):
        self.check_inputs(hidden_states, encoder_hidden_states, pooled_projections, timestep, guidance)
        img_ids = self._ids(img_ids, "img_ids", hidden_states.shape[1], "hidden_states")
        txt_ids = self._ids(txt_ids, "txt_ids", encoder_hidden_states.shape[1], "encoder_hidden_states")
        with self._fp8_context():
            return self._forward(hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids,
                                 txt_ids, guidance)

    def _forward(self, x, text, pooled, timestep, img_ids, txt_ids, guidance):
        b, n_image, _ = x.shape
        dtype = self.x_embedder.weight.dtype
        # diffusers: timestep.to(hidden dtype) * 1000 (and the same for guidance), then sinusoidal features
        timestep = (timestep.to(x.device, dtype) * 1000).reshape(-1).expand(b)
        if guidance is not None:
            guidance = (guidance.to(x.device, dtype) * 1000).reshape(-1).expand(b)
        temb, _ = self.time_text_embed(timestep, pooled.to(dtype), guidance)
        image = self.x_embedder(x.to(dtype)).transpose(0, 1)  # [N, B, D]
        text = self.context_embedder(text.to(dtype)).transpose(0, 1)
        rope = [rope_from_ids(ids.to(x.device), self.config) for ids in (img_ids, txt_ids)]
        return self._transform(image, text, temb, rope[0], grid=(1, 1, n_image), text_rope=rope[1])
