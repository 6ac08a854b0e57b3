"""Sizes, timing and device facts shared by the GPU measurements (perf.gpu_measure)."""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..hardware import detect, hardware
from ..measure import _cpu_name

SCHEMA = "dancegrpo-gpu-measure/1"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Sizes:
    """What each measurement runs. The defaults are the issue's GPU sizes; SMOKE runs on CPU in seconds."""

    # DiT train step: the HunyuanVideo 13B width (24 heads x 128, MLP 4x, text 4096 / pooled 768,
    # rope (16, 56, 56)) with few blocks; latent frames x height x width (53 x 480 x 480 video)
    preset: str = "hunyuan-t2v-13b"
    layers: int = 2
    single_layers: int = 4
    latent: Tuple[int, int, int] = (14, 60, 60)
    text_tokens: int = 256
    batch: int = 1
    backend: str = "sdpa"
    checkpoint_fraction: float = 0.0
    compile: bool = False  # regional torch.compile of the blocks (HunyuanVideoDiT(compile=True))
    sdpa_kernels: Optional[str] = None  # "cudnn,flash,...": SDPA kernels in order; None = the backend's default
    profile: int = 0  # > 0: torch.profiler's top-N kernels of one forward and one training step
    # fused SDE kernels: one rollout's latents (96 samples x 16 x 14 x 60 x 60)
    kernel_shape: Tuple[int, ...] = (96, 16, 14, 60, 60)
    kernel_dtype: str = "float32"
    # sliding-tile vs dense attention over video grid + text tokens
    grid: Tuple[int, int, int] = (30, 48, 80)
    attn_text_tokens: int = 256
    heads: int = 24
    head_dim: int = 128
    tile: Tuple[int, int, int] = (6, 8, 8)
    window: Tuple[int, int, int] = (3, 3, 3)
    dense: str = "sdpa"
    attn_dtype: str = "bfloat16"
    warmup: int = 2
    reps: int = 5

    def replace(self, **changes) -> "Sizes":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


# float32 attention in the smoke run: its full-window check can then hold sliding-tile to 1e-5 of dense
SMOKE = Sizes(preset="tiny", layers=1, single_layers=1, latent=(2, 4, 4), text_tokens=8, kernel_shape=(2, 4, 2, 4, 4),
              grid=(2, 4, 4), attn_text_tokens=8, heads=2, head_dim=16, tile=(1, 2, 2), window=(1, 1, 1),
              attn_dtype="float32", warmup=1, reps=2)


def stats(times: List[float]) -> Dict:
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "all": list(times)}


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> Dict:
    """Seconds per call of fn after `warmup` calls. CUDA: events around each call, read
    after one synchronize (no host round trip between calls; host-side launch gaps still
    count, as they would in the model). CPU: perf_counter."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return stats([start.elapsed_time(end) / 1e3 for start, end in events])
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return stats(times)


def device_facts(device: torch.device) -> Dict:
    """Name and versions; on an H100 / H800 / H200 SXM also the peaks MFU and bandwidth are quoted against."""
    facts = {"type": device.type, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type != "cuda":
        return dict(facts, name=_cpu_name(), note="CPU: achieved FLOP/s and GB/s only (no MFU, no HBM fraction)")
    name = torch.cuda.get_device_name(device)
    preset = detect(name)
    facts.update(name=name, cuda=torch.version.cuda, hardware=preset)
    if preset is None:
        facts["note"] = f"no peak preset for {name!r} (dancegrpo_hpc/perf/hardware.py): MFU and HBM fraction omitted"
    else:
        hw = hardware(preset)
        facts.update(peak_bf16_flops_s=hw.bf16_flops, hbm_bytes_s=hw.hbm_bytes_s)
    return facts


def peak_memory(device: torch.device) -> Optional[int]:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
