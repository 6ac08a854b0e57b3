"""sde_step / ddim_step against the float64 closed forms, on both paths (fused
kernels and the pure-torch reference), plus the API's contracts and errors."""

import math

import closed_form as cf
import pytest
import torch
from conftest import rel_err

from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.ops import fused_available
from dancegrpo_hpc.sampling import ddim_step, sde_step

PATHS = [pytest.param(False, id="reference"), pytest.param(True, id="fused")]
FLOW_KINDS = ["dance", "flow", "cps"]


def random_schedule(kind, batch, gen):
    """Per-sample (t, t_next) valid for the kind; includes sigma = 1 (the first step)."""
    if kind == "ddim":
        a = 0.01 + 0.9 * torch.rand(batch, generator=gen, dtype=torch.float64)
        return a, a + (1 - a) * (0.05 + 0.9 * torch.rand(batch, generator=gen, dtype=torch.float64))
    s = 0.05 + 0.95 * torch.rand(batch, generator=gen, dtype=torch.float64)
    s[0] = 1.0
    frac = 0.2 + 0.75 * torch.rand(batch, generator=gen, dtype=torch.float64)
    sn = s * frac
    if kind != "cps":
        sn[-1] = 0.0  # the final step to sigma = 0
    return s, sn


def run_step(kind, v, x, t, tn, level, use_fused, **kw):
    if kind == "ddim":
        return ddim_step(v, x, t, tn, level, use_fused=use_fused, **kw)
    return sde_step(kind, v, x, t, tn, level, use_fused=use_fused, **kw)


@pytest.fixture(params=PATHS)
def use_fused(request):
    if request.param and not fused_available():
        pytest.fail("fused kernels not built: dancegrpo_hpc._C missing")
    return request.param


