"""Euphonium's reward-gradient guided SDE: the guided step against its closed form
(float64), lambda = 0 is the plain step, internalised log-probs ignore the guidance,
process advantages, and the trainer's guided rollouts stay on-policy."""

import math

import pytest
import torch

from trainer_utils import TinyWorld, tiny_config

from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.rewards.process import register_process_reward
from dancegrpo_hpc.rl.advantages import process_advantages
from dancegrpo_hpc.rl.trainer import Trainer
from dancegrpo_hpc.rl.worker import select_train_timesteps
from dancegrpo_hpc.sampling import flow_sigmas, sample, sde_step
from dancegrpo_hpc.sampling.guidance import Guide, GuidanceSettings

ETA = 0.4


class QuadraticPRM:
    """r = -1/2 ||denoised - target||^2: grad_x r = -(x - sigma v - target) (v held fixed)."""

    name = "quadratic"

    def __init__(self, target):
        self.target = target

    def __call__(self, x, sigma, prompts, denoised):
        return -0.5 * (denoised - self.target).pow(2).flatten(1).sum(dim=1)


class Brightness:
    name = "test_bright_latent"

    def __call__(self, x, sigma, prompts, denoised):
        return denoised[:, :3].mean(dim=(1, 2, 3, 4))


register_process_reward("test_bright_latent", lambda world, **_: Brightness(), replace=True)


def model_fn(x, sigma, i):
    return 0.5 * x + 0.1 * (i + 1)


def _setup(dtype=torch.float64, batch=3, shape=(2, 2, 3, 3)):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, *shape, generator=g, dtype=dtype)
    target = torch.randn(batch, *shape, generator=g, dtype=dtype)
    noises = torch.randn(6, batch, *shape, generator=g, dtype=dtype)
    return x0, target, noises


def _gauss_logp(x_next, mean, std):
    per = -(x_next - mean) ** 2 / (2 * std ** 2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return per.flatten(1).mean(dim=1)


@pytest.mark.parametrize("internalise", [True, False])
def test_guided_step_equals_closed_form(internalise):
    x0, target, noises = _setup()
    sigmas = flow_sigmas(4, 3.0).double()
    lam = 0.7
    guide = Guide(QuadraticPRM(target), GuidanceSettings(scale=lam, normalize=False, internalise=internalise),
                  ETA, ["p"] * 3)
    traj = sample(model_fn, x0, sigmas, "dance", ETA, noise_fn=lambda i: noises[i], guide=guide)
    s, s_next = float(sigmas[0]), float(sigmas[1])
    v = model_fn(x0, None, 0)
    mean = x0 + (s_next - s) * (v + ETA ** 2 / (2 * s) * (x0 + (1 - s) * v))  # DESIGN.md "dance"
    grad = -(x0 - s * v - target)
    std = ETA * math.sqrt(s - s_next)
    expected = mean + lam * (s - s_next) * grad + std * noises[0]
    torch.testing.assert_close(traj.latents[:, 1], expected, rtol=0, atol=1e-10)
    plain_mean_logp = _gauss_logp(expected, mean, std)
    guided_mean_logp = _gauss_logp(expected, mean + lam * (s - s_next) * grad, std)
    want = plain_mean_logp if internalise else guided_mean_logp
    torch.testing.assert_close(traj.log_probs[:, 0].double(), want, rtol=0, atol=1e-5)
    # the process score of x_0 is the PRM at the denoised estimate
    r0 = -0.5 * (x0 - s * v - target).pow(2).flatten(1).sum(dim=1)
    torch.testing.assert_close(traj.process_scores[:, 0].double(), r0, rtol=1e-6, atol=1e-6)
    if not internalise:
        torch.testing.assert_close(traj.guide_shifts[:, 0], lam * (s - s_next) * grad, rtol=0, atol=1e-10)
    else:
        assert traj.guide_shifts is None


def test_guidance_moves_up_the_reward_and_beta_sets_lambda():
    x0, target, noises = _setup()
    sigmas = flow_sigmas(4, 3.0).double()
    plain = sample(model_fn, x0, sigmas, "dance", ETA, noise_fn=lambda i: noises[i])
    beta = 0.05
    settings = GuidanceSettings(beta=beta, normalize=True)
    assert settings.strength(ETA) == pytest.approx(ETA ** 2 / (2 * beta))
    guided = sample(model_fn, x0, sigmas, "dance", ETA, noise_fn=lambda i: noises[i],
                    guide=Guide(QuadraticPRM(target), settings, ETA, ["p"] * 3))
    dist = lambda t: (t.final - target).flatten(1).norm(dim=1)  # noqa: E731
    assert bool((dist(guided) < dist(plain)).all())
    # normalised: each step's shift is lambda * dt * (a unit-RMS direction)
    first = guided.latents[:, 1] - plain.latents[:, 1]
    rms = first.pow(2).flatten(1).mean(dim=1).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, settings.strength(ETA) * float(sigmas[0] - sigmas[1])),
                               rtol=1e-6, atol=0)


