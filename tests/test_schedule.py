"""Schedules and single steps against diffusers' schedulers (an independent
implementation of the same published formulas)."""

import numpy as np
import pytest
import torch
from conftest import rel_err

from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.sampling import ddim_schedule, ddim_step, diffusion_alphas_cumprod, flow_sigmas, model_timesteps, sde_step

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("steps, shift", [(16, 5.0), (20, 7.0), (50, 1.0), (3, 3.0)])
def test_flow_sigmas_match_diffusers_hunyuan_schedule(steps, shift):
    # HunyuanVideoPipeline passes linspace(1, 0, T + 1)[:-1] and the scheduler applies the shift
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
    ours = flow_sigmas(steps, shift)
    assert ours.shape == (steps + 1,) and ours[0] == 1 and ours[-1] == 0
    assert torch.allclose(ours.float(), sched.sigmas, atol=1e-6)
    assert torch.allclose(model_timesteps(ours).float(), sched.timesteps, atol=1e-3)
    # closed form: shift * s / (1 + (shift - 1) s)
    s = np.linspace(1, 0, steps + 1)
    assert np.allclose(ours.numpy(), shift * s / (1 + (shift - 1) * s))


def test_ode_step_matches_diffusers_euler_step():
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0)
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, 9)[:-1])
    x, v = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    sig = flow_sigmas(8, 5.0)
    for i in (0, 3, 7):
        sched._step_index = i
        expected = sched.step(v, sched.timesteps[i], x).prev_sample
        ours = sde_step("ode", v, x, float(sig[i]), float(sig[i + 1]), 0.0).prev_sample
        assert rel_err(ours, expected) < 1e-6


def make_ddim():
    return diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   steps_offset=1, set_alpha_to_one=False, clip_sample=False)


@pytest.mark.parametrize("steps", [50, 20, 7])
def test_ddim_schedule_matches_diffusers(steps):
    sched = make_ddim()
    sched.set_timesteps(steps)
    alphas_cumprod = diffusion_alphas_cumprod()
    assert torch.allclose(alphas_cumprod.float(), sched.alphas_cumprod, atol=1e-6)
    timesteps, alpha, alpha_prev = ddim_schedule(alphas_cumprod, steps)
    assert torch.equal(timesteps, sched.timesteps.long())
    ratio = 1000 // steps
    for i, t in enumerate(sched.timesteps.tolist()):
        prev_t = t - ratio
        expected_prev = sched.alphas_cumprod[prev_t] if prev_t >= 0 else sched.final_alpha_cumprod
        assert abs(alpha[i].item() - sched.alphas_cumprod[t].item()) < 1e-6
        assert abs(alpha_prev[i].item() - float(expected_prev)) < 1e-6


@pytest.mark.parametrize("eta", [1.0, 0.3])
@pytest.mark.parametrize("use_fused", [False, True])
def test_ddim_step_matches_diffusers(eta, use_fused):
    sched = make_ddim()
    sched.set_timesteps(20)
    _, alpha, alpha_prev = ddim_schedule(diffusion_alphas_cumprod(), 20)
    gen = torch.Generator().manual_seed(0)
    x, eps, noise = (torch.randn(3, 4, 8, 8, generator=gen) for _ in range(3))
    for i in (0, 10, 19):
        t = sched.timesteps[i]
        expected = sched.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
        ours = ddim_step(eps, x, float(alpha[i]), float(alpha_prev[i]), eta, noise=noise, use_fused=use_fused)
        assert rel_err(ours.prev_sample, expected) < 1e-5


def test_schedule_errors():
    with pytest.raises(InputError, match="num_steps must be an int >= 1"):
        flow_sigmas(0)
    with pytest.raises(InputError, match="shift must be a positive finite number"):
        flow_sigmas(10, shift=0.0)
    with pytest.raises(InputError, match="num_steps must lie in"):
        ddim_schedule(diffusion_alphas_cumprod(), 2000)
