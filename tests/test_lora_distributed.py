"""LoRA under tensor parallelism (gloo, spawned ranks): a TP=2 model, with and without Megatron
sequence parallelism (AdaLN column-parallel with a gathered output in the latter), and a
Ulysses=2 model give the single-rank output and, after the trainer's gradient reduction
(rl/optim.reduce_gradients: the replicated factors summed over TP), the single-rank gradients
of every lora_A and lora_B, and the same global gradient norm. Layers covered: fused
column-parallel q/k/v (+ mlp-in), the partial row-parallel output projections and MLP fc2
reduced together by TokenRouter.project, the packed row-parallel single-block proj_out, the
token refiner's plain row-parallel linears and replicated nn.Linear (modulation, embedders,
the head). The adapters add no collective: forward and backward run as many as the base."""

import collections
import contextlib
import zlib

import pytest
import torch
from dist_utils import run_ranks
from hv_utils import diffusers_model, inputs, rel

pytestmark = pytest.mark.distributed

SHAPE = dict(frames=3, height=6, width=10, text_len=7)  # 45 video and 7 text tokens: both padded under SP
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
           "ff.net.0.proj", "ff.net.2", "ff_context.net.2", "proj_mlp", "proj_out", "norm1.linear",
           "norm1_context.linear", "norm.linear", "linear_1"]
RANK, ALPHA = 4, 8.0
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all_single", "all_gather_into_tensor",
               "reduce_scatter_tensor", "_all_gather_base", "_reduce_scatter_base")


@contextlib.contextmanager
def counted_collectives():
    """Counts torch.distributed collectives, including megatron's aliases bound at import."""
    import torch.distributed as dist
    from megatron.core.tensor_parallel import layers, mappings

    counts, saved = collections.Counter(), []

    def wrap(owner, name):
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            counts[name] += 1
            return original(*args, **kwargs)

        saved.append((owner, name, original))
        setattr(owner, name, counted)

    for name in COLLECTIVES:
        if hasattr(dist, name):
            wrap(dist, name)
    for module in (layers, mappings):
        for name in ("dist_all_gather_func", "dist_reduce_scatter_func"):
            wrap(module, name)
    try:
        yield counts
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def fixed_adapters(model):
    """Whole lora_A / lora_B (non-zero) for every adapter, the same whatever the layout."""
    from dancegrpo_hpc.distributed import lora

    state = {}
    for name, adapter in lora.lora_adapters(model).items():
        gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        out_features, in_features = adapter.full
        state[f"transformer.{name}.lora_A.weight"] = torch.randn(RANK, in_features, generator=gen) * 0.3
        state[f"transformer.{name}.lora_B.weight"] = torch.randn(out_features, RANK, generator=gen) * 0.1
    return state


def _run(rank, world, tp, ulysses, sp, adaln):
    from megatron.core import parallel_state

    from dancegrpo_hpc.distributed import lora, parallel
    from dancegrpo_hpc.models.hunyuan_video import PRESETS, HunyuanVideoDiT
    from dancegrpo_hpc.models.hunyuan_video.weights import plan
    from dancegrpo_hpc.rl.optim import global_grad_norm, reduce_gradients

    parallel.initialize(tp=tp, ulysses=ulysses)
    model = HunyuanVideoDiT.from_diffusers(diffusers_model("tiny"), sequence_parallel=sp, adaln=adaln)
    names = lora.apply_lora(model, RANK, ALPHA, TARGETS,
                            plan=None if hasattr(model, "weight_plan") else (lambda r: plan(model, r)))
    initial = lora.lora_state_dict(model)  # seeded A, zero B: the same at every TP degree
    lora.load_lora_state_dict(model, fixed_adapters(model))
    params = lora.freeze_base(model)
    inp = inputs(PRESETS["tiny"], **SHAPE)
    for key in ("hidden_states", "encoder_hidden_states", "pooled_projections"):
        # gradients reach every linear's input, with adapters or without (else the base would skip
        # the input-gradient reductions of layers whose inputs depend on no trainable weight)
        inp[key].requires_grad_(True)

    counts = {}
    for adapters_on in (False, True):
        with lora.adapters_enabled(model, adapters_on), counted_collectives() as forward:
            out = model(**inp)
        weights = torch.linspace(-1.0, 1.0, out.numel()).view_as(out)
        with counted_collectives() as backward:
            (out * weights).sum().backward()
        counts[adapters_on] = (sum(forward.values()), sum(backward.values()))
    # the trainer's reduction (dp x ulysses group, then the TP-partial factors), then its norm
    reduce_gradients(params, model, parallel_state.get_data_parallel_group(with_context_parallel=True))
    norm = global_grad_norm(params, lora.sharded_over_tp(params), parallel_state.get_tensor_model_parallel_group())
    grads = lora.lora_state_dict(model, tensor_of=lambda p: p.grad)
    return dict(names=names, initial=initial, out=out.detach(), grads=grads, norm=norm, counts=counts)


@pytest.fixture(scope="module")
def single_rank():
    return run_ranks(1, _run, 1, 1, False, "replicated")[0]


@pytest.mark.parametrize("tp, ulysses, sp, adaln", [(2, 1, False, "replicated"), (2, 1, True, "column"),
                                                    (1, 2, False, "replicated")],
                         ids=["tp2", "tp2-sp-adaln-column", "ulysses2"])
def test_sharded_lora_equals_single_rank(single_rank, tp, ulysses, sp, adaln):
    ref = single_rank
    assert len(ref["names"]) > 40
    for got in run_ranks(tp * ulysses, _run, tp, ulysses, sp, adaln):
        assert got["names"] == ref["names"]
        assert set(got["initial"]) == set(ref["initial"])
        for key, value in ref["initial"].items():
            assert torch.equal(got["initial"][key], value), key
        assert rel(got["out"], ref["out"]) <= 1e-5
        for key, value in ref["grads"].items():
            assert rel(got["grads"][key], value) <= 1e-5, key
        assert rel(got["norm"], ref["norm"]) <= 1e-5
        (base_fwd, base_bwd), (lora_fwd, lora_bwd) = got["counts"][False], got["counts"][True]
        assert lora_fwd == base_fwd and lora_bwd == base_bwd, got["counts"]
        if tp > 1:
            assert base_fwd > 0 and base_bwd > 0  # the counter sees megatron's collectives