def test_lambda_zero_and_outside_window_is_the_plain_step():
    x0, target, noises = _setup(torch.float32)
    sigmas = flow_sigmas(5, 3.0)
    plain = sample(model_fn, x0, sigmas, "dance", ETA, noise_fn=lambda i: noises[i])
    zero = sample(model_fn, x0, sigmas, "dance", ETA, noise_fn=lambda i: noises[i],
                  guide=Guide(QuadraticPRM(target), GuidanceSettings(scale=0.0), ETA, ["p"] * 3))
    assert torch.equal(zero.latents, plain.latents) and torch.equal(zero.log_probs, plain.log_probs)
    window = sample(model_fn, x0, sigmas, "dance", ETA, noise_fn=lambda i: noises[i],
                    guide=Guide(QuadraticPRM(target), GuidanceSettings(scale=1.0, start=2, end=4), ETA, ["p"] * 3))
    assert torch.equal(window.latents[:, :3], plain.latents[:, :3])  # steps 0, 1 unguided
    assert not torch.allclose(window.latents[:, 3], plain.latents[:, 3])


@pytest.mark.parametrize("internalise", [True, False])
def test_internalised_log_probs_do_not_depend_on_guidance(internalise):
    """Rescoring the stored transitions with the plain policy (no PRM anywhere) gives the
    rollout's log-probs: internalised directly, guided-mean after subtracting the shift."""
    x0, target, noises = _setup(torch.float32)
    sigmas = flow_sigmas(4, 3.0)
    traj = sample(model_fn, x0, sigmas, "dance", ETA, noise_fn=lambda i: noises[i],
                  guide=Guide(QuadraticPRM(target), GuidanceSettings(scale=2.0, internalise=internalise), ETA,
                              ["p"] * 3))
    for i in range(4):
        x, x_next = traj.latents[:, i], traj.latents[:, i + 1]
        if not internalise:
            x_next = x_next - traj.guide_shifts[:, i]
        res = sde_step("dance", model_fn(x, None, i), x, float(sigmas[i]), float(sigmas[i + 1]), ETA,
                       prev_sample=x_next)
        torch.testing.assert_close(res.log_prob, traj.log_probs[:, i], rtol=0, atol=2e-5)


def test_process_advantages_normalise_each_step_within_groups():
    scores = torch.tensor([[0.0, 1.0, 2.0], [0.0, 3.0, 2.0], [5.0, 1.0, 1.0], [5.0, 1.0, 4.0]])
    adv = process_advantages(scores, group_size=2)
    # step 0 is credited with state 1; step 1 with state 2
    s = 2 ** -0.5  # (x - mean) / unbiased std for two values is +-1/sqrt(2)
    expected = torch.tensor([[-s, 0.0], [s, 0.0], [0.0, -s], [0.0, s]])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def world():
    return TinyWorld()


