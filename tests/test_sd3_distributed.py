"""SD3 distributed parity on CPU (gloo, spawned ranks): TP=2 with Megatron SP (ranks loading
their slices of a sharded checkpoint folder, AdaLN column-parallel) and Ulysses=2 each give
the single-rank output, and the gathered parameter gradients equal the single-rank gradients
(rel err <= 1e-5), on the SD3.5-medium-like tiny config (dual attention, qk RMSNorm,
context_pre_only last block). The shape makes image and text need padding to split evenly.
The TP=2 layout also holds the cost model's parameters per rank equal to a TP=2 SD3.5 medium
built on the meta device.

One spawn of two ranks runs every layout in turn (the one-rank reference is the TP=1 layout,
one replica per rank), re-initialising megatron-core's groups between them: spawning ranks
(importing torch, megatron-core and diffusers) costs more than the models."""

import pytest
import torch
from dist_utils import run_ranks
from dit_parity import assert_grads_match
from sd3_utils import diffusers_model, inputs, rel

pytestmark = pytest.mark.distributed

PRESET = "sd3.5-medium-tiny"
SHAPE = dict(height=6, width=10, text_len=7)  # 3 x 5 = 15 image tokens, 7 text tokens
# name: (tp, ulysses, sequence_parallel, adaln, from the checkpoint folder)
LAYOUTS = {"one-rank": (1, 1, False, "replicated", False), "tp2-sp": (2, 1, True, "column", True),
           "ulysses2": (1, 2, False, "replicated", False)}


def _run(tp, ulysses, sp, adaln, directory):
    from megatron.core import parallel_state

    from dancegrpo_hpc.distributed import parallel
    from dancegrpo_hpc.distributed.grads import allreduce_tp_partial_grads, allreduce_ulysses_grads
    from dancegrpo_hpc.models.family import get_family
    from dancegrpo_hpc.models.sd3 import PRESETS, SD3DiT
    from dancegrpo_hpc.models.sd3.weights import export_state_dict

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel.initialize(tp=tp, ulysses=ulysses)
    model = SD3DiT.from_diffusers(directory or diffusers_model(PRESET), sequence_parallel=sp, adaln=adaln)
    out = model(**inputs(PRESETS[PRESET], **SHAPE))
    weights = torch.linspace(-1.0, 1.0, out.numel()).view_as(out)
    (out * weights).sum().backward()
    allreduce_tp_partial_grads(model)
    allreduce_ulysses_grads(model)
    local = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    meta = SD3DiT(PRESETS["sd3.5-medium"], device="meta", adaln=adaln)
    return dict(out=out.detach(), grads=export_state_dict(model, tensor_of=lambda p: p.grad),
                weights=export_state_dict(model), read=model.checkpoint_bytes_read, local=local,
                meta=(sum(p.numel() for p in meta.parameters()),
                      get_family("sd3").cost(PRESETS["sd3.5-medium"]).parameters(tp, adaln)))


def _layouts(rank, world, directory):
    return {name: _run(tp, u, sp, adaln, directory if folder else None)
            for name, (tp, u, sp, adaln, folder) in LAYOUTS.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sd3")
    ref = diffusers_model(PRESET)
    ref.save_pretrained(str(directory), max_shard_size="20KB")  # sharded safetensors + index
    return ref, run_ranks(2, _layouts, str(directory))


@pytest.mark.parametrize("layout", ["tp2-sp", "ulysses2"])
def test_sharded_equals_one_rank(runs, layout):
    _, ranks = runs
    for result in ranks:
        reference = result["one-rank"]
        assert rel(result[layout]["out"], reference["out"]) <= 1e-5
        assert_grads_match(result[layout]["grads"], reference["grads"], 1e-5)


def test_tp_ranks_load_their_slices_and_count_their_parameters(runs):
    ref, ranks = runs
    full = sum(t.numel() * t.element_size() for t in ref.state_dict().values())
    for result in ranks:
        tp2 = result["tp2-sp"]
        assert all(torch.equal(tp2["weights"][n], t) for n, t in ref.state_dict().items())
        assert tp2["read"] == tp2["local"] < 0.8 * full  # each rank read exactly its own slices
        for layout in LAYOUTS:
            numel, predicted = result[layout]["meta"]
            assert numel == predicted, layout
