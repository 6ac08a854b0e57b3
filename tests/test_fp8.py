"""The local layer spec's FP8 linears (dancegrpo_hpc/distributed/fp8.py, torch._scaled_mm; the
CPU kernel here, cuBLAS on a GPU): exact against a float64 model of the same quantization,
within the error the formats predict against unquantized math, delayed-scaling history,
tensor-parallel ranks equal to one rank, a whole tiny DiT, bad specs, and (gpu) CUDA = CPU."""

import math

import pytest
import torch
from dist_utils import run_ranks
from hv_utils import diffusers_model, inputs, rel

from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.distributed.fp8 import E4M3, E5M2, FP8State, fp8_linear
from dancegrpo_hpc.models.hunyuan_video import PRESETS, HunyuanVideoDiT, LayerSpec

RECIPES = ("current", "delayed", "rowwise")
TOP = {E4M3: 448.0, E5M2: 57344.0}


# ---------------------------------------------------------------- a float64 model of the recipes
def ref_scale(amax: torch.Tensor, dtype) -> torch.Tensor:
    """2^floor(log2(max / amax)) in float64: the largest power of two keeping amax in range."""
    return torch.exp2(torch.floor(torch.log2(TOP[dtype] / amax.double())))


def ref_fake_quant(t, dtype, dim=None, amax=None):
    """t quantized to `dtype` and back, in float64: scale per tensor (dim None) or per slice
    along `dim` (the reduced axis), from t's amax unless given (then values saturate)."""
    t = t.double()
    if amax is None:
        amax = t.abs().amax() if dim is None else t.abs().amax(dim=dim, keepdim=True)
    s = ref_scale(amax, dtype)
    return (t * s).clamp(-TOP[dtype], TOP[dtype]).to(dtype).double() / s


def reference(recipe, x, w, b, g):
    """Output and gradients (x, w, b) of one call, in float64, from the quantized operands."""
    if recipe == "rowwise":  # every operand scaled along its contraction axis, all e4m3
        y = ref_fake_quant(x, E4M3, 1) @ ref_fake_quant(w, E4M3, 1).T
        dx = ref_fake_quant(g, E4M3, 1) @ ref_fake_quant(w, E4M3, 0)
        dw = ref_fake_quant(g, E4M3, 0).T @ ref_fake_quant(x, E4M3, 0)
    else:  # per tensor: e4m3 forward operands, e5m2 gradient
        xq, wq, gq = ref_fake_quant(x, E4M3), ref_fake_quant(w, E4M3), ref_fake_quant(g, E5M2)
        y, dx, dw = xq @ wq.T, gq @ wq, gq.T @ xq
    return y + b.double(), dx, dw, g.double().sum(0)


def run(recipe, x, w, b, g, state=None):
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y = fp8_linear(x, w, b, state or FP8State(recipe))
    y.backward(g)
    return y.detach(), x.grad, w.grad, b.grad


def close(got, want, tol=2e-6):
    """Max error within tol of the reference's magnitude (float32 accumulation of 64 products)."""
    return (got.double() - want).abs().max().item() <= tol * want.abs().max().item()


