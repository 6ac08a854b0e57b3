"""HunyuanVideo diffusion transformer (T2V, I2V variants, T2I as one latent frame),
tensor parallel (megatron-core, optional Megatron sequence parallelism) and
Ulysses sequence parallel, with a layer spec choosing local or Transformer Engine
linears and a config choosing the attention backend.

forward() takes the tensors diffusers' HunyuanVideoTransformer3DModel takes and
returns the predicted velocity [B, C_out, F, H, W] on every rank.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.model_parallel_config import ModelParallelConfig

from ...attention import AttentionConfig, JointMask
from ...checks import InputError, check_choice, require
from ...distributed.parallel import ParallelContext
from ...distributed.sequence import TokenRouter, pad_tokens, padded_length
from .blocks import DualStreamBlock, ForwardContext, RefinerBlock, SingleStreamBlock
from .config import HunyuanVideoConfig
from .layers import MLPEmbedder, PatchEmbed, modulate, rope_tables, timestep_features
from ...distributed.parallelize import apply_activation_checkpointing, apply_compile
from ...distributed.spec import LayerSpec, LinearFactory

ADALN_MODES = ("replicated", "column")


class Build:
    """What block constructors need: linear factories with and without Megatron SP."""

    def __init__(self, ctx: ParallelContext, spec: LayerSpec, adaln: str, dtype: torch.dtype, on_gpu: bool, init: bool):
        common = dict(tensor_model_parallel_size=ctx.layout.tp, context_parallel_size=ctx.layout.ulysses,
                      use_cpu_initialization=not on_gpu, perform_initialization=init, params_dtype=dtype)
        self.linear = LinearFactory(spec, ModelParallelConfig(sequence_parallel=ctx.layout.sequence_parallel, **common))
        self.plain = LinearFactory(spec, ModelParallelConfig(sequence_parallel=False, **common))
        self.tp, self.adaln = ctx.layout.tp, adaln


class ConditionEmbedding(nn.Module):
    """temb = timestep + (guidance) + pooled-text embeddings; token_replace adds the
    embedding of timestep 0 for the clean first frame."""

    def __init__(self, cfg: HunyuanVideoConfig):
        super().__init__()
        d = cfg.hidden_size
        self.timestep_embedder = MLPEmbedder(256, d)
        self.text_embedder = MLPEmbedder(cfg.pooled_projection_dim, d)
        self.guidance_embedder = MLPEmbedder(256, d) if cfg.guidance_embeds else None
        self.token_replace = cfg.image_condition_type == "token_replace"

    def forward(self, timestep, pooled, guidance):
        dtype = pooled.dtype
        pooled_emb = self.text_embedder(pooled)
        temb = self.timestep_embedder(timestep_features(timestep).to(dtype)) + pooled_emb
        if self.guidance_embedder is not None:
            temb = temb + self.guidance_embedder(timestep_features(guidance).to(dtype))
        tr_emb = None
        if self.token_replace:
            tr_emb = self.timestep_embedder(timestep_features(torch.zeros_like(timestep)).to(dtype)) + pooled_emb
        return temb, tr_emb


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


class HunyuanVideoDiT(nn.Module):
    family = "hunyuan_video"  # models/family.py

    def __init__(self, config: HunyuanVideoConfig, *, sequence_parallel: bool = False, spec: LayerSpec = LayerSpec(),
                 attention: AttentionConfig = AttentionConfig(), adaln: str = "replicated",
                 dtype: torch.dtype = torch.float32, device=None, init_weights: bool = True,
                 checkpoint_fraction: float = 0.0, compile: bool = False):
        super().__init__()
        check_choice("HunyuanVideoDiT", "adaln", adaln, ADALN_MODES)
        spec.validate()
        self.ctx = ParallelContext.current(sequence_parallel)
        layout = self.ctx.layout
        layout.validate(config.num_attention_heads)
        attention.validate(config.num_attention_heads)
        tp = layout.tp
        require(config.mlp_hidden % tp == 0 and (6 * config.hidden_size) % tp == 0,
                f"HunyuanVideoDiT: MLP width {config.mlp_hidden} and AdaLN width {6 * config.hidden_size} must divide by tp={tp}")
        self.config, self.attention_config, self.spec, self.adaln = config, attention, spec, adaln
        self.router = TokenRouter(self.ctx)
        device = torch.device(device) if device is not None else torch.device("cpu")
        build = Build(self.ctx, spec, adaln, dtype, device.type == "cuda", init_weights and device.type != "meta")
        self.linears = build.linear
        d, p, pt = config.hidden_size, config.patch_size, config.patch_size_t
        with torch.device(device):
            self.x_embedder = PatchEmbed((pt, p, p), config.in_channels, d)
            self.context_embedder = TokenRefiner(config, build)
            self.time_text_embed = ConditionEmbedding(config)
            self.transformer_blocks = nn.ModuleList(DualStreamBlock(config, build) for _ in range(config.num_layers))
            self.single_transformer_blocks = nn.ModuleList(SingleStreamBlock(config, build)
                                                           for _ in range(config.num_single_layers))
            self.norm_out = nn.Module()
            self.norm_out.linear = nn.Linear(d, 2 * d)
            self.proj_out = nn.Linear(d, pt * p * p * config.out_channels)
        if layout.sequence_parallel:  # applied to this rank's tokens only: partial gradients over TP
            for param in self.proj_out.parameters():
                setattr(param, "sequence_parallel", True)
        self.to(dtype)
        apply_activation_checkpointing(self, checkpoint_fraction)
        if compile:
            apply_compile(self)

    def block_lists(self):
        """The transformer blocks that activation checkpointing and compile wrap, in order."""
        return [self.transformer_blocks, self.single_transformer_blocks]

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_diffusers(cls, model_or_path, **options) -> "HunyuanVideoDiT":
        """Builds the model for this rank's TP / Ulysses shard from a diffusers
        HunyuanVideoTransformer3DModel instance or checkpoint directory (each rank reads
        only its slices). Options: sequence_parallel, spec, attention, adaln, dtype, device,
        checkpoint_fraction, compile."""
        from .weights import load_diffusers

        return load_diffusers(cls, model_or_path, **options)

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
        amax_group = parallel_state.get_amax_reduction_group(with_context_parallel=True) if self.spec.fp8 else None
        with self.linears.fp8_context(amax_group):
            return self._forward(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                                 pooled_projections, guidance)

    def _forward(self, x, timestep, text, text_mask, pooled, guidance):
        cfg, router, ctx = self.config, self.router, self.ctx
        b, _, f, h, w = x.shape
        p, pt = cfg.patch_size, cfg.patch_size_t
        grid = (f // pt, h // p, w // p)
        n_video, n_text = math.prod(grid), text.shape[1]
        dtype = self.x_embedder.proj.weight.dtype
        timestep = timestep.expand(b) if timestep.dim() == 0 else timestep
        guidance = guidance.expand(b) if guidance is not None and guidance.dim() == 0 else guidance

        if text_mask is not None:
            # Text tokens after the last valid one in the batch never affect a valid output
            # (they are masked keys everywhere and excluded from the refiner's pooling):
            # drop them before any work. Prompts are padded to 256 tokens but hold tens.
            text, text_mask = _drop_trailing_padding(text, text_mask)
            n_text = text.shape[1]
        temb, tr_emb = self.time_text_embed(timestep, pooled.to(dtype), guidance)
        video = self.x_embedder(x.to(dtype)).transpose(0, 1)  # [Nv, B, D]
        text = self.context_embedder(text.to(dtype), timestep, text_mask).transpose(0, 1)

        shards = ctx.layout.sequence_shards
        video_span, text_span = padded_length(n_video, shards), padded_length(n_text, shards)
        lengths = None if text_mask is None else text_mask.sum(dim=1)
        mask = JointMask(n_video, video_span - n_video, text_span, lengths, grid)
        video = router.shard(pad_tokens(video, video_span))
        text = router.shard(pad_tokens(text, text_span))

        u, c = ctx.layout.ulysses, ctx.ulysses_rank
        rotation = rope_tables(grid, cfg.rope_axes_dim, cfg.rope_theta, x.device)
        identity = torch.ones(video_span - n_video, rotation.shape[1], dtype=rotation.dtype, device=x.device)
        rotation = torch.cat([rotation, identity]).chunk(u, dim=0)[c]  # padding tokens: no rotation
        heads_here = cfg.num_attention_heads // (ctx.layout.tp * u)
        head_ids = (ctx.tp_rank * cfg.num_attention_heads // ctx.layout.tp + c * heads_here
                    + torch.arange(heads_here, device=x.device))
        first_frame = None
        if cfg.image_condition_type == "token_replace":
            piece = video.shape[0]
            positions = ctx.shard_index * piece + torch.arange(piece, device=x.device)
            first_frame = positions < grid[1] * grid[2]
        fctx = ForwardContext(router, mask, self.attention_config, rotation, video_span // u, text_span // u,
                              head_ids, first_frame)

        for block in self.transformer_blocks:
            video, text = block(video, text, temb, tr_emb, fctx)
        for block in self.single_transformer_blocks:
            video, text = block(video, text, temb, tr_emb, fctx)

        scale, shift = router.sync_replicated(self.norm_out.linear(F.silu(temb))).chunk(2, dim=-1)
        out = self.proj_out(modulate(video, shift, scale))
        out = router.unshard(out)[:n_video].transpose(0, 1)  # [B, Nv, C p p]
        out = out.reshape(b, *grid, cfg.out_channels, pt, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return out.reshape(b, cfg.out_channels, f, h, w)
