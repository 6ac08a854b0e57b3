"""Noise schedules: flow matching with time shift, and DDPM/DDIM for diffusion models."""

from __future__ import annotations

import torch

from ..checks import check_positive, require


def flow_sigmas(num_steps: int, shift: float = 1.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Shifted flow-matching sigmas, num_steps + 1 values from 1 down to 0.

    s = linspace(1, 0, T + 1); sigma = shift * s / (1 + (shift - 1) * s)
    (HunyuanVideo / FLUX / SD3 time shift). The model timestep is sigma * 1000.
    """
    require(isinstance(num_steps, int) and num_steps >= 1, f"flow_sigmas: num_steps must be an int >= 1; got {num_steps!r}")
    check_positive("flow_sigmas", "shift", shift)
    s = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return (shift * s / (1 + (shift - 1) * s)).to(dtype)


def model_timesteps(sigmas: torch.Tensor) -> torch.Tensor:
    """Timesteps the DiT is conditioned on at each step: sigma * 1000 (last sigma excluded)."""
    return sigmas[:-1] * 1000.0


def diffusion_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012, schedule: str = "scaled_linear"
) -> torch.Tensor:
    """alpha-bar of a DDPM noise schedule (Stable Diffusion defaults), float64."""
    if schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    elif schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    else:
        raise ValueError(f"diffusion_alphas_cumprod: schedule must be 'scaled_linear' or 'linear'; got {schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_schedule(
    alphas_cumprod: torch.Tensor, num_steps: int, steps_offset: int = 1, set_alpha_to_one: bool = False
):
    """DDIM ("leading" spacing, diffusers DDIMScheduler defaults for Stable Diffusion).

    Returns (timesteps [T], alpha_prod [T], alpha_prod_prev [T]) for the T steps from
    most to least noisy; ddim_step takes alpha_prod[i], alpha_prod_prev[i].
    """
    n_train = alphas_cumprod.numel()
    require(1 <= num_steps <= n_train, f"ddim_schedule: num_steps must lie in [1, {n_train}]; got {num_steps}")
    ratio = n_train // num_steps
    timesteps = (torch.arange(num_steps, dtype=torch.int64) * ratio).flip(0) + steps_offset
    timesteps = timesteps.clamp_max(n_train - 1)
    prev = timesteps - ratio
    final = torch.tensor(1.0, dtype=torch.float64) if set_alpha_to_one else alphas_cumprod[0]
    alpha = alphas_cumprod[timesteps]
    alpha_prev = torch.where(prev >= 0, alphas_cumprod[prev.clamp_min(0)], final)
    return timesteps, alpha, alpha_prev
