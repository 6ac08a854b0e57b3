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

Side-by-side comparisons that survive a shared machine (tools/bench_*.py):
    pairs = interleaved_times([run_a, run_b], rounds=7)   # A B, B A, A B, ... back to back
    spread([b / a for a, b in pairs])                    # median, quartiles, min, max of per-pair ratios
    with LoadMonitor() as load: ...                      # CPU other processes used meanwhile
    load.warning()                                       # a line to print when that makes timings unreliable
A load that comes and goes hits both members of a back-to-back pair alike, so per-pair
ratios hold where ratios of separately taken medians do not. What a training step holds
for backward, independent of allocator caching and page faults: SavedTensorBytes.
"""

from __future__ import annotations

import os
import re
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

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
        self.start_bytes = 0  # CUDA: allocated at entry (peak_bytes - start_bytes: what the phase added)
        self.memory_kind = CUDA_MEMORY

    def __enter__(self) -> "Phase":
        synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = int(torch.cuda.memory_allocated(self.device))
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



# ---- side-by-side timing on a shared machine ------------------------------------------------------
def round_order(count: int, round_index: int) -> List[int]:
    """The order of `count` callables in one round: forward in even rounds, reversed in odd
    ones (A B, B A, A B, ...), so neither side always runs first and inherits the caches, the
    allocator state or a drift of the machine's speed the other left."""
    order = list(range(count))
    return order if round_index % 2 == 0 else order[::-1]


def interleaved_times(fns: Sequence[Callable[[], object]], rounds: int, warmup: int = 1,
                      clock: Callable[[], float] = time.perf_counter,
                      sync: Callable[[], None] = lambda: None) -> List[Tuple[float, ...]]:
    """Seconds of each callable in each of `rounds` rounds, the callables timed back to back in
    round_order after `warmup` untimed rounds; one tuple per round, in the order of `fns`.
    sync runs before each clock read (a CUDA synchronize: kernels are asynchronous)."""
    from ..checks import require

    require(isinstance(rounds, int) and rounds >= 1, f"interleaved timing: rounds must be an integer >= 1; got {rounds!r}")
    for r in range(warmup):
        for i in round_order(len(fns), r):
            fns[i]()
    out = []
    for r in range(rounds):
        times = [0.0] * len(fns)
        for i in round_order(len(fns), r):
            sync()
            start = clock()
            fns[i]()
            sync()
            times[i] = clock() - start
        out.append(tuple(times))
    return out


def spread(values: Iterable[float]) -> Dict:
    """median, quartiles (inclusive method), min, max and count: how far apart the rounds were."""
    from ..checks import require

    v = sorted(values)
    require(len(v) >= 1, "spread: no values")
    q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else (v[0], v[0], v[0])
    return {"median": statistics.median(v), "q1": q1, "q3": q3, "min": v[0], "max": v[-1], "n": len(v)}


def format_spread(s: Dict, fmt: str = "{:.2f}", unit: str = "") -> str:
    """'2.31x [IQR 2.25-2.40, range 2.10-2.52, n=7]'"""
    f = lambda x: fmt.format(x) + unit  # noqa: E731
    return (f"{f(s['median'])} [IQR {fmt.format(s['q1'])}-{fmt.format(s['q3'])}, "
            f"range {fmt.format(s['min'])}-{fmt.format(s['max'])}, n={s['n']}]")


# ---- how loaded the machine was -------------------------------------------------------------------
LOADED_SHARE = 0.10  # other processes used more than this fraction of the CPUs: timings flagged
LOADED_LOAD_AVERAGE = 0.5  # without /proc/stat: the 1-minute load average per CPU at the start


def proc_stat_busy_seconds(text: str, ticks_per_s: float) -> Optional[float]:
    """CPU-seconds the whole machine spent busy (user, nice, system, irq, softirq, steal; guest
    time is inside user) from /proc/stat's aggregate `cpu` line."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            f = [int(x) for x in line.split()[1:]]
            return (f[0] + f[1] + f[2] + sum(f[5:8])) / ticks_per_s
    return None


@dataclass(frozen=True)
class CpuSample:
    wall: float  # time.monotonic()
    machine_busy: Optional[float]  # CPU-seconds of every process (None without /proc/stat)
    own: float  # CPU-seconds of this process and its waited-for children


def cpu_sample() -> CpuSample:
    try:
        with open("/proc/stat") as f:
            busy = proc_stat_busy_seconds(f.read(), os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError):
        busy = None
    t = os.times()
    return CpuSample(time.monotonic(), busy, t.user + t.system + t.children_user + t.children_system)


def others_cpu_share(before: CpuSample, after: CpuSample, cpus: int) -> Optional[float]:
    """The fraction of the machine's CPU capacity other processes used between two samples."""
    wall = after.wall - before.wall
    if before.machine_busy is None or after.machine_busy is None or wall <= 0:
        return None
    others = (after.machine_busy - before.machine_busy) - (after.own - before.own)
    return max(0.0, others / (wall * cpus))


