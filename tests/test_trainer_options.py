"""Trainer options on the tiny world: best-of-N, Flow-GRPO's zero-variance drop,
binary rewards, EMA, real-CFG training, KL to the reference, bf16 autocast."""

import math

import torch

from trainer_utils import TinyWorld, tiny_config

from dancegrpo_hpc.rewards import register_reward
from dancegrpo_hpc.rl.trainer import Trainer
from dancegrpo_hpc.rl.worker import select_train_timesteps


def _one_iteration(tmp_path, **sections):
    trainer = Trainer(tiny_config(tmp_path, **sections), world=TinyWorld())
    try:
        return trainer, trainer.run_iteration(0)
    finally:
        trainer.close()


def test_best_of_n_trains_k_samples_per_group(tmp_path):
    _, m = _one_iteration(tmp_path, train={"best_of_n": 2})
    assert m["trained_samples"] == 4 * 2


class _Constant:
    name = "constant"

    def __call__(self, videos, prompts, **_):
        return torch.full((videos.shape[0],), 0.5)


def test_flow_grpo_drops_zero_variance_groups(tmp_path):
    register_reward("constant", lambda **_: _Constant(), replace=True)
    _, m = _one_iteration(tmp_path, train={"algorithm": "flow_grpo"}, rewards=[{"name": "constant"}])
    assert m["zero_variance_groups"] == 4 and m["trained_samples"] == 0 and math.isnan(m["loss"])
    # DanceGRPO keeps them (their advantages are zero)
    _, m = _one_iteration(tmp_path / "dance", rewards=[{"name": "constant"}])
    assert m["zero_variance_groups"] == 0 and m["trained_samples"] == 16


def test_binary_reward_threshold(tmp_path):
    _, m = _one_iteration(tmp_path, rewards=[{"name": "test_brightness", "binary_threshold": 0.5}])
    assert 0.0 <= m["reward_test_brightness"] <= 1.0
    assert abs(m["reward_test_brightness"] * 16 - round(m["reward_test_brightness"] * 16)) < 1e-6


def test_ema_follows_the_weights(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, train={"ema_decay": 0.9}), world=TinyWorld())
    before = [p.detach().clone() for p in trainer.params]
    trainer.run_iteration(0)
    for shadow, old, new in zip(trainer.ema.shadow, before, trainer.params):
        torch.testing.assert_close(shadow, 0.9 * old + 0.1 * new.detach(), rtol=1e-6, atol=1e-7)
    trainer.close()


def test_cfg_training_is_on_policy_and_trains(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, sampling={"cfg_scale": 3.0}, train={"cfg_training": True}),
                      world=TinyWorld())
    prompts, ids = trainer.prompts_for(0)
    cond = trainer.world.encode(prompts, trainer.topo.device, negative=True)
    batch = trainer.worker.generate_rollouts(cond, prompts, ids, 0, trainer.world.latent_shape)
    steps = select_train_timesteps(batch, 0.7, 0, 0, 0)
    stored = batch.log_probs.gather(1, steps.to(batch.log_probs.device))  # timestep indices live on the host
    assert (trainer.worker.compute_log_probs(batch, steps) - stored).abs().max() <= 1e-6
    m = trainer.run_iteration(0)
    assert m["optimizer_steps"] == 1 and math.isfinite(m["loss"])
    trainer.close()


def test_kl_to_reference_is_zero_before_the_first_step(tmp_path):
    _, m = _one_iteration(tmp_path, train={"kl_coef": 0.1, "updates_per_rollout": 2})
    # update 1 starts at the reference (kl 0), update 2 has moved (kl > 0): the mean over both is positive
    assert m["kl"] > 0 and m["optimizer_steps"] == 2
    _, m1 = _one_iteration(tmp_path / "one", train={"kl_coef": 0.1})
    assert m1["kl"] == 0.0


def test_bf16_autocast_trains(tmp_path):
    _, m = _one_iteration(tmp_path, train={"autocast": "bfloat16"})
    assert m["optimizer_steps"] == 1 and math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])
