"""The SDEs preserve the marginals: Gaussian data sampled with its exact model.

Two independent checks. (1) Every step is affine-Gaussian in x when the model is
the exact velocity of Gaussian data, so the exact discrete-time mean and variance
after T steps follow a float64 recursion (built here from tests/closed_form.py);
the sampler's empirical moments must match it within sampling noise alone.
(2) The recursion itself converges to the data distribution as T grows, for
every kind that preserves the marginals.
"""

import math

import closed_form as cf
import pytest
import torch

from dancegrpo_hpc.sampling import ddim_schedule, diffusion_alphas_cumprod, flow_sigmas, sample
from dancegrpo_hpc.sampling.analytic import GaussianData, check_flow_sampler, compare

M = torch.tensor([-1.0, 0.5, 2.0, 0.0], dtype=torch.float64)
S = torch.tensor([0.3, 1.0, 0.5, 1.5], dtype=torch.float64)


def velocity(z, sigma):
    """E[eps - x0 | z] for z = (1 - sigma) x0 + sigma eps, x0 ~ N(M, S^2); written out here."""
    var = (1 - sigma) ** 2 * S**2 + sigma**2
    return (sigma - (1 - sigma) * S**2) / var * (z - (1 - sigma) * M) - M


def epsilon(x, alpha):
    var = alpha * S**2 + 1 - alpha
    return math.sqrt(1 - alpha) / var * (x - math.sqrt(alpha) * M)


def exact_moments(kind, schedule_pairs, model, level, mean, var):
    """Propagates (mean, var) per dimension through affine-Gaussian steps."""
    for t, tn in schedule_pairs:
        kind_i = "ode" if kind == "cps" and tn == 0 else kind

        def step_mean(z):
            m, _ = cf.mean_std(kind_i, model(z, t).view(1, -1), z.view(1, -1), t, tn, level)
            return m.view(-1)

        _, std = cf.mean_std(kind_i, torch.zeros(1, 4, dtype=torch.float64), torch.zeros(1, 4, dtype=torch.float64), t, tn, level)
        slope = step_mean(mean + 1) - step_mean(mean)  # exact: the step mean is affine in z
        mean, var = step_mean(mean), slope**2 * var + std**2
    return mean, var


def flow_pairs(num_steps, shift):
    sig = flow_sigmas(num_steps, shift).tolist()
    return list(zip(sig[:-1], sig[1:]))


@pytest.mark.parametrize(
    "kind, level, steps, shift",
    [("dance", 0.7, 50, 1.0), ("flow", 0.7, 50, 3.0), ("cps", 0.7, 50, 1.0), ("ode", 0.0, 50, 1.0), ("dance", 0.3, 20, 5.0)],
)
def test_sampler_follows_the_exact_discrete_marginals(kind, level, steps, shift):
    n = 40000
    gen = torch.Generator().manual_seed(17)
    x1 = torch.randn(n, 4, generator=gen, dtype=torch.float64).float()
    traj = sample(lambda x, sigma, i: velocity(x.double(), sigma.view(-1, 1)).float(), x1, flow_sigmas(steps, shift),
                  kind, level, generator=gen, store_latents=False)
    mean, var = exact_moments(kind, flow_pairs(steps, shift), velocity, level, torch.zeros(4, dtype=torch.float64),
                              torch.ones(4, dtype=torch.float64))
    check = compare(kind, traj.final, mean, var.sqrt(), discretisation=0.0)
    assert check.passed, check


