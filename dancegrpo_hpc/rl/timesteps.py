"""Which sampling steps GRPO trains on.

"random" (DanceGRPO timestep selection): every step is sampled with the SDE; each
sample trains on its own random subset of ceil(tau * (T - 1)) steps. The final
step (to sigma = 0) is never trained.
"window" (MixGRPO / Flow-GRPO-Fast): only a window of steps is stochastic and
trained, the rest run as ODE steps; the window may slide forward over training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..checks import check_choice, check_unit_interval, require

SELECTION_MODES = ("random", "window")


def num_train_timesteps(num_steps: int, tau: float) -> int:
    """ceil(tau * (T - 1)): trainable steps per sample (final step excluded)."""
    require(isinstance(num_steps, int) and num_steps >= 2,
            f"num_train_timesteps: num_steps must be an int >= 2 (the final step is never trained); got {num_steps!r}")
    check_unit_interval("timestep selection", "tau (timestep fraction)", tau)
    # round first so that e.g. 0.7 * 10 = 7.000000000000001 gives 7, not 8
    return max(1, math.ceil(round(tau * (num_steps - 1), 9)))


def select_timesteps(batch: int, num_steps: int, tau: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """[batch, k] step indices: per sample, k = ceil(tau (T - 1)) distinct steps of
    0..T-2 in random order (DanceGRPO trains them in that order)."""
    k = num_train_timesteps(num_steps, tau)
    keys = torch.rand(batch, num_steps - 1, generator=generator)
    return keys.argsort(dim=1)[:, :k]


@dataclass
class TimestepSelector:
    """Stochastic-step mask and trained steps for each iteration.

    mode "random": uses tau. mode "window": window_size steps starting at
    window_start, moved by window_stride every window_shift_every iterations
    (0 = fixed window), wrapping back to window_start when it would pass T - 1.
    """

    num_steps: int
    mode: str = "random"
    tau: float = 0.6
    window_start: int = 0
    window_size: int = 4
    window_stride: int = 1
    window_shift_every: int = 0

    def __post_init__(self):
        check_choice("TimestepSelector", "mode", self.mode, SELECTION_MODES)
        num_train_timesteps(self.num_steps, self.tau)  # validates num_steps and tau
        if self.mode == "window":
            last = self.num_steps - 1  # trainable steps are 0..T-2
            require(1 <= self.window_size <= last,
                    f"TimestepSelector: window_size must lie in [1, {last}] for {self.num_steps} steps; got {self.window_size}")
            require(0 <= self.window_start <= last - self.window_size,
                    f"TimestepSelector: window_start must lie in [0, {last - self.window_size}] so the window ends "
                    f"before the final step; got {self.window_start}")
            require(self.window_stride >= 1 and self.window_shift_every >= 0,
                    "TimestepSelector: window_stride must be >= 1 and window_shift_every >= 0")

    def window(self, iteration: int) -> range:
        shifts = iteration // self.window_shift_every if self.window_shift_every else 0
        last_start = self.num_steps - 1 - self.window_size  # the window ends before the final step
        positions = (last_start - self.window_start) // self.window_stride + 1
        start = self.window_start + (shifts % positions) * self.window_stride
        return range(start, start + self.window_size)

    def sde_mask(self, iteration: int) -> torch.Tensor:
        """[T] bool: which steps the rollout samples with the SDE."""
        if self.mode == "random":
            return torch.ones(self.num_steps, dtype=torch.bool)
        mask = torch.zeros(self.num_steps, dtype=torch.bool)
        mask[list(self.window(iteration))] = True
        return mask

    def select(self, batch: int, iteration: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """[batch, k] steps to train for each sample."""
        if self.mode == "random":
            return select_timesteps(batch, self.num_steps, self.tau, generator)
        steps = torch.tensor(list(self.window(iteration)), dtype=torch.long)
        return steps.expand(batch, -1).clone()