@pytest.mark.parametrize("kind", FLOW_KINDS + ["ddim"])
@pytest.mark.parametrize("shape", [(4, 3, 5, 7), (5, 1), (3, 2, 17, 9, 11)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_rollout_step_matches_closed_form(kind, shape, reduction, use_fused):
    gen = torch.Generator().manual_seed(hash((kind, shape, reduction)) % 2**31)
    x, v, noise = (torch.randn(shape, generator=gen) for _ in range(3))
    t, tn = random_schedule(kind, shape[0], gen)
    level = 0.7
    res = run_step(kind, v, x, t, tn, level, use_fused, noise=noise, reduction=reduction, return_mean=True)
    prev_ref, mean_ref, std_ref, lp_ref = cf.step(kind, v, x, noise, t, tn, level, reduction)
    assert res.prev_sample.dtype == torch.float32 and res.log_prob.dtype == torch.float32
    assert (res.prev_sample.double() - prev_ref).abs().max() < 2e-5
    assert (res.mean.double() - mean_ref).abs().max() < 2e-5
    assert rel_err(res.std, std_ref) < 1e-6
    # the log-prob scores the float32 sample as stored: compare with the closed form on it
    lp_stored = cf.log_prob(res.prev_sample, mean_ref, std_ref, reduction)
    assert rel_err(res.log_prob, lp_stored) < 1e-5
    assert rel_err(res.log_prob, lp_ref) < 1e-4


@pytest.mark.parametrize("kind", FLOW_KINDS + ["ddim"])
def test_training_log_prob_and_grad_match_closed_form(kind, use_fused):
    gen = torch.Generator().manual_seed(7)
    shape = (6, 4, 9, 5)
    x, v, prev = (torch.randn(shape, generator=gen) for _ in range(3))
    t, tn = random_schedule(kind, shape[0], gen)
    # a stored next sample near the mean so the log-probs are in a realistic range
    mean, std = cf.mean_std(kind, v, x, t, tn, 0.4)
    prev = (mean + std.view(-1, 1, 1, 1) * prev.double()).float()
    v_new = (v + 0.05 * torch.randn(shape, generator=gen)).requires_grad_(True)
    res = run_step(kind, v_new, x, t, tn, 0.4, use_fused, prev_sample=prev)
    assert res.prev_sample is prev
    lp_ref = cf.score(kind, v_new.detach(), x, prev, t, tn, 0.4)
    assert rel_err(res.log_prob, lp_ref) < 1e-5
    weights = torch.randn(shape[0], generator=gen)
    (res.log_prob * weights).sum().backward()
    v64 = v_new.detach().double().requires_grad_(True)
    (cf.score(kind, v64, x, prev, t, tn, 0.4) * weights.double()).sum().backward()
    assert rel_err(v_new.grad, v64.grad) < 1e-5


@pytest.mark.parametrize("kind", FLOW_KINDS + ["ddim"])
@pytest.mark.parametrize("v_dtype", [torch.float32, torch.bfloat16])
def test_bf16_latents_score_the_stored_sample(kind, v_dtype, use_fused):
    gen = torch.Generator().manual_seed(11)
    shape = (3, 8, 33)
    x = torch.randn(shape, generator=gen).bfloat16()
    v = torch.randn(shape, generator=gen).to(v_dtype)
    noise = torch.randn(shape, generator=gen).bfloat16()
    t, tn = random_schedule(kind, shape[0], gen)
    res = run_step(kind, v, x, t, tn, 0.5, use_fused, noise=noise)
    assert res.prev_sample.dtype == torch.bfloat16
    mean, std = cf.mean_std(kind, v, x, t, tn, 0.5)
    expected = (mean + std.view(-1, 1, 1) * noise.double()).float().bfloat16()
    # float32 math vs float64: at most one bf16 rounding step apart
    ulp = (expected.float().abs() * 2**-7).clamp_min(1e-30)
    assert ((res.prev_sample.float() - expected.float()).abs() <= ulp).all()
    assert rel_err(res.log_prob, cf.log_prob(res.prev_sample, mean, std)) < 1e-5
    # on-policy: scoring the stored bf16 sample with the same model output gives the same log-prob
    scored = run_step(kind, v, x, t, tn, 0.5, use_fused, prev_sample=res.prev_sample)
    assert (scored.log_prob - res.log_prob).abs().max() <= 1e-6


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_on_policy_log_ratio_is_zero(kind, use_fused):
    """Rollout then re-scoring with the same model output: |log ratio| <= 1e-6."""
    gen = torch.Generator().manual_seed(3)
    x, v = torch.randn(8, 16, 6, generator=gen), torch.randn(8, 16, 6, generator=gen)
    roll = run_step(kind, v, x, 0.8, 0.7, 0.3, use_fused, generator=gen)
    again = run_step(kind, v, x, 0.8, 0.7, 0.3, use_fused, prev_sample=roll.prev_sample)
    assert (again.log_prob - roll.log_prob).abs().max() <= 1e-6


def test_paths_agree_and_generator_is_reproducible():
    gen = torch.Generator().manual_seed(5)
    x, v = torch.randn(4, 300, generator=gen), torch.randn(4, 300, generator=gen)
    a = sde_step("dance", v, x, 0.9, 0.8, 0.3, generator=torch.Generator().manual_seed(1), use_fused=True)
    b = sde_step("dance", v, x, 0.9, 0.8, 0.3, generator=torch.Generator().manual_seed(1), use_fused=False)
    assert torch.allclose(a.prev_sample, b.prev_sample, atol=1e-6)
    assert torch.allclose(a.log_prob, b.log_prob, atol=1e-5)
    c = sde_step("dance", v, x, 0.9, 0.8, 0.3, generator=torch.Generator().manual_seed(2), use_fused=True)
    assert not torch.allclose(a.prev_sample, c.prev_sample)


def test_ode_step_is_euler_without_log_prob(use_fused):
    x, v = torch.randn(3, 10), torch.randn(3, 10)
    res = sde_step("ode", v, x, torch.tensor([1.0, 0.5, 0.2]), torch.tensor([0.9, 0.25, 0.0]), 0.0, use_fused=use_fused)
    expected = x.double() + torch.tensor([-0.1, -0.25, -0.2], dtype=torch.float64).view(-1, 1) * v.double()
    assert (res.prev_sample.double() - expected).abs().max() < 1e-6
    assert res.log_prob is None and bool((res.std == 0).all())


def test_out_writes_into_a_batch_strided_buffer_slot(use_fused):
    gen = torch.Generator().manual_seed(9)
    x, v, noise = (torch.randn(4, 5, 6, generator=gen) for _ in range(3))
    buffer = torch.full((4, 3, 5, 6), float("nan"))
    slot = buffer[:, 1]
    assert not slot.is_contiguous()
    res = sde_step("flow", v, x, 0.6, 0.5, 0.7, noise=noise, out=slot, use_fused=use_fused)
    expected = sde_step("flow", v, x, 0.6, 0.5, 0.7, noise=noise, use_fused=False).prev_sample
    assert torch.equal(buffer[:, 1], res.prev_sample) and torch.allclose(buffer[:, 1], expected, atol=1e-6)
    assert torch.isnan(buffer[:, 0]).all() and torch.isnan(buffer[:, 2]).all()


def test_non_contiguous_inputs(use_fused):
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(3, 7, 9, generator=gen)
    x = base.transpose(1, 2)  # [3, 9, 7], not contiguous within a sample
    v = torch.randn(3, 7, 9, generator=gen).transpose(1, 2)
    noise = torch.randn(3, 9, 7, generator=gen)
    res = sde_step("dance", v, x, 0.5, 0.4, 0.3, noise=noise, use_fused=use_fused)
    prev_ref, _, _, lp_ref = cf.step("dance", v, x, noise, 0.5, 0.4, 0.3)
    assert (res.prev_sample.double() - prev_ref).abs().max() < 1e-5
    assert rel_err(res.log_prob, lp_ref) < 1e-4


def test_nan_model_output_is_not_absorbed(use_fused):
    x, v = torch.randn(2, 50), torch.randn(2, 50)
    v[1, 7] = float("nan")
    res = sde_step("dance", v, x, 0.5, 0.4, 0.3, use_fused=use_fused)
    assert torch.isfinite(res.log_prob[0]) and torch.isnan(res.log_prob[1])


def test_float64_inputs_use_the_reference_in_float64():
    x, v = torch.randn(2, 40, dtype=torch.float64), torch.randn(2, 40, dtype=torch.float64)
    res = sde_step("cps", v, x, 0.5, 0.3, 0.5)
    assert res.prev_sample.dtype == torch.float64 and res.log_prob.dtype == torch.float64
    with pytest.raises(InputError, match="use_fused=True"):
        sde_step("cps", v, x, 0.5, 0.3, 0.5, use_fused=True)


def test_reference_path_is_differentiable_in_the_sample():
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    prev = torch.randn(2, 3, 4, dtype=torch.float64)

    def f(v_, x_):
        return sde_step("flow", v_, x_, 0.7, 0.5, 0.6, prev_sample=prev).log_prob

    assert torch.autograd.gradcheck(f, (v, x))
    # the fused path refuses rather than dropping the sample's gradient
    xf, vf = x.detach().float().requires_grad_(), v.detach().float()
    res = sde_step("flow", vf, xf, 0.7, 0.5, 0.6, prev_sample=prev.float())
    res.log_prob.sum().backward()
    assert xf.grad is not None and xf.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------- errors

@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sigma=1.2), "sigma must lie in \\(0.0, 1.0\\]"),
        (dict(sigma=0.0), "sigma must lie in"),
        (dict(sigma=0.5, sigma_next=0.5), "sigma_next must lie in \\[0, sigma\\)"),
        (dict(sigma_next=-0.1), "sigma_next must lie in"),
        (dict(eta=0.0), "eta \\(noise level\\) must be a positive finite number"),
        (dict(eta=-0.3), "eta"),
        (dict(eta=float("nan")), "eta"),
        (dict(reduction="max"), "reduction must be one of"),
        (dict(kind="sde"), "kind must be one of"),
        (dict(sigma=torch.tensor([0.5, 0.6])), "must be a scalar or have shape \\[3\\]"),
        (dict(kind="cps", sigma_next=0.0), "use kind='ode'"),
    ],
)
def test_bad_schedule_and_arguments(kwargs, message):
    x, v = torch.randn(3, 4), torch.randn(3, 4)
    args = dict(kind="dance", sigma=0.5, sigma_next=0.4, eta=0.3)
    args.update(kwargs)
    reduction = args.pop("reduction", "mean")
    with pytest.raises(InputError, match=message):
        sde_step(args["kind"], v, x, args["sigma"], args["sigma_next"], args["eta"], reduction=reduction)