def operands(m=37, k=64, n=48, seed=0, dtype=torch.float32):
    """m = 37 tokens: not a multiple of 16, so the weight gradient's token padding is exercised.
    Rows and columns span 5 decades: with power-of-two scales the fp8 mantissas do not depend
    on the scale, so per-row and per-tensor scaling differ only where a small row falls into
    the subnormals (or to zero) under a per-tensor scale."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen) * torch.logspace(-5, 0, m)[:, None]
    w = torch.randn(n, k, generator=gen) * torch.logspace(-5, 0, n)[:, None]
    b = torch.randn(n, generator=gen)
    g = torch.randn(m, n, generator=gen) * torch.logspace(0, -5, m)[:, None] * torch.logspace(-5, 0, n)
    return [t.to(dtype) for t in (x, w, b, g)]


@pytest.mark.parametrize("recipe", RECIPES)
def test_exact_against_float64_model_of_the_quantization(recipe):
    """Forward, dgrad, wgrad and bias grad equal float64 products of the quantized operands
    (delayed: a first call, with no history, scales like current)."""
    x, w, b, g = operands()
    got = run(recipe, x, w, b, g)
    want = reference(recipe, x, w, b, g)
    for name, a, e in zip(("out", "dx", "dw", "db"), got, want):
        assert a.dtype == torch.float32 and a.shape == e.shape, name
        assert close(a, e), (name, (a.double() - e).abs().max().item())


def test_recipes_differ_where_scaling_differs():
    """The rowwise reference is not the tensorwise one on these operands (the exactness test
    above would not notice a recipe running the other's scaling otherwise): the rows of the
    small tokens / features lose their low bits under one scale per tensor."""
    x, w, _, g = operands()
    b = torch.zeros(w.shape[0])
    tensorwise, rowwise = reference("current", x, w, b, g), reference("rowwise", x, w, b, g)
    rows = lambda t: (t.norm(dim=1) if t.dim() == 2 else t)  # noqa: E731
    for name, a, e in zip(("out", "dx", "dw"), tensorwise[:3], rowwise[:3]):
        worst = ((rows(a - e)) / rows(e)).max().item()  # the worst row (small rows: relative error large)
        assert worst > 1e-2, (name, worst)


# --------------------------------------------------------- parity with unquantized arithmetic
# Round-to-nearest with p mantissa bits: a value with mantissa m in [1, 2) moves by at most
# 2^-(p+1) m' / m relative, uniformly; weighted by energy over Gaussian data (mantissas about
# log-uniform, E[m^2] = 3 / (2 ln 2)), one operand's relative L2 error is
#   eps_p = 2^-p / sqrt(12 E[m^2]) = 0.0245 for e4m3 (p = 3) and 0.049 for e5m2 (p = 2),
# a little below the bound 2^-(p+1) / sqrt(3) (m = 1). A GEMM of two independently rounded
# operands over many products: sqrt(eps_a^2 + eps_b^2): forward sqrt(2) eps_4 = 0.035; the
# per-tensor recipes' gradients (e5m2 g) sqrt(eps_4^2 + eps_5^2) = 0.055; rowwise (all e4m3) 0.035.
# Measured about 8% above (subnormals, the fp8 max bin): the tests allow [0.8, 1.25] x.
EPS4 = 2 ** -3 / math.sqrt(12 * 3 / (2 * math.log(2)))
EPS5 = 2 * EPS4


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_parity_with_unquantized_linear_within_format_error(recipe, dtype):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(512, 256, generator=gen).to(dtype)
    w = (torch.randn(256, 256, generator=gen) / 16).to(dtype)
    g = torch.randn(512, 256, generator=gen).to(dtype)
    b = torch.zeros(256, dtype=dtype)
    y, dx, dw, _ = run(recipe, x, w, b, g)
    assert y.dtype == dx.dtype == dw.dtype == dtype
    xd, wd, gd = x.double(), w.double(), g.double()
    grad_eps = math.hypot(EPS4, EPS4 if recipe == "rowwise" else EPS5)
    for name, got, want, eps in (("out", y, xd @ wd.T, math.sqrt(2) * EPS4), ("dx", dx, gd @ wd, grad_eps),
                                 ("dw", dw, gd.T @ xd, grad_eps)):
        err = rel(got, want)
        assert 0.8 * eps <= err <= 1.25 * eps, (name, err, eps)


def test_bias_is_fused_for_bf16_and_added_otherwise():
    """bf16: the bias goes into _scaled_mm (output rounded once); both paths equal the reference."""
    for dtype, tol in ((torch.bfloat16, 2 ** -8), (torch.float32, 2e-6)):
        x, w, b, g = operands(dtype=dtype)
        y = run("current", x, w, b, g)[0]
        assert y.dtype == dtype
        assert close(y, reference("current", x, w, b, g)[0], tol)


def test_no_grad_saves_nothing_and_matches():
    x, w, b, g = operands()
    state = FP8State("rowwise")
    with torch.no_grad():
        y = fp8_linear(x, w.requires_grad_(), b, state)
    assert y.grad_fn is None
    assert close(y, reference("rowwise", x, w, b, g)[0])


@pytest.mark.parametrize("recipe", RECIPES)
def test_torch_compile_gives_the_eager_bits(recipe):
    """Under torch.compile (inductor, here its CPU backend) quantization takes the functional
    form that fuses; power-of-two scales make it exact, so the results equal eager ones bit
    for bit. Delayed scaling runs its linears eagerly inside the compiled graph (its history
    is mutated in the backward) and still advances the history once per call."""
    x, w, b, g = operands(dtype=torch.bfloat16)
    results = []
    for compiled in (False, True):
        state = FP8State(recipe)

        def block(x_, w_, b_):
            return torch.nn.functional.gelu(fp8_linear(x_, w_, b_, state))

        fn = torch.compile(block) if compiled else block
        for _ in range(2):  # the second call: delayed scales from its history
            leaves = [t.clone().requires_grad_() for t in (x, w, b)]
            y = fn(*leaves)
            y.backward(g)
        results.append([y.detach(), *(t.grad for t in leaves)])
        if recipe == "delayed":
            assert state.amax_history[:, 2].tolist() == [0.0] * 3 and state.amax_history[:, 1].min() > 0
    for name, a, e in zip(("out", "dx", "dw", "db"), *results):
        assert torch.equal(a, e), name


# ------------------------------------------------------------------------- delayed scaling
def test_delayed_scaling_uses_the_history_max():
    """A controlled sequence of input amaxes (2, 8, 1, 1, 1, 1) with history length 4: each
    call quantizes with the max of the earlier amaxes (the first with its own), so the call
    after a jump saturates and the jump falls out of the window after 4 calls."""
    torch.manual_seed(0)
    base = torch.randn(32, 64)
    base /= base.abs().max()  # amax exactly 1
    w = torch.randn(48, 64) / 8
    b, g = torch.zeros(48), torch.randn(32, 48)
    state = FP8State("delayed", history=4)
    amaxes, seen = [2.0, 8.0, 1.0, 1.0, 1.0, 1.0], []
    for a in amaxes:
        x = base * a
        scale_from = torch.tensor(max(seen) if seen else a)
        y, dx, dw, _ = run("delayed", x, w, b, g, state)
        want = ref_fake_quant(x, E4M3, amax=scale_from) @ ref_fake_quant(w, E4M3).T
        assert close(y, want), a
        seen.append(a)
        assert state.amax_history[0].tolist() == (seen[::-1] + [0.0] * 4)[:4]
    # the second call saturated: 8 x base quantized with the scale of amax 2
    assert ref_fake_quant(base * 8, E4M3, amax=torch.tensor(2.0)).abs().max().item() == pytest.approx(448 / 128)
    # the weight's and the gradient's rows: constant amaxes, recorded each call
    assert state.amax_history[1].tolist() == [w.abs().max().item()] * 4
    assert state.amax_history[2].tolist() == [g.abs().max().item()] * 4


def test_delayed_history_is_float32_state_carried_by_checkpoints():
    x, w, b, g = operands()
    state = FP8State("delayed", history=3)
    run("delayed", x, w, b, g, state)
    module = torch.nn.Module()
    module.fp8_state = state
    module.to(torch.bfloat16)  # as HunyuanVideoDiT(dtype=bfloat16) does: the history must not round
    assert state.amax_history.dtype == torch.float32
    assert state.amax_history[0, 0].item() == x.abs().max().item()
    fresh = torch.nn.Module()
    fresh.fp8_state = FP8State("delayed", history=3)
    assert fresh.fp8_state.ready == [False] * 3
    fresh.load_state_dict(module.state_dict())
    assert torch.equal(fresh.fp8_state.amax_history, state.amax_history) and fresh.fp8_state.ready == [True] * 3
    # resumed: the next call scales from the loaded history, not from its own amax
    x2 = x / 4
    y = run("delayed", x2, w, b, g, fresh.fp8_state)[0]
    assert close(y, ref_fake_quant(x2, E4M3, amax=x.abs().max()) @ ref_fake_quant(w, E4M3).T + b.double())
    assert not close(y, reference("current", x2, w, b, g)[0])


def test_only_delayed_scaling_has_state_in_checkpoints():
    assert dict(FP8State("current").state_dict()) == {} and dict(FP8State("rowwise").state_dict()) == {}
    assert list(FP8State("delayed").state_dict()) == ["amax_history"]
    assert tuple(FP8State("delayed").amax_history.shape) == (3, 16)  # default history length, TE-like


# ------------------------------------------------------------------------- the DiT in FP8
SCALE = 0.25  # weights N(0, 0.05): a well-conditioned tiny DiT (hidden 64: every linear a multiple of 16)


@pytest.fixture(scope="module")
def tiny_reference():
    ref = diffusers_model("tiny")
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(SCALE)
    return ref


def dit_run(ref, spec, dtype=torch.float32):
    model = HunyuanVideoDiT.from_diffusers(ref, spec=spec, dtype=dtype)
    inp = {k: v.to(dtype) if k in ("hidden_states", "encoder_hidden_states", "pooled_projections") else v
           for k, v in inputs(PRESETS["tiny"]).items()}
    out = model(**inp)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out).to(dtype)).sum().backward()
    grads = torch.cat([p.grad.flatten().double() for p in model.parameters() if p.grad is not None])
    return model, out.detach(), grads


@pytest.mark.parametrize("recipe", RECIPES)
def test_tiny_dit_in_fp8_against_float32_and_bf16(tiny_reference, recipe):
    """Every block linear in FP8 (the embedders, AdaLN and proj_out stay unquantized). The
    residual stream carries the embeddings past each block's FP8 error, so the output moves
    less than one GEMM's 0.035; the parameter gradients pass through more GEMMs: within 0.1.
    Not vacuous: FP8 moves the output by more than bf16 parameters do."""
    _, want, want_grads = dit_run(tiny_reference, LayerSpec())
    model, out, grads = dit_run(tiny_reference, LayerSpec("local", fp8=recipe))
    n_fp8 = sum(hasattr(m, "fp8_state") for m in model.modules())
    assert n_fp8 == 4 + 2 * 8 + 2 * 2  # refiner block: qkv, out, mlp x 2; dual: 2 qkv, 2 out, 2 mlps x 2; single: 2
    assert 5e-4 < rel(out, want) < 0.035
    assert rel(grads, want_grads) < 0.1
    _, bf16_out, bf16_grads = dit_run(tiny_reference, LayerSpec(), torch.bfloat16)
    _, fp8_bf16_out, fp8_bf16_grads = dit_run(tiny_reference, LayerSpec("local", fp8=recipe), torch.bfloat16)
    assert rel(fp8_bf16_out, bf16_out) < 0.035 and rel(fp8_bf16_grads, bf16_grads) < 0.1
    assert rel(out, want) > rel(bf16_out, want) / 10


# ------------------------------------------------------------------------- tensor parallel
def _mlp_ranks(rank, world, recipe, sp):
    """column (64 -> 128) -> gelu -> row (128 -> 64) at tp=world, weights sliced from full ones,
    run with the amax reductions and without them (each rank scaling by its own shard)."""
    from megatron.core.model_parallel_config import ModelParallelConfig

    from dancegrpo_hpc.distributed import fp8 as fp8_module
    from dancegrpo_hpc.distributed import parallel
    from dancegrpo_hpc.distributed.spec import LinearFactory

    parallel.initialize(tp=world)
    gen = torch.Generator().manual_seed(0)
    w1, b1 = torch.randn(128, 64, generator=gen) / 8, torch.randn(128, generator=gen)
    w2, b2 = torch.randn(64, 128, generator=gen) / 8, torch.randn(64, generator=gen)
    # the second half of the hidden features (rank 1's shard at tp=2) is 1e-5 as large, and read by
    # row-parallel weights 1e5 as large: a rank scaling by its own shard's amax keeps bits that one
    # scale for the whole tensor flushes into the fp8 subnormals
    w1[64:] *= 1e-5
    b1[64:] *= 1e-5
    w2[:, 64:] *= 1e5
    x = torch.randn(12, 2, 64, generator=gen)  # [seq, batch, hidden]
    g = torch.randn(12, 2, 64, generator=gen)
    cfg = ModelParallelConfig(tensor_model_parallel_size=world, sequence_parallel=sp, use_cpu_initialization=True)
    part = slice(rank * 128 // world, (rank + 1) * 128 // world)
    tokens = slice(rank * 12 // world, (rank + 1) * 12 // world) if sp else slice(None)
    results, reduce_max = {}, fp8_module._reduce_max
    for mode in ("reduced", "local"):
        if mode == "local":
            fp8_module._reduce_max = lambda t, group: t
        factory = LinearFactory(LayerSpec("local", fp8=recipe), cfg)
        col, row = factory.column(64, 128), factory.row(128, 64)
        with torch.no_grad():
            col.weight.copy_(w1[part]), col.bias.copy_(b1[part]), row.weight.copy_(w2[:, part]), row.bias.copy_(b2)
        xin = x[tokens].clone().requires_grad_()
        y = row(torch.nn.functional.gelu(col(xin)))
        y.backward(g[tokens])
        fp8_module._reduce_max = reduce_max
        full = lambda t, dim: parallel_gather(t, dim, world)  # noqa: E731
        db2 = row.bias.grad
        if sp and world > 1:  # under SP the row bias is added to this rank's tokens: partial gradients
            import torch.distributed as dist

            dist.all_reduce(db2)
        results[mode] = {"y": full(y.detach(), 0) if sp else y.detach(), "dx": full(xin.grad, 0) if sp else xin.grad,
                         "dw1": full(col.weight.grad, 0), "db1": full(col.bias.grad, 0),
                         "dw2": full(row.weight.grad, 1), "db2": db2}
    return results


def parallel_gather(t, dim, world):
    import torch.distributed as dist

    if world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=dim)


@pytest.mark.distributed
@pytest.mark.parametrize("recipe, sp", [("current", False), ("delayed", True), ("rowwise", True)])
def test_tensor_parallel_ranks_equal_one_rank(recipe, sp):
    """Column- and row-parallel FP8 linears on 2 gloo ranks (amaxes maxed over TP where a
    rank sees part of a row or tensor) give one rank's FP8 results: the same fp8 operands,
    float32 partial sums added in another order only. Without the reductions (each rank
    scaling by its shard) the results differ."""
    one = run_ranks(1, _mlp_ranks, recipe, False)[0]["reduced"]
    for got in run_ranks(2, _mlp_ranks, recipe, sp):
        for name, want in one.items():
            assert rel(got["reduced"][name], want) <= 1e-5, name
        assert max(rel(got["local"][name], want) for name, want in one.items()) > 1e-3


# ------------------------------------------------------------------------- bad specs
def test_bad_specs_fail_with_one_line():
    cases = [
        (LayerSpec("local", fp8="block"), "layer spec 'local': fp8 must be one of 'current', 'delayed', 'rowwise' or "
                                          "None; got 'block' ('block' is a recipe of layer spec 'transformer_engine')"),
        (LayerSpec("transformer_engine", fp8="rowwise"), "('rowwise' is a recipe of layer spec 'local')"),
        (LayerSpec("local", fp8="e4m3"), "fp8 must be one of 'current', 'delayed', 'rowwise' or None; got 'e4m3'"),
        (LayerSpec("local", fp8="delayed", fp8_history=0), "fp8_history must be an integer >= 1"),
    ]
    for spec, message in cases:
        with pytest.raises(InputError) as err:
            spec.validate()
        assert message in str(err.value) and "\n" not in str(err.value)


def test_width_not_a_multiple_of_16_is_refused_at_build():
    cfg = PRESETS["tiny"].replace(num_attention_heads=3, attention_head_dim=8, rope_axes_dim=(2, 2, 4))  # hidden 24
    with pytest.raises(InputError, match=r"multiples of 16; a linear here is 24 -> 72 \(24 -> 72 per TP rank at "
                                         r"tp=1\); use a model width that is a multiple of 16, or fp8=None"):
        HunyuanVideoDiT(cfg, spec=LayerSpec("local", fp8="current"))
    HunyuanVideoDiT(cfg, spec=LayerSpec("local"))  # the same model without FP8 builds


# ------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("recipe", RECIPES)
def test_cuda_equals_cpu(recipe):
    """cuBLAS / CUTLASS _scaled_mm on the GPU against the CPU kernel on the same bf16 inputs:
    the quantized operands are the same bits (power-of-two scales, the same casts), so only
    the float32 accumulation order and the final bf16 rounding differ. Not timed."""
    x, w, b, g = operands(m=301, k=256, n=384, dtype=torch.bfloat16)
    cpu = run(recipe, x, w, b, g)
    gpu = run(recipe, *(t.cuda() for t in (x, w, b, g)))
    for name, a, e in zip(("out", "dx", "dw", "db"), gpu, cpu):
        assert a.device.type == "cuda" and a.dtype == torch.bfloat16
        assert rel(a.cpu(), e) < 4e-3, (name, rel(a.cpu(), e))
    # float32 outputs against the float64 model: Hopper's FP8 tensor cores accumulate with
    # fewer than float32's bits between promotions (DeepSeek-V3 reports ~14 on H800), hence
    # 5e-4 of the largest value, still 50x below one fp8 rounding
    x32, w32, b32, g32 = operands(m=301, k=256, n=384)
    want = reference(recipe, x32, w32, b32, g32)
    for name, a, e in zip(("out", "dx", "dw", "db"), run(recipe, *(t.cuda() for t in (x32, w32, b32, g32))), want):
        assert close(a.cpu(), e, 5e-4), (name, (a.cpu().double() - e).abs().max().item() / e.abs().max().item())


@pytest.mark.gpu
@pytest.mark.parametrize("recipe", RECIPES)
def test_tiny_dit_in_fp8_on_cuda_equals_cpu(tiny_reference, recipe):
    """The tiny DiT with FP8 linears on the GPU: float32 parameters give the CPU run's output
    and gradients (cuBLAS vs the CPU kernel, SDPA kernels: accumulation order only, which can
    flip a few fp8 roundings); a bf16 training step is finite."""
    def cuda_run(dtype):
        model = HunyuanVideoDiT.from_diffusers(tiny_reference, spec=LayerSpec("local", fp8=recipe), dtype=dtype,
                                               device="cuda")
        inp = {k: (v.to("cuda", dtype) if k in ("hidden_states", "encoder_hidden_states", "pooled_projections")
                   else v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in inputs(PRESETS["tiny"]).items()}
        out = model(**inp)
        (out * torch.linspace(-1, 1, out.numel(), device="cuda").view_as(out).to(dtype)).sum().backward()
        return out.detach().cpu(), torch.cat([p.grad.flatten().double().cpu() for p in model.parameters()
                                               if p.grad is not None])

    _, cpu_out, cpu_grads = dit_run(tiny_reference, LayerSpec("local", fp8=recipe))
    out, grads = cuda_run(torch.float32)
    assert rel(out, cpu_out) < 1e-2 and rel(grads, cpu_grads) < 1e-2
    out16, grads16 = cuda_run(torch.bfloat16)
    assert torch.isfinite(out16).all() and torch.isfinite(grads16).all()
    assert rel(out16, cpu_out) < 0.1


def test_row_scales_without_cpu_support_give_the_same_result(monkeypatch):
    """torch 2.11's CPU _scaled_mm takes per-tensor scales only (seen on the H200 machine's
    torch): scaled_mm then scales the float32 sums afterwards, the same numbers."""
    import dancegrpo_hpc.distributed.fp8 as fp8

    x, w, b, g = operands(m=48, k=64, n=32, dtype=torch.bfloat16)
    native = run("rowwise", x, w, b, g)
    monkeypatch.setattr(fp8, "CPU_ROW_SCALES", False)
    calls = []
    real = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: calls.append(k["scale_a"].numel()) or real(*a, **k))
    fallback = run("rowwise", x, w, b, g)
    assert calls and set(calls) == {1}  # only per-tensor (unit) scales reached _scaled_mm
    for got, want in zip(fallback, native):
        assert torch.equal(got, want)
