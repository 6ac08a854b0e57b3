"""HunyuanVideo's cost model: parameters per TP rank, forward matmul FLOPs and the bytes of
its TP / Ulysses collectives, counted from the architecture (tests/test_config.py holds the
parameter count equal to the model built on the meta device, tests/test_perf_model.py the
FLOPs equal to torch's FlopCounterMode). Used through the family seam (models/family.Cost)
by the memory estimate, validate and the perf model."""

from __future__ import annotations

from typing import Dict

from ...checks import require
from ..family import Cost


def dit_parameters(model, tp: int = 1, adaln: str = "replicated") -> int:
    """Parameters of the HunyuanVideo DiT on one TP rank, counted from its structure
    (tests/test_config.py holds it equal to the model built on the meta device).
    Column-parallel linears split weight and bias; row-parallel ones split the weight
    and keep the bias whole; norms, embedders and the output head are replicated."""
    d, m, hd = model.hidden_size, model.mlp_hidden, model.attention_head_dim

    def col(i, o):
        return _linear(i, o, tp)

    def row(i, o):
        return _linear(i, o, tp, bias_split=False)

    def embedder(i):  # MLPEmbedder: linear -> SiLU -> linear
        return _linear(i, d) + _linear(d, d)

    def modulation(chunks):  # AdaLN linear, replicated or column-parallel
        return col(d, chunks * d) if adaln == "column" else _linear(d, chunks * d)

    patch = model.patch_size_t * model.patch_size ** 2
    embed = model.in_channels * patch * d + d + embedder(256) + embedder(model.pooled_projection_dim)
    embed += embedder(256) if model.guidance_embeds else 0
    refiner_in = embedder(256) + embedder(model.text_embed_dim) + _linear(model.text_embed_dim, d)
    rm = model.refiner_mlp_hidden
    refiner = 4 * d + col(d, 3 * d) + row(d, d) + col(d, rm) + row(rm, d) + _linear(d, 2 * d)
    dual = 2 * (modulation(6) + col(d, 3 * d) + row(d, d) + col(d, m) + row(m, d)) + 4 * hd
    single = modulation(3) + col(d, 3 * d + m) + 2 * hd + row(d + m, d)
    head = _linear(d, 2 * d) + _linear(d, patch * model.out_channels)
    return (embed + refiner_in + model.num_refiner_layers * refiner + model.num_layers * dual
            + model.num_single_layers * single + head)


def _linear(i: int, o: int, split: int = 1, bias_split: bool = True) -> int:
    return i * o // split + (o // split if bias_split else o)


def forward_flops(model, video: int, text: int) -> Dict[str, float]:
    """Matmul FLOPs of one DiT forward for one sample of `video` + `text` tokens:
    {"linear", "attention", "total"} (2 FLOPs per multiply-accumulate)."""
    require(video >= 1 and text >= 1, f"perf model: token counts must be >= 1; got video {video}, text {text}")
    d, m = model.hidden_size, model.mlp_hidden
    tokens = video + text
    patch = model.patch_size_t * model.patch_size ** 2
    replace = model.image_condition_type == "token_replace"  # AdaLN also for the clean first frame

    def embedder(width):  # MLPEmbedder: width -> d -> d
        return 2 * (width * d + d * d)

    per_token = 8 * d * d + 4 * d * m  # qkv 3d^2 + out d^2 + MLP 2dm, 2 FLOPs per MAC
    condition = embedder(256) * (2 if replace else 1) + embedder(model.pooled_projection_dim)
    condition += embedder(256) if model.guidance_embeds else 0
    embed = 2 * video * model.in_channels * patch * d
    refiner = (embedder(256) + embedder(model.text_embed_dim) + 2 * text * model.text_embed_dim * d
               + model.num_refiner_layers * (text * (8 * d * d + 4 * d * model.refiner_mlp_hidden) + 2 * d * 2 * d))
    modulation = (model.num_layers * (2 + replace) * 2 * d * 6 * d
                  + model.num_single_layers * (1 + replace) * 2 * d * 3 * d)
    blocks = model.num_layers + model.num_single_layers
    head = 2 * d * 2 * d + 2 * video * d * patch * model.out_channels
    linear = condition + embed + refiner + modulation + blocks * tokens * per_token + head
    attention = 4 * d * (blocks * tokens ** 2 + model.num_refiner_layers * text ** 2)
    return {"linear": float(linear), "attention": float(attention), "total": float(linear + attention)}


def tp_bytes_per_forward(model, tokens: int, text: int, tp: int, ulysses: int, element: int) -> float:
    """Bytes one GPU sends in Megatron TP collectives during one forward of one sample
    (tokens: video + text of the sample, text: its text tokens, for the refiner)."""
    if tp == 1:
        return 0.0
    ring = (tp - 1) / tp
    reduces = 2 * model.num_layers + model.num_single_layers  # all-reduce equivalents per forward
    block_bytes = reduces * 2 * ring * tokens / ulysses * model.hidden_size * element
    refiner_bytes = model.num_refiner_layers * 2 * 2 * ring * text * model.hidden_size * element
    return block_bytes + refiner_bytes


def ulysses_bytes_per_forward(model, tokens: int, tp: int, ulysses: int, element: int) -> float:
    """Bytes one GPU sends in Ulysses all-to-alls (q, k, v, out) during one forward of one sample."""
    if ulysses == 1:
        return 0.0
    local = tokens / ulysses * model.hidden_size / tp * element
    return (model.num_layers + model.num_single_layers) * 4 * (ulysses - 1) / ulysses * local


def cost(model, text_tokens: int) -> Cost:
    return Cost(parameters=lambda tp=1, adaln="replicated": dit_parameters(model, tp, adaln),
                forward_flops=lambda video, text: forward_flops(model, video, text),
                tp_bytes=lambda tokens, text, tp, ulysses, element: tp_bytes_per_forward(model, tokens, text, tp,
                                                                                         ulysses, element),
                ulysses_bytes=lambda tokens, tp, ulysses, element: ulysses_bytes_per_forward(model, tokens, tp,
                                                                                             ulysses, element),
                hidden_size=model.hidden_size, blocks=model.num_layers + model.num_single_layers,
                text_tokens=text_tokens,
                conditioning_elements=lambda text: text * model.text_embed_dim + model.pooled_projection_dim)
