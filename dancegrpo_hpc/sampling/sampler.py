"""The sampler: runs a model through a flow-matching schedule with SDE/ODE steps,
recording what GRPO training needs (every state and each step's log-prob)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

from ..checks import require
from ..ops.reference import step_std
from .sde import sde_step

# model_fn(x [B, ...], sigma [B] float64, step index) -> model output (velocity) [B, ...]
ModelFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass
class Trajectory:
    """latents: [B, T+1, ...] states from the initial noise to the final sample (None
    when not stored); log_probs: [B, T] float32, NaN at deterministic steps;
    stochastic: [T] bool, which steps were SDE steps; final: [B, ...].
    With a guide: process_scores [B, T+1] float32, the process reward of each state
    x_0..x_T; guide_shifts [B, T, ...] (only when log-probs are taken under the
    guided mean), each step's guided-mean shift, zero where the step was not guided."""

    latents: Optional[torch.Tensor]
    log_probs: torch.Tensor
    sigmas: torch.Tensor
    stochastic: torch.Tensor
    final: torch.Tensor
    process_scores: Optional[torch.Tensor] = None
    guide_shifts: Optional[torch.Tensor] = None


def stochastic_steps(kind: str, sigmas: torch.Tensor, sde_steps: Optional[Union[Sequence[bool], torch.Tensor]]) -> torch.Tensor:
    """Which of the T steps are stochastic: all by default, or the given mask (a
    fixed training window, ODE elsewhere). A step with zero noise (cps ending at
    sigma = 0) is run as an ODE step: it has no log-prob and is never trained."""
    num_steps = sigmas.numel() - 1
    mask = torch.ones(num_steps, dtype=torch.bool) if sde_steps is None else torch.as_tensor(sde_steps, dtype=torch.bool)
    require(mask.shape == (num_steps,), f"sample: sde_steps must have one entry per step ({num_steps}); got {tuple(mask.shape)}")
    if kind == "ode":
        return torch.zeros(num_steps, dtype=torch.bool)
    if kind == "cps":
        mask = mask & (sigmas[1:].cpu() > 0)
    return mask


def sample(
    model_fn: ModelFn,
    initial: torch.Tensor,
    sigmas: torch.Tensor,
    kind: str = "dance",
    eta: float = 0.3,
    *,
    generator: Optional[torch.Generator] = None,
    sde_steps: Optional[Union[Sequence[bool], torch.Tensor]] = None,
    store_latents: bool = True,
    reduction: str = "mean",
    use_fused: Optional[bool] = None,
    noise_fn: Optional[Callable[[int], torch.Tensor]] = None,
    out: Optional[torch.Tensor] = None,
    guide=None,
) -> Trajectory:
    """Integrates from sigmas[0] to sigmas[-1] starting at `initial` (the noise at
    sigma = 1). Each state is written straight into the trajectory buffer.

    noise_fn(i) -> the step-i noise [B, ...] (instead of drawing from `generator`):
    lets a caller draw each sample's noise from its own stream, so results do not
    depend on how samples are batched. out: a [B, T+1, ...] buffer to fill (e.g. a
    slice of a rollout buffer, possibly on another device). guide: a
    sampling.guidance.Guide (Euphonium): shifts the mean of stochastic steps up the
    process reward's gradient and records each state's process reward."""
    require(sigmas.dim() == 1 and sigmas.numel() >= 2, f"sample: sigmas must be a 1-D schedule of T+1 values; got {tuple(sigmas.shape)}")
    num_steps = sigmas.numel() - 1
    mask = stochastic_steps(kind, sigmas, sde_steps)
    batch = initial.shape[0]
    latents = out
    if out is not None:
        require(tuple(out.shape) == (batch, num_steps + 1, *initial.shape[1:]),
                f"sample: out must be [B, T+1, ...] = {(batch, num_steps + 1, *initial.shape[1:])}; got {tuple(out.shape)}")
        latents[:, 0] = initial
    elif store_latents:
        latents = initial.new_empty((batch, num_steps + 1, *initial.shape[1:]))
        latents[:, 0] = initial
    log_probs = torch.full((batch, num_steps), float("nan"), dtype=torch.float32, device=initial.device)
    x = initial
    sig = sigmas.to(torch.float64)
    scores = shifts = None
    if guide is not None:
        scores = torch.empty((batch, num_steps + 1), dtype=torch.float32, device=initial.device)
        if guide.guide and not guide.internalise:
            shifts = torch.zeros((batch, num_steps, *initial.shape[1:]), dtype=initial.dtype, device=initial.device)
    for i in range(num_steps):
        sigma = sig[i].expand(batch)
        v = model_fn(x, sigma.to(initial.device), i)
        step_kind = kind if bool(mask[i]) else "ode"
        same_device = latents is not None and latents.device == x.device
        step_out = latents[:, i + 1] if same_device else None
        noise = noise_fn(i) if noise_fn is not None and step_kind != "ode" else None
        shift = None
        if guide is not None:
            # only stochastic steps are guided (an ODE step is only scored)
            scores[:, i], shift = guide.step(i, num_steps, x, v, float(sig[i]), float(sig[i + 1]),
                                             stochastic=step_kind != "ode")
        if shift is not None:
            if noise is None:
                noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            if guide.internalise:
                # x' = mean + shift + std * noise, scored under the plain mean: pass the
                # shift through the noise so the step's log-prob is the internalised one
                std = step_std(step_kind, sigma, sig[i + 1].expand(batch), eta)
                noise = noise + shift / std.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))
        result = sde_step(step_kind, v, x, float(sig[i]), float(sig[i + 1]), eta, noise=noise, reduction=reduction,
                          generator=None if noise is not None else generator, out=step_out, use_fused=use_fused)
        if result.log_prob is not None:
            log_probs[:, i] = result.log_prob
        x = result.prev_sample
        if shift is not None and not guide.internalise:
            # log-prob under the guided mean = the plain log-prob of x' - shift, which is
            # the sample sde_step just drew; x' itself is that plus the shift
            x = x + shift
            shifts[:, i] = shift
            if same_device:
                latents[:, i + 1].copy_(x)
        if latents is not None and not same_device:  # e.g. a pinned CPU rollout buffer
            latents[:, i + 1].copy_(x, non_blocking=True)
    if guide is not None:
        scores[:, num_steps] = guide.final(x)
    return Trajectory(latents, log_probs, sig, mask, x, scores, shifts)