def test_bad_tensors():
    x = torch.randn(3, 4)
    with pytest.raises(InputError, match="model_output shape \\(3, 5\\) must equal sample shape \\(3, 4\\)"):
        sde_step("dance", torch.randn(3, 5), x, 0.5, 0.4, 0.3)
    with pytest.raises(InputError, match="noise dtype torch.bfloat16 must equal sample dtype torch.float32"):
        sde_step("dance", torch.randn(3, 4), x, 0.5, 0.4, 0.3, noise=torch.randn(3, 4).bfloat16())
    with pytest.raises(InputError, match="prev_sample shape"):
        sde_step("dance", torch.randn(3, 4), x, 0.5, 0.4, 0.3, prev_sample=torch.randn(4, 4))
    with pytest.raises(InputError, match="model_output is on meta but sample is on cpu"):
        sde_step("dance", torch.randn(3, 4, device="meta"), x, 0.5, 0.4, 0.3)
    with pytest.raises(InputError, match="not both"):
        sde_step("dance", torch.randn(3, 4), x, 0.5, 0.4, 0.3, noise=torch.randn(3, 4), prev_sample=torch.randn(3, 4))
    with pytest.raises(InputError, match="floating-point"):
        sde_step("dance", torch.randn(3, 4), torch.ones(3, 4, dtype=torch.long), 0.5, 0.4, 0.3)
    with pytest.raises(InputError, match="ode steps are deterministic"):
        sde_step("ode", torch.randn(3, 4), x, 0.5, 0.4, 0.0, prev_sample=torch.randn(3, 4))


