"""Calibration of the performance model from figures measured on a GPU.

    cal = load_calibration("examples/calibration/h200_2026-12-04.json")        # the file's "use" entry
    cal = load_calibration(path, entry="2026-12-04 first run (851646f)")        # another entry
    cal = from_gpu_measure(report, base=cal)                                   # tools/gpu_measure.py --json
    estimate(config, 64, hardware("h800"), calibration=cal)

A calibration file holds measurements, not efficiencies: per entry the DiT's measured
forward and training-step times, the bf16 GEMM and attention kernels' TFLOP/s, the fused
kernels' GB/s, the sliding-tile timings; this module turns them into what the model uses:
- GEMM MFU, forward and backward (dgrad + wgrad): measured GEMM FLOP/s / bf16 peak;
- attention MFU per kernel (cudnn, flash, ...), forward and forward + backward. Kernel
  convention: a backward costs `attention_backward_flops_factor` (2.5) forwards, as
  FlashAttention-style kernels recompute QK^T;
- the rest of a DiT pass (norms, RoPE, modulation, GELU, copies, launch gaps): the
  measured pass time minus its GEMM and attention time at the rates above, expressed as
  bytes of HBM traffic per linear FLOP (it grows with the tokens x width like the
  linears), so it scales with HBM bandwidth on another GPU;
- the fused SDE kernels' fraction of HBM bandwidth (a rollout step, a log-prob, its
  forward + backward), and a device copy's;
- sliding-tile attention: MFU on the blocks its block mask computes (the density comes
  from the window, sliding_tile_density), forward and forward + backward, and the block
  mask's build time, which grows with the square of the sequence.

Carry-over. H100 SXM, H800 SXM and H200 SXM have the same Tensor Core peaks (NVIDIA
datasheets, perf/hardware.py), so compute-bound parts (GEMMs, attention) keep their MFU
on any of them; memory-bound parts (the rest of a pass, the fused kernels, the optimizer)
keep their fraction of HBM bandwidth, so they take 4.8 / 3.35 = 1.43x longer on H100 /
H800 than on the H200 they were measured on.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Tuple

from ..checks import InputError, require
from .hardware import hardware

SCHEMA = "dancegrpo-perf-calibration/1"
GPU_MEASURE_SCHEMA = "dancegrpo-gpu-measure/1"
FLEX_BLOCK = 128  # FlexAttention's default block (query and key), the unit a block mask skips
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_FILE = os.path.join(ROOT, "examples", "calibration", "h200_2026-12-04.json")


@dataclass(frozen=True)
class SlidingTile:
    """Sliding-tile attention (FlexAttention) as measured: MFU on the blocks it computes."""

    forward_mfu: float
    forward_backward_mfu: float  # kernel convention (backward = backward_factor x forward)
    mask_build_s: float  # one block-mask build at mask_sequence tokens
    mask_sequence: int
    measured: Dict = field(default_factory=dict)  # shape, times, density and speed-ups of the measurement

    def mask_build_at(self, sequence: int) -> float:
        """A build evaluates the mask over every (query, key) pair: it grows as sequence^2."""
        return self.mask_build_s * (sequence / self.mask_sequence) ** 2


@dataclass(frozen=True)
class Calibration:
    """Efficiencies of one measured device, as fractions of its peak FLOP/s or HBM bandwidth."""

    name: str
    device: str  # hardware preset the figures were measured on (h200)
    gemm_forward_mfu: float
    gemm_backward_mfu: float
    attention_mfu: Dict[str, Dict[str, float]]  # kernel -> {"forward", "forward_backward"} (kernel convention)
    backends: Dict[str, str]  # config model.attention -> kernel
    backward_factor: float  # attention backward FLOPs / forward FLOPs in the kernel convention
    rest_forward_bytes_per_flop: float  # memory-bound rest of a forward: HBM bytes per linear FLOP
    rest_train_bytes_per_flop: float  # the same for forward + backward
    hbm_fraction: Dict[str, float]  # sde_step, log_prob, log_prob_fwd_bwd, copy: achieved / datasheet HBM
    gemm_fp8_speedup: Optional[float] = None  # fp8 / bf16 GEMM FLOP/s (GEMM only, quantisation not counted)
    sliding_tile: Optional[SlidingTile] = None
    dit: Dict = field(default_factory=dict)  # the measured DiT pass and its whole-model MFUs
    source: str = ""

    def kernel(self, backend: str) -> str:
        require(backend in self.backends, f"perf model calibration {self.name!r}: no attention kernel for "
                                          f"model.attention={backend!r}; it covers {', '.join(sorted(self.backends))}")
        kernel = self.backends[backend]
        require(kernel in self.attention_mfu, f"perf model calibration {self.name!r}: backend {backend!r} maps to "
                                              f"kernel {kernel!r}, which has no measured rate")
        return kernel

    def attention(self, backend: str, pass_: str) -> float:
        """MFU of the backend's attention kernel; pass_ forward | forward_backward."""
        rates = self.attention_mfu[self.kernel(backend)]
        require(pass_ in rates, f"perf model calibration {self.name!r}: kernel {self.kernel(backend)!r} has no "
                                f"{pass_.replace('_', ' + ')} rate")
        return rates[pass_]

    def to_dict(self) -> Dict:
        return asdict(self)


