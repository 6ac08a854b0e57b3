"""One reverse step of a flow-matching SDE (or ODE) or of DDIM, with its log-prob.

Rollout: `sde_step(kind, v, x, sigma, sigma_next, eta)` draws the next sample
(from `noise` or a generator) and returns its per-sample Gaussian log-prob.
Training: pass the stored `prev_sample` and a fresh model output; the log-prob of
that sample is differentiable w.r.t. the model output. Math is float32 (float64
for float64 inputs) whatever the storage dtype. The fused kernels are used when
they take the inputs (float32/bfloat16 on CPU or CUDA), the pure-torch reference
otherwise (float64, float16, gradients w.r.t. the sample).
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from ..checks import InputError, check_choice, check_like, check_positive, check_tensor, checking_values, require
from ..ops import fused, reference

STEP_KINDS = ("dance", "flow", "cps", "ode")
REDUCTIONS = ("mean", "sum")

Schedule = Union[float, torch.Tensor]


class SDEStepResult:
    """Result of one step: prev_sample [B, ...], log_prob [B] (None for deterministic
    steps), std [B] (float32) and mean (compute dtype), materialised on first access
    when the step did not produce it in the same pass."""

    __slots__ = ("prev_sample", "log_prob", "std", "_mean", "_mean_fn")

    def __init__(self, prev_sample, log_prob, std, mean=None, mean_fn: Optional[Callable] = None):
        self.prev_sample = prev_sample
        self.log_prob = log_prob
        self.std = std
        self._mean = mean
        self._mean_fn = mean_fn

    @property
    def mean(self) -> torch.Tensor:
        if self._mean is None:
            self._mean = self._mean_fn()
        return self._mean


def _per_sample(where: str, name: str, value: Schedule, sample: torch.Tensor) -> torch.Tensor:
    """float / 0-d / [B] schedule value -> float64 [B] on the sample's device."""
    batch = sample.shape[0]
    if isinstance(value, (int, float)):
        return torch.full((batch,), float(value), dtype=torch.float64, device=sample.device)
    require(isinstance(value, torch.Tensor), f"{where}: {name} must be a float or a tensor; got {type(value).__name__}")
    require(
        value.dim() == 0 or tuple(value.shape) == (batch,),
        f"{where}: {name} must be a scalar or have shape [{batch}] (one per sample); got {tuple(value.shape)}",
    )
    return value.to(device=sample.device, dtype=torch.float64).expand(batch).contiguous()


def _check_range(where: str, name: str, values: torch.Tensor, low, high, low_open: bool, high_open: bool, hint: str):
    if not checking_values():
        return
    lo_bad = (values <= low) if low_open else (values < low)
    hi_bad = (values >= high) if high_open else (values > high)
    bad = lo_bad | hi_bad
    if bool(bad.any()):
        got = values[bad][0].item()
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise InputError(f"{where}: {name} must lie in {interval}; got {got} ({hint})")


def sde_step(
    kind: str,
    model_output: torch.Tensor,
    sample: torch.Tensor,
    sigma: Schedule,
    sigma_next: Schedule,
    eta: float,
    noise: Optional[torch.Tensor] = None,
    prev_sample: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    *,
    generator: Optional[torch.Generator] = None,
    out: Optional[torch.Tensor] = None,
    return_mean: bool = False,
    use_fused: Optional[bool] = None,
) -> SDEStepResult:
    """One flow-matching step from sigma to sigma_next (sigma_next < sigma).

    kind: "dance" (DanceGRPO, noise level eta), "flow" (Flow-GRPO, noise level a = eta),
    "cps" (coefficients-preserving, a = eta) or "ode" (deterministic Euler, no log-prob).
    sigma / sigma_next: floats or per-sample tensors [B]. Exactly one of noise /
    prev_sample may be given: noise fixes the draw; prev_sample scores a stored sample.
    out: tensor to write the next sample into (e.g. a rollout-buffer slot; each sample
    contiguous, any batch stride). return_mean: produce the mean in the same pass
    (otherwise `result.mean` is computed when first read). use_fused: None = fused
    kernels when they apply, False = reference, True = fused or an error.
    """
    where = f"sde_step(kind={kind!r})"
    check_choice("sde_step", "kind", kind, STEP_KINDS)
    check_tensor(where, "sample", sample)
    t = _per_sample(where, "sigma", sigma, sample)
    t_next = _per_sample(where, "sigma_next", sigma_next, sample)
    _check_range(where, "sigma", t, 0.0, 1.0, True, False, "current noise level of the flow schedule; see flow_sigmas")
    if checking_values():
        bad = (t_next < 0) | (t_next >= t)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise InputError(
                f"{where}: sigma_next must lie in [0, sigma); got sigma_next={t_next[i].item()} "
                f"for sigma={t[i].item()} (sample {i}); steps go from noise (1) to data (0)"
            )
    return _gaussian_step(where, kind, model_output, sample, t, t_next, eta, noise, prev_sample, reduction,
                          generator, out, return_mean, use_fused)


