"""Analytic performance model of a DanceGRPO iteration (tools/perf_model.py is its CLI)."""

from .hardware import HARDWARE, Hardware, hardware
from .model import (Assumptions, calibrate, dp_bytes_per_step, estimate, format_report, forward_flops,
                    tp_bytes_per_forward, ulysses_bytes_per_forward)

__all__ = ["HARDWARE", "Hardware", "hardware", "Assumptions", "calibrate", "dp_bytes_per_step", "estimate",
           "format_report", "forward_flops", "tp_bytes_per_forward", "ulysses_bytes_per_forward"]
