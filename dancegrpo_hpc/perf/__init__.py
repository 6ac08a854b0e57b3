"""Analytic performance model of a DanceGRPO iteration (tools/perf_model.py is its CLI);
the measured phase-by-phase benchmark is perf.benchmark (tools/benchmark.py), imported on use."""

from .hardware import HARDWARE, Hardware, detect, hardware
from .model import (Assumptions, calibrate, dit_flops, dp_bytes_per_step, estimate, format_report, forward_flops,
                    peak_flops, tp_bytes_per_forward, ulysses_bytes_per_forward)

__all__ = ["HARDWARE", "Hardware", "detect", "hardware", "Assumptions", "calibrate", "dit_flops", "dp_bytes_per_step",
           "estimate", "format_report", "forward_flops", "peak_flops", "tp_bytes_per_forward",
           "ulysses_bytes_per_forward"]
