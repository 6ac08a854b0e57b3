"""Achieved bandwidth of the fused SDE kernels (dancegrpo_hpc.ops) on the measured device.

tools/bench_kernels.py measures the CPU kernels (thread counts, ISA, THP); this times the
same ops on the device at one rollout's latent size, with the same byte accounting: each
input read once, each output written once (a rollout step reads v, x, noise and writes
the next sample and the mean; a log-prob reads v, x and the stored sample; its backward
also reads those three and writes the gradient). Per op: the fused time, GB/s, the
fraction of a device copy measured in the same run and of the datasheet HBM bandwidth,
and the eager reference (ops/reference.py: the public DanceGRPO code's separate ops).
"""

from __future__ import annotations

import math
from typing import Dict

import torch

from .common import DTYPES, Sizes, time_calls

DANCE_LEVEL, FLOW_LEVEL = 0.3, 0.7  # bench_kernels' noise levels


def measure_kernels(s: Sizes, device: torch.device, facts: Dict) -> Dict:
    from ...ops import fused, fused_supports, fused_unavailable_reason, reference

    dtype = DTYPES[s.kernel_dtype]
    numel, b = math.prod(s.kernel_shape), s.kernel_shape[0]
    out = {"shape": list(s.kernel_shape), "dtype": s.kernel_dtype, "numel": numel}
    gen = torch.Generator(device).manual_seed(0)
    x, v, noise = (torch.randn(*s.kernel_shape, generator=gen, device=device, dtype=dtype) for _ in range(3))
    if not fused_supports(x):
        reason = fused_unavailable_reason() or f"no fused kernel for {device.type} / {s.kernel_dtype}"
        return dict(out, error=f"fused kernels not measured: {reason}")
    prev, mean = torch.empty_like(x), torch.empty_like(x)
    t = torch.linspace(0.9, 0.6, b, dtype=torch.float64, device=device)
    tn = t - 0.05
    stored = reference.step("dance", v, x, noise, t, tn, DANCE_LEVEL)[0].to(dtype)
    grad_out = torch.randn(b, device=device)
    v_leaf = v.clone().requires_grad_(True)
    ops = torch.ops.dancegrpo_hpc

    def fused_fwd_bwd():
        fused.log_prob("dance", v, x, stored, t, tn, DANCE_LEVEL, False)
        ops.dance_log_prob_backward(grad_out, v, x, stored, t, tn, DANCE_LEVEL, False)

    def eager_fwd_bwd():
        v_leaf.grad = None
        reference.log_prob("dance", v_leaf, x, stored, t, tn, DANCE_LEVEL).backward(grad_out)

    cases = [  # op, tensors moved, fused call, eager call
        ("dance_step", 5, lambda: fused.step("dance", v, x, noise, t, tn, DANCE_LEVEL, False, out=prev, mean_out=mean),
         lambda: reference.step("dance", v, x, noise, t, tn, DANCE_LEVEL)),
        ("flow_step", 5, lambda: fused.step("flow", v, x, noise, t, tn, FLOW_LEVEL, False, out=prev, mean_out=mean),
         lambda: reference.step("flow", v, x, noise, t, tn, FLOW_LEVEL)),
        ("dance_log_prob", 3, lambda: fused.log_prob("dance", v, x, stored, t, tn, DANCE_LEVEL, False),
         lambda: reference.log_prob("dance", v, x, stored, t, tn, DANCE_LEVEL)),
        ("dance_log_prob_fwd_bwd", 7, fused_fwd_bwd, eager_fwd_bwd),
    ]
    element = x.element_size()
    copy = time_calls(lambda: prev.copy_(x), device, s.warmup, s.reps)
    copy_gbps = 2 * numel * element / copy["median"] / 1e9
    hbm = facts.get("hbm_bytes_s")
    rows = []
    for op, tensors, fused_fn, eager_fn in cases:
        moved = tensors * numel * element
        fused_s = time_calls(fused_fn, device, s.warmup, s.reps)
        eager_s = time_calls(eager_fn, device, s.warmup, s.reps)
        gbps = moved / fused_s["median"] / 1e9
        row = {"op": op, "bytes": moved, "fused_s": fused_s, "eager_s": eager_s, "fused_gbps": gbps,
               "eager_gbps": moved / eager_s["median"] / 1e9, "speedup": eager_s["median"] / fused_s["median"],
               "copy_fraction": gbps / copy_gbps}
        if hbm:
            row["hbm_fraction"] = gbps * 1e9 / hbm
        rows.append(row)
    return dict(out, copy_s=copy, copy_gbps=copy_gbps, hbm_gbps=hbm / 1e9 if hbm else None, rows=rows)


__all__ = ["measure_kernels"]