def ddim_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_prod: Schedule,
    alpha_prod_prev: Schedule,
    eta: float = 1.0,
    noise: Optional[torch.Tensor] = None,
    prev_sample: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    *,
    generator: Optional[torch.Generator] = None,
    out: Optional[torch.Tensor] = None,
    return_mean: bool = False,
    use_fused: Optional[bool] = None,
) -> SDEStepResult:
    """DDIM step with log-prob for epsilon-prediction diffusion models (DDPO form).
    alpha_prod = alpha-bar at the current timestep, alpha_prod_prev at the next
    (less noisy) one, alpha_prod < alpha_prod_prev <= 1; see ddim_schedule."""
    where = "ddim_step"
    check_tensor(where, "sample", sample)
    a = _per_sample(where, "alpha_prod", alpha_prod, sample)
    a_prev = _per_sample(where, "alpha_prod_prev", alpha_prod_prev, sample)
    _check_range(where, "alpha_prod", a, 0.0, 1.0, True, True, "alpha-bar of the current timestep")
    if checking_values():
        require(
            bool(((a_prev > a) & (a_prev <= 1)).all()),
            f"{where}: alpha_prod_prev must lie in (alpha_prod, 1]; got {a_prev.tolist()[:4]} for alpha_prod "
            f"{a.tolist()[:4]} (the next timestep is less noisy)",
        )
    return _gaussian_step(where, "ddim", model_output, sample, a, a_prev, eta, noise, prev_sample, reduction,
                          generator, out, return_mean, use_fused)


def _gaussian_step(where, kind, v, x, t, t_next, level, noise, prev_sample, reduction, generator, out, return_mean,
                   use_fused) -> SDEStepResult:
    check_like(where, "model_output", v, "sample", x, dtype=False)
    check_choice(where, "reduction", reduction, REDUCTIONS)
    require(noise is None or prev_sample is None, f"{where}: give noise (to draw) or prev_sample (to score), not both")
    for name, tensor in (("noise", noise), ("prev_sample", prev_sample), ("out", out)):
        if tensor is not None:
            check_like(where, name, tensor, "sample", x)
    stochastic = kind != "ode"
    if stochastic:
        check_positive(where, "eta (noise level)", level)
    std = reference.step_std(kind, t, t_next, level if stochastic else 0.0)
    if stochastic and checking_values() and bool((std <= 0).any()):
        raise InputError(
            f"{where}: the step has zero noise (std=0 at sigma_next={t_next[std <= 0][0].item()}); "
            "a deterministic step has no log-prob: use kind='ode' for it"
        )
    std32 = std.float()

    def mean_fn():
        return reference.step_mean(kind, v, x, t, t_next, level)

    if not stochastic:
        require(prev_sample is None, f"{where}: ode steps are deterministic and have no log-prob to score")
        prev = mean_fn().to(x.dtype)
        if out is not None:
            prev = out.copy_(prev)
        return SDEStepResult(prev, None, std32, mean_fn=mean_fn)

    sum_reduction = reduction == "sum"
    fused_ok = fused.fused_supports(v, x) and not x.requires_grad and not (
        prev_sample is not None and prev_sample.requires_grad
    )
    if use_fused and not fused_ok:
        reason = fused.fused_unavailable_reason() or (
            f"inputs {v.dtype}/{x.dtype} on {x.device} (fused kernels take float32/bfloat16 with no grad on the sample)"
        )
        raise InputError(f"{where}: use_fused=True but the fused kernels cannot run: {reason}")
    fused_path = fused_ok and use_fused is not False

    if prev_sample is not None:  # training: score a stored sample
        if fused_path:
            log_prob = fused.log_prob(kind, v, x, prev_sample, t, t_next, level, sum_reduction)
        else:
            log_prob = reference.log_prob(kind, v, x, prev_sample, t, t_next, level, reduction)
        return SDEStepResult(prev_sample, log_prob, std32, mean_fn=mean_fn)

    if noise is None:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    if fused_path:
        # In-pass mean only where the storage dtype is the compute dtype (float32).
        mean = torch.empty_like(x, memory_format=torch.contiguous_format) if return_mean and x.dtype == torch.float32 else None
        prev, log_prob = fused.step(kind, v, x, noise, t, t_next, level, sum_reduction, out=out, mean_out=mean)
    else:
        prev, mean, log_prob = reference.step(kind, v, x, noise, t, t_next, level, reduction)
        if out is not None:
            prev = out.copy_(prev)
    return SDEStepResult(prev, log_prob, std32, mean=mean, mean_fn=mean_fn)
