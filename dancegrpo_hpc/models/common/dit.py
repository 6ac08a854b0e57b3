"""What the joint-attention DiTs (HunyuanVideo, FLUX) share around their blocks: the linear
factories, the timestep / guidance / pooled-text embedding, and a base module that sets up
the parallel context, shards the video and text streams over the sequence-parallel ranks,
runs the dual- then single-stream blocks and applies the output head.

A family's module subclasses JointDiT: its __init__ calls _setup (checks, groups, linear
factories), builds its embeddings and blocks, _build_head, then _finish (dtype, activation
checkpointing, compile); its forward embeds its inputs into full video / text streams
[S, B, D] and their RoPE rotations, then calls _transform.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.model_parallel_config import ModelParallelConfig

from ...attention import AttentionConfig, JointMask
from ...checks import check_choice, require
from ...distributed.parallel import ParallelContext
from ...distributed.parallelize import apply_activation_checkpointing, apply_compile
from ...distributed.sequence import TokenRouter, pad_tokens, padded_length
from ...distributed.spec import LayerSpec, LinearFactory
from .blocks import ForwardContext
from .layers import MLPEmbedder, modulate, timestep_features

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
    """temb = timestep + (guidance) + pooled-text embeddings (diffusers'
    HunyuanVideoConditionEmbedding, CombinedTimestep(Guidance)TextProjEmbeddings), summed
    in the reference's order: HunyuanVideo (t + pooled) + guidance, FLUX (t + guidance) +
    pooled (guidance_first). token_replace adds the embedding of timestep 0 for the clean
    first frame."""

    def __init__(self, hidden: int, pooled_dim: int, guidance: bool, token_replace: bool = False,
                 guidance_first: bool = False):
        super().__init__()
        self.timestep_embedder = MLPEmbedder(256, hidden)
        self.text_embedder = MLPEmbedder(pooled_dim, hidden)
        self.guidance_embedder = MLPEmbedder(256, hidden) if guidance else None
        self.token_replace, self.guidance_first = token_replace, guidance_first

    def forward(self, timestep, pooled, guidance):
        dtype = pooled.dtype
        pooled_emb = self.text_embedder(pooled)
        temb = self.timestep_embedder(timestep_features(timestep).to(dtype))
        guided = self.guidance_embedder is not None
        if guided and self.guidance_first:
            temb = temb + self.guidance_embedder(timestep_features(guidance).to(dtype))
        temb = temb + pooled_emb
        if guided and not self.guidance_first:
            temb = temb + self.guidance_embedder(timestep_features(guidance).to(dtype))
        tr_emb = None
        if self.token_replace:
            tr_emb = self.timestep_embedder(timestep_features(torch.zeros_like(timestep)).to(dtype)) + pooled_emb
        return temb, tr_emb


def _rope_chunk(rotation: torch.Tensor, span: int, ulysses: int, rank: int) -> torch.Tensor:
    """Rotations of one stream padded to `span` tokens (padding: no rotation), this Ulysses
    rank's chunk."""
    identity = torch.ones(span - rotation.shape[0], rotation.shape[1], dtype=rotation.dtype, device=rotation.device)
    return torch.cat([rotation, identity]).chunk(ulysses, dim=0)[rank]


