"""The compiled ops (torch.ops.dancegrpo_hpc): registration, fake kernels,
autograd, both CPU instruction sets, determinism, and their own input checks."""

import os
from contextlib import contextmanager

import closed_form as cf
import pytest
import torch
from conftest import rel_err

from dancegrpo_hpc.ops import FUSED_KINDS, fused, fused_available, reference
from dancegrpo_hpc.sampling import sde_step

pytestmark = pytest.mark.skipif(not fused_available(), reason="dancegrpo_hpc._C not built")
OPS = torch.ops.dancegrpo_hpc


def schedule(kind, batch):
    if kind == "ddim":
        return torch.linspace(0.2, 0.6, batch, dtype=torch.float64), torch.linspace(0.5, 0.9, batch, dtype=torch.float64)
    return torch.linspace(1.0, 0.4, batch, dtype=torch.float64), torch.linspace(0.8, 0.1, batch, dtype=torch.float64)


def inputs(shape, x_dtype=torch.float32, v_dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x, v, n = (torch.randn(shape, generator=gen) for _ in range(3))
    return v.to(v_dtype), x.to(x_dtype), n.to(x_dtype)


@contextmanager
def cpu_isa(name):
    old = os.environ.get("DANCEGRPO_CPU_ISA")
    os.environ["DANCEGRPO_CPU_ISA"] = name
    try:
        yield
    finally:
        if old is None:
            del os.environ["DANCEGRPO_CPU_ISA"]
        else:
            os.environ["DANCEGRPO_CPU_ISA"] = old


@pytest.mark.parametrize("kind", FUSED_KINDS)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("v_dtype", [torch.float32, torch.bfloat16])
def test_step_matches_reference_every_dtype_pair(kind, x_dtype, v_dtype):
    shape = (3, 40001)  # odd, several 16384-element tiles per sample
    v, x, n = inputs(shape, x_dtype, v_dtype)
    t, tn = schedule(kind, 3)
    prev, mean, lp = OPS.__getattr__(f"{kind}_step")(v, x, n, t, tn, 0.6, False)
    prev_r, mean_r, lp_r = reference.step(kind, v, x, n, t, tn, 0.6)
    tol = 1e-6 if x_dtype == torch.float32 else 1e-2
    assert rel_err(prev, prev_r) < tol and rel_err(mean.float(), mean_r) < tol
    # both score their own stored sample; on equal samples the log-probs agree closely
    assert rel_err(lp, reference.gaussian_log_prob(prev, mean_r, reference.step_std(kind, t, tn, 0.6))) < 1e-5
    assert rel_err(lp, lp_r) < (1e-5 if x_dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("kind", FUSED_KINDS)
@pytest.mark.parametrize("sum_reduction", [False, True])
def test_log_prob_and_backward_match_float64(kind, sum_reduction):
    shape = (4, 3, 1000, 7)
    v, x, prev = inputs(shape, seed=1)
    t, tn = schedule(kind, 4)
    mean, std = cf.mean_std(kind, v, x, t, tn, 0.5)
    prev = (mean + 0.8 * std.view(-1, 1, 1, 1) * prev.double()).float()
    reduction = "sum" if sum_reduction else "mean"
    lp = OPS.__getattr__(f"{kind}_log_prob")(v, x, prev, t, tn, 0.5, sum_reduction)
    assert rel_err(lp, cf.score(kind, v, x, prev, t, tn, 0.5, reduction)) < 1e-5
    grad = torch.randn(4, dtype=torch.float32)
    g = OPS.__getattr__(f"{kind}_log_prob_backward")(grad, v, x, prev, t, tn, 0.5, sum_reduction)
    v64 = v.double().requires_grad_(True)
    (cf.score(kind, v64, x, prev, t, tn, 0.5, reduction) * grad.double()).sum().backward()
    assert rel_err(g, v64.grad) < 1e-5


@pytest.mark.parametrize("kind", FUSED_KINDS)
def test_both_instruction_sets_and_thread_counts_agree(kind):
    v, x, n = inputs((5, 70003), seed=2)
    t, tn = schedule(kind, 5)
    op = OPS.__getattr__(f"{kind}_step")
    results = {}
    threads = torch.get_num_threads()
    try:
        for isa in ("generic", "avx2"):
            with cpu_isa(isa):
                for nt in (1, 2):
                    torch.set_num_threads(nt)
                    results[(isa, nt)] = op(v, x, n, t, tn, 0.3, False)
    finally:
        torch.set_num_threads(threads)
    for isa in ("generic", "avx2"):  # fixed tile order: bitwise equal across thread counts
        assert all(torch.equal(a, b) for a, b in zip(results[(isa, 1)], results[(isa, 2)]))
    a, b = results[("generic", 1)], results[("avx2", 1)]  # FMA contraction may differ by rounding
    assert rel_err(a[0], b[0]) < 1e-6 and rel_err(a[2], b[2]) < 1e-6


def test_reports_instruction_set():
    assert OPS.cpu_isa() in ("avx2", "generic")
    with cpu_isa("generic"):
        assert OPS.cpu_isa() == "generic"


def test_step_out_writes_only_the_given_buffers():
    v, x, n = inputs((4, 6, 5), seed=3)
    t, tn = schedule("dance", 4)
    traj = torch.full((4, 3, 6, 5), float("nan"))
    lp = OPS.dance_step_out(v, x, n, t, tn, 0.3, False, traj[:, 2], None)
    prev_r, _, lp_r = reference.step("dance", v, x, n, t, tn, 0.3)
    assert torch.allclose(traj[:, 2], prev_r, atol=1e-6) and torch.allclose(lp, lp_r, atol=1e-5)
    assert torch.isnan(traj[:, :2]).all()


@pytest.mark.parametrize("kind", FUSED_KINDS)
def test_opcheck(kind):
    """Schema, fake kernel, autograd registration and dispatch are consistent."""
    v, x, n = inputs((2, 3, 5), seed=4)
    t, tn = schedule(kind, 2)
    prev = reference.step(kind, v, x, n, t, tn, 0.4)[0]
    torch.library.opcheck(OPS.__getattr__(f"{kind}_step"), (v, x, n, t, tn, 0.4, False))
    torch.library.opcheck(OPS.__getattr__(f"{kind}_step_out"), (v, x, n, t, tn, 0.4, False, torch.empty_like(x), torch.empty_like(x)))
    torch.library.opcheck(OPS.__getattr__(f"{kind}_log_prob"), (v.clone().requires_grad_(), x, prev, t, tn, 0.4, True))
    torch.library.opcheck(OPS.__getattr__(f"{kind}_log_prob_backward"), (torch.randn(2), v, x, prev, t, tn, 0.4, False))


def test_torch_compile_traces_through_the_fused_ops():
    v, x, n = inputs((3, 4, 8), seed=5)
    prev = sde_step("dance", v, x, 0.7, 0.6, 0.3, noise=n).prev_sample

    def loss_fn(model_output):
        res = sde_step("dance", model_output, x, 0.7, 0.6, 0.3, prev_sample=prev, use_fused=True)
        return (res.log_prob * torch.tensor([1.0, -2.0, 0.5])).sum()

    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    v1 = v.clone().requires_grad_(True)
    v2 = v.clone().requires_grad_(True)
    eager, traced = loss_fn(v1), compiled(v2)
    eager.backward()
    traced.backward()
    assert torch.allclose(eager, traced) and torch.allclose(v1.grad, v2.grad)


def test_fused_autograd_refuses_gradients_it_does_not_compute():
    v, x, n = inputs((2, 10), seed=6)
    t, tn = schedule("dance", 2)
    with pytest.raises(RuntimeError, match="differentiates model_output only"):
        fused.log_prob("dance", v, x.clone().requires_grad_(), n, t, tn, 0.3, False)


def test_op_level_checks():
    v, x, n = inputs((2, 10), seed=7)
    t, tn = schedule("dance", 2)
    with pytest.raises(RuntimeError, match="model_output shape .* must equal sample shape"):
        OPS.dance_step(v[:, :5], x, n, t, tn, 0.3, False)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        OPS.dance_step(v.double(), x, n, t, tn, 0.3, False)
    with pytest.raises(RuntimeError, match="per-sample schedule values must be contiguous float64"):
        OPS.dance_step(v, x, n, t.float(), tn, 0.3, False)
    with pytest.raises(RuntimeError, match="must be contiguous within each sample"):
        OPS.dance_step_out(v, x, n, t, tn, 0.3, False, torch.empty(10, 2).t(), None)
    with pytest.raises(RuntimeError, match="noise dtype"):
        OPS.dance_step(v, x, n.bfloat16(), t, tn, 0.3, False)