# ---- the file -------------------------------------------------------------------------------------
def load_calibration(path: Optional[str] = None, entry: Optional[str] = None) -> Calibration:
    """A calibration file's entry (default: the file's "use"), or a tools/gpu_measure.py report
    (its GEMM figures, which the report lacks, then come from the default file)."""
    path = path or DEFAULT_FILE
    require(os.path.isfile(path), f"perf model: calibration {path!r} is not a file")
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text) if text.lstrip().startswith("{") and text.rstrip().endswith("}") else \
            json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise InputError(f"perf model: calibration {path!r} is not JSON ({exc})") from None
    require(isinstance(data, dict), f"perf model: calibration {path!r} must hold a JSON object")
    if data.get("schema") == GPU_MEASURE_SCHEMA:
        return from_gpu_measure(data, base=None if os.path.abspath(path) == DEFAULT_FILE else load_calibration(),
                                name=os.path.basename(path))
    require(data.get("schema") == SCHEMA, f"perf model: {path!r} is neither a calibration file (schema {SCHEMA}) "
                                          f"nor a tools/gpu_measure.py report; its schema is {data.get('schema')!r}")
    return from_entry(resolve_entry(data, entry), entry or data["use"])


def resolve_entry(data: Dict, name: Optional[str]) -> Dict:
    """An entry with its "base" chain merged in: top-level keys of the entry replace the base's."""
    entries = data.get("entries")
    require(isinstance(entries, dict) and entries, "perf model calibration: the file has no entries")
    name = name or data.get("use")
    require(name in entries, f"perf model calibration: no entry {name!r}; entries: {', '.join(entries)}")
    chain, seen = [], set()
    while name is not None:
        require(name not in seen and name in entries, f"perf model calibration: entry base {name!r} is missing or "
                                                      "circular")
        seen.add(name)
        chain.append(entries[name])
        name = entries[name].get("base")
    merged: Dict = {}
    for part in reversed(chain):
        merged.update({k: v for k, v in part.items() if k != "base"})
    return merged


def _positive(where: str, value) -> float:
    require(isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value),
            f"perf model calibration: {where} must be a positive number; got {value!r}")
    return float(value)


def _need(entry: Dict, key: str, name: str):
    require(key in entry, f"perf model calibration {name!r}: the entry lacks {key!r}")
    return entry[key]


