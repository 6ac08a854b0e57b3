"""Fused kernels from csrc/ (torch.ops.dancegrpo_hpc) and their pure-torch references.

`fused` wraps the compiled ops (fake kernels and autograd registered there);
`reference` computes the same functions as plain torch expressions, the way the
public DanceGRPO / Flow-GRPO / DDPO code writes them.
"""

from . import reference
from .fused import FUSED_KINDS, fused_available, fused_supports, fused_unavailable_reason

__all__ = ["reference", "FUSED_KINDS", "fused_available", "fused_supports", "fused_unavailable_reason"]
