"""Console output of a training run on rank 0: a tqdm bar (only on a terminal
unless forced) and one compact metrics line per iteration (always, for logs)."""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional, TextIO

from tqdm import tqdm

from ..checks import require

BAR_KEYS = ("reward_mean", "loss")


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_metrics_line(iteration: int, metrics: Dict[str, Any], total: Optional[int] = None) -> str:
    """'iter 12/200 | reward_mean 0.4123 | loss -0.0012 | ...': scalar metrics
    only, in the order given."""
    head = f"iter {iteration}/{total}" if total else f"iter {iteration}"
    parts = [f"{key} {_number(value)}" for key, value in metrics.items()
             if isinstance(value, (int, float, str)) and not isinstance(value, bool)]
    return " | ".join([head, *parts])


class TrainingProgress:
    """update(iteration, metrics) once per iteration. Silent on ranks other than 0.
    The bar follows tqdm's disable=None rule (shown only on a TTY) unless force_bar;
    metric lines go to `lines_to` (stdout) when print_lines."""

    def __init__(self, total: int, *, start: int = 0, rank: int = 0, force_bar: bool = False,
                 print_lines: bool = True, bar_to: Optional[TextIO] = None, lines_to: Optional[TextIO] = None):
        require(isinstance(total, int) and total >= 0, f"progress: total must be a non-negative int; got {total!r}")
        self.total = total
        self.active = rank == 0
        self.print_lines = print_lines and self.active
        self.lines_to = lines_to
        disable = True if not self.active else (False if force_bar else None)
        self.bar = tqdm(total=total, initial=start, disable=disable, file=bar_to, dynamic_ncols=True,
                        desc="GRPO", unit="it")

    def update(self, iteration: int, metrics: Dict[str, Any]) -> None:
        if not self.active:
            return
        shown = {"iter": iteration, **{k: _number(metrics[k]) for k in BAR_KEYS if k in metrics}}
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(max(iteration - self.bar.n, 0))
        if self.print_lines:
            # tqdm.write keeps the bar intact below the printed line
            tqdm.write(format_metrics_line(iteration, metrics, self.total), file=self.lines_to or sys.stdout)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "TrainingProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