def from_entry(entry: Dict, name: str) -> Calibration:
    """Measured figures (ms, TFLOP/s, GB/s) -> fractions of the measured device's peaks."""
    device = _need(entry, "device", name)
    hw = hardware(device)
    peak, hbm = hw.bf16_flops, hw.hbm_bytes_s
    gemm = _need(entry, "gemm_bf16", name)
    gemm_fwd = _positive("gemm_bf16.forward_tflops", gemm.get("forward_tflops")) * 1e12 / peak
    gemm_bwd = _positive("gemm_bf16.backward_tflops", gemm.get("backward_tflops")) * 1e12 / peak
    fp8 = entry.get("gemm_fp8")
    fp8_speedup = _positive("gemm_fp8.forward_tflops", fp8["forward_tflops"]) * 1e12 / peak / gemm_fwd if fp8 else None
    factor = _positive("attention_backward_flops_factor", entry.get("attention_backward_flops_factor", 2.5))
    attention = {kernel: {p: _positive(f"attention_tflops.{kernel}.{p}", v) * 1e12 / peak for p, v in rates.items()}
                 for kernel, rates in _need(entry, "attention_tflops", name).items()}
    backends = dict(_need(entry, "backends", name))
    k = _need(entry, "kernels_gbps", name)
    hbm_fraction = {key: _positive(f"kernels_gbps.{key}", k[key]) * 1e9 / hbm
                    for key in ("copy", "sde_step", "log_prob", "log_prob_fwd_bwd")}
    dit = _need(entry, "dit", name)
    rest = _rest_of_pass(dit, gemm_fwd, gemm_bwd, attention, factor, peak, hbm, name)
    sliding = entry.get("sliding_tile")
    return Calibration(name=name, device=device, gemm_forward_mfu=gemm_fwd, gemm_backward_mfu=gemm_bwd,
                       attention_mfu=attention, backends=backends, backward_factor=factor,
                       rest_forward_bytes_per_flop=rest["forward"], rest_train_bytes_per_flop=rest["train"],
                       hbm_fraction=hbm_fraction, gemm_fp8_speedup=fp8_speedup,
                       sliding_tile=_sliding_tile(sliding, factor, peak) if sliding else None,
                       dit=rest["dit"], source=entry.get("source", ""))


def _dit_flops(dit: Dict) -> Dict[str, float]:
    """Linear and attention FLOPs of one forward of the measured DiT (its family's count; the
    measured runs are HunyuanVideo DiTs with fewer blocks)."""
    from ..models.family import get_family

    family = get_family(dit.get("family", "hunyuan_video"))
    cfg = family.preset(dit.get("preset", "hunyuan-t2v-13b")).replace(num_layers=int(dit["dual_blocks"]),
                                                                       num_single_layers=int(dit["single_blocks"]))
    return family.cost(cfg).forward_flops(int(dit["video_tokens"]), int(dit["text_tokens"]))


def _rest_of_pass(dit, gemm_fwd, gemm_bwd, attention, factor, peak, hbm, name) -> Dict:
    """What the measured DiT pass spent beyond its GEMMs and attention kernels, per linear FLOP
    as HBM bytes. A negative rest means the kernel rates are slower than the whole pass: refused."""
    flops = dit.get("flops") or _dit_flops(dit)
    lin, att = flops["linear"], flops["attention"]
    fwd_s = _positive("dit.forward_ms", dit.get("forward_ms")) / 1e3
    train_s = _positive("dit.train_step_ms", dit.get("train_step_ms")) / 1e3
    recompute = float(dit.get("checkpoint_fraction", 0.0))
    k_fwd, k_train = dit.get("forward_kernel"), dit.get("train_kernel")
    require(k_fwd in attention and "forward" in attention[k_fwd],
            f"perf model calibration {name!r}: dit.forward_kernel {k_fwd!r} has no forward rate")
    require(k_train in attention and "forward_backward" in attention[k_train],
            f"perf model calibration {name!r}: dit.train_kernel {k_train!r} has no forward_backward rate")
    gemm_fwd_s = lin / (gemm_fwd * peak)
    att_fwd_s = att / (attention[k_fwd]["forward"] * peak)
    rest_fwd = fwd_s - gemm_fwd_s - att_fwd_s
    # train step: forward + backward (+ the recompute of the checkpointed fraction, at forward rates)
    gemm_train_s = lin / (gemm_fwd * peak) + 2 * lin / (gemm_bwd * peak)
    att_train_s = (1 + factor) * att / (attention[k_train]["forward_backward"] * peak)
    rest_recompute = recompute * rest_fwd
    recompute_s = recompute * (gemm_fwd_s + att / (attention[k_train].get("forward", attention[k_fwd]["forward"])
                                                    * peak))
    rest_train = train_s - gemm_train_s - att_train_s - recompute_s - rest_recompute
    for what, value in (("forward", rest_fwd), ("training step", rest_train)):
        require(value >= 0, f"perf model calibration {name!r}: the DiT {what} took less than its GEMMs and attention "
                            "at the entry's kernel rates; check dit.*_ms against gemm_bf16 and attention_tflops")
    whole = lin + att
    return {"forward": rest_fwd * hbm / lin, "train": rest_train * hbm / lin,
            "dit": {"forward_s": fwd_s, "train_step_s": train_s, "linear_flops": lin, "attention_flops": att,
                    "forward_mfu": whole / fwd_s / peak,
                    "train_step_mfu": (3 + recompute) * whole / train_s / peak,
                    "forward_split_s": {"gemm": gemm_fwd_s, "attention": att_fwd_s, "rest": rest_fwd},
                    "train_split_s": {"gemm": gemm_train_s, "attention": att_train_s, "rest": rest_train},
                    "forward_kernel": k_fwd, "train_kernel": k_train}}


