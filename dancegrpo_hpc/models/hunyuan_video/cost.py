"""HunyuanVideo's cost model: parameters per TP rank, forward matmul FLOPs and the bytes of
its TP / Ulysses collectives, counted from the architecture (tests/test_config.py holds the
parameter count equal to the model built on the meta device, tests/test_perf_model.py the
FLOPs equal to torch's FlopCounterMode). Used through the family seam (models/family.Cost)
by the memory estimate, validate and the perf model. The dual- and single-stream blocks'
share is models/common/cost.py (shared with FLUX); the token refiner is HunyuanVideo's own."""

from __future__ import annotations

from typing import Dict

from ...checks import require
from ..common.cost import (block_flops, block_parameters, block_tp_bytes, embedder_flops, embedder_parameters,
                           flops, head_flops, head_parameters, linear, make_cost, ulysses_bytes_per_forward)
from ..family import Cost

__all__ = ["cost", "dit_parameters", "forward_flops", "tp_bytes_per_forward", "ulysses_bytes_per_forward"]


def dit_parameters(model, tp: int = 1, adaln: str = "replicated") -> int:
    """Parameters of the HunyuanVideo DiT on one TP rank, counted from its structure
    (tests/test_config.py holds it equal to the model built on the meta device).
    Column-parallel linears split weight and bias; row-parallel ones split the weight
    and keep the bias whole; norms, embedders and the output head are replicated."""
    d = model.hidden_size
    patch = model.patch_size_t * model.patch_size ** 2
    embed = model.in_channels * patch * d + d + embedder_parameters(256, d) + embedder_parameters(
        model.pooled_projection_dim, d)
    embed += embedder_parameters(256, d) if model.guidance_embeds else 0
    refiner_in = embedder_parameters(256, d) + embedder_parameters(model.text_embed_dim, d) + linear(
        model.text_embed_dim, d)
    rm = model.refiner_mlp_hidden
    refiner = (4 * d + linear(d, 3 * d, tp) + linear(d, d, tp, bias_split=False) + linear(d, rm, tp)
               + linear(rm, d, tp, bias_split=False) + linear(d, 2 * d))
    return (embed + refiner_in + model.num_refiner_layers * refiner + block_parameters(model, tp, adaln)
            + head_parameters(d, patch * model.out_channels))


def forward_flops(model, video: int, text: int) -> Dict[str, float]:
    """Matmul FLOPs of one DiT forward for one sample of `video` + `text` tokens:
    {"linear", "attention", "total"} (2 FLOPs per multiply-accumulate)."""
    require(video >= 1 and text >= 1, f"perf model: token counts must be >= 1; got video {video}, text {text}")
    d = model.hidden_size
    patch = model.patch_size_t * model.patch_size ** 2
    replace = model.image_condition_type == "token_replace"  # AdaLN also for the clean first frame
    condition = embedder_flops(256, d) * (2 if replace else 1) + embedder_flops(model.pooled_projection_dim, d)
    condition += embedder_flops(256, d) if model.guidance_embeds else 0
    embed = 2 * video * model.in_channels * patch * d
    refiner = (embedder_flops(256, d) + embedder_flops(model.text_embed_dim, d) + 2 * text * model.text_embed_dim * d
               + model.num_refiner_layers * (text * (8 * d * d + 4 * d * model.refiner_mlp_hidden) + 2 * d * 2 * d))
    blocks = block_flops(model, video + text, extra_modulations=int(replace))
    linear_flops = condition + embed + refiner + blocks["linear"] + head_flops(d, video, patch * model.out_channels)
    return flops(linear_flops, blocks["attention"] + 4 * d * model.num_refiner_layers * text ** 2)


def tp_bytes_per_forward(model, tokens: int, text: int, tp: int, ulysses: int, element: int) -> float:
    """Bytes one GPU sends in Megatron TP collectives during one forward of one sample
    (tokens: video + text of the sample, text: its text tokens, for the refiner)."""
    if tp == 1:
        return 0.0
    ring = (tp - 1) / tp
    refiner_bytes = model.num_refiner_layers * 2 * 2 * ring * text * model.hidden_size * element
    return block_tp_bytes(model, tokens, tp, ulysses, element) + refiner_bytes


def cost(model, text_tokens: int) -> Cost:
    return make_cost(model, dit_parameters, forward_flops, tp_bytes_per_forward, text_tokens,
                     lambda text: text * model.text_embed_dim + model.pooled_projection_dim)
