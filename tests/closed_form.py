"""Independent float64 references for the tests: the formulas of shared/DESIGN.md
section 4 (as the public DanceGRPO / Flow-GRPO / DDPO code writes them),
transcribed directly, sharing no code with the package."""

import math

import torch


def _col(values, like):
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.dim() == 0:
        values = values.expand(like.shape[0])
    return values.view(-1, *([1] * (like.dim() - 1)))


def mean_std(kind, v, x, sigma, sigma_next, level):
    """Mean [B, ...] and std [B] (float64) of one step."""
    v, x = v.double(), x.double()
    s, sn = _col(sigma, x), _col(sigma_next, x)
    if kind == "dance":  # DanceGRPO flux_step with the sde_solver score term
        dsigma = sn - s
        pred_x0 = x - s * v
        score = -(x - pred_x0 * (1 - s)) / s**2
        mean = x + dsigma * v - 0.5 * level**2 * score * dsigma
        std = level * torch.sqrt(s - sn)
    elif kind == "flow":  # Flow-GRPO sde_step_with_logprob; sigma_max = first sub-1 sigma
        dt = sn - s
        std_t = torch.sqrt(s / (1 - torch.where(s == 1, sn, s))) * level
        mean = x * (1 + std_t**2 / (2 * s) * dt) + v * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
        std = std_t * torch.sqrt(-dt)
    elif kind == "cps":
        std = sn * math.sin(level * math.pi / 2)
        mean = (x - s * v) * (1 - sn) + (x + v * (1 - s)) * torch.sqrt(sn**2 - std**2)
    elif kind == "ddim":  # DDPO ddim_step_with_logprob: sigma = alpha_prod_t, sigma_next = alpha_prod_t_prev
        a, ap = s, sn
        pred_x0 = (x - (1 - a) ** 0.5 * v) / a**0.5
        variance = ((1 - ap) / (1 - a)) * (1 - a / ap)
        std = level * variance**0.5
        mean = ap**0.5 * pred_x0 + (1 - ap - std**2) ** 0.5 * v
    elif kind == "ode":
        mean = x + (sn - s) * v
        std = torch.zeros_like(s)
    else:
        raise ValueError(kind)
    return mean, std.reshape(-1)


def log_prob(prev, mean, std, reduction="mean"):
    """Per-sample Gaussian log-density, constants kept, float64."""
    std = std.view(-1, *([1] * (mean.dim() - 1)))
    lp = -((prev.double() - mean) ** 2) / (2 * std**2) - torch.log(std) - math.log(math.sqrt(2 * math.pi))
    dims = tuple(range(1, lp.dim()))
    return lp.sum(dims) if reduction == "sum" else lp.mean(dims)


def step(kind, v, x, noise, sigma, sigma_next, level, reduction="mean"):
    mean, std = mean_std(kind, v, x, sigma, sigma_next, level)
    prev = mean + std.view(-1, *([1] * (mean.dim() - 1))) * noise.double()
    return prev, mean, std, log_prob(prev, mean, std, reduction)


def score(kind, v, x, prev, sigma, sigma_next, level, reduction="mean"):
    mean, std = mean_std(kind, v, x, sigma, sigma_next, level)
    return log_prob(prev, mean, std, reduction)


def grad_log_prob_wrt_v(kind, v, x, prev, sigma, sigma_next, level, reduction="mean"):
    """d sum_b log_prob_b / d v by float64 autograd through the formulas above."""
    v = v.detach().double().requires_grad_(True)
    score(kind, v, x, prev, sigma, sigma_next, level, reduction).sum().backward()
    return v.grad
