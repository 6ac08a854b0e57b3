"""MasterWeightAdamW: bf16 parameters follow a float32 AdamW run exactly (rounded),
where in-place bf16 AdamW loses small updates; float32 parameters are plain AdamW;
the masters survive a state_dict round trip and ZeRO-1 sharding."""

import pytest
import torch

from dist_utils import run_ranks
from dancegrpo_hpc.rl.optim import MasterWeightAdamW, build_optimizer

HYPER = dict(lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)


def _weights_and_grads(steps=5, n=4096):
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, generator=gen) * 0.02, torch.randn(64, 8, generator=gen)]
    grads = [[torch.randn(w.shape, generator=gen) * 1e-3 for w in weights] for _ in range(steps)]
    return weights, grads


def _run(optimizer, params, grads):
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.to(p.dtype)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _float32_reference(weights, grads):
    """AdamW in float32 on the bf16-rounded start, fed the bf16-rounded grads."""
    params = [torch.nn.Parameter(w.bfloat16().float()) for w in weights]
    rounded = [[g.bfloat16().float() for g in step] for step in grads]
    _run(torch.optim.AdamW(params, foreach=False, **HYPER), params, rounded)
    return params


def test_bf16_parameters_follow_the_float32_run():
    weights, grads = _weights_and_grads()
    reference = _float32_reference(weights, grads)
    ours = [torch.nn.Parameter(w.bfloat16()) for w in weights]
    _run(MasterWeightAdamW(ours, foreach=False, **HYPER), ours, grads)
    naive = [torch.nn.Parameter(w.bfloat16()) for w in weights]
    _run(torch.optim.AdamW(naive, foreach=False, **HYPER), naive, grads)
    for r, o in zip(reference, ours):
        assert o.dtype == torch.bfloat16
        assert torch.equal(o.data, r.data.bfloat16())  # the float32 run, rounded once at the end
    start = weights[0].bfloat16()
    moved_ours = (ours[0].data != start).float().mean().item()
    moved_naive = (naive[0].data != start).float().mean().item()
    moved_reference = (reference[0].data.bfloat16() != start).float().mean().item()
    assert moved_ours == moved_reference and moved_ours > 2 * moved_naive, (moved_ours, moved_naive)


def test_float32_parameters_are_plain_adamw():
    weights, grads = _weights_and_grads()
    ours = [torch.nn.Parameter(w.clone()) for w in weights]
    plain = [torch.nn.Parameter(w.clone()) for w in weights]
    _run(MasterWeightAdamW(ours, **HYPER), ours, grads)
    _run(torch.optim.AdamW(plain, **HYPER), plain, grads)
    for a, b in zip(ours, plain):
        assert torch.equal(a.data, b.data)


def test_state_dict_carries_the_masters():
    weights, grads = _weights_and_grads(steps=6)
    straight = [torch.nn.Parameter(w.bfloat16()) for w in weights]
    _run(MasterWeightAdamW(straight, **HYPER), straight, grads)

    first = [torch.nn.Parameter(w.bfloat16()) for w in weights]
    opt = MasterWeightAdamW(first, **HYPER)
    _run(opt, first, grads[:3])
    state = opt.state_dict()
    assert [m.dtype for m in state["master_params"]] == [torch.float32, torch.float32]
    resumed = [torch.nn.Parameter(p.data.clone()) for p in first]  # the bf16 checkpoint weights
    opt2 = MasterWeightAdamW(resumed, **HYPER)
    opt2.load_state_dict(state)
    _run(opt2, resumed, grads[3:])
    for a, b in zip(straight, resumed):
        assert torch.equal(a.data, b.data)


def _zero_rank(rank, world):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    weights, grads = _weights_and_grads()
    params = [torch.nn.Parameter(w.bfloat16()) for w in weights]
    opt = build_optimizer(params, group=None, zero=True, **HYPER)
    _run(opt, params, grads)
    local = opt.optim.state_dict()
    return [p.data for p in params], [m.numel() for m in local["master_params"]]


@pytest.mark.distributed
def test_zero_shards_the_masters_and_matches_one_rank():
    weights, grads = _weights_and_grads()
    single = [torch.nn.Parameter(w.bfloat16()) for w in weights]
    _run(build_optimizer(single, group=None, zero=False, **HYPER), single, grads)
    results = run_ranks(2, _zero_rank)
    for params, _ in results:
        for a, b in zip(params, single):
            assert torch.equal(a, b.data)
    owned = sorted(n for _, sizes in results for n in sizes)
    assert owned == sorted(w.numel() for w in weights)  # each master on exactly one rank
