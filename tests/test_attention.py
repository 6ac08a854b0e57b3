"""Attention backends and sliding-tile attention against brute-force references."""

import itertools
import math

import pytest
import torch

from dancegrpo_hpc.attention import AttentionConfig, JointMask, attention
from dancegrpo_hpc.attention.sliding_tile import TileLayout, dense_mask, sliding_tile_attention
from dancegrpo_hpc.checks import InputError


def brute_force(q, k, v, allowed):
    """float64 softmax attention with an explicit [B, H or 1, S, S] boolean mask."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


def random_qkv(b, s, h, d, seed=0, grad=False):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, s, h, d, generator=gen).requires_grad_(grad) for _ in range(3)]


@pytest.mark.parametrize(
    "mask",
    [
        JointMask(12, 0, 5, torch.tensor([5, 2, 4]), (1, 3, 4)),  # text padding only: prefix path
        JointMask(12, 0, 5, torch.tensor([3, 3, 3]), (1, 3, 4)),  # one shared prompt: unmasked, truncated keys
        JointMask(12, 4, 5, torch.tensor([5, 2, 4]), (1, 3, 4)),  # video padding (sequence parallel): mask
        JointMask(12, 0, 5, None, (1, 3, 4)),  # no text mask
    ],
)
def test_sdpa_equals_masked_softmax(mask):
    q, k, v = random_qkv(3, mask.length, 2, 8)
    valid = mask.key_valid(3, "cpu")
    out = attention(q, k, v, mask, AttentionConfig())
    ref = brute_force(q, k, v, valid[:, None, None, :])
    query_rows = valid  # outputs at padded positions are never read
    assert (out.double() - ref)[query_rows].abs().max() < 1e-5


def sta_reference(layout, mask, windows, b, h, q, k):
    """Definition, one pair at a time (FastVideo's STA, with per-sample text length)."""
    nv, span = mask.video_tokens, mask.video_span
    text_end = span + (mask.text_tokens if mask.text_lengths is None else int(mask.text_lengths[b]))
    k_text = span <= k < text_end
    if q >= nv:  # text queries (and padding rows) see every valid key
        return k < nv or k_text
    if k_text:
        return True
    if k >= nv:
        return False
    per_tile = math.prod(layout.tile)
    nt, nh, nw = layout.tiles

    def coords(i):
        t = i // per_tile
        return t // (nh * nw), (t % (nh * nw)) // nw, t % nw

    for qc, kc, n, w in zip(coords(q), coords(k), (nt, nh, nw), windows[h]):
        half = int(w) // 2
        centre = min(max(qc, half), (n - 1) - half) if half <= (n - 1) - half else (n - 1) - half
        if abs(centre - kc) > half:
            return False
    return True


@pytest.mark.parametrize("seed", range(4))
def test_sta_mask_equals_the_definition_on_random_grids(seed):
    gen = torch.Generator().manual_seed(seed)
    tile = tuple(int(x) for x in torch.randint(1, 3, (3,), generator=gen))
    tiles = tuple(int(x) for x in torch.randint(1, 4, (3,), generator=gen))
    grid = tuple(t * n for t, n in zip(tile, tiles))
    heads = 2
    windows = torch.tensor([[1, 3, 1], [3, 1, 5]])
    nv = math.prod(grid)
    mask = JointMask(nv, int(torch.randint(0, 3, (1,), generator=gen)), 4, torch.tensor([4, 1]), grid)
    layout = TileLayout(grid, tile)
    dense = dense_mask(layout, mask, windows, 2, "cpu")
    for b, h in itertools.product(range(2), range(heads)):
        expected = torch.tensor([[sta_reference(layout, mask, windows, b, h, q, k) for k in range(mask.length)]
                                 for q in range(mask.length)])
        assert torch.equal(dense[b, h], expected), (grid, tile, b, h)


def test_flex_attention_forward_equals_dense_reference():
    mask = JointMask(48, 2, 6, torch.tensor([6, 3]), (3, 4, 4))
    cfg = AttentionConfig("sliding_tile", tile=(1, 2, 2), window=[[1, 1, 1], [3, 1, 1], [1, 3, 3], [3, 3, 1]])
    q, k, v = random_qkv(2, mask.length, 4, 8, seed=3)
    with torch.no_grad():
        flex = sliding_tile_attention(q, k, v, mask, cfg)
        dense = sliding_tile_attention(q, k, v, mask, cfg, force_dense=True)
    valid = mask.key_valid(2, "cpu")
    assert (flex - dense)[valid].abs().max() < 1e-5
    # the dense path is the float64 brute force with the tile mask (video reordered to tiles)
    layout = TileLayout(mask.grid, cfg.tile)
    windows = torch.tensor(cfg.window)
    order = torch.cat([layout.to_tiles, torch.arange(mask.video_tokens, mask.length)])
    allowed = dense_mask(layout, mask, windows, 2, "cpu")
    ref = brute_force(q[:, order], k[:, order], v[:, order], allowed)
    back = torch.empty_like(ref)
    back[:, order] = ref
    assert (dense.double() - back)[valid].abs().max() < 1e-5


def test_full_window_equals_full_attention_with_gradients():
    """Tokens whose window covers the canvas: outputs and gradients equal full attention."""
    mask = JointMask(36, 0, 5, torch.tensor([5, 2]), (2, 3, 6))
    q, k, v = random_qkv(2, mask.length, 2, 8, seed=5, grad=True)
    q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    cfg = AttentionConfig("sliding_tile", tile=(1, 3, 2), window=(3, 1, 5))  # covers 2 x 1 x 3 tiles
    sta = sliding_tile_attention(q, k, v, mask, cfg)
    full = attention(q2, k2, v2, mask, AttentionConfig())
    valid = mask.key_valid(2, "cpu")
    weights = torch.randn(sta.shape).masked_fill(~valid[:, :, None, None], 0)
    (sta * weights).sum().backward()
    (full * weights).sum().backward()
    assert (sta - full)[valid].abs().max() < 1e-5
    for a, b in ((q, q2), (k, k2), (v, v2)):
        assert (a.grad - b.grad).abs().max() < 1e-5


def test_local_window_differs_from_full_attention():
    mask = JointMask(64, 0, 4, None, (4, 4, 4))
    q, k, v = random_qkv(1, mask.length, 1, 8, seed=6)
    local = sliding_tile_attention(q, k, v, mask, AttentionConfig("sliding_tile", tile=(2, 2, 2), window=(1, 1, 1)))
    full = attention(q, k, v, mask, AttentionConfig())
    assert (local - full).abs().max() > 1e-3


def test_tile_layout_round_trip():
    layout = TileLayout((4, 6, 8), (2, 3, 4))
    x = torch.arange(4 * 6 * 8)
    assert torch.equal(x[layout.to_tiles][layout.to_raster], x)
    # the first tile holds raster positions (t<2, h<3, w<4)
    first = layout.to_tiles[:24]
    t, h, w = first // 48, (first % 48) // 8, first % 8
    assert bool((t < 2).all() and (h < 3).all() and (w < 4).all())


@pytest.mark.parametrize("backend", ["flash", "xformers", "te"])
def test_gpu_backends_fail_clearly_on_cpu(backend):
    mask = JointMask(4, 0, 2, None, (1, 2, 2))
    q, k, v = random_qkv(1, mask.length, 2, 8)
    with pytest.raises(InputError, match=f"attention backend '{backend}'"):
        attention(q, k, v, mask, AttentionConfig(backend))


def test_config_errors():
    with pytest.raises(InputError, match="backend must be one of"):
        AttentionConfig("ring").validate(4)
    with pytest.raises(InputError, match="three odd positive tile counts"):
        AttentionConfig("sliding_tile", window=(2, 3, 3)).validate(4)
    with pytest.raises(InputError, match="per-head windows must have shape \\[4, 3\\]"):
        AttentionConfig("sliding_tile", window=[[1, 1, 1]] * 3).validate(4)
    with pytest.raises(InputError, match="must be divisible by the tile size"):
        TileLayout((3, 4, 4), (2, 2, 2))