def test_ddim_follows_the_exact_discrete_marginals():
    n = 40000
    gen = torch.Generator().manual_seed(21)
    _, alphas, alphas_prev = ddim_schedule(diffusion_alphas_cumprod(), 50)
    a0 = alphas[0].item()
    mean0, var0 = math.sqrt(a0) * M, a0 * S**2 + 1 - a0
    x = (mean0 + var0.sqrt() * torch.randn(n, 4, generator=gen, dtype=torch.float64)).float()
    from dancegrpo_hpc.sampling import ddim_step

    for a, ap in zip(alphas.tolist(), alphas_prev.tolist()):
        x = ddim_step(epsilon(x.double(), a).float(), x, a, ap, 1.0, generator=gen).prev_sample
    mean, var = exact_moments("ddim", list(zip(alphas.tolist(), alphas_prev.tolist())), epsilon, 1.0, mean0, var0)
    check = compare("ddim", x, mean, var.sqrt(), discretisation=0.0)
    assert check.passed, check


@pytest.mark.parametrize("kind, level", [("dance", 0.7), ("flow", 0.7), ("ode", 0.0), ("dance", 1.5)])
def test_exact_marginals_converge_to_the_data(kind, level):
    errors = []
    for steps in (25, 100, 400):
        mean, var = exact_moments(kind, flow_pairs(steps, 1.0), velocity, level, torch.zeros(4, dtype=torch.float64),
                                  torch.ones(4, dtype=torch.float64))
        errors.append(max(((mean - M).abs() / S).max().item(), (var.sqrt() / S - 1).abs().max().item()))
    assert errors[2] < 0.01 and errors[2] < errors[1] < errors[0]  # first order in the step size


def test_ddim_exact_marginals_converge_to_the_data():
    errors = []
    for steps in (25, 100, 800):
        _, alphas, alphas_prev = ddim_schedule(diffusion_alphas_cumprod(), steps)
        a0 = alphas[0].item()
        mean, var = exact_moments("ddim", list(zip(alphas.tolist(), alphas_prev.tolist())), epsilon, 1.0,
                                  math.sqrt(a0) * M, a0 * S**2 + 1 - a0)
        af = alphas_prev[-1].item()
        target_mean, target_std = math.sqrt(af) * M, (af * S**2 + 1 - af).sqrt()
        errors.append(max(((mean - target_mean).abs() / target_std).max().item(), (var.sqrt() / target_std - 1).abs().max().item()))
    assert errors[2] < 0.02 and errors[2] < errors[1] < errors[0]


def test_cps_with_a_posterior_mean_model_loses_variance_at_any_step_count():
    """CPS is exact only for a perfect x0 predictor: its per-step noise does not
    vanish with the step size, and each step of a posterior-mean model shrinks the
    variance. Documented in docs/ALGORITHMS.md; the check runs CPS at a small a."""
    stds = []
    for steps in (50, 200, 800):
        _, var = exact_moments("cps", flow_pairs(steps, 1.0), velocity, 0.7, torch.zeros(4, dtype=torch.float64),
                               torch.ones(4, dtype=torch.float64))
        stds.append((var.sqrt() / S).min().item())
    assert all(s < 0.9 for s in stds)
    _, var_small = exact_moments("cps", flow_pairs(200, 1.0), velocity, 0.1, torch.zeros(4, dtype=torch.float64),
                                 torch.ones(4, dtype=torch.float64))
    assert (var_small.sqrt() / S - 1).abs().max() < 0.02


def test_the_check_detects_a_wrong_sde():
    """Negative controls: the check is able to fail."""
    # 1. noise added without the score correction in the drift (inflates the variance)
    data = GaussianData.default()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 4, generator=gen, dtype=torch.float64)
    sig = flow_sigmas(200).tolist()
    for s, sn in zip(sig[:-1], sig[1:]):
        v = data.velocity(x, torch.full((x.shape[0],), s, dtype=torch.float64))
        x = x + (sn - s) * v + 0.7 * math.sqrt(s - sn) * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    assert not compare("naive", x, data.mean, data.std, 0.02).passed
    # 2. a model that is exact for other data
    wrong = GaussianData(data.mean, data.std * 1.2)
    assert not check_flow_sampler("dance", velocity=wrong.velocity, num_samples=20000).passed
