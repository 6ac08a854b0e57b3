"""Stable Diffusion 3 / 3.5 transformer (diffusers' SD3Transformer2DModel: SD3 medium, SD3.5
medium with its dual attention, SD3.5 large), tensor parallel (megatron-core, optional
Megatron sequence parallelism) and Ulysses sequence parallel, with a layer spec choosing
local or Transformer Engine linears and a config choosing the attention backend.

forward() takes diffusers' forward arguments (latents [B, C, H, W], text embeddings,
pooled embedding, timestep in diffusers' 0..1000 units) and returns the tensor diffusers
returns as `.sample`, [B, C_out, H, W], on every rank.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ...attention import AttentionConfig
from ...checks import InputError, require
from ...distributed.spec import LayerSpec
from ..common.dit import ConditionEmbedding, JointDiT
from .blocks import JointBlock
from .config import SD3Config
from .layers import PatchEmbed

__all__ = ["SD3DiT"]


class SD3DiT(JointDiT):
    family = "sd3"  # models/family.py
    diffusers_class = "SD3Transformer2DModel"
    display_name = "SD3"
    config_class = SD3Config
    sharded_blocks = ("transformer_blocks.",)

    def __init__(self, config: SD3Config, *, sequence_parallel: bool = False, spec: LayerSpec = LayerSpec(),
                 attention: AttentionConfig = AttentionConfig(), adaln: str = "replicated",
                 dtype: torch.dtype = torch.float32, device=None, init_weights: bool = True,
                 checkpoint_fraction: float = 0.0, compile: bool = False):
        super().__init__()
        require(attention.backend != "sliding_tile",
                "SD3DiT: attention backend 'sliding_tile' is not supported for SD3 (its tile windows are built and "
                "tested for HunyuanVideo's video grids); use model.attention=sdpa (or flash, xformers, te)")
        build, device = self._setup(config, sequence_parallel=sequence_parallel, spec=spec, attention=attention,
                                    adaln=adaln, dtype=dtype, device=device, init_weights=init_weights)
        d, p = config.hidden_size, config.patch_size
        with torch.device(device):
            self.pos_embed = PatchEmbed(p, config.in_channels, d, config.sample_size // p, config.pos_embed_max_size)
            self.time_text_embed = ConditionEmbedding(d, config.pooled_projection_dim, guidance=False)
            self.context_embedder = nn.Linear(config.joint_attention_dim, config.caption_projection_dim)
            self.transformer_blocks = nn.ModuleList(JointBlock(config, build, i) for i in range(config.num_layers))
            self.single_transformer_blocks = nn.ModuleList()  # JointDiT's second block list: none in SD3
            self._build_head(p * p * config.output_channels)
        self._finish(dtype, checkpoint_fraction, compile)

    def block_lists(self):
        return [self.transformer_blocks]

    def weight_plan(self, rank: int):
        """Our tensor name -> (slices of diffusers tensors, concatenation dim) on TP rank `rank`
        (sd3/weights.plan): what the weight I/O and LoRA (distributed/lora.py) read."""
        from .weights import plan

        return plan(self, rank)

    @classmethod
    def from_diffusers(cls, model_or_path, **options):
        """Builds the model for this rank's TP / Ulysses shard from a diffusers
        SD3Transformer2DModel or checkpoint directory (each rank reads only its slices).
        Options: the constructor's keyword arguments."""
        from .weights import load_diffusers

        return load_diffusers(cls, model_or_path, **options)

    def save_diffusers(self, directory: str, max_shard_bytes: int = 5 * 1024**3) -> None:
        """A diffusers checkpoint folder of this model (collective over the TP group; rank 0 writes)."""
        from .weights import save_diffusers

        save_diffusers(self, directory, max_shard_bytes)

    # ------------------------------------------------------------------------------------------
    def check_inputs(self, hidden_states, encoder_hidden_states, pooled_projections, timestep) -> None:
        cfg = self.config
        where = f"SD3DiT ({cfg.variant})"
        require(isinstance(hidden_states, torch.Tensor) and hidden_states.dim() == 4,
                f"{where}: hidden_states must be latents [B, C, H, W]; got "
                f"{tuple(getattr(hidden_states, 'shape', ())) or type(hidden_states).__name__}")
        b, c, h, w = hidden_states.shape
        require(c == cfg.in_channels, f"{where}: hidden_states has {c} channels but in_channels={cfg.in_channels}")
        p = cfg.patch_size
        require(h % p == 0 and w % p == 0,
                f"{where}: latent height {h} and width {w} must be divisible by patch_size={p}")
        m = cfg.pos_embed_max_size
        if m is not None and max(h, w) // p > m:
            raise InputError(f"{where}: a latent of {h} x {w} is {h // p} x {w // p} patches, more than the position "
                             f"table's pos_embed_max_size={m} per side; use at most {m * p} latent pixels per side "
                             f"({m * p * 8} image pixels with SD3's 8x VAE)")
        require(isinstance(encoder_hidden_states, torch.Tensor) and encoder_hidden_states.dim() == 3
                and encoder_hidden_states.shape[0] == b and encoder_hidden_states.shape[2] == cfg.joint_attention_dim,
                f"{where}: encoder_hidden_states must be [B={b}, L, joint_attention_dim={cfg.joint_attention_dim}] "
                f"(CLIP-L + CLIP-G padded to 4096, then T5); got {tuple(getattr(encoder_hidden_states, 'shape', ()))}")
        require(isinstance(pooled_projections, torch.Tensor)
                and tuple(pooled_projections.shape) == (b, cfg.pooled_projection_dim),
                f"{where}: pooled_projections must be [B={b}, pooled_projection_dim={cfg.pooled_projection_dim}] "
                f"(CLIP-L and CLIP-G pooled); got {tuple(getattr(pooled_projections, 'shape', ()))}")
        require(isinstance(timestep, torch.Tensor) and timestep.dim() <= 1 and timestep.numel() in (1, b),
                f"{where}: timestep must be a tensor [B={b}] (or one value) in diffusers' units, sigma x 1000; got "
                f"{tuple(timestep.shape) if isinstance(timestep, torch.Tensor) else timestep!r}")

    def forward(self, hidden_states, encoder_hidden_states=None, pooled_projections=None, timestep=None):
        self.check_inputs(hidden_states, encoder_hidden_states, pooled_projections, timestep)
        with self._fp8_context():
            return self._forward(hidden_states, encoder_hidden_states, pooled_projections, timestep)

    def _forward(self, x, text, pooled, timestep):
        cfg = self.config
        b, _, h, w = x.shape
        p, out_channels = cfg.patch_size, cfg.output_channels
        dtype = self.pos_embed.proj.weight.dtype
        temb, _ = self.time_text_embed(timestep.reshape(-1).expand(b), pooled.to(dtype), None)
        image = self.pos_embed(x.to(dtype)).transpose(0, 1)  # [N, B, D]
        text = self.context_embedder(text.to(dtype)).transpose(0, 1)
        no_rotation = torch.ones(image.shape[0], 0, dtype=torch.complex64, device=x.device)  # positions are embedded
        out = self._transform(image, text, temb, no_rotation, grid=(1, h // p, w // p))
        out = out.reshape(b, h // p, w // p, p, p, out_channels).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, out_channels, h, w)
