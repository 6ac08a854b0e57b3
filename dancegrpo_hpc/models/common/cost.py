"""Cost-model pieces of the joint-attention DiTs (HunyuanVideo, FLUX), counted from the
architecture of models/common/blocks.py: parameters per TP rank of the dual- and
single-stream blocks, their forward matmul FLOPs, and the bytes of their TP and Ulysses
collectives. Each family's cost module adds its embeddings and head (hunyuan_video/cost.py,
flux/cost.py) and assembles a models.family.Cost."""

from __future__ import annotations

from typing import Callable, Dict

from ..family import Cost


def linear(i: int, o: int, split: int = 1, bias_split: bool = True) -> int:
    """Parameters of a linear i -> o with bias on one of `split` TP ranks: column-parallel
    splits weight and bias, row-parallel (bias_split False) the weight only."""
    return i * o // split + (o // split if bias_split else o)


def embedder_parameters(width: int, d: int) -> int:
    """MLPEmbedder: linear width -> d, SiLU, linear d -> d."""
    return linear(width, d) + linear(d, d)


def block_parameters(model, tp: int, adaln: str) -> int:
    """All dual- and single-stream blocks on one TP rank. Column-parallel: q/k/v, MLP fc1,
    [q | k | v | mlp-in] (and AdaLN with adaln="column"); row-parallel: output projections,
    MLP fc2; qk-norms replicated."""
    d, m, hd = model.hidden_size, model.mlp_hidden, model.attention_head_dim

    def col(i, o):
        return linear(i, o, tp)

    def row(i, o):
        return linear(i, o, tp, bias_split=False)

    def modulation(chunks):  # AdaLN linear, replicated or column-parallel
        return col(d, chunks * d) if adaln == "column" else linear(d, chunks * d)

    dual = 2 * (modulation(6) + col(d, 3 * d) + row(d, d) + col(d, m) + row(m, d)) + 4 * hd
    single = modulation(3) + col(d, 3 * d + m) + 2 * hd + row(d + m, d)
    return model.num_layers * dual + model.num_single_layers * single


def head_parameters(d: int, out: int) -> int:
    """norm_out's AdaLN linear and proj_out."""
    return linear(d, 2 * d) + linear(d, out)


def embedder_flops(width: int, d: int) -> int:
    """One MLPEmbedder (width -> d -> d) on one vector, 2 FLOPs per multiply-accumulate."""
    return 2 * (width * d + d * d)


def block_flops(model, tokens: int, extra_modulations: int = 0) -> Dict[str, int]:
    """Matmul FLOPs of the blocks for one sample of `tokens` joint tokens: {"linear",
    "attention"}. Per token and block: q/k/v 3d^2 + output d^2 + MLP 2dm multiply-adds;
    attention QK^T and PV 2 L^2 d; AdaLN once per stream and sample (+ extra_modulations
    per block, e.g. token_replace's clean first frame)."""
    d, m = model.hidden_size, model.mlp_hidden
    blocks = model.num_layers + model.num_single_layers
    modulation = (model.num_layers * (2 + extra_modulations) * 2 * d * 6 * d
                  + model.num_single_layers * (1 + extra_modulations) * 2 * d * 3 * d)
    return {"linear": modulation + blocks * tokens * (8 * d * d + 4 * d * m),
            "attention": 4 * d * blocks * tokens ** 2}


def head_flops(d: int, video: int, out: int) -> int:
    return 2 * d * 2 * d + 2 * video * d * out


def flops(linear_flops: int, attention_flops: int) -> Dict[str, float]:
    return {"linear": float(linear_flops), "attention": float(attention_flops),
            "total": float(linear_flops + attention_flops)}


def block_tp_bytes(model, tokens: int, tp: int, ulysses: int, element: int) -> float:
    """Bytes one GPU sends in the blocks' TP collectives during one forward of one sample:
    two all-reduce equivalents per dual-stream block (attention and MLP outputs, video and
    text together), one per single-stream block (its packed output projection)."""
    if tp == 1:
        return 0.0
    ring = (tp - 1) / tp
    reduces = 2 * model.num_layers + model.num_single_layers
    return reduces * 2 * ring * tokens / ulysses * model.hidden_size * element


def ulysses_bytes_per_forward(model, tokens: int, tp: int, ulysses: int, element: int) -> float:
    """Bytes one GPU sends in Ulysses all-to-alls (q, k, v, out) during one forward of one sample."""
    if ulysses == 1:
        return 0.0
    local = tokens / ulysses * model.hidden_size / tp * element
    return (model.num_layers + model.num_single_layers) * 4 * (ulysses - 1) / ulysses * local


def make_cost(model, parameters: Callable, forward_flops: Callable, tp_bytes: Callable, text_tokens: int,
              conditioning_elements: Callable[[int], int]) -> Cost:
    """A Cost from a family's functions of (model, ...)."""
    return Cost(parameters=lambda tp=1, adaln="replicated": parameters(model, tp, adaln),
                forward_flops=lambda video, text: forward_flops(model, video, text),
                tp_bytes=lambda tokens, text, tp, ulysses, element: tp_bytes(model, tokens, text, tp, ulysses, element),
                ulysses_bytes=lambda tokens, tp, ulysses, element: ulysses_bytes_per_forward(model, tokens, tp,
                                                                                             ulysses, element),
                hidden_size=model.hidden_size, blocks=model.num_layers + model.num_single_layers,
                text_tokens=text_tokens, conditioning_elements=conditioning_elements)