@functools.lru_cache(maxsize=64)
def sliding_tile_density(grid: Tuple[int, int, int], tile: Tuple[int, int, int], window: Tuple[int, int, int],
                         text: int, block: int = FLEX_BLOCK) -> float:
    """Fraction of (query block, key block) pairs of [video in tile order | text] that the
    sliding-tile block mask computes (attention.sliding_tile.sta_mask: a video query tile sees
    a window of tiles, centre clamped inside the canvas, plus the text; text sees everything)."""
    require(all(isinstance(g, int) and isinstance(t, int) and t >= 1 and g % t == 0 for g, t in zip(grid, tile)),
            f"sliding_tile attention: the video token grid {tuple(grid)} must be divisible by the tile size "
            f"{tuple(tile)}; pick a tile (--sta-tile) that divides it")
    require(all(isinstance(w, int) and w >= 1 and w % 2 == 1 for w in window),
            f"sliding_tile attention: window {tuple(window)} must be odd tile counts (t, h, w)")
    tiles = [g // t for g, t in zip(grid, tile)]
    per_tile = tile[0] * tile[1] * tile[2]
    video = per_tile * tiles[0] * tiles[1] * tiles[2]
    length = video + text
    blocks = -(-length // block)
    text_blocks = set(range(video // block, blocks)) if text else set()

    def axis_range(c, n, w):
        half = w // 2
        centre = min(max(c, half), n - 1 - half) if w <= n else (n - 1) // 2
        return range(max(0, centre - half), min(n, centre + half + 1))

    def window_tiles(tid):
        t, rest = divmod(tid, tiles[1] * tiles[2])
        h, w = divmod(rest, tiles[2])
        for a in axis_range(t, tiles[0], window[0]):
            for b in axis_range(h, tiles[1], window[1]):
                for c in axis_range(w, tiles[2], window[2]):
                    yield (a * tiles[1] + b) * tiles[2] + c

    computed = 0
    for qb in range(blocks):
        start, end = qb * block, min(length, (qb + 1) * block)
        if end > video:  # a block holding text queries: every key
            computed += blocks
            continue
        seen = set(text_blocks)
        for tid in range(start // per_tile, (end - 1) // per_tile + 1):  # the query tiles this block holds
            for kt in window_tiles(tid):
                seen.update(range(kt * per_tile // block, ((kt + 1) * per_tile - 1) // block + 1))
        computed += len(seen)
    return computed / blocks ** 2


def _sliding_tile(s: Dict, factor: float, peak: float) -> SlidingTile:
    """MFU of sliding-tile attention on the blocks it computes, from its measured times."""
    grid, tile, window = tuple(s["grid"]), tuple(s["tile"]), tuple(s["window"])
    text, heads, head_dim = int(s["text_tokens"]), int(s["heads"]), int(s["head_dim"])
    sequence = math.prod(grid) + text
    density = s.get("density") or sliding_tile_density(grid, tile, window, text)
    dense_fwd = 4 * sequence ** 2 * heads * head_dim  # QK^T and AV, 2 FLOPs per MAC, batch 1
    fwd_s = _positive("sliding_tile.forward_ms.sliding_tile", s["forward_ms"]["sliding_tile"]) / 1e3
    fb_s = _positive("sliding_tile.forward_backward_ms.sliding_tile", s["forward_backward_ms"]["sliding_tile"]) / 1e3
    measured = {"grid": list(grid), "tile": list(tile), "window": list(window), "text_tokens": text,
                "sequence": sequence, "density": density,
                "speedup_forward": s["forward_ms"]["dense"] / s["forward_ms"]["sliding_tile"],
                "speedup_forward_backward": s["forward_backward_ms"]["dense"] / s["forward_backward_ms"]["sliding_tile"],
                "dense_forward_mfu": dense_fwd / (s["forward_ms"]["dense"] / 1e3) / peak,
                "dense_forward_backward_mfu": (1 + factor) * dense_fwd / (s["forward_backward_ms"]["dense"] / 1e3) / peak}
    return SlidingTile(forward_mfu=density * dense_fwd / fwd_s / peak,
                       forward_backward_mfu=(1 + factor) * density * dense_fwd / fb_s / peak,
                       mask_build_s=_positive("sliding_tile.mask_build_ms", s["mask_build_ms"]) / 1e3,
                       mask_sequence=sequence, measured=measured)


# ---- tools/gpu_measure.py reports ----------------------------------------------------------------
def from_gpu_measure(report: Dict, base: Optional[Calibration] = None, name: str = "gpu_measure report") \
        -> Calibration:
    """A calibration from tools/gpu_measure.py --json (perf/gpu_measure: parts mfu, kernels,
    attention). The report has no GEMM-only figures: they come from `base` (default: the
    shipped calibration file's entry), and the DiT's attention kernel is the attention part's
    dense backend, measured in the same run. Parts the report lacks come from `base`."""
    require(report.get("schema") == GPU_MEASURE_SCHEMA,
            f"perf model: not a tools/gpu_measure.py report (schema {report.get('schema')!r})")
    require(not report.get("smoke"), "perf model: the gpu_measure report ran --smoke sizes on CPU; calibrate from a "
                                     "GPU run")
    device = report.get("device", {}).get("hardware")
    require(device, f"perf model: the gpu_measure report's device {report.get('device', {}).get('name')!r} has no "
                    "peak preset (H100 / H800 / H200 SXM); its figures give no MFU")
    base = base or load_calibration()
    hw = hardware(device)
    peak, hbm = hw.bf16_flops, hw.hbm_bytes_s
    factor = base.backward_factor
    attention = {k: dict(v) for k, v in base.attention_mfu.items()}
    backends = dict(base.backends)
    sliding = base.sliding_tile
    if "attention" in report:
        a = report["attention"]
        kernel = f"{a['dense_backend']} (measured)"
        sta = {"grid": a["grid"], "tile": a["tile"], "window": a["window"], "text_tokens": a["text_tokens"],
               "heads": a["heads"], "head_dim": a["head_dim"],
               "density": 1 - a["block_mask"]["sparsity"],
               "forward_ms": {k: a["forward"][f"{k}_s"]["median"] * 1e3 for k in ("dense", "sliding_tile")},
               "forward_backward_ms": {k: a["forward_backward"][f"{k}_s"]["median"] * 1e3
                                       for k in ("dense", "sliding_tile")},
               "mask_build_ms": a["block_mask"]["build_s"]["median"] * 1e3}
        sliding = _sliding_tile(sta, factor, peak)
        attention[kernel] = {"forward": sliding.measured["dense_forward_mfu"],
                             "forward_backward": sliding.measured["dense_forward_backward_mfu"]}
        backends[a["dense_backend"]] = kernel
    hbm_fraction = dict(base.hbm_fraction)
    if "kernels" in report and "rows" in report["kernels"]:
        k = report["kernels"]
        gbps = {row["op"]: row["fused_gbps"] for row in k["rows"]}
        hbm_fraction = {"copy": k["copy_gbps"] * 1e9 / hbm, "sde_step": gbps["dance_step"] * 1e9 / hbm,
                        "log_prob": gbps["dance_log_prob"] * 1e9 / hbm,
                        "log_prob_fwd_bwd": gbps["dance_log_prob_fwd_bwd"] * 1e9 / hbm}
    rest = {"forward": base.rest_forward_bytes_per_flop, "train": base.rest_train_bytes_per_flop, "dit": base.dit}
    if "mfu" in report:
        m = report["mfu"]
        kernel = backends.get(m["model"]["attention_backend"])
        require(kernel is not None, f"perf model: the gpu_measure DiT ran attention {m['model']['attention_backend']!r}"
                                    ", which no measured kernel rate covers; run the attention part too")
        dit = {"flops": {"linear": m["flops"]["forward_linear"] / m["batch"],
                         "attention": m["flops"]["forward_attention"] / m["batch"]},
               "forward_ms": m["forward"]["seconds"]["median"] * 1e3 / m["batch"],
               "train_step_ms": m["train_step"]["seconds"]["median"] * 1e3 / m["batch"],
               "checkpoint_fraction": m["model"].get("checkpoint_fraction", 0.0),
               "forward_kernel": kernel, "train_kernel": kernel}
        rest = _rest_of_pass(dit, base.gemm_forward_mfu, base.gemm_backward_mfu, attention, factor, peak, hbm, name)
    return Calibration(name=name, device=device, gemm_forward_mfu=base.gemm_forward_mfu,
                       gemm_backward_mfu=base.gemm_backward_mfu, attention_mfu=attention, backends=backends,
                       backward_factor=factor, rest_forward_bytes_per_flop=rest["forward"],
                       rest_train_bytes_per_flop=rest["train"], hbm_fraction=hbm_fraction,
                       gemm_fp8_speedup=base.gemm_fp8_speedup, sliding_tile=sliding, dit=rest["dit"],
                       source=f"tools/gpu_measure.py report; GEMM rates from {base.name!r}")


def format_calibration(cal: Calibration) -> str:
    """The efficiencies a calibration gives, per pass."""
    d = cal.dit
    lines = [f"calibration {cal.name!r}, measured on {hardware(cal.device).name} (compute-bound parts keep their MFU "
             "on H100 / H800 / H200; memory-bound parts their fraction of HBM bandwidth)",
             f"  GEMM bf16          forward {cal.gemm_forward_mfu:6.1%}   backward {cal.gemm_backward_mfu:6.1%} MFU"]
    for kernel, rates in cal.attention_mfu.items():
        cells = "   ".join(f"{p.replace('_', ' + ')} {v:6.1%}" for p, v in rates.items())
        lines.append(f"  attention {kernel:<8} {cells} MFU (backward = {cal.backward_factor:g}x forward FLOPs)")
    lines.append("  model.attention -> kernel: " + ", ".join(f"{b} -> {k}" for b, k in cal.backends.items()))
    if d:
        f, t = d["forward_split_s"], d["train_split_s"]
        lines.append(f"  DiT as measured   forward {d['forward_s'] * 1e3:.1f} ms = {d['forward_mfu']:.1%} MFU "
                     f"(GEMM {f['gemm'] * 1e3:.1f}, attention {f['attention'] * 1e3:.1f}, rest {f['rest'] * 1e3:.1f} ms); "
                     f"train step {d['train_step_s'] * 1e3:.1f} ms = {d['train_step_mfu']:.1%} MFU (GEMM "
                     f"{t['gemm'] * 1e3:.1f}, attention {t['attention'] * 1e3:.1f}, rest {t['rest'] * 1e3:.1f} ms)")
    lines.append(f"  rest of a pass    {cal.rest_forward_bytes_per_flop * 1e3:.2f} (forward), "
                 f"{cal.rest_train_bytes_per_flop * 1e3:.2f} (forward + backward) HBM bytes per 1000 linear FLOPs")
    h = cal.hbm_fraction
    lines.append(f"  HBM fraction      copy {h['copy']:.1%}, SDE step {h['sde_step']:.1%}, log-prob {h['log_prob']:.1%},"
                 f" log-prob fwd+bwd {h['log_prob_fwd_bwd']:.1%}")
    s = cal.sliding_tile
    if s is not None:
        m = s.measured
        lines.append(f"  sliding tile      {s.forward_mfu:.1%} forward, {s.forward_backward_mfu:.1%} forward + backward "
                     f"MFU on computed blocks; measured at {'x'.join(map(str, m['grid']))} + {m['text_tokens']} "
                     f"tokens, tile {tuple(m['tile'])}, window {tuple(m['window'])}: density {m['density']:.1%}, "
                     f"speed-up {m['speedup_forward']:.2f}x / {m['speedup_forward_backward']:.2f}x; mask build "
                     f"{s.mask_build_s * 1e3:.1f} ms at {s.mask_sequence} tokens (x sequence^2)")
    return "\n".join(lines)


__all__ = ["Calibration", "SlidingTile", "SCHEMA", "GPU_MEASURE_SCHEMA", "DEFAULT_FILE", "FLEX_BLOCK",
           "load_calibration", "resolve_entry", "from_entry", "from_gpu_measure", "sliding_tile_density",
           "format_calibration"]
