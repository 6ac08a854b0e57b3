"""Pure-torch reference of the fused SDE ops.

Written as the public implementations write them (DanceGRPO `flux_step`,
Flow-GRPO `sde_step_with_logprob`, its CPS variant, DDPO `ddim_step_with_logprob`):
separate torch expressions, float32 math (float64 when the inputs are float64).
It is the fallback for dtypes/devices the kernels do not take, the path for
gradients w.r.t. the sample, and the eager baseline of tools/bench_kernels.py.

Schedule values `t`, `t_next` are per-sample float64 tensors of shape [B]:
sigma and next sigma for the flow kinds, alpha_prod and alpha_prod_prev for ddim.
"""

from __future__ import annotations

import math

import torch

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def per_sample(values: torch.Tensor, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B] -> [B, 1, ..., 1] so per-sample scalars broadcast over a sample."""
    return values.to(dtype).view(-1, *([1] * (like.dim() - 1)))


def step_std(kind: str, t: torch.Tensor, t_next: torch.Tensor, level: float) -> torch.Tensor:
    """Per-sample standard deviation of the transition (float64, shape [B])."""
    t, t_next = t.double(), t_next.double()
    if kind == "dance":
        return level * torch.sqrt(t - t_next)
    if kind == "flow":
        return _flow_std_t(t, t_next, level) * torch.sqrt(t - t_next)
    if kind == "cps":
        return t_next * math.sin(level * math.pi / 2)
    if kind == "ddim":
        return level * torch.sqrt(_ddim_variance(t, t_next).clamp_min(0))
    if kind == "ode":
        return torch.zeros_like(t)
    raise ValueError(f"unknown step kind {kind!r}")


def _flow_std_t(sigma, sigma_next, level):
    # Flow-GRPO replaces sigma = 1 in the denominator by sigmas[1], the first sub-1
    # sigma, which is the next sigma of the step that starts at 1.
    return level * torch.sqrt(sigma / (1 - torch.where(sigma >= 1, sigma_next, sigma)))


def _ddim_variance(alpha, alpha_prev):
    return (1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)


def step_mean(kind, v, x, t, t_next, level) -> torch.Tensor:
    """Mean of the next sample, in the compute dtype; differentiable in v and x."""
    dt = compute_dtype(v, x)
    xv, vv = x.to(dt), v.to(dt)
    s, sn = per_sample(t, x, dt), per_sample(t_next, x, dt)
    if kind == "dance":
        ds = sn - s
        return xv + ds * (vv + level**2 / (2 * s) * (xv + (1 - s) * vv))
    if kind == "flow":
        std_t = per_sample(_flow_std_t(t.double(), t_next.double(), level), x, dt)
        d = sn - s
        return xv * (1 + std_t**2 / (2 * s) * d) + vv * (1 + std_t**2 * (1 - s) / (2 * s)) * d
    if kind == "cps":
        std = per_sample(step_std("cps", t, t_next, level), x, dt)
        pred_x0 = xv - s * vv
        pred_eps = xv + (1 - s) * vv
        return pred_x0 * (1 - sn) + pred_eps * torch.sqrt((sn**2 - std**2).clamp_min(0))
    if kind == "ddim":
        a, ap = s, sn
        std = per_sample(step_std("ddim", t, t_next, level), x, dt)
        pred_x0 = (xv - (1 - a) ** 0.5 * vv) / a**0.5
        return ap**0.5 * pred_x0 + (1 - ap - std**2).clamp_min(0) ** 0.5 * vv
    if kind == "ode":
        return xv + (sn - s) * vv
    raise ValueError(f"unknown step kind {kind!r}")


def gaussian_log_prob(prev_sample, mean, std, reduction: str = "mean") -> torch.Tensor:
    """Per-sample log N(prev; mean, std^2), reduced over all non-batch dims, constants kept."""
    dt = mean.dtype
    std_b = per_sample(std, mean, dt)
    lp = -((prev_sample.detach().to(dt) - mean) ** 2) / (2 * std_b**2) - torch.log(std_b) - LOG_SQRT_2PI
    dims = tuple(range(1, lp.dim()))
    return lp.sum(dim=dims) if reduction == "sum" else lp.mean(dim=dims)


def step(kind, v, x, noise, t, t_next, level, reduction="mean"):
    """Rollout step from given noise: (prev_sample in x's dtype, mean, log_prob).
    The log-prob scores the stored (rounded) prev_sample, as the trainer will see it."""
    mean = step_mean(kind, v, x, t, t_next, level)
    std = step_std(kind, t, t_next, level)
    prev = (mean + per_sample(std, mean, mean.dtype) * noise.to(mean.dtype)).to(x.dtype)
    return prev, mean, gaussian_log_prob(prev, mean, std, reduction)


def log_prob(kind, v, x, prev_sample, t, t_next, level, reduction="mean"):
    """Log-prob of a stored next sample under model output v (training path)."""
    mean = step_mean(kind, v, x, t, t_next, level)
    return gaussian_log_prob(prev_sample, mean, step_std(kind, t, t_next, level), reduction)
