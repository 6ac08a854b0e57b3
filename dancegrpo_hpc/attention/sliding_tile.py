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

The block mask (33.7 ms to build at 30 x 48 x 80 tokens on an H200, against 78 ms for
the attention) depends only on a MaskSpec (grid, tile, windows of the local heads, text
lengths, sequence length) and the device: it is built once per spec and reused by every
block and step from small LRU caches, as are the tile permutations and, when small, the
dense path's materialised mask.
"""

from __future__ import annotations

import functools
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

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


class BoundedCache:
    """Least-recently-used map holding at most `size` entries; counts hits and misses."""

    def __init__(self, size: int):
        self.size, self.entries, self.hits, self.misses = size, OrderedDict(), 0, 0

    def get(self, key: Hashable, build: Callable[[], object]):
        if key in self.entries:
            self.hits += 1
            self.entries.move_to_end(key)
            return self.entries[key]
        self.misses += 1
        value = build()
        self.entries[key] = value
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self.entries.clear()
        self.hits = self.misses = 0


# A model has one grid and text length per forward, a few windows at most: a handful of entries.
LAYOUTS = BoundedCache(8)  # (grid, tile) -> TileLayout
PERMUTATIONS = BoundedCache(8)  # (grid, tile, device) -> (to_tiles, to_raster) on the device
BLOCK_MASKS = BoundedCache(8)  # (MaskSpec, device) -> FlexAttention BlockMask
DENSE_MASKS = BoundedCache(4)  # (MaskSpec, device) -> [B or 1, H or 1, S, S] bool
DENSE_CACHE_MAX_ELEMENTS = 1 << 24  # 16 MiB of bool per cached dense mask; larger ones are rebuilt per call
_HOST_HEAD_IDS = WeakIdKeyDictionary()  # head_ids tensor -> tuple: read once per forward, not per block


def clear_caches() -> None:
    for cache in (LAYOUTS, PERMUTATIONS, BLOCK_MASKS, DENSE_MASKS):
        cache.clear()
    _HOST_HEAD_IDS.clear()


def tile_layout(grid, tile) -> TileLayout:
    grid, tile = tuple(int(g) for g in grid), tuple(int(t) for t in tile)
    return LAYOUTS.get((grid, tile), lambda: TileLayout(grid, tile))


def permutations(grid, tile, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(to_tiles, to_raster) of tile_layout(grid, tile) on `device`, copied there once."""
    layout = tile_layout(grid, tile)
    device = torch.device(device)
    return PERMUTATIONS.get((layout.grid, layout.tile, device),
                            lambda: (layout.to_tiles.to(device), layout.to_raster.to(device)))


def _host_ids(head_ids: torch.Tensor) -> Tuple[int, ...]:
    ids = _HOST_HEAD_IDS.get(head_ids)
    if ids is None:
        ids = _HOST_HEAD_IDS[head_ids] = tuple(int(i) for i in head_ids.tolist())
    return ids


def window_rows(window, heads: int, head_ids: Optional[torch.Tensor]) -> Tuple[Tuple[int, int, int], ...]:
    """The window of each local head, as host tuples; one row when every head shares it
    (then one block mask serves all heads)."""
    win = torch.as_tensor(window, dtype=torch.long)
    table = win.tolist()  # config values, on the host
    if win.dim() == 1:
        rows = (tuple(table),)
    else:
        require(win.dim() == 2 and win.shape[1] == 3,
                f"sliding_tile attention: window must be (t, h, w) or one per head; got {tuple(win.shape)}")
        ids = _host_ids(head_ids) if head_ids is not None else tuple(range(heads))
        require(len(ids) == heads, f"sliding_tile attention: head_ids has {len(ids)} entries for {heads} heads")
        rows = tuple(tuple(table[i]) for i in ids)
    return rows[:1] if all(r == rows[0] for r in rows) else rows


@dataclass(frozen=True)
class MaskSpec:
    """Everything the sliding-tile mask depends on, as hashable host values. Canonical:
    text lengths that are all equal (one shared prompt) or all full collapse to one
    batch row; windows shared by every head collapse to one head row."""

    grid: Tuple[int, int, int]
    tile: Tuple[int, int, int]
    video_tokens: int
    video_padding: int
    text_tokens: int
    text_lengths: Optional[Tuple[int, ...]]  # None: every text token valid for every sample
    windows: Tuple[Tuple[int, int, int], ...]  # one per head row

    @classmethod
    def of(cls, mask: JointMask, tile, windows: Tuple[Tuple[int, int, int], ...], batch: int) -> "MaskSpec":
        lengths = mask.text_lengths_host()
        if lengths is not None:
            require(len(lengths) == batch,
                    f"sliding_tile attention: mask.text_lengths has {len(lengths)} entries for a batch of {batch}")
            if all(n == mask.text_tokens for n in lengths):
                lengths = None
            elif all(n == lengths[0] for n in lengths):
                lengths = lengths[:1]
        return cls(tuple(mask.grid), tuple(int(t) for t in tile), mask.video_tokens, mask.video_padding,
                   mask.text_tokens, lengths, tuple(tuple(int(x) for x in w) for w in windows))

    @property
    def batch(self) -> int:
        return 1 if self.text_lengths is None else len(self.text_lengths)

    @property
    def length(self) -> int:
        return self.video_tokens + self.video_padding + self.text_tokens

    def tensors(self, device):
        """(layout, joint mask, [H rows, 3] windows) on `device`, made from the spec alone, so a
        cached mask holds no reference to the caller's tensors."""
        lengths = None if self.text_lengths is None else torch.tensor(self.text_lengths, device=device)
        mask = JointMask(self.video_tokens, self.video_padding, self.text_tokens, lengths, self.grid)
        return tile_layout(self.grid, self.tile), mask, torch.tensor(self.windows, dtype=torch.long, device=device)


