"""Sliding-tile attention (FastVideo's STA) that also trains.

Video tokens are regrouped tile by tile (tiles of `tile` = (t, h, w) tokens); a
video query in tile (i, j, k) sees the video keys in a window of `window` tiles
around it, the window's centre clamped so the window stays inside the canvas,
plus every valid text token. Text queries see every valid key. The mask is
block-aligned over tiles, so FlexAttention's block mask skips whole blocks.

Paths: FlexAttention (forward and backward) on CUDA; on CPU FlexAttention runs
the forward, and when gradients are needed the same function is computed by
dense SDPA with the materialised mask (FlexAttention has no CPU backward).
Windows may be one (t, h, w) for all heads or one per head.
"""

from __future__ import annotations

import functools
import warnings
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..checks import InputError, require
from .mask import JointMask


class TileLayout:
    """Permutation between raster (t, h, w) order and tile order of the video tokens."""

    def __init__(self, grid: Tuple[int, int, int], tile: Tuple[int, int, int]):
        require(all(g % s == 0 for g, s in zip(grid, tile)),
                f"sliding_tile attention: the video token grid {tuple(grid)} must be divisible by the tile size "
                f"{tuple(tile)}; pick a resolution/frame count or tile size that divides it")
        self.grid, self.tile = tuple(grid), tuple(tile)
        self.tiles = tuple(g // s for g, s in zip(grid, tile))
        t, h, w = grid
        st, sh, sw = tile
        raster = torch.arange(t * h * w).view(t // st, st, h // sh, sh, w // sw, sw)
        self.to_tiles = raster.permute(0, 2, 4, 1, 3, 5).reshape(-1)  # tile-order position -> raster index
        self.to_raster = torch.argsort(self.to_tiles)

    def tile_coords(self, idx: torch.Tensor):
        """(tile_t, tile_h, tile_w) of tile-order positions idx."""
        per_tile = self.tile[0] * self.tile[1] * self.tile[2]
        tid = idx // per_tile
        nh, nw = self.tiles[1], self.tiles[2]
        return tid // (nh * nw), (tid % (nh * nw)) // nw, tid % nw


def _windows(config, heads: int, head_ids: Optional[torch.Tensor], device) -> torch.Tensor:
    """[H, 3] window (in tiles) for each local head."""
    win = torch.as_tensor(config.window, dtype=torch.long, device=device)
    if win.dim() == 1:
        return win.view(1, 3).expand(heads, 3)
    require(win.dim() == 2 and win.shape[1] == 3, f"sliding_tile attention: window must be (t, h, w) or one per head; got {tuple(win.shape)}")
    ids = head_ids.to(device) if head_ids is not None else torch.arange(heads, device=device)
    return win[ids]


def sta_mask(layout: TileLayout, mask: JointMask, windows: torch.Tensor, b, h, q_idx, kv_idx):
    """The mask as a function of (batch, head, query, key) index tensors, in the order
    [video tokens in tile order | video padding | text]. Broadcasts; used both as the
    FlexAttention mask_mod and to materialise the dense mask."""
    nv, span = mask.video_tokens, mask.video_span
    q_t, q_h, q_w = layout.tile_coords(q_idx)
    k_t, k_h, k_w = layout.tile_coords(kv_idx)
    win = windows[h]  # [..., 3]
    inside = None
    for q_c, k_c, n, axis in ((q_t, k_t, layout.tiles[0], 0), (q_h, k_h, layout.tiles[1], 1), (q_w, k_w, layout.tiles[2], 2)):
        half = win[..., axis] // 2
        centre = torch.minimum(torch.maximum(q_c, half), (n - 1) - half)
        ok = (centre - k_c).abs() <= half
        inside = ok if inside is None else inside & ok
    q_video, k_video = q_idx < nv, kv_idx < nv
    if mask.text_lengths is not None:
        text_end = span + mask.text_lengths.to(kv_idx.device)[b]
    else:
        text_end = span + mask.text_tokens
    k_text = (kv_idx >= span) & (kv_idx < text_end)
    video_to_video = q_video & k_video & inside
    to_text = k_text  # every query sees the valid text
    text_to_video = (q_idx >= nv) & k_video
    return video_to_video | to_text | text_to_video


def dense_mask(layout: TileLayout, mask: JointMask, windows: torch.Tensor, batch: int, device) -> torch.Tensor:
    """[B, H, S, S] bool."""
    s = mask.length
    b = torch.arange(batch, device=device).view(-1, 1, 1, 1)
    h = torch.arange(windows.shape[0], device=device).view(1, -1, 1, 1)
    q = torch.arange(s, device=device).view(1, 1, -1, 1)
    k = torch.arange(s, device=device).view(1, 1, 1, -1)
    return sta_mask(layout, mask, windows, b, h, q, k).expand(batch, windows.shape[0], s, s)


@functools.lru_cache(maxsize=None)
def _compiled_create_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    return torch.compile(create_block_mask)


def block_mask(layout: TileLayout, mask: JointMask, windows: torch.Tensor, batch: int, device):
    """FlexAttention block mask of sta_mask. One mask serves every head when all heads
    share a window, and every sample when no text is padded (FlexAttention broadcasts
    it). On CUDA create_block_mask runs compiled: eager, it materialises the [B, H, S, S]
    mask and int64 temporaries of that size (over 100 GB at 30 x 48 x 80 video tokens)."""
    from torch.nn.attention.flex_attention import create_block_mask

    heads = 1 if bool((windows == windows[:1]).all()) else windows.shape[0]
    batch = batch if mask.text_lengths is not None else 1

    def mask_mod(b, h, q_idx, kv_idx):
        return sta_mask(layout, mask, windows, b, h, q_idx, kv_idx)

    build = _compiled_create_block_mask() if torch.device(device).type == "cuda" else create_block_mask
    return build(mask_mod, B=batch, H=heads, Q_LEN=mask.length, KV_LEN=mask.length, device=device)


def _flex(q, k, v, layout, mask, windows):
    from torch.nn.attention.flex_attention import flex_attention

    block = block_mask(layout, mask, windows, q.shape[0], q.device)
    if q.device.type == "cuda":
        return torch.compile(flex_attention)(q, k, v, block_mask=block)
    with warnings.catch_warnings():  # eager on CPU is deliberate: compiling costs minutes on small machines
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(q, k, v, block_mask=block)


def sliding_tile_attention(q, k, v, mask: JointMask, config, head_ids=None, force_dense: bool = False):
    """q, k, v: [B, S, H, D] in the joint order with video in raster order."""
    layout = TileLayout(mask.grid, config.tile)
    require(layout.to_tiles.numel() == mask.video_tokens,
            f"sliding_tile attention: grid {mask.grid} has {layout.to_tiles.numel()} tokens but the sequence has "
            f"{mask.video_tokens} video tokens")
    nv = mask.video_tokens
    to_tiles = layout.to_tiles.to(q.device)

    def tiled(x):  # [B, S, H, D] -> [B, H, S, D], video part in tile order
        x = torch.cat([x[:, :nv].index_select(1, to_tiles), x[:, nv:]], dim=1)
        return x.transpose(1, 2)

    qt, kt, vt = tiled(q), tiled(k), tiled(v)
    windows = _windows(config, q.shape[2], head_ids, q.device)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if force_dense or (q.device.type == "cpu" and needs_grad):
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=dense_mask(layout, mask, windows, q.shape[0], q.device))
    else:
        out = _flex(qt, kt, vt, layout, mask, windows)
    out = out.transpose(1, 2)
    return torch.cat([out[:, :nv].index_select(1, layout.to_raster.to(q.device)), out[:, nv:]], dim=1)


def validate_window(window: Sequence, heads: int) -> None:
    win = torch.as_tensor(window)
    if win.dim() == 1:
        require(win.numel() == 3 and bool((win > 0).all()) and bool((win % 2 == 1).all()),
                f"sliding_tile attention: window must be three odd positive tile counts (t, h, w); got {list(window)}")
    elif not (win.dim() == 2 and win.shape == (heads, 3) and bool((win > 0).all()) and bool((win % 2 == 1).all())):
        raise InputError(f"sliding_tile attention: per-head windows must have shape [{heads}, 3] of odd positive "
                         f"tile counts; got {tuple(win.shape)}")
