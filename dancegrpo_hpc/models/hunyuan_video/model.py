"""HunyuanVideo diffusion transformer (T2V, I2V variants, T2I as one latent frame),
tensor parallel (megatron-core, optional Megatron sequence parallelism) and
Ulysses sequence parallel, with a layer spec choosing local or Transformer Engine
linears and a config choosing the attention backend.

forward() takes the tensors diffusers' HunyuanVideoTransformer3DModel takes and
returns the predicted velocity [B, C_out, F, H, W] on every rank.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ...attention import AttentionConfig
from ...checks import InputError, require
from ...distributed.spec import LayerSpec
from ..common.dit import ADALN_MODES, Build, ConditionEmbedding, JointDiT
from ..common.layers import MLPEmbedder, timestep_features
from .blocks import DualStreamBlock, RefinerBlock, SingleStreamBlock
from .config import HunyuanVideoConfig
from .layers import PatchEmbed, rope_tables

__all__ = ["ADALN_MODES", "HunyuanVideoDiT"]


class TokenRefiner(nn.Module):
    """Refines the LLM text embeddings with a few self-attention blocks conditioned on
    the timestep and the masked mean of the text (diffusers' HunyuanVideoTokenRefiner)."""

    def __init__(self, cfg: HunyuanVideoConfig, build: Build):
        super().__init__()
        self.time_text_embed = nn.Module()
        self.time_text_embed.timestep_embedder = MLPEmbedder(256, cfg.hidden_size)
        self.time_text_embed.text_embedder = MLPEmbedder(cfg.text_embed_dim, cfg.hidden_size)
        self.proj_in = nn.Linear(cfg.text_embed_dim, cfg.hidden_size)
        self.token_refiner = nn.Module()
        self.token_refiner.refiner_blocks = nn.ModuleList(RefinerBlock(cfg, build) for _ in range(cfg.num_refiner_layers))

    def forward(self, text, timestep, mask):
        if mask is None:
            pooled, pair = text.mean(dim=1), None
        else:
            m = mask.to(text.device).float().unsqueeze(-1)
            pooled = ((text * m).sum(dim=1) / m.sum(dim=1)).to(text.dtype)
            valid = mask.to(text.device).bool()
            pair = valid[:, None, None, :] & valid[:, None, :, None]
            pair[:, :, :, 0] = True  # every query sees the first token: no fully masked row
        tte = self.time_text_embed
        temb = tte.timestep_embedder(timestep_features(timestep).to(text.dtype)) + tte.text_embedder(pooled)
        x = self.proj_in(text).transpose(0, 1)
        for block in self.token_refiner.refiner_blocks:
            x = block(x, temb, pair)
        return x.transpose(0, 1)


def _drop_trailing_padding(text: torch.Tensor, mask: torch.Tensor):
    """Cuts text [B, L, C] and mask [B, L] after the batch's last valid token."""
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    keep = max(1, int((mask.bool() * positions).max()))
    return text[:, :keep], mask[:, :keep]


class HunyuanVideoDiT(JointDiT):
    family = "hunyuan_video"  # models/family.py
    diffusers_class = "HunyuanVideoTransformer3DModel"
    display_name = "HunyuanVideo"
    config_class = HunyuanVideoConfig
    sharded_blocks = JointDiT.sharded_blocks + ("context_embedder.token_refiner.",)

    def __init__(self, config: HunyuanVideoConfig, *, sequence_parallel: bool = False, spec: LayerSpec = LayerSpec(),
                 attention: AttentionConfig = AttentionConfig(), adaln: str = "replicated",
                 dtype: torch.dtype = torch.float32, device=None, init_weights: bool = True,
                 checkpoint_fraction: float = 0.0, compile: bool = False):
        super().__init__()
        build, device = self._setup(config, sequence_parallel=sequence_parallel, spec=spec, attention=attention,
                                    adaln=adaln, dtype=dtype, device=device, init_weights=init_weights)
        d, p, pt = config.hidden_size, config.patch_size, config.patch_size_t
        token_replace = config.image_condition_type == "token_replace"
        with torch.device(device):
            self.x_embedder = PatchEmbed((pt, p, p), config.in_channels, d)
            self.context_embedder = TokenRefiner(config, build)
            self.time_text_embed = ConditionEmbedding(d, config.pooled_projection_dim, config.guidance_embeds,
                                                      token_replace=token_replace)
            self.transformer_blocks = nn.ModuleList(DualStreamBlock(config, build, token_replace)
                                                    for _ in range(config.num_layers))
            self.single_transformer_blocks = nn.ModuleList(SingleStreamBlock(config, build, token_replace)
                                                           for _ in range(config.num_single_layers))
            self._build_head(pt * p * p * config.out_channels)
        self._finish(dtype, checkpoint_fraction, compile)

    def mlp_width(self, block: str) -> int:
        return self.config.refiner_mlp_hidden if block.startswith("context_embedder.") else self.config.mlp_hidden

    # ------------------------------------------------------------------------------------------
    def check_inputs(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                     pooled_projections, guidance) -> None:
        cfg = self.config
        where = f"HunyuanVideoDiT ({cfg.variant})"
        require(hidden_states.dim() == 5, f"{where}: hidden_states must be [B, C, F, H, W]; got {tuple(hidden_states.shape)}")
        b, c, f, h, w = hidden_states.shape
        if c != cfg.in_channels:
            hint = {"latent_concat": " (noisy latent + image latent + mask channels)",
                    "token_replace": " (the clean image latent replaces the first frame, no extra channels)"}
            raise InputError(f"{where}: hidden_states has {c} channels but this variant takes in_channels="
                             f"{cfg.in_channels}{hint.get(cfg.image_condition_type, '')}")
        require(f % cfg.patch_size_t == 0 and h % cfg.patch_size == 0 and w % cfg.patch_size == 0,
                f"{where}: latent size (frames {f}, height {h}, width {w}) must be divisible by the patch size "
                f"({cfg.patch_size_t}, {cfg.patch_size}, {cfg.patch_size})")
        require(encoder_hidden_states.dim() == 3 and encoder_hidden_states.shape[0] == b
                and encoder_hidden_states.shape[2] == cfg.text_embed_dim,
                f"{where}: encoder_hidden_states must be [B={b}, L, {cfg.text_embed_dim}]; got {tuple(encoder_hidden_states.shape)}")
        if encoder_attention_mask is not None:
            require(tuple(encoder_attention_mask.shape) == tuple(encoder_hidden_states.shape[:2]),
                    f"{where}: encoder_attention_mask must be [B, L] = {tuple(encoder_hidden_states.shape[:2])}; "
                    f"got {tuple(encoder_attention_mask.shape)}")
        require(pooled_projections is not None and tuple(pooled_projections.shape) == (b, cfg.pooled_projection_dim),
                f"{where}: pooled_projections must be [B={b}, {cfg.pooled_projection_dim}]")
        if cfg.guidance_embeds:
            require(guidance is not None, f"{where}: this model embeds the guidance scale; pass guidance (e.g. "
                                          "torch.full((B,), 6.0) * 1000 as DanceGRPO does)")

    def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask=None,
                pooled_projections=None, guidance=None):
        self.check_inputs(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, pooled_projections,
                          guidance)
        with self._fp8_context():
            return self._forward(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                                 pooled_projections, guidance)

    def _forward(self, x, timestep, text, text_mask, pooled, guidance):
        cfg = self.config
        b, _, f, h, w = x.shape
        p, pt = cfg.patch_size, cfg.patch_size_t
        grid = (f // pt, h // p, w // p)
        dtype = self.x_embedder.proj.weight.dtype
        timestep = timestep.expand(b) if timestep.dim() == 0 else timestep
        guidance = guidance.expand(b) if guidance is not None and guidance.dim() == 0 else guidance

        if text_mask is not None:
            # Text tokens after the last valid one in the batch never affect a valid output
            # (they are masked keys everywhere and excluded from the refiner's pooling):
            # drop them before any work. Prompts are padded to 256 tokens but hold tens.
            text, text_mask = _drop_trailing_padding(text, text_mask)
        temb, tr_emb = self.time_text_embed(timestep, pooled.to(dtype), guidance)
        video = self.x_embedder(x.to(dtype)).transpose(0, 1)  # [Nv, B, D]
        text = self.context_embedder(text.to(dtype), timestep, text_mask).transpose(0, 1)
        rotation = rope_tables(grid, cfg.rope_axes_dim, cfg.rope_theta, x.device)
        out = self._transform(video, text, temb, rotation, grid=grid,
                              text_lengths=None if text_mask is None else text_mask.sum(dim=1), tr_emb=tr_emb,
                              first_frame_tokens=grid[1] * grid[2] if cfg.image_condition_type == "token_replace" else 0)
        out = out.reshape(b, *grid, cfg.out_channels, pt, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return out.reshape(b, cfg.out_channels, f, h, w)
