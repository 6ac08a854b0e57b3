"""Python face of the fused SDE kernels (csrc/): loading, fake kernels, autograd.

The ops live in torch.ops.dancegrpo_hpc, one family per step kind K:
  K_step / K_step_out   rollout: next sample from given noise, mean, log-prob (one pass)
  K_log_prob            training: log-prob of a stored next sample, differentiable in v
  K_log_prob_backward   its gradient w.r.t. the model output (one pass)
The fake kernels below let torch.compile and FakeTensor tracing see through them.
Set DANCEGRPO_FUSED=0 (before import) to force the pure-torch reference path everywhere.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional

import torch

FUSED_KINDS = ("dance", "flow", "cps", "ddim")
FUSED_DTYPES = (torch.float32, torch.bfloat16)

_LOAD_ERROR: Optional[str] = None
try:
    from dancegrpo_hpc import _C  # noqa: F401  (importing registers the ops)
except ImportError as exc:  # a source checkout without a build
    _LOAD_ERROR = (
        f"dancegrpo_hpc._C could not be imported ({exc}); build it with "
        "`pip install --no-build-isolation -e .` (tools/test.sh does this)"
    )


_DISABLED = os.environ.get("DANCEGRPO_FUSED", "1") == "0"


def _kernel_devices() -> frozenset:
    if _LOAD_ERROR is not None:
        return frozenset()
    keys = {"cpu": "CPU", "cuda": "CUDA"}
    return frozenset(
        dev for dev, key in keys.items()
        if torch._C._dispatch_has_kernel_for_dispatch_key("dancegrpo_hpc::dance_step", key)
    )


# Resolved once at import, so torch.compile traces these checks as constants.
_KERNEL_DEVICES = _kernel_devices()


def fused_available() -> bool:
    """True when the compiled ops are loaded and not disabled by DANCEGRPO_FUSED=0."""
    return _LOAD_ERROR is None and not _DISABLED


def fused_unavailable_reason() -> Optional[str]:
    if _LOAD_ERROR is not None:
        return _LOAD_ERROR
    if _DISABLED:
        return "disabled by DANCEGRPO_FUSED=0"
    return None


def fused_supports(*tensors: torch.Tensor) -> bool:
    """Whether the fused kernels can take these tensors (dtype and device)."""
    if not fused_available():
        return False
    device = tensors[0].device.type
    if device not in _KERNEL_DEVICES:
        if device == "cuda":
            warnings.warn(
                "dancegrpo_hpc: CUDA tensors, but the fused kernels were built without CUDA; using the slower "
                "pure-torch path. Rebuild on a CUDA machine: DANCEGRPO_CUDA=1 pip install --no-build-isolation -e .",
                stacklevel=3,
            )
        return False
    return all(t.dtype in FUSED_DTYPES for t in tensors)


def _op(kind: str, suffix: str):
    return getattr(torch.ops.dancegrpo_hpc, f"{kind}_{suffix}")


def step(kind, model_output, sample, noise, t, t_next, level, sum_reduction, out=None, mean_out=None):
    """One rollout step; returns (prev_sample, log_prob). Writes prev into `out` and the
    mean into `mean_out` when given (in the same pass)."""
    prev = torch.empty_like(sample, memory_format=torch.contiguous_format) if out is None else out
    log_prob = _op(kind, "step_out")(model_output, sample, noise, t, t_next, level, sum_reduction, prev, mean_out)
    return prev, log_prob


def log_prob(kind, model_output, sample, prev_sample, t, t_next, level, sum_reduction):
    """Differentiable (in model_output) log-prob of prev_sample."""
    return _op(kind, "log_prob")(model_output, sample, prev_sample, t, t_next, level, sum_reduction)


def _register(kind: str) -> None:
    lib = f"dancegrpo_hpc::{kind}"

    def per_sample(x):
        return x.new_empty((x.shape[0],), dtype=torch.float32)

    @torch.library.register_fake(f"{lib}_step")
    def _step_fake(v, x, noise, t, t_next, level, sum_reduction):
        full = torch.empty_like(x, memory_format=torch.contiguous_format)
        return full, torch.empty_like(full), per_sample(x)

    @torch.library.register_fake(f"{lib}_step_out")
    def _step_out_fake(v, x, noise, t, t_next, level, sum_reduction, prev, mean):
        return per_sample(x)

    @torch.library.register_fake(f"{lib}_log_prob")
    def _log_prob_fake(v, x, prev, t, t_next, level, sum_reduction):
        return per_sample(x)

    @torch.library.register_fake(f"{lib}_log_prob_backward")
    def _backward_fake(grad, v, x, prev, t, t_next, level, sum_reduction):
        return torch.empty_like(v, memory_format=torch.contiguous_format)

    def setup_context(ctx, inputs, output):
        v, x, prev, t, t_next, level, sum_reduction = inputs
        if x.requires_grad or prev.requires_grad:
            raise RuntimeError(
                f"{lib}_log_prob differentiates model_output only; for gradients w.r.t. sample or "
                "prev_sample use the reference path (sde_step(..., use_fused=False))"
            )
        ctx.save_for_backward(v, x, prev, t, t_next)
        ctx.level, ctx.sum_reduction = level, sum_reduction

    def backward(ctx, grad):
        v, x, prev, t, t_next = ctx.saved_tensors
        grad_v = _op(kind, "log_prob_backward")(grad, v, x, prev, t, t_next, ctx.level, ctx.sum_reduction)
        return grad_v, None, None, None, None, None, None

    torch.library.register_autograd(f"{lib}_log_prob", backward, setup_context=setup_context)


if _LOAD_ERROR is None:
    for _kind in FUSED_KINDS:
        _register(_kind)
