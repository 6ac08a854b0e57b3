"""Sliding-tile vs dense attention at HunyuanVideo head shapes, through the model's own
entry point (attention.attention with an AttentionConfig and a JointMask over
[video | text]): forward (no autograd, as in rollouts) and forward + backward, the
speed-up, the block mask's sparsity and the time to build it. The model builds the mask
once per shape and reuses it from a cache (attention.sliding_tile), so sliding-tile is
timed three ways: the first call (cache cleared: the build included), steady-state calls
(cache hits), and the build alone; the speed-up is quoted with the build paid on every
call (the old behaviour), amortised over a BLOCKS_PER_FORWARD-block forward, and not at
all. A correctness check runs alongside: sliding-tile with a window covering every tile
must give dense attention's output.
"""

from __future__ import annotations

import math
from typing import Dict

import torch

from .common import DTYPES, Sizes, time_calls

BLOCKS_PER_FORWARD = 60  # HunyuanVideo 13B: 20 dual + 40 single blocks share one mask per forward
TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2}  # relative L2 error of the full-window check (bf16: other kernels)


def full_window(grid, tile):
    """Tiles per window that cover the whole canvas from any tile (odd, as STA requires)."""
    return tuple(2 * (g // t) - 1 for g, t in zip(grid, tile))


def measure_attention(s: Sizes, device: torch.device, facts: Dict) -> Dict:
    from ...attention import AttentionConfig, JointMask, attention
    from ...attention.sliding_tile import MaskSpec, block_mask, clear_caches, window_rows

    dtype = DTYPES[s.attn_dtype]
    mask = JointMask(math.prod(s.grid), 0, s.attn_text_tokens, None, s.grid)  # no padding: the GRPO-group case
    sta = AttentionConfig("sliding_tile", tile=s.tile, window=s.window)
    dense = AttentionConfig(s.dense)
    sta.validate(s.heads)
    dense.validate(s.heads)
    gen = torch.Generator(device).manual_seed(0)
    shape = (1, mask.length, s.heads, s.head_dim)
    q, k, v = (torch.randn(*shape, generator=gen, device=device, dtype=dtype).requires_grad_(True) for _ in range(3))
    grad = torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    def forward(cfg):
        def fn():
            with torch.no_grad():
                attention(q, k, v, mask, cfg)
        return fn

    def forward_backward(cfg):
        def fn():
            for x in (q, k, v):
                x.grad = None
            attention(q, k, v, mask, cfg).backward(grad)
        return fn

    out = {"grid": list(s.grid), "video_tokens": mask.video_tokens, "text_tokens": s.attn_text_tokens,
           "sequence": mask.length, "heads": s.heads, "head_dim": s.head_dim, "dtype": s.attn_dtype,
           "tile": list(s.tile), "window": list(s.window), "dense_backend": s.dense,
           "paths": {"sliding_tile_forward": "FlexAttention",
                     "sliding_tile_forward_backward": "FlexAttention" if device.type == "cuda" else
                     "dense SDPA with the materialised mask (FlexAttention has no CPU backward)"}}
    spec = MaskSpec.of(mask, s.tile, window_rows(s.window, s.heads, None), 1)
    layout, spec_mask, windows = spec.tensors(device)
    build = lambda: block_mask(layout, spec_mask, windows, spec.batch, device)  # noqa: E731  (what a cache miss runs)
    build_s = time_calls(build, device, s.warmup, s.reps)
    out["block_mask"] = dict(block_sparsity(build()), tiles=list(layout.tiles), build_s=build_s)
    for name, make in (("forward", forward), ("forward_backward", forward_backward)):
        d = time_calls(make(dense), device, s.warmup, s.reps)
        t = time_calls(make(sta), device, s.warmup, s.reps)  # cache hits after the warm-up
        steady = make(sta)

        def first():  # a cold cache: permutations and block mask built inside the call
            clear_caches()
            steady()

        f = time_calls(first, device, 0, s.reps)
        out[name] = dict({"dense_s": d, "sliding_tile_s": t, "sliding_tile_first_s": f},
                         **speedups(d["median"], t["median"], build_s["median"]))
    out["speedup_formulas"] = SPEEDUP_FORMULAS
    out["blocks_per_forward"] = BLOCKS_PER_FORWARD
    out["check"] = _full_window_check(q, k, v, mask, dense, s)
    return out


SPEEDUP_FORMULAS = {
    "speedup": "dense / sliding_tile (steady state: the mask cached)",
    "speedup_amortised": f"dense / (sliding_tile + build / {BLOCKS_PER_FORWARD}) (one build per {BLOCKS_PER_FORWARD}-block forward)",
    "speedup_build_every_call": "dense / (sliding_tile + build) (the mask rebuilt in every call, as before the cache)",
}


def speedups(dense_s: float, sliding_tile_s: float, build_s: float, blocks: int = BLOCKS_PER_FORWARD) -> Dict:
    """Seconds -> the speed-ups of SPEEDUP_FORMULAS."""
    return {"speedup": dense_s / sliding_tile_s, "speedup_amortised": dense_s / (sliding_tile_s + build_s / blocks),
            "speedup_build_every_call": dense_s / (sliding_tile_s + build_s)}


def block_sparsity(blocks) -> Dict:
    """Fraction of (query block, key block) pairs FlexAttention skips. BlockMask.sparsity()
    weighs blocks by BLOCK_SIZE^2 against the true lengths, which is wrong for sequences
    that are not a multiple of the block (it goes negative below one block)."""
    computed = int(blocks.kv_num_blocks.sum())
    if blocks.full_kv_num_blocks is not None:
        computed += int(blocks.full_kv_num_blocks.sum())
    kv_blocks = -(-blocks.seq_lengths[1] // blocks.BLOCK_SIZE[1])
    total = blocks.kv_num_blocks.numel() * kv_blocks  # [B, H, query blocks] x key blocks
    return {"sparsity": 1 - computed / total, "blocks_computed": computed, "blocks_total": total,
            "block_size": list(blocks.BLOCK_SIZE), "mask_batch_heads": list(blocks.kv_num_blocks.shape[:2])}


def _full_window_check(q, k, v, mask, dense, s: Sizes) -> Dict:
    from ...attention import AttentionConfig, attention

    window = full_window(s.grid, s.tile)
    with torch.no_grad():
        got = attention(q, k, v, mask, AttentionConfig("sliding_tile", tile=s.tile, window=window)).double()
        want = attention(q, k, v, mask, dense).double()
    rel = ((got - want).norm() / want.norm()).item()
    tol = TOLERANCE[s.attn_dtype]
    return {"window": list(window), "rel_err": rel, "max_abs_err": (got - want).abs().max().item(),
            "tolerance": tol, "ok": rel <= tol}


__all__ = ["measure_attention", "block_sparsity", "full_window", "speedups", "BLOCKS_PER_FORWARD", "SPEEDUP_FORMULAS",
           "TOLERANCE"]