def sta_mask(layout: TileLayout, mask: JointMask, windows: torch.Tensor, b, h, q_idx, kv_idx):
    """The mask as a function of (batch, head, query, key) index tensors, in the order
    [video tokens in tile order | video padding | text]. Broadcasts; used both as the
    FlexAttention mask_mod and to materialise the dense mask."""
    nv, span = mask.video_tokens, mask.video_span
    q_t, q_h, q_w = layout.tile_coords(q_idx)
    k_t, k_h, k_w = layout.tile_coords(kv_idx)
    # One row serves every head / sample (a shared window, one text length): FlexAttention
    # still calls the mask_mod with the real head and batch indices, so they are not used then.
    win = windows[0] if windows.shape[0] == 1 else windows[h]  # [..., 3]
    inside = None
    for q_c, k_c, n, axis in ((q_t, k_t, layout.tiles[0], 0), (q_h, k_h, layout.tiles[1], 1), (q_w, k_w, layout.tiles[2], 2)):
        half = win[..., axis] // 2
        centre = torch.minimum(torch.maximum(q_c, half), (n - 1) - half)
        ok = (centre - k_c).abs() <= half
        inside = ok if inside is None else inside & ok
    q_video, k_video = q_idx < nv, kv_idx < nv
    if mask.text_lengths is not None:
        lengths = mask.text_lengths.to(kv_idx.device)
        text_end = span + (lengths[0] if lengths.shape[0] == 1 else lengths[b])
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


def cached_block_mask(spec: MaskSpec, device):
    """block_mask of `spec`, built once per (spec, device)."""
    device = torch.device(device)

    def build():
        layout, mask, windows = spec.tensors(device)
        return block_mask(layout, mask, windows, spec.batch, device)

    return BLOCK_MASKS.get((spec, device), build)


def cached_dense_mask(spec: MaskSpec, batch: int, heads: int, device) -> torch.Tensor:
    """[batch, heads, S, S] bool (a broadcast view of [spec.batch, head rows, S, S]); cached
    while that stays under DENSE_CACHE_MAX_ELEMENTS, rebuilt per call above it."""
    device = torch.device(device)

    def build():
        layout, mask, windows = spec.tensors(device)
        return dense_mask(layout, mask, windows, spec.batch, device)

    rows = spec.batch * len(spec.windows) * spec.length ** 2
    full = DENSE_MASKS.get((spec, device), build) if rows <= DENSE_CACHE_MAX_ELEMENTS else build()
    return full.expand(batch, heads, spec.length, spec.length)


@functools.lru_cache(maxsize=None)
def _compiled_flex_attention():
    """One compiled wrapper for the process. Dynamo caches compiled code on flex_attention's
    code object, so a wrapper made per call did not recompile (checked: one graph over calls
    with fresh wrappers and masks), but it paid torch.compile's wrapping on every call."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def _flex(q, k, v, block):
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type == "cuda":
        return _compiled_flex_attention()(q, k, v, block_mask=block)
    with warnings.catch_warnings():  # eager on CPU is deliberate: compiling costs minutes on small machines
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(q, k, v, block_mask=block)


@torch.compiler.disable
def _prepare(mask: JointMask, config, head_ids, batch: int, heads: int, device, dense: bool):
    """(to_tiles, to_raster, mask): host-side cache lookups, kept out of torch.compile's
    graph when the blocks are compiled (one opaque call instead of tracing the caches)."""
    layout = tile_layout(mask.grid, config.tile)
    require(layout.to_tiles.numel() == mask.video_tokens,
            f"sliding_tile attention: grid {mask.grid} has {layout.to_tiles.numel()} tokens but the sequence has "
            f"{mask.video_tokens} video tokens")
    to_tiles, to_raster = permutations(layout.grid, layout.tile, device)
    spec = MaskSpec.of(mask, layout.tile, window_rows(config.window, heads, head_ids), batch)
    built = cached_dense_mask(spec, batch, heads, device) if dense else cached_block_mask(spec, device)
    return to_tiles, to_raster, built


def sliding_tile_attention(q, k, v, mask: JointMask, config, head_ids=None, force_dense: bool = False):
    """q, k, v: [B, S, H, D] in the joint order with video in raster order."""
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    dense = force_dense or (q.device.type == "cpu" and needs_grad)
    to_tiles, to_raster, built = _prepare(mask, config, head_ids, q.shape[0], q.shape[2], q.device, dense)
    nv = mask.video_tokens

    def tiled(x):  # [B, S, H, D] -> [B, H, S, D], video part in tile order
        x = torch.cat([x[:, :nv].index_select(1, to_tiles), x[:, nv:]], dim=1)
        return x.transpose(1, 2)

    qt, kt, vt = tiled(q), tiled(k), tiled(v)
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=built) if dense else _flex(qt, kt, vt, built)
    out = out.transpose(1, 2)
    return torch.cat([out[:, :nv].index_select(1, to_raster), out[:, nv:]], dim=1)


def validate_window(window: Sequence, heads: int) -> None:
    win = torch.as_tensor(window)
    if win.dim() == 1:
        require(win.numel() == 3 and bool((win > 0).all()) and bool((win % 2 == 1).all()),
                f"sliding_tile attention: window must be three odd positive tile counts (t, h, w); got {list(window)}")
    elif not (win.dim() == 2 and win.shape == (heads, 3) and bool((win > 0).all()) and bool((win % 2 == 1).all())):
        raise InputError(f"sliding_tile attention: per-head windows must have shape [{heads}, 3] of odd positive "
                         f"tile counts; got {tuple(win.shape)}")
