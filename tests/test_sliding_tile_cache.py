"""Sliding-tile attention's caches (issue #14 1.3): the block mask, the dense mask and the
tile permutations are built once per MaskSpec and device, reused across blocks and steps,
keyed by everything that determines them, and give the uncached computation's output."""

import pytest
import torch

import dancegrpo_hpc.attention.sliding_tile as st
from dancegrpo_hpc.attention import AttentionConfig, JointMask
from dancegrpo_hpc.checks import InputError

GRID, TILE = (2, 4, 4), (1, 2, 2)  # 32 video tokens in 2 x 2 x 2 tiles
PER_HEAD = [[1, 1, 1], [3, 1, 1], [1, 3, 3], [3, 3, 1]]


@pytest.fixture(autouse=True)
def fresh_caches():
    st.clear_caches()
    yield
    st.clear_caches()


@pytest.fixture
def builds(monkeypatch):
    """Counts calls of the two mask builders (what a cache hit must not do)."""
    counts = {"block": 0, "dense": 0}
    block_mask, dense_mask = st.block_mask, st.dense_mask

    def counting_block(*args, **kwargs):
        counts["block"] += 1
        return block_mask(*args, **kwargs)

    def counting_dense(*args, **kwargs):
        counts["dense"] += 1
        return dense_mask(*args, **kwargs)

    monkeypatch.setattr(st, "block_mask", counting_block)
    monkeypatch.setattr(st, "dense_mask", counting_dense)
    return counts


def joint(lengths=None, text=5, padding=0):
    return JointMask(32, padding, text, None if lengths is None else torch.tensor(lengths), GRID)


def qkv(mask, batch=3, heads=4, seed=0, grad=False):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, mask.length, heads, 8, generator=gen).requires_grad_(grad) for _ in range(3)]


def spec(mask, window=(3, 3, 3), heads=4, head_ids=None, batch=3):
    return st.MaskSpec.of(mask, TILE, st.window_rows(window, heads, head_ids), batch)


def materialise(block, batch, heads, length):
    """[batch, heads, S, S] bool: a BlockMask's mask_mod at every (b, h, q, k), broadcast."""
    b, h, q, k = (torch.arange(n).view(*[-1 if i == d else 1 for i in range(4)])
                  for d, n in enumerate((block.kv_num_blocks.shape[0], block.kv_num_blocks.shape[1], length, length)))
    return block.mask_mod(b, h, q, k).expand(batch, heads, length, length)


def run(mask, window=(3, 3, 3), head_ids=None, seed=0, grad=False, batch=3):
    q, k, v = qkv(mask, batch=batch, seed=seed, grad=grad)
    return st.sliding_tile_attention(q, k, v, mask, AttentionConfig("sliding_tile", tile=TILE, window=window), head_ids)


def test_bounded_cache_evicts_the_least_recently_used():
    cache, built = st.BoundedCache(2), []
    get = lambda key: cache.get(key, lambda: built.append(key) or [key])  # noqa: E731
    a = get("a")
    get("b")
    assert get("a") is a  # a hit: the same object, not rebuilt; "b" is now the oldest
    get("c")
    assert list(cache.entries) == ["a", "c"] and built == ["a", "b", "c"]
    get("b")
    assert built == ["a", "b", "c", "b"] and (cache.hits, cache.misses) == (1, 4)


