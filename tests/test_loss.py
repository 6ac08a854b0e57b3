"""GRPO clipped surrogate and KL term against a numpy closed form."""

import numpy as np
import pytest
import torch

from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.rl import grpo_loss, kl_penalty


def numpy_loss(lp, old, adv, clip, adv_max):
    adv = np.clip(adv, -adv_max, adv_max)
    ratio = np.exp(lp - old)
    return np.mean(np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - clip, 1 + clip)))


@pytest.mark.parametrize("clip", [1e-4, 0.2])
def test_loss_and_stats_match_closed_form(clip):
    rng = np.random.default_rng(0)
    old = rng.normal(size=64)
    lp = old + rng.normal(size=64) * 0.3  # ratios on both sides of the clip range
    adv = rng.normal(size=64) * 4  # some beyond the clamp
    loss, stats = grpo_loss(torch.tensor(lp), torch.tensor(old), torch.tensor(adv), clip, 5.0)
    assert loss.item() == pytest.approx(numpy_loss(lp, old, adv, clip, 5.0), rel=1e-10)
    ratio = np.exp(lp - old)
    assert stats["clip_fraction"].item() == pytest.approx(np.mean(np.abs(ratio - 1) > clip))
    assert stats["approx_kl"].item() == pytest.approx(0.5 * np.mean((lp - old) ** 2))
    assert stats["ratio_max"].item() == pytest.approx(ratio.max())
    assert stats["ratio_mean"].item() == pytest.approx(ratio.mean())


def test_gradient_is_zero_where_clipped_and_minus_a_ratio_elsewhere():
    old = torch.zeros(4, dtype=torch.float64)
    lp = torch.tensor([0.5, -0.5, 0.05, -0.05], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    loss, _ = grpo_loss(lp, old, adv, 0.2, 5.0)
    loss.backward()
    r = torch.exp(lp.detach())
    # samples 0, 1 sit outside the clip range in the direction the advantage pushes: no gradient
    expected = torch.tensor([0.0, 0.0, -r[2].item(), r[3].item()], dtype=torch.float64) / 4
    assert torch.allclose(lp.grad, expected)


def test_on_policy_gradient_is_minus_mean_advantage():
    lp = torch.randn(6, dtype=torch.float64, requires_grad=True)
    adv = torch.randn(6, dtype=torch.float64)
    loss, stats = grpo_loss(lp, lp.detach(), adv, 1e-4, 5.0)
    loss.backward()
    assert torch.allclose(lp.grad, -adv / 6) and stats["clip_fraction"].item() == 0.0
    assert loss.item() == pytest.approx(-adv.mean().item())


def test_kl_term():
    gen = torch.Generator().manual_seed(0)
    mean, ref = torch.randn(3, 4, 5, generator=gen), torch.randn(3, 4, 5, generator=gen)
    std = torch.tensor([0.1, 0.2, 0.3])
    kl = kl_penalty(mean, ref, std)
    expected = ((mean - ref) ** 2).mean(dim=(1, 2)) / (2 * std**2)
    assert torch.allclose(kl, expected)
    lp = torch.randn(3)
    loss, stats = grpo_loss(lp, lp, torch.ones(3), 1e-4, 5.0, kl=kl, kl_coef=0.04)
    assert loss.item() == pytest.approx(-1.0 + 0.04 * kl.mean().item(), rel=1e-6)
    assert stats["kl"].item() == pytest.approx(kl.mean().item())


def test_errors():
    with pytest.raises(InputError, match="old_log_prob shape \\(3,\\) must equal log_prob shape \\(4,\\)"):
        grpo_loss(torch.randn(4), torch.randn(3), torch.randn(4), 0.2, 5.0)
    with pytest.raises(InputError, match="clip_range must be a positive"):
        grpo_loss(torch.randn(4), torch.randn(4), torch.randn(4), 0.0, 5.0)
    with pytest.raises(InputError, match="log_prob must be 1-D"):
        grpo_loss(torch.randn(4, 2), torch.randn(4, 2), torch.randn(4, 2), 0.2, 5.0)