class JointDiT(nn.Module):
    """Base of the joint-attention DiTs. Subclasses set the class attributes."""

    family = ""  # models/family.py
    diffusers_class = ""  # the diffusers class whose weights and forward it reproduces
    display_name = ""  # in messages: "HunyuanVideo", "FLUX"
    config_class = None  # its config dataclass (from_diffusers / to_diffusers)
    sharded_blocks: Tuple[str, ...] = ("transformer_blocks.", "single_transformer_blocks.")  # weights.plan

    def _setup(self, config, *, sequence_parallel: bool, spec: LayerSpec, attention: AttentionConfig, adaln: str,
               dtype: torch.dtype, device, init_weights: bool) -> Tuple[Build, torch.device]:
        """Checks the layout against the config, reads the parallel groups, and returns the
        linear factories and the device to build on."""
        name = type(self).__name__
        check_choice(name, "adaln", adaln, ADALN_MODES)
        spec.validate()
        self.ctx = ParallelContext.current(sequence_parallel)
        layout = self.ctx.layout
        layout.validate(config.num_attention_heads)
        attention.validate(config.num_attention_heads)
        tp = layout.tp
        require(config.mlp_hidden % tp == 0 and (6 * config.hidden_size) % tp == 0,
                f"{name}: MLP width {config.mlp_hidden} and AdaLN width {6 * config.hidden_size} must divide by tp={tp}")
        self.config, self.attention_config, self.spec, self.adaln = config, attention, spec, adaln
        self.router = TokenRouter(self.ctx)
        device = torch.device(device) if device is not None else torch.device("cpu")
        build = Build(self.ctx, spec, adaln, dtype, device.type == "cuda", init_weights and device.type != "meta")
        self.linears = build.linear
        return build, device

    def _build_head(self, out_features: int) -> None:
        """norm_out (AdaLayerNormContinuous: scale, shift from temb) and proj_out, replicated."""
        d = self.config.hidden_size
        self.norm_out = nn.Module()
        self.norm_out.linear = nn.Linear(d, 2 * d)
        self.proj_out = nn.Linear(d, out_features)

    def _finish(self, dtype: torch.dtype, checkpoint_fraction: float, compile: bool) -> None:
        if self.ctx.layout.sequence_parallel:  # applied to this rank's tokens only: partial gradients over TP
            for param in self.proj_out.parameters():
                setattr(param, "sequence_parallel", True)
        self.to(dtype)
        apply_activation_checkpointing(self, checkpoint_fraction)
        if compile:
            apply_compile(self)

    def block_lists(self):
        """The transformer blocks that activation checkpointing and compile wrap, in order."""
        return [self.transformer_blocks, self.single_transformer_blocks]

    def mlp_width(self, block: str) -> int:
        """The MLP width of the block named `block` (the weight plan splits it over TP)."""
        return self.config.mlp_hidden

    def weight_plan(self, rank: int):
        """Our parameter name -> (slices of diffusers tensors, concatenation dim) on TP rank
        `rank` (weights.plan): what the weight I/O and LoRA (distributed/lora.py) read."""
        from .weights import plan

        return plan(self, rank)

    @classmethod
    def from_diffusers(cls, model_or_path, **options):
        """Builds the model for this rank's TP / Ulysses shard from a diffusers model instance
        or checkpoint directory of its class (each rank reads only its slices). Options: the
        constructor's keyword arguments (sequence_parallel, spec, attention, adaln, dtype,
        device, checkpoint_fraction, compile)."""
        from .weights import load_diffusers

        return load_diffusers(cls, model_or_path, **options)

    def save_diffusers(self, directory: str, max_shard_bytes: int = 5 * 1024**3) -> None:
        """A diffusers checkpoint folder of this model (collective over the TP group; rank 0 writes)."""
        from .weights import save_diffusers

        save_diffusers(self, directory, max_shard_bytes)

    def _fp8_context(self):
        amax_group = parallel_state.get_amax_reduction_group(with_context_parallel=True) if self.spec.fp8 else None
        return self.linears.fp8_context(amax_group)

    def _transform(self, video: torch.Tensor, text: torch.Tensor, temb: torch.Tensor, video_rope: torch.Tensor, *,
                   grid: Tuple[int, int, int], text_lengths: Optional[torch.Tensor] = None,
                   text_rope: Optional[torch.Tensor] = None, tr_emb: Optional[torch.Tensor] = None,
                   first_frame_tokens: int = 0) -> torch.Tensor:
        """The blocks and the output head over full streams video [Nv, B, D] and text [Nt, B, D]
        (the same on every rank) with their rotations [N, head_dim / 2] (text_rope None: text
        is not rotated); returns proj_out's output for the video tokens [B, Nv, out] on every
        rank. text_lengths [B]: valid text tokens per sample (None: all). first_frame_tokens:
        video tokens that take tr_emb's modulation (token_replace)."""
        cfg, router, ctx = self.config, self.router, self.ctx
        n_video, n_text = video.shape[0], text.shape[0]
        shards, u, c = ctx.layout.sequence_shards, ctx.layout.ulysses, ctx.ulysses_rank
        video_span, text_span = padded_length(n_video, shards), padded_length(n_text, shards)
        if text_lengths is None and text_span > n_text:  # the padding that splits text evenly is no key
            text_lengths = torch.full((video.shape[1],), n_text, device=video.device)
        mask = JointMask(n_video, video_span - n_video, text_span, text_lengths, grid)
        video = router.shard(pad_tokens(video, video_span))
        text = router.shard(pad_tokens(text, text_span))

        heads_here = cfg.num_attention_heads // (ctx.layout.tp * u)
        head_ids = (ctx.tp_rank * cfg.num_attention_heads // ctx.layout.tp + c * heads_here
                    + torch.arange(heads_here, device=video.device))
        first_frame = None
        if first_frame_tokens:
            piece = video.shape[0]
            first_frame = ctx.shard_index * piece + torch.arange(piece, device=video.device) < first_frame_tokens
        fctx = ForwardContext(router, mask, self.attention_config, _rope_chunk(video_rope, video_span, u, c),
                              video_span // u, text_span // u, head_ids, first_frame,
                              None if text_rope is None else _rope_chunk(text_rope, text_span, u, c))

        for block in self.transformer_blocks:
            video, text = block(video, text, temb, tr_emb, fctx)
        for block in self.single_transformer_blocks:
            video, text = block(video, text, temb, tr_emb, fctx)

        scale, shift = router.sync_replicated(self.norm_out.linear(F.silu(temb))).chunk(2, dim=-1)
        out = self.proj_out(modulate(video, shift, scale))
        return router.unshard(out)[:n_video].transpose(0, 1)
