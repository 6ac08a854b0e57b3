"""examples/grpo_gaussian.py: the sampler, log-probs, advantages and loss together
improve the reward, and flipping the advantage sign makes it worse (so the test
can fail on a sign error anywhere in the chain)."""

import os

import torch
from script_utils import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_example():
    return load_script("examples/grpo_gaussian.py")


def test_grpo_moves_the_policy_to_the_reward():
    ex = load_example()
    mu, history = ex.train(iterations=25)
    assert (mu - ex.TARGET).norm() < 0.5
    assert sum(history[-5:]) / 5 > history[0] + 2.0


def test_flipped_advantages_make_it_worse(monkeypatch):
    ex = load_example()
    from dancegrpo_hpc.rl import group_advantages

    monkeypatch.setattr(ex, "group_advantages", lambda r, g: -group_advantages(r, g))
    mu, history = ex.train(iterations=15)
    assert (mu - ex.TARGET).norm() > torch.tensor([1.5, -1.0]).norm()  # moved away from the target
    assert sum(history[-5:]) / 5 < history[0]