def _guided_and_plain_rollouts(tmp_path, world, guidance):
    """Iteration 0's rollouts of a guided and a plain trainer (same prompts, same noise)."""
    trainer = Trainer(tiny_config(tmp_path / "g", guidance=guidance), world=world)
    plain = Trainer(tiny_config(tmp_path / "p"), world=world)
    prompts, ids = trainer.prompts_for(0)
    cond = world.encode(prompts, trainer.topo.device)
    batch = trainer.worker.generate_rollouts(cond, prompts, ids, 0, world.latent_shape, guide_for=trainer.guide_for)
    ref = plain.worker.generate_rollouts(cond, prompts, ids, 0, world.latent_shape)
    return trainer, plain, batch, ref


@pytest.mark.parametrize("internalise", [True, False])
def test_trainer_guided_rollouts_are_on_policy_and_brighter(tmp_path, world, internalise):
    trainer, plain, batch, ref = _guided_and_plain_rollouts(tmp_path, world, {
        "process_reward": "test_bright_latent", "scale": 3.0, "internalise": internalise, "process_advantage": 0.5})
    assert batch.extras["process_scores"].shape == (len(batch), 5)
    assert ("guide_shifts" in batch.extras) == (not internalise)
    brightness = lambda b: b.latents[:, -1, :3].mean(dim=(1, 2, 3, 4))  # noqa: E731
    assert bool((brightness(batch) > brightness(ref)).all())
    steps = select_train_timesteps(batch, 0.7, 0, 0, 0)
    recomputed = trainer.worker.compute_log_probs(batch, steps)
    stored = batch.log_probs.gather(1, steps.to(batch.log_probs.device))  # timestep indices live on the host
    assert (recomputed - stored).abs().max() <= 1e-6  # ratio == 1 before the first update
    metrics = trainer.run_iteration(0)
    assert math.isfinite(metrics["loss"]) and "process_loss" in metrics and metrics["process_loss"] != 0
    assert math.isfinite(metrics["process_reward_final"])
    trainer.close()
    plain.close()


def test_fraction_guides_the_first_members_of_each_group_only(tmp_path, world):
    """guidance.fraction=0.5, G=4: members 0, 1 of every group are steered (brighter), members
    2, 3 are the plain rollout bit for bit; every sample is still scored by the PRM."""
    trainer, plain, batch, ref = _guided_and_plain_rollouts(tmp_path, world, {
        "process_reward": "test_bright_latent", "scale": 3.0, "fraction": 0.5})
    guided = batch.sample_ids % 4 < 2
    brightness = lambda b: b.latents[:, -1, :3].mean(dim=(1, 2, 3, 4))  # noqa: E731
    assert bool((brightness(batch)[guided] > brightness(ref)[guided]).all())
    assert torch.equal(batch.latents[~guided], ref.latents[~guided])
    assert torch.equal(batch.log_probs[~guided], ref.log_probs[~guided])
    assert bool(torch.isfinite(batch.extras["process_scores"]).all())
    trainer.close()
    plain.close()


def test_guidance_config_errors(tmp_path):
    with pytest.raises(InputError, match="guidance.fraction=0.1 guides no sample"):
        tiny_config(tmp_path, guidance={"process_reward": "test_bright_latent", "scale": 1.0, "fraction": 0.1})
    with pytest.raises(InputError, match="guidance.fraction must be in"):
        tiny_config(tmp_path, guidance={"process_reward": "test_bright_latent", "scale": 1.0, "fraction": 1.5})
    with pytest.raises(InputError, match="guidance.process_reward"):
        tiny_config(tmp_path, guidance={"scale": 1.0})
    with pytest.raises(InputError, match="not both"):
        tiny_config(tmp_path, guidance={"process_reward": "test_bright_latent", "scale": 1.0, "beta": 1.0})
    with pytest.raises(InputError, match="window"):
        tiny_config(tmp_path, guidance={"process_reward": "test_bright_latent", "scale": 1.0, "start": 3, "end": 2})