def test_equal_keys_give_the_identical_mask_and_different_keys_different_masks():
    same = st.cached_block_mask(spec(joint([5, 2, 4])), "cpu")
    assert st.cached_block_mask(spec(joint([5, 2, 4])), "cpu") is same  # a new JointMask with equal values
    others = [
        st.cached_block_mask(spec(joint([5, 3, 4])), "cpu"),  # another text length
        st.cached_block_mask(spec(joint([5, 2, 4]), window=(1, 3, 3)), "cpu"),  # another window
        st.cached_block_mask(spec(joint([5, 2, 4]), window=PER_HEAD, head_ids=torch.tensor([0, 1, 2, 3])), "cpu"),
        st.cached_block_mask(spec(joint([5, 2, 4]), window=PER_HEAD * 2, head_ids=torch.tensor([4, 6, 5, 7])), "cpu"),
        st.cached_block_mask(spec(joint([5, 2, 4], padding=4)), "cpu"),  # video padding: another sequence
    ]
    masks = [same] + others
    assert len({id(m) for m in masks}) == len(masks)
    # each cached mask is the mask of its own key: its mask_mod, materialised, is the uncached dense mask
    keys = [(joint([5, 2, 4]), (3, 3, 3), None), (joint([5, 3, 4]), (3, 3, 3), None),
            (joint([5, 2, 4]), (1, 3, 3), None)]
    materialised = []
    for block, (m, window, ids) in zip(masks, keys):
        windows = torch.tensor(st.window_rows(window, 4, ids)).expand(4, 3)
        want = st.dense_mask(st.TileLayout(GRID, TILE), m, windows, 3, "cpu")
        materialised.append(materialise(block, 3, 4, m.length))
        assert torch.equal(materialised[-1], want)
    assert not torch.equal(materialised[0], materialised[1]) and not torch.equal(materialised[0], materialised[2])
    # head_ids select the windows: [4, 6, 5, 7] of PER_HEAD * 2 are PER_HEAD's rows 0, 2, 1, 3
    assert spec(joint(), window=PER_HEAD * 2, head_ids=torch.tensor([4, 6, 5, 7])).windows == (
        (1, 1, 1), (1, 3, 3), (3, 1, 1), (3, 3, 1))


def test_spec_is_canonical():
    full = spec(joint([5, 5, 5]))
    assert full == spec(joint(None)) and full.batch == 1 and full.text_lengths is None  # no padding: no text mask
    shared = spec(joint([3, 3, 3]))
    assert shared.text_lengths == (3,) and shared.batch == 1  # one prompt for the group: one batch row
    assert spec(joint([5, 2, 4])).batch == 3
    assert spec(joint(), window=[[3, 3, 3]] * 4).windows == ((3, 3, 3),)  # equal per-head windows: one head row
    assert len(spec(joint(), window=PER_HEAD).windows) == 4
    assert st.cached_block_mask(full, "cpu").kv_num_blocks.shape[:2] == (1, 1)


@pytest.mark.parametrize("grad", [False, True])  # FlexAttention's block mask; the dense masked path on CPU
def test_cached_outputs_equal_the_uncached_computation(grad):
    """A sequence of masks, repeats among them: each output equals the one computed with
    every cache disabled (size 0), so no entry serves a key it was not built for."""
    calls = [(joint([5, 2, 4]), (3, 3, 3), None), (joint([5, 3, 4]), (3, 3, 3), None),
             (joint([5, 2, 4]), (1, 1, 1), None), (joint([5, 2, 4]), PER_HEAD, torch.tensor([3, 2, 1, 0])),
             (joint([5, 2, 4]), (3, 3, 3), None), (joint([5, 2, 4]), PER_HEAD, torch.tensor([0, 1, 2, 3])),
             (joint([5, 3, 4]), (3, 3, 3), None)]
    cached = [run(m, w, ids, seed=i, grad=grad) for i, (m, w, ids) in enumerate(calls)]
    # the last two calls repeat earlier keys; the dense cache holds 4, so the 2nd key was evicted by then
    assert (st.BLOCK_MASKS.hits, st.DENSE_MASKS.hits) == ((0, 1) if grad else (2, 0))
    caches = (st.LAYOUTS, st.PERMUTATIONS, st.BLOCK_MASKS, st.DENSE_MASKS)
    sizes = [c.size for c in caches]
    try:
        for c in caches:
            c.size = 0
        st.clear_caches()
        uncached = [run(joint(m.text_lengths_host()), w, ids, seed=i, grad=grad) for i, (m, w, ids) in enumerate(calls)]
        assert st.BLOCK_MASKS.entries == {} and st.BLOCK_MASKS.hits == 0
    finally:
        for c, size in zip(caches, sizes):
            c.size = size
    for got, want in zip(cached, uncached):
        assert torch.equal(got, want)
    assert not torch.equal(cached[0], run(joint([5, 3, 4]), seed=0, grad=grad))  # the text length matters


def test_a_cache_hit_builds_no_mask(builds):
    for step in range(3):  # three "blocks" (or steps), each with a fresh JointMask of equal values
        with torch.no_grad():
            run(joint([5, 2, 4]), seed=step)
    assert builds == {"block": 1, "dense": 0} and st.BLOCK_MASKS.hits == 2
    run(joint([5, 2, 4]), grad=True)  # CPU training: the dense masked path, its own cache
    run(joint([5, 2, 4]), grad=True)
    assert builds == {"block": 1, "dense": 1}
    with torch.no_grad():
        run(joint([5, 2, 3]))
    assert builds["block"] == 2


