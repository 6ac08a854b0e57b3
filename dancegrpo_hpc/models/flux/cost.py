"""FLUX's cost model: parameters per TP rank, forward matmul FLOPs and the bytes of its TP /
Ulysses collectives, counted from the architecture (tests/test_flux_model.py holds the
parameters equal to the model built on the meta device and the FLOPs equal to torch's
FlopCounterMode; tests/test_flux_distributed.py the parameters at TP=2). The blocks' share
is models/common/cost.py (shared with HunyuanVideo); the embeddings and head are FLUX's:
plain linears on packed latent tokens and on T5 tokens, no token refiner."""

from __future__ import annotations

from typing import Dict

from ...checks import require
from ..common.cost import (block_flops, block_parameters, block_tp_bytes, embedder_flops, embedder_parameters,
                           flops, head_flops, head_parameters, linear, make_cost)
from ..family import Cost
from .config import FluxConfig

__all__ = ["cost", "dit_parameters", "forward_flops", "tp_bytes_per_forward"]


def dit_parameters(model: FluxConfig, tp: int = 1, adaln: str = "replicated") -> int:
    """Parameters of the FLUX transformer on one TP rank: x / context embedders, the
    timestep (+ guidance) and pooled-text embedders and the output head replicated, the
    blocks split as models/common/cost.block_parameters counts them."""
    d = model.hidden_size
    embed = (linear(model.in_channels, d) + linear(model.joint_attention_dim, d) + embedder_parameters(256, d)
             + embedder_parameters(model.pooled_projection_dim, d))
    embed += embedder_parameters(256, d) if model.guidance_embeds else 0
    return embed + block_parameters(model, tp, adaln) + head_parameters(d, model.patch_size ** 2
                                                                        * model.output_channels)


def forward_flops(model: FluxConfig, image: int, text: int) -> Dict[str, float]:
    """Matmul FLOPs of one forward for one sample of `image` + `text` tokens: {"linear",
    "attention", "total"} (2 FLOPs per multiply-accumulate)."""
    require(image >= 1 and text >= 1, f"perf model: token counts must be >= 1; got image {image}, text {text}")
    d = model.hidden_size
    condition = embedder_flops(256, d) + embedder_flops(model.pooled_projection_dim, d)
    condition += embedder_flops(256, d) if model.guidance_embeds else 0
    embed = 2 * image * model.in_channels * d + 2 * text * model.joint_attention_dim * d
    blocks = block_flops(model, image + text)
    head = head_flops(d, image, model.patch_size ** 2 * model.output_channels)
    return flops(condition + embed + blocks["linear"] + head, blocks["attention"])


def tp_bytes_per_forward(model: FluxConfig, tokens: int, text: int, tp: int, ulysses: int, element: int) -> float:
    """Bytes one GPU sends in Megatron TP collectives during one forward of one sample of
    `tokens` image + text tokens (FLUX has no text-only blocks: `text` adds nothing)."""
    return block_tp_bytes(model, tokens, tp, ulysses, element)


def cost(model: FluxConfig, text_tokens: int) -> Cost:
    return make_cost(model, dit_parameters, forward_flops, tp_bytes_per_forward, text_tokens,
                     lambda text: text * model.joint_attention_dim + model.pooled_projection_dim)
