"""GRPO advantages, multi-reward aggregation, binary rewards and best-of-N against
numpy closed forms and hand-worked examples."""

import numpy as np
import pytest
import torch

from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.rewards.base import binary_reward
from dancegrpo_hpc.rl import (
    best_of_n_indices,
    clamp_advantages,
    combine_advantages,
    group_advantages,
    zero_variance_mask,
)


def test_group_mode_is_dancegrpo_per_group_unbiased_std():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(5, 12))
    expected = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-8)
    ours = group_advantages(torch.tensor(r.reshape(-1)), 12)
    assert np.allclose(ours.numpy(), expected.reshape(-1), atol=1e-5)
    # each group has mean 0 and unbiased std 1
    g = ours.view(5, 12)
    assert torch.allclose(g.mean(1), torch.zeros(5), atol=1e-5) and torch.allclose(g.std(1), torch.ones(5), atol=1e-4)


def test_global_std_mode_is_flow_grpo():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(4, 6)) * np.array([[1.0], [3.0], [0.1], [2.0]])
    expected = (r - r.mean(1, keepdims=True)) / (r.std() + 1e-4)  # numpy std over the whole batch
    ours = group_advantages(torch.tensor(r.reshape(-1)), 6, eps=1e-4, mode="global_std")
    assert np.allclose(ours.numpy(), expected.reshape(-1), atol=1e-5)


def test_hand_worked_group():
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0]), 4)
    std = np.std([1, 2, 3, 6], ddof=1)
    assert torch.allclose(adv, torch.tensor([-2.0, -1.0, 0.0, 3.0]) / std, atol=1e-6)


def test_zero_variance_groups():
    r = torch.tensor([1.0, 1.0, 1.0, 0.5, 0.7, 0.5, 2.0, 2.0, 2.0])
    assert zero_variance_mask(r, 3).tolist() == [True] * 3 + [False] * 3 + [True] * 3
    assert torch.equal(group_advantages(r, 3)[:3], torch.zeros(3))


def test_multi_reward_is_the_weighted_sum_of_per_reward_advantages():
    rng = np.random.default_rng(2)
    vq, mq = rng.normal(size=16), rng.normal(size=16) * 5
    total, parts = combine_advantages({"vq": torch.tensor(vq), "mq": torch.tensor(mq)}, {"vq": 1.0, "mq": 0.5}, 8)

    def norm(x):
        x = x.reshape(-1, 8)
        return ((x - x.mean(1, keepdims=True)) / (x.std(1, ddof=1, keepdims=True) + 1e-8)).reshape(-1)

    assert np.allclose(total.numpy(), norm(vq) + 0.5 * norm(mq), atol=1e-5)
    assert np.allclose(parts["mq"].numpy(), norm(mq), atol=1e-5)
    # normalising per reward makes the scale of each reward model irrelevant
    total_scaled, _ = combine_advantages({"vq": torch.tensor(vq), "mq": torch.tensor(mq * 100)}, {"vq": 1.0, "mq": 0.5}, 8)
    assert torch.allclose(total, total_scaled, atol=1e-5)


def test_combine_errors():
    r = {"a": torch.randn(8), "b": torch.randn(8)}
    with pytest.raises(InputError, match="weights name rewards that were not computed: \\['c'\\]"):
        combine_advantages(r, {"a": 1.0, "b": 1.0, "c": 1.0}, 4)
    with pytest.raises(InputError, match="no weight given for rewards \\['b'\\]"):
        combine_advantages(r, {"a": 1.0}, 4)
    with pytest.raises(InputError, match="differ in length"):
        combine_advantages({"a": torch.randn(8), "b": torch.randn(12)}, {"a": 1.0, "b": 1.0}, 4)


def test_binary_reward():
    assert binary_reward(torch.tensor([0.1, 0.5, 0.50001, 0.9]), 0.5).tolist() == [0.0, 0.0, 1.0, 1.0]


def test_best_of_n_keeps_top_and_bottom_half_per_group():
    r = torch.tensor([3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0, 0.0, 7.0, 8.0, 2.5])
    # group 0: 3 1 4 1.5 5 9 -> top2 = idx 5 (9), 4 (5); bottom2 = idx 1 (1), 3 (1.5)
    # group 1: 2 6 0 7 8 2.5 -> top2 = 10 (8), 9 (7); bottom2 = 8 (0), 6 (2)
    assert best_of_n_indices(r, 6, 4).tolist() == [1, 3, 4, 5, 6, 8, 9, 10]
    assert best_of_n_indices(r, 6, 6).tolist() == list(range(12))
    # advantages are computed over all N before selection
    adv = group_advantages(r, 6)[best_of_n_indices(r, 6, 2)]
    assert adv.tolist() == pytest.approx(group_advantages(r, 6)[[1, 5, 8, 10]].tolist())


def test_best_of_n_random_against_sorting():
    rng = np.random.default_rng(3)
    r = rng.permutation(48).astype(np.float64)  # distinct rewards
    kept = best_of_n_indices(torch.tensor(r), 12, 6).numpy()
    expected = []
    for g in range(4):
        order = np.argsort(-r[g * 12:(g + 1) * 12]) + g * 12
        expected += list(order[:3]) + list(order[-3:])
    assert sorted(expected) == kept.tolist()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: group_advantages(torch.randn(10), 4), "10 rewards do not split into groups of 4"),
        (lambda: group_advantages(torch.randn(4), 1), "group_size must be an int >= 2"),
        (lambda: group_advantages(torch.randn(2, 4), 4), "rewards must be a 1-D tensor"),
        (lambda: group_advantages(torch.randn(8), 4, mode="batch"), "mode must be one of"),
        (lambda: best_of_n_indices(torch.randn(8), 4, 3), "keep must be an even int in \\[2, group_size=4\\]"),
        (lambda: best_of_n_indices(torch.randn(8), 4, 6), "keep must be an even int"),
        (lambda: clamp_advantages(torch.randn(3), 0.0), "max_abs must be a positive"),
    ],
)
def test_errors(call, message):
    with pytest.raises(InputError, match=message):
        call()
