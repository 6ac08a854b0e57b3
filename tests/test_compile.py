"""Regional torch.compile of the DiT blocks (model.compile / HunyuanVideoDiT(compile=True)).

CPU: the blocks are traced by dynamo and AOT autograd (backend aot_eager: the captured
forward and backward graphs run as ATen ops, no code generation) and must compute what
the eager blocks compute, RoPE taking its real-arithmetic form under compilation. GPU:
Inductor's code against eager."""

import pytest
import torch

from dancegrpo_hpc.models.hunyuan_video import HunyuanVideoDiT, preset
from dancegrpo_hpc.models.hunyuan_video.layers import _apply_rope_real, apply_rope, rope_tables
from dancegrpo_hpc.distributed.parallelize import apply_compile


def test_real_rope_is_the_complex_rope():
    rotation = rope_tables((2, 3, 5), (4, 6, 6), 256.0, "cpu")
    x = torch.randn(30, 2, 3, 16, dtype=torch.float64)
    # float32 math in both: the same products and sums, so bitwise equal
    assert torch.equal(apply_rope(x, rotation), _apply_rope_real(x, rotation))


def _inputs(cfg, device, dtype, batch=2):
    g = torch.Generator(device).manual_seed(1)
    return dict(hidden_states=torch.randn(batch, cfg.in_channels, 2, 4, 4, generator=g, device=device, dtype=dtype),
                timestep=torch.tensor([300.0, 700.0], device=device)[:batch],
                encoder_hidden_states=torch.randn(batch, 6, cfg.text_embed_dim, generator=g, device=device, dtype=dtype),
                encoder_attention_mask=torch.tensor([[1] * 6, [1] * 4 + [0] * 2], device=device)[:batch],
                pooled_projections=torch.randn(batch, cfg.pooled_projection_dim, generator=g, device=device, dtype=dtype),
                guidance=torch.full((batch,), 6000.0, device=device) if cfg.guidance_embeds else None)


def _run(model, inputs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpoint_fraction", [1.0])  # the trainer's default; 0.0 runs on the GPU below
def test_compiled_blocks_compute_the_eager_model(checkpoint_fraction):
    cfg = preset("tiny")
    torch.manual_seed(0)
    eager = HunyuanVideoDiT(cfg, checkpoint_fraction=checkpoint_fraction)
    compiled = HunyuanVideoDiT(cfg, checkpoint_fraction=checkpoint_fraction, init_weights=False)
    compiled.load_state_dict(eager.state_dict())
    assert apply_compile(compiled, backend="aot_eager") == cfg.num_layers + cfg.num_single_layers
    inputs = _inputs(cfg, "cpu", torch.float32)
    want_out, want_grads = _run(eager, inputs)
    got_out, got_grads = _run(compiled, inputs)
    # AOT autograd decomposes some ops (e.g. layer norm, gelu) into others: float32 rounding only
    torch.testing.assert_close(got_out, want_out, rtol=1e-5, atol=1e-6)
    assert got_grads.keys() == want_grads.keys()
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.gpu
def test_inductor_blocks_match_eager_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from dancegrpo_hpc.distributed import parallel

    parallel.initialize(seed=0)
    cfg = preset("tiny")
    eager = HunyuanVideoDiT(cfg, device="cuda", dtype=torch.bfloat16)
    compiled = HunyuanVideoDiT(cfg, device="cuda", dtype=torch.bfloat16, init_weights=False, compile=True)
    compiled.load_state_dict(eager.state_dict())
    inputs = _inputs(cfg, "cuda", torch.bfloat16)
    want_out, want_grads = _run(eager, inputs)
    got_out, got_grads = _run(compiled, inputs)
    # bf16 activations, fused kernels round at other points: relative L2 error of a few bf16 ulps
    assert ((got_out.float() - want_out.float()).norm() / want_out.float().norm()).item() < 2e-2
    for name in want_grads:
        a, b = got_grads[name].float(), want_grads[name].float()
        assert ((a - b).norm() / b.norm().clamp(min=1e-6)).item() < 5e-2, name


def _tp_compiled_vs_eager(rank, world_size):
    from dancegrpo_hpc.distributed import parallel

    parallel.initialize(tp=world_size)
    cfg = preset("tiny")
    torch.manual_seed(0)  # the same full weights on every rank (CPU init splits one master weight)
    eager = HunyuanVideoDiT(cfg, sequence_parallel=True, checkpoint_fraction=1.0)
    compiled = HunyuanVideoDiT(cfg, sequence_parallel=True, checkpoint_fraction=1.0, init_weights=False)
    compiled.load_state_dict(eager.state_dict())
    apply_compile(compiled, backend="aot_eager")
    inputs = _inputs(cfg, "cpu", torch.float32)
    want_out, want_grads = _run(eager, inputs)
    got_out, got_grads = _run(compiled, inputs)
    return {"out": (got_out, want_out), "grads": {n: (got_grads[n], want_grads[n]) for n in want_grads}}


@pytest.mark.distributed
def test_compiled_blocks_under_tensor_and_sequence_parallelism():
    """TP 2 with Megatron SP: the blocks' collectives (megatron's autograd functions over gloo)
    inside compiled regions compute what the eager sharded model computes."""
    from dist_utils import run_ranks

    for r in run_ranks(2, _tp_compiled_vs_eager):
        torch.testing.assert_close(*r["out"], rtol=1e-5, atol=1e-6)
        for name, (got, want) in r["grads"].items():
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)

