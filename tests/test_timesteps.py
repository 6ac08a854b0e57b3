"""Timestep selection: counts, distinctness, exclusion of the final step,
uniformity, fixed and sliding windows."""

import math

import pytest
import torch

from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.rl import TimestepSelector, num_train_timesteps, select_timesteps
from dancegrpo_hpc.sampling import flow_sigmas, sample


@pytest.mark.parametrize("steps, tau, expected", [(16, 0.6, 9), (11, 0.7, 7), (20, 1.0, 19), (50, 0.01, 1), (2, 0.5, 1)])
def test_count_is_ceil_tau_times_t_minus_one(steps, tau, expected):
    assert num_train_timesteps(steps, tau) == expected == max(1, math.ceil(round(tau * (steps - 1), 9)))


def test_subsets_are_distinct_exclude_the_final_step_and_differ_per_sample():
    gen = torch.Generator().manual_seed(0)
    sel = select_timesteps(64, 16, 0.6, gen)
    assert sel.shape == (64, 9)
    assert all(len(set(row.tolist())) == 9 for row in sel)
    assert int(sel.max()) <= 14 and int(sel.min()) >= 0
    assert len({tuple(sorted(row.tolist())) for row in sel}) > 32


def test_selection_is_uniform_over_trainable_steps():
    gen = torch.Generator().manual_seed(1)
    sel = select_timesteps(20000, 16, 0.6, gen)
    counts = torch.bincount(sel.reshape(-1), minlength=15).double()
    expected = 20000 * 9 / 15
    chi2 = (((counts - expected) ** 2) / expected).sum().item()
    assert chi2 < 40  # 14 degrees of freedom; p < 1e-3 beyond ~36.1


def test_window_mode_fixed_and_sliding():
    fixed = TimestepSelector(16, mode="window", window_start=2, window_size=4)
    assert fixed.sde_mask(0).nonzero().view(-1).tolist() == [2, 3, 4, 5]
    assert fixed.select(3, 100).tolist() == [[2, 3, 4, 5]] * 3
    sliding = TimestepSelector(10, mode="window", window_size=3, window_stride=2, window_shift_every=5)
    starts = [sliding.window(i).start for i in (0, 4, 5, 10, 15, 20)]
    assert starts == [0, 0, 2, 4, 6, 0]  # starts 0..6 are valid (window must end by step 8)
    assert all(sliding.window(i).stop <= 9 for i in range(100))


def test_window_mask_drives_the_sampler():
    sel = TimestepSelector(8, mode="window", window_start=1, window_size=3)
    traj = sample(lambda x, s, i: -x, torch.randn(2, 5), flow_sigmas(8), "dance", 0.3, sde_steps=sel.sde_mask(0))
    assert traj.stochastic.tolist() == [False, True, True, True, False, False, False, False]
    assert torch.isfinite(traj.log_probs[:, 1:4]).all() and torch.isnan(traj.log_probs[:, [0, 4, 5, 6, 7]]).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tau=0.0), "tau \\(timestep fraction\\) must lie in \\(0, 1\\]"),
        (dict(tau=1.5), "tau"),
        (dict(num_steps=1), "num_steps must be an int >= 2"),
        (dict(mode="window", window_size=16), "window_size must lie in \\[1, 15\\]"),
        (dict(mode="window", window_start=13, window_size=4), "window_start must lie in \\[0, 11\\]"),
        (dict(mode="sliding"), "mode must be one of"),
    ],
)
def test_errors(kwargs, message):
    args = dict(num_steps=16)
    args.update(kwargs)
    with pytest.raises(InputError, match=message):
        TimestepSelector(**args)
