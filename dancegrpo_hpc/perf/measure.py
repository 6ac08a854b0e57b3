"""Timing and peak memory of one benchmark phase, on CUDA or CPU, and the device facts
a measurement is reported with.

    with Phase(device) as p:
        work()
    p.seconds, p.peak_bytes

CUDA: the device is synchronised before the clock starts and before it stops (kernels
are asynchronous), and the peak is torch.cuda.max_memory_allocated() over the phase
(the allocator's high-water mark, including the model and optimizer state that stay
resident). CPU: the peak is the process's resident-set high-water mark, reset at the
start of the phase through /proc/self/clear_refs where Linux allows it, else
resource.getrusage's maxrss since the process started. Either way it is process-wide:
reward threads, the Python heap and every tensor alive count.
"""

from __future__ import annotations

import os
import re
import resource
import time
from typing import Dict, Optional

import torch

from .hardware import detect, hardware
from .model import peak_flops

CUDA_MEMORY = "torch.cuda.max_memory_allocated over the phase (includes the resident model and optimizer state)"
CPU_MEMORY = ("process resident-set high-water mark over the phase (VmHWM, reset per phase); process-wide: "
              "model, optimizer, reward threads and Python heap included")
CPU_MEMORY_NO_RESET = ("process resident-set high-water mark since start (resource.getrusage maxrss; "
                       "/proc/self/clear_refs was not writable); process-wide")


def _vm_hwm() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) * 1024
    except (OSError, AttributeError):
        return None


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Phase:
    """Wall-clock seconds and peak memory bytes of the enclosed work on `device`."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0
        self.peak_bytes = 0
        self.memory_kind = CUDA_MEMORY

    def __enter__(self) -> "Phase":
        synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.memory_kind = CPU_MEMORY if _reset_rss_peak() and _vm_hwm() is not None else CPU_MEMORY_NO_RESET
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start
        if self.device.type == "cuda":
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self.memory_kind == CPU_MEMORY:
            self.peak_bytes = int(_vm_hwm())
        else:
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def device_info(device: torch.device, config) -> Dict:
    """Name, versions, threads and, on a known GPU, the peak an MFU is measured against."""
    info = {"type": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        preset = detect(name)
        info.update(name=name, cuda=torch.version.cuda, hardware=preset,
                    tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32))
        if preset is not None:
            peak, precision = peak_flops(config, hardware(preset))
            info.update(peak_flops_s=peak, peak_precision=precision)
        else:
            info["note"] = f"MFU omitted: no peak FLOP/s preset for {name!r} (dancegrpo_hpc/perf/hardware.py)"
    else:
        info["name"] = _cpu_name()
        info["note"] = "CPU: achieved FLOP/s only (no MFU)"
    return info


def load_average() -> Optional[list]:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"model name\s*:\s*(.+)", f.read())
        return match.group(1).strip() if match else "cpu"
    except OSError:
        return "cpu"


def emit_report(report: dict, out=None, as_json: bool = False, formatter=None) -> None:
    """The tools' last step: the JSON report to `out` (if given), then JSON or the
    human table (formatter(report)) on stdout."""
    import json

    text = json.dumps(report)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    print(text if as_json or formatter is None else formatter(report), flush=True)

