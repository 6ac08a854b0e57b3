"""Flow-matching and diffusion sampling with log-probs: schedules, SDE/ODE/DDIM
steps (fused kernels where they apply) and the sampler."""

from .sampler import Trajectory, sample, stochastic_steps
from .schedule import ddim_schedule, diffusion_alphas_cumprod, flow_sigmas, model_timesteps
from .sde import REDUCTIONS, STEP_KINDS, SDEStepResult, ddim_step, sde_step

__all__ = [
    "flow_sigmas", "model_timesteps", "diffusion_alphas_cumprod", "ddim_schedule",
    "sde_step", "ddim_step", "SDEStepResult", "STEP_KINDS", "REDUCTIONS",
    "sample", "Trajectory", "stochastic_steps",
]
