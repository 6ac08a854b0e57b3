"""Attention for the HunyuanVideo DiT: one entry point, the backend chosen by config.

`attention(q, k, v, mask, config)` with q, k, v [B, S, H, D] over the joint
[video | video padding | text] sequence described by a JointMask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import torch

from ..checks import check_choice
from .backends import BACKENDS, SDPA_KERNELS
from .mask import JointMask


@dataclass(frozen=True)
class AttentionConfig:
    backend: str = "sdpa"
    tile: Tuple[int, int, int] = (6, 8, 8)  # sliding_tile: tokens per tile (t, h, w)
    window: Sequence = field(default=(3, 3, 3))  # sliding_tile: tiles per window, or one (t, h, w) per head
    # sdpa: SDPA kernels to try, in order (cudnn, flash, efficient, math); None = cudnn, flash,
    # efficient, math on CUDA (backends.DEFAULT_CUDA_KERNELS) and torch's own choice on CPU
    sdpa_kernels: Optional[Tuple[str, ...]] = None

    def validate(self, heads: int) -> None:
        check_choice("attention", "backend", self.backend, tuple(BACKENDS))
        for name in self.sdpa_kernels or ():
            check_choice("attention", "sdpa_kernels entry", name, tuple(SDPA_KERNELS))
        if self.backend == "sliding_tile":
            from .sliding_tile import validate_window

            validate_window(self.window, heads)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: JointMask, config: AttentionConfig,
              head_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """head_ids: global indices of these heads (for per-head sliding-tile windows under TP/Ulysses)."""
    return BACKENDS[config.backend](q, k, v, mask, config, head_ids)


__all__ = ["AttentionConfig", "JointMask", "attention", "BACKENDS"]