def load_warning(others_share: Optional[float], load_start: Optional[list], cpus: int) -> Optional[str]:
    """One line to print when the machine was too busy for the timings to mean much, else None."""
    advice = ("absolute times are inflated and noisy; trust only ratios of interleaved runs, within their spread, "
              "or rerun on a quiet machine")
    if others_share is not None:
        if others_share > LOADED_SHARE:
            return f"WARNING: machine loaded: other processes used {others_share:.0%} of the {cpus} CPUs meanwhile; {advice}"
        return None
    if load_start and load_start[0] > LOADED_LOAD_AVERAGE * cpus:
        return f"WARNING: machine loaded: 1-minute load average {load_start[0]:.1f} on {cpus} CPUs at the start; {advice}"
    return None


class LoadMonitor:
    """How much CPU other processes used while the enclosed measurement ran (Linux /proc/stat
    minus this process tree's own CPU time; the load average where /proc/stat is missing)."""

    def __init__(self):
        self.cpus = os.cpu_count() or 1

    def start(self) -> "LoadMonitor":
        self.load_start = load_average()
        self.first = cpu_sample()
        return self

    def stop(self) -> Dict:
        self.last = cpu_sample()
        self.load_end = load_average()
        return self.report()

    def __enter__(self) -> "LoadMonitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def report(self) -> Dict:
        share = others_cpu_share(self.first, self.last, self.cpus)
        return {"cpus": self.cpus, "others_cpu_share": share,
                "load_average": {"start": self.load_start, "end": self.load_end},
                "warning": load_warning(share, self.load_start, self.cpus)}


# ---- what a training step holds for backward ------------------------------------------------------
class SavedTensorBytes:
    """Bytes autograd keeps for backward: every tensor a forward inside the context saves,
    each storage counted once (views and repeated saves share it) while any graph holds it;
    peak_bytes is the high-water mark over the context. Storages of `exclude` (the model's
    parameters and buffers, resident anyway) are not counted. Unlike a process's RSS it does
    not depend on allocator caching, page faults or other threads, so it is exact and
    repeatable on CPU. Not counted: gradients, optimizer state, temporaries inside one op,
    and what activation checkpointing recomputes during backward (it saves through its own hooks)."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        import threading

        self._excluded = {_storage_key(t) for t in exclude}
        self._live: Dict[tuple, List[int]] = {}  # storage key -> [references held, bytes]
        self._lock = threading.Lock()  # graphs may be freed on autograd's device threads
        self.current_bytes = 0
        self.peak_bytes = 0

    def __enter__(self) -> "SavedTensorBytes":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack_held)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def _pack(self, tensor: torch.Tensor):
        key = _storage_key(tensor)
        if key is None or key in self._excluded:
            return tensor
        with self._lock:
            entry = self._live.get(key)
            if entry is None:
                nbytes = tensor.untyped_storage().nbytes()
                self._live[key] = [1, nbytes]
                self.current_bytes += nbytes
                self.peak_bytes = max(self.peak_bytes, self.current_bytes)
            else:
                entry[0] += 1
        return _Held(tensor, self, key)

    def _release(self, key: tuple) -> None:
        with self._lock:
            entry = self._live[key]
            entry[0] -= 1
            if entry[0] == 0:
                del self._live[key]
                self.current_bytes -= entry[1]


class _Held:
    """A saved tensor as autograd stores it under SavedTensorBytes: freed with the graph."""

    __slots__ = ("tensor", "_owner", "_key")

    def __init__(self, tensor: torch.Tensor, owner: SavedTensorBytes, key: tuple):
        self.tensor, self._owner, self._key = tensor, owner, key

    def __del__(self):
        self._owner._release(self._key)


def _unpack_held(packed):
    return packed.tensor if isinstance(packed, _Held) else packed


def _storage_key(tensor: torch.Tensor) -> Optional[tuple]:
    try:
        ptr = tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # no plain storage (sparse, nested, tensor subclasses)
        return None
    return (tensor.device.type, tensor.device.index, ptr) if ptr else None