def test_bad_ddim_schedule():
    x, v = torch.randn(2, 4), torch.randn(2, 4)
    with pytest.raises(InputError, match="alpha_prod must lie in"):
        ddim_step(v, x, 1.0, 1.0)
    with pytest.raises(InputError, match="alpha_prod_prev must lie in \\(alpha_prod, 1\\]"):
        ddim_step(v, x, 0.5, 0.4)
    with pytest.raises(InputError, match="eta"):
        ddim_step(v, x, 0.5, 0.6, eta=0.0)


def test_sum_reduction_is_n_times_mean():
    x, v, prev = torch.randn(2, 30), torch.randn(2, 30), torch.randn(2, 30)
    m = sde_step("dance", v, x, 0.5, 0.4, 0.3, prev_sample=prev).log_prob
    s = sde_step("dance", v, x, 0.5, 0.4, 0.3, prev_sample=prev, reduction="sum").log_prob
    assert torch.allclose(s, 30 * m, rtol=1e-5)
    # constants are kept: a sample exactly at the mean has log p = -log(std) - log(sqrt(2 pi))
    at_mean = sde_step("dance", v, x, 0.5, 0.4, 0.3, noise=torch.zeros(2, 30))
    std = 0.3 * math.sqrt(0.1)
    assert torch.allclose(at_mean.log_prob, torch.full((2,), -math.log(std) - 0.5 * math.log(2 * math.pi)), atol=1e-5)
