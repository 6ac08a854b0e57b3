"""FLUX on several ranks on CPU (gloo, spawned ranks): TP=2 with Megatron SP and Ulysses=2
each give the single-rank output, and the gathered parameter gradients equal the
single-rank gradients (rel err <= 1e-5, as for HunyuanVideo); the single rank gives
diffusers' output. The ranks load a diffusers checkpoint folder (each reads its slices).
Shapes need padding to split evenly (15 image and 7 text tokens), and the text ids are
non-zero, so each rank's chunk of the text RoPE is exercised. At TP=2 the cost model's
parameters per rank equal the model built on the meta device."""

import pytest
import torch
from dist_utils import run_ranks
from dit_parity import assert_grads_match, rel
from flux_utils import diffusers_model, inputs

pytestmark = pytest.mark.distributed

SHAPE = dict(height=6, width=10, text_len=7)  # 3 x 5 = 15 image tokens, 7 text tokens


def _run(rank, world, folder, tp, ulysses, sp):
    from dancegrpo_hpc.distributed import parallel
    from dancegrpo_hpc.distributed.grads import allreduce_tp_partial_grads, allreduce_ulysses_grads
    from dancegrpo_hpc.models.common.weights import export_state_dict
    from dancegrpo_hpc.models.flux import FluxDiT

    parallel.initialize(tp=tp, ulysses=ulysses)
    model = FluxDiT.from_diffusers(folder, sequence_parallel=sp)
    out = model(**inputs(model.config, **SHAPE))
    (out * torch.linspace(-1.0, 1.0, out.numel()).view_as(out)).sum().backward()
    allreduce_tp_partial_grads(model)
    allreduce_ulysses_grads(model)
    return out.detach(), export_state_dict(model, tensor_of=lambda p: p.grad), _layout_checks(tp)


def _layout_checks(tp):
    """At TP > 1: parameters per rank of models built on the meta device against the cost
    model, and the one-line error for heads that do not split."""
    from dancegrpo_hpc.checks import InputError
    from dancegrpo_hpc.models.family import get_family
    from dancegrpo_hpc.models.flux import FluxDiT, preset

    if tp == 1:
        return {}
    counts = {}
    for name in ("flux-dev", "flux-schnell", "flux-tiny"):
        for adaln in ("replicated", "column"):
            built = sum(p.numel() for p in FluxDiT(preset(name), device="meta", adaln=adaln).parameters())
            counts[name, adaln] = (built, get_family("flux").cost(preset(name)).parameters(tp, adaln))
    try:
        FluxDiT(preset("flux-tiny").replace(num_attention_heads=3), device="meta")
        message = None
    except InputError as err:
        message = str(err)
    return {"counts": counts, "error": message}


@pytest.fixture(scope="module")
def single_rank(tmp_path_factory):
    """(checkpoint folder, our output and gradients at one rank, in this process)."""
    folder = str(tmp_path_factory.mktemp("flux") / "transformer")
    ref = diffusers_model()
    ref.save_pretrained(folder, max_shard_size="50KB")  # sharded safetensors + index
    out, grads, _ = _run(0, 1, folder, 1, 1, False)
    with torch.no_grad():
        expected = ref(**inputs(_config(), **SHAPE), return_dict=False)[0]
    assert rel(out, expected) <= 1e-5  # the reference of the sharded runs is diffusers'
    return folder, out, grads


@pytest.mark.parametrize("tp, ulysses, sp", [(2, 1, True), (1, 2, False)], ids=["tp2-sp", "ulysses2"])
def test_sharded_equals_single_rank(single_rank, tp, ulysses, sp):
    folder, ref_out, ref_grads = single_rank
    for out, grads, checks in run_ranks(tp * ulysses, _run, folder, tp, ulysses, sp):
        assert rel(out, ref_out) <= 1e-5
        assert_grads_match(grads, ref_grads, 1e-5)
        if tp > 1:
            for key, (built, counted) in checks["counts"].items():
                assert built == counted, key
            assert "attention heads (3) must be divisible by tp x ulysses (2 x 1 = 2)" in checks["error"]
            assert "\n" not in checks["error"]


def _config():
    from dancegrpo_hpc.models.flux import preset

    return preset("flux-tiny")
