"""SD3's cost model: parameters per TP rank, forward matmul FLOPs and the bytes of its TP /
Ulysses collectives, counted from the architecture of sd3/blocks.py (tests/test_sd3_model.py
holds the parameters equal to the model built on the meta device and the FLOPs equal to
torch's FlopCounterMode). Used through the family seam (models/family.Cost) by the memory
estimate, validate and the perf model. Per block: joint attention (image and text q/k/v and
output projections, text output absent in the last, context_pre_only block), an MLP per
stream (text MLP absent in the last block), AdaLN of 6 chunks (9 with dual attention) and 6
for the text (2 in the last block), and in dual_attention_layers a second attention among the
image tokens."""

from __future__ import annotations

from typing import Dict

from ...checks import require
from ..common.cost import embedder_flops, embedder_parameters, flops, head_flops, head_parameters, linear
from ..family import Cost
from .config import SD3Config

# Text tokens per sample as diffusers' StableDiffusion3Pipeline encodes a prompt: CLIP-L and
# CLIP-G (77 tokens, widths 768 + 1280 padded to 4096) joined on the sequence with T5-XXL (256).
TEXT_TOKENS = 77 + 256

__all__ = ["TEXT_TOKENS", "cost", "dit_parameters", "forward_flops", "tp_bytes_per_forward",
           "ulysses_bytes_per_forward"]


def _blocks(model: SD3Config):
    """(context_pre_only, dual attention) of each block."""
    return [(model.context_pre_only(i), model.dual_attention(i)) for i in range(model.num_layers)]


def dit_parameters(model: SD3Config, tp: int = 1, adaln: str = "replicated") -> int:
    """Parameters on one TP rank. Column-parallel linears (q/k/v, MLP fc1, AdaLN with
    adaln="column") split weight and bias; row-parallel ones (output projections, MLP fc2)
    split the weight and keep the bias whole; qk-norms, embeddings and the head are replicated."""
    d, m, p = model.hidden_size, model.mlp_hidden, model.patch_size
    norms = 2 * model.attention_head_dim if model.qk_norm == "rms_norm" else 0  # one attention's q and k norms

    def col(i, o):
        return linear(i, o, tp)

    def row(i, o):
        return linear(i, o, tp, bias_split=False)

    def modulation(chunks):
        return col(d, chunks * d) if adaln == "column" else linear(d, chunks * d)

    attention, mlp = col(d, 3 * d) + norms + row(d, d), col(d, m) + row(m, d)
    total = (linear(model.in_channels * p * p, d) + embedder_parameters(256, d)
             + embedder_parameters(model.pooled_projection_dim, d)
             + linear(model.joint_attention_dim, model.caption_projection_dim)
             + head_parameters(d, p * p * model.output_channels))
    for last, dual in _blocks(model):
        total += modulation(9 if dual else 6) + modulation(2 if last else 6) + 2 * attention + 2 * mlp
        if last:  # no to_add_out, no text MLP
            total -= row(d, d) + mlp
        if dual:
            total += attention
    return total


def forward_flops(model: SD3Config, video: int, text: int) -> Dict[str, float]:
    """Matmul FLOPs of one forward for one sample of `video` image + `text` tokens:
    {"linear", "attention", "total"} (2 FLOPs per multiply-accumulate)."""
    require(video >= 1 and text >= 1, f"perf model: token counts must be >= 1; got video {video}, text {text}")
    d, m, p = model.hidden_size, model.mlp_hidden, model.patch_size
    tokens = video + text
    linear_flops = (embedder_flops(256, d) + embedder_flops(model.pooled_projection_dim, d)
                    + 2 * video * model.in_channels * p * p * d
                    + 2 * text * model.joint_attention_dim * model.caption_projection_dim
                    + head_flops(d, video, p * p * model.output_channels))
    attention_flops = 0
    for last, dual in _blocks(model):
        updated = video if last else tokens  # tokens through the output projections and MLPs
        linear_flops += 2 * d * d * ((9 if dual else 6) + (2 if last else 6))  # AdaLN, once per sample
        linear_flops += tokens * 6 * d * d + updated * (2 * d * d + 4 * d * m)
        attention_flops += 4 * d * tokens ** 2
        if dual:
            linear_flops += video * 8 * d * d
            attention_flops += 4 * d * video ** 2
    return flops(linear_flops, attention_flops)


def tp_bytes_per_forward(model: SD3Config, tokens: int, text: int, tp: int, ulysses: int, element: int) -> float:
    """Bytes one GPU sends in Megatron TP collectives during one forward of one sample
    (tokens: image + text): per block one all-reduce equivalent of the attention outputs
    (image, text, attn2's image reduced together) and one of the MLP outputs; the last block
    reduces image tokens only. (Under Megatron SP the last block also gathers the text for its
    q/k/v: (tp - 1) / tp x text x hidden more, left out.)"""
    if tp == 1:
        return 0.0
    video = tokens - text
    reduced = 0
    for last, dual in _blocks(model):
        stream = video if last else tokens
        reduced += 2 * stream + (video if dual else 0)
    return 2 * (tp - 1) / tp * reduced / ulysses * model.hidden_size * element


def ulysses_bytes_per_forward(model: SD3Config, tokens: int, tp: int, ulysses: int, element: int) -> float:
    """Bytes one GPU sends in Ulysses all-to-alls (q, k, v, out) during one forward of one
    sample: the joint attention over all tokens, attn2 over the image tokens (taken as tokens
    minus the family's TEXT_TOKENS, as the perf model pads text to them)."""
    if ulysses == 1:
        return 0.0
    video = max(tokens - TEXT_TOKENS, 0)
    exchanged = sum(tokens + (video if dual else 0) for _, dual in _blocks(model))
    return 4 * (ulysses - 1) / ulysses * exchanged / ulysses * model.hidden_size / tp * element


def cost(model: SD3Config) -> Cost:
    return Cost(parameters=lambda tp=1, adaln="replicated": dit_parameters(model, tp, adaln),
                forward_flops=lambda video, text: forward_flops(model, video, text),
                tp_bytes=lambda tokens, text, tp, ulysses, element: tp_bytes_per_forward(model, tokens, text, tp,
                                                                                         ulysses, element),
                ulysses_bytes=lambda tokens, tp, ulysses, element: ulysses_bytes_per_forward(model, tokens, tp,
                                                                                             ulysses, element),
                hidden_size=model.hidden_size, blocks=model.num_layers, text_tokens=TEXT_TOKENS,
                conditioning_elements=lambda text: text * model.joint_attention_dim + model.pooled_projection_dim)
