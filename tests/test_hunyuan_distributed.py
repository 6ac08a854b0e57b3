"""Distributed parity on CPU (gloo, spawned ranks): TP=2, TP=2 with Megatron SP,
Ulysses=2 and TP=2 x Ulysses=2 (4 ranks) each give the single-rank output, and the
gathered parameter gradients equal the single-rank gradients (rel err <= 1e-5).
Shapes are chosen so that video and text need padding to split evenly."""

import pytest
import torch
from dist_utils import run_ranks
from dit_parity import assert_grads_match
from hv_utils import diffusers_model, inputs, rel

pytestmark = pytest.mark.distributed

SHAPE = dict(frames=3, height=6, width=10, text_len=7)  # 3x3x5 = 45 video tokens, 7 text tokens


def _run(rank, world, tp, ulysses, sp, adaln, preset):
    from dancegrpo_hpc.distributed import parallel
    from dancegrpo_hpc.distributed.grads import allreduce_tp_partial_grads, allreduce_ulysses_grads
    from dancegrpo_hpc.models.hunyuan_video import PRESETS, HunyuanVideoDiT
    from dancegrpo_hpc.models.hunyuan_video.weights import export_state_dict

    parallel.initialize(tp=tp, ulysses=ulysses)
    ref = diffusers_model(preset)
    model = HunyuanVideoDiT.from_diffusers(ref, sequence_parallel=sp, adaln=adaln)
    inp = inputs(PRESETS[preset], **SHAPE)
    out = model(**inp)
    weights = torch.linspace(-1.0, 1.0, out.numel()).view_as(out)
    (out * weights).sum().backward()
    allreduce_tp_partial_grads(model)
    allreduce_ulysses_grads(model)
    grads = export_state_dict(model, tensor_of=lambda p: p.grad)
    return out.detach(), grads


@pytest.fixture(scope="module")
def single_rank():
    return {preset: run_ranks(1, _run, 1, 1, False, "replicated", preset)[0]
            for preset in ("tiny", "tiny-i2v-token-replace")}


@pytest.mark.parametrize(
    "tp, ulysses, sp, adaln, preset",
    [
        (2, 1, False, "replicated", "tiny"),
        (2, 1, True, "column", "tiny"),
        (1, 2, False, "replicated", "tiny"),
        (2, 2, True, "replicated", "tiny"),
        (2, 2, True, "column", "tiny-i2v-token-replace"),
    ],
    ids=["tp2", "tp2-sp-adaln-column", "ulysses2", "tp2xulysses2-sp", "tp2xulysses2-sp-token-replace"],
)
def test_sharded_equals_single_rank(single_rank, tp, ulysses, sp, adaln, preset):
    ref_out, ref_grads = single_rank[preset]
    results = run_ranks(tp * ulysses, _run, tp, ulysses, sp, adaln, preset)
    for out, grads in results:
        assert rel(out, ref_out) <= 1e-5
        assert_grads_match(grads, ref_grads, 1e-5)


def _load_from_directory(rank, world, directory):
    from dancegrpo_hpc.distributed import parallel
    from dancegrpo_hpc.models.hunyuan_video import PRESETS, HunyuanVideoDiT
    from dancegrpo_hpc.models.hunyuan_video.weights import export_state_dict

    parallel.initialize(tp=world)
    model = HunyuanVideoDiT.from_diffusers(directory, sequence_parallel=True)
    local_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with torch.no_grad():
        out = model(**inputs(PRESETS["tiny"], **SHAPE))
    return out, export_state_dict(model), model.checkpoint_bytes_read, local_bytes


def test_tp_ranks_load_their_slices_of_a_checkpoint_directory_and_export_it_back(tmp_path):
    ref = diffusers_model("tiny")
    ref.save_pretrained(str(tmp_path), max_shard_size="100KB")  # sharded safetensors + index
    with torch.no_grad():
        expected = ref(**inputs(ref_config(ref), **SHAPE), return_dict=False)[0]
    full_bytes = sum(p.numel() * p.element_size() for p in ref.parameters())
    for out, exported, read, local in run_ranks(2, _load_from_directory, str(tmp_path)):
        assert rel(out, expected) <= 1e-5
        assert read == local < 0.8 * full_bytes  # each rank read exactly its own slices
        assert all(torch.equal(exported[n], p) for n, p in ref.state_dict().items())


def ref_config(ref):
    from dancegrpo_hpc.models.hunyuan_video import HunyuanVideoConfig

    return HunyuanVideoConfig.from_diffusers(dict(ref.config))