def test_large_dense_masks_are_not_cached(builds, monkeypatch):
    monkeypatch.setattr(st, "DENSE_CACHE_MAX_ELEMENTS", 3 * 4 * 37 ** 2 - 1)  # per-sample lengths, per-head windows
    for _ in range(2):
        run(joint([5, 2, 4]), window=PER_HEAD, grad=True)
    assert builds["dense"] == 2 and st.DENSE_MASKS.entries == {}
    for _ in range(2):
        run(joint([5, 5, 5]), grad=True)  # 1 x 1 x 37 x 37: small enough
    assert builds["dense"] == 3 and len(st.DENSE_MASKS.entries) == 1


def test_text_lengths_and_head_ids_are_read_once_per_forward(monkeypatch):
    """A forward pass makes one JointMask and one head_ids tensor for all its blocks: on a GPU
    each host read is a sync, so it happens in the first block only."""
    mask, head_ids = joint([5, 2, 4]), torch.tensor([0, 1, 2, 3])
    reads = []
    tolist = torch.Tensor.tolist

    def counting(self):
        reads.extend(name for name, t in (("text_lengths", mask.text_lengths), ("head_ids", head_ids)) if self is t)
        return tolist(self)

    q, k, v = qkv(mask)
    cfg = AttentionConfig("sliding_tile", tile=TILE, window=PER_HEAD)
    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    with torch.no_grad():
        for _ in range(4):
            st.sliding_tile_attention(q, k, v, mask, cfg, head_ids)
    monkeypatch.undo()
    assert sorted(reads) == ["head_ids", "text_lengths"]


def test_permutations_are_copied_once_per_device():
    first = st.permutations(GRID, TILE, "cpu")
    assert st.permutations(GRID, TILE, torch.device("cpu")) is first
    assert torch.equal(first[0][first[1]], torch.arange(32))  # to_tiles then to_raster is the identity
    assert st.tile_layout(GRID, TILE) is st.tile_layout(list(GRID), list(TILE))


def test_the_model_builds_one_mask_for_all_its_blocks(builds):
    from hv_utils import diffusers_model, inputs

    from dancegrpo_hpc.models.hunyuan_video import PRESETS, HunyuanVideoDiT

    model = HunyuanVideoDiT.from_diffusers(diffusers_model("tiny"),
                                           attention=AttentionConfig("sliding_tile", tile=(1, 2, 1), window=(1, 1, 1)))
    blocks = len(model.transformer_blocks) + len(model.single_transformer_blocks)
    assert blocks >= 2
    inp = inputs(PRESETS["tiny"], frames=3, height=8, width=6)
    with torch.no_grad():
        first = model(**inp)
        second = model(**inp)  # the next step: still no rebuild
    assert torch.equal(first, second)
    assert builds["block"] == 1 and st.BLOCK_MASKS.hits == 2 * blocks - 1


def test_bad_lengths_and_head_ids_name_the_field():
    with pytest.raises(InputError, match="text_lengths has 2 entries for a batch of 3"):
        run(joint([5, 2]))
    with pytest.raises(InputError, match="head_ids has 3 entries for 4 heads"):
        run(joint(), window=PER_HEAD, head_ids=torch.tensor([0, 1, 2]))


def test_cache_lookups_stay_out_of_a_compiled_graph(builds):
    """Under regional torch.compile the blocks call attention from inside a graph: the host-side
    lookups run eagerly (torch.compiler.disable), still hit the cache, and the output is eager's."""
    mask = joint([5, 2, 4])
    q, k, v = qkv(mask)
    cfg = AttentionConfig("sliding_tile", tile=TILE, window=(3, 1, 1))
    compiled = torch.compile(lambda q, k, v, m: st.sliding_tile_attention(q, k, v, m, cfg), backend="eager")
    with torch.no_grad():
        want = st.sliding_tile_attention(q, k, v, mask, cfg)
        for _ in range(3):
            got = compiled(q, k, v, joint([5, 2, 4]))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert builds["block"] == 1 and st.BLOCK_MASKS.hits == 3
