"""CUDA kernels against the CPU kernels and the float64 closed form (run on a GPU)."""

import closed_form as cf
import pytest
import torch
from conftest import rel_err

from dancegrpo_hpc.ops import FUSED_KINDS, reference
from dancegrpo_hpc.sampling import sde_step

pytestmark = pytest.mark.gpu
OPS = torch.ops.dancegrpo_hpc


def schedule(kind, batch, device):
    if kind == "ddim":
        t, tn = torch.linspace(0.2, 0.6, batch), torch.linspace(0.5, 0.9, batch)
    else:
        t, tn = torch.linspace(1.0, 0.4, batch), torch.linspace(0.8, 0.1, batch)
    return t.double().to(device), tn.double().to(device)


def test_cuda_kernels_are_registered():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("dancegrpo_hpc::dance_step", "CUDA")


@pytest.mark.parametrize("kind", FUSED_KINDS)
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16)])
@pytest.mark.parametrize("shape", [(3, 40001), (2, 16, 9, 30, 40), (5, 1)])
def test_cuda_matches_cpu_and_closed_form(kind, dtypes, shape):
    x_dtype, v_dtype = dtypes
    gen = torch.Generator().manual_seed(0)
    x, v, n = (torch.randn(shape, generator=gen) for _ in range(3))
    x, n, v = x.to(x_dtype), n.to(x_dtype), v.to(v_dtype)
    t, tn = schedule(kind, shape[0], "cpu")
    op = OPS.__getattr__(f"{kind}_step")
    cpu = op(v, x, n, t, tn, 0.5, False)
    gpu = op(v.cuda(), x.cuda(), n.cuda(), t.cuda(), tn.cuda(), 0.5, False)
    # the same element math and rounding on both: next samples agree to float32 rounding
    assert rel_err(gpu[0].cpu(), cpu[0]) < 1e-6 or x_dtype == torch.bfloat16 and rel_err(gpu[0].cpu(), cpu[0]) < 4e-3
    assert rel_err(gpu[2].cpu(), cpu[2]) < 1e-5
    lp = OPS.__getattr__(f"{kind}_log_prob")(v.cuda(), x.cuda(), gpu[0], t.cuda(), tn.cuda(), 0.5, False)
    mean, std = cf.mean_std(kind, v, x, t, tn, 0.5)
    assert rel_err(lp.cpu(), cf.log_prob(gpu[0].cpu(), mean, std)) < 1e-5
    grad = torch.randn(shape[0])
    g = OPS.__getattr__(f"{kind}_log_prob_backward")(grad.cuda(), v.cuda(), x.cuda(), gpu[0], t.cuda(), tn.cuda(), 0.5, False)
    v64 = v.double().requires_grad_(True)
    (cf.score(kind, v64, x, gpu[0].cpu(), t, tn, 0.5) * grad.double()).sum().backward()
    assert rel_err(g.cpu().float(), v64.grad) < (1e-5 if v_dtype == torch.float32 else 1e-2)


def test_cuda_log_prob_is_deterministic():
    x, v, n = (torch.randn(4, 1 << 22, device="cuda") for _ in range(3))
    t, tn = schedule("dance", 4, "cuda")
    first = OPS.dance_step(v, x, n, t, tn, 0.3, False)
    for _ in range(3):
        again = OPS.dance_step(v, x, n, t, tn, 0.3, False)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_sde_step_on_cuda_end_to_end():
    x, v = torch.randn(8, 16, 30, 40, device="cuda"), torch.randn(8, 16, 30, 40, device="cuda")
    roll = sde_step("dance", v, x, 0.8, 0.7, 0.3, use_fused=True)
    v2 = v.clone().requires_grad_(True)
    again = sde_step("dance", v2, x, 0.8, 0.7, 0.3, prev_sample=roll.prev_sample, use_fused=True)
    assert (again.log_prob - roll.log_prob).abs().max().item() <= 1e-6
    again.log_prob.sum().backward()
    ref = reference.log_prob("dance", v.double().requires_grad_(True), x.double(), roll.prev_sample.double(),
                             torch.full((8,), 0.8, dtype=torch.float64, device="cuda"),
                             torch.full((8,), 0.7, dtype=torch.float64, device="cuda"), 0.3)
    assert rel_err(again.log_prob, ref) < 1e-5
