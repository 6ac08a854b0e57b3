"""The issue #6 GPU measurements (tools/gpu_measure.py is the CLI):

    mfu        DiT train-step MFU in bf16 at the 13B width with few blocks (dit.py)
    kernels    achieved bandwidth of the fused SDE step / log-prob kernels (kernels.py)
    attention  sliding-tile vs dense attention at 30 x 48 x 80 video tokens (attention.py)
    fp8        torch._scaled_mm FP8 linears vs bf16: per-GEMM and DiT train step (fp8.py)

    report = run(Sizes(), ["mfu", "kernels", "attention"], torch.device("cuda"))

Each part runs on CPU too (SMOKE sizes), where it reports times and rates but no MFU or
HBM fraction: that is how the logic is tested without a GPU.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch

from ..benchmark import _rate
from .common import SCHEMA, SMOKE, Sizes, device_facts

PARTS = ("mfu", "kernels", "attention", "fp8")


def run(sizes: Sizes, parts: Iterable[str], device: torch.device, smoke: bool = False,
        fp8_compile: Optional[bool] = None) -> Dict:
    """fp8_compile: regional torch.compile in the fp8 part's DiT step (None: the sizes' own
    `compile` flag where Sizes has one, else eager)."""
    from ...checks import check_choice, require
    from .attention import measure_attention
    from .dit import measure_dit
    from .fp8 import measure_fp8
    from .kernels import measure_kernels

    parts = list(parts)
    require(sizes.reps >= 1 and sizes.warmup >= 0, f"gpu_measure: reps must be >= 1 and warmup >= 0; got "
                                                   f"reps {sizes.reps}, warmup {sizes.warmup}")
    for part in parts:
        check_choice("gpu_measure", "part", part, PARTS)
    facts = device_facts(device)
    report = {"schema": SCHEMA, "smoke": smoke, "device": facts, "warmup": sizes.warmup, "reps": sizes.reps}
    measure = {"mfu": measure_dit, "kernels": measure_kernels, "attention": measure_attention,
               "fp8": lambda s, d, f: measure_fp8(s, d, f, compile=fp8_compile)}
    for part in PARTS:
        if part in parts:
            report[part] = measure[part](sizes, device, facts)
    return report


def _ms(stat: Dict) -> str:
    return f"{stat['median'] * 1e3:.3f} ms [{stat['min'] * 1e3:.3f}, {stat['max'] * 1e3:.3f}]"


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def format_report(r: Dict) -> str:
    d = r["device"]
    lines = [f"{d['name']} ({d['type']}), torch {d['torch']}; median [min, max] of {r['reps']} after {r['warmup']} "
             f"warm-up" + (" [SMOKE sizes]" if r["smoke"] else "")]
    if "note" in d:
        lines.append(d["note"])
    if "mfu" in r:
        m, cfg = r["mfu"], r["mfu"]["model"]
        lines += ["", f"DiT train step (bf16): width {cfg['hidden_size']} ({cfg['heads']} x {cfg['head_dim']}), "
                      f"{cfg['dual_blocks']} dual + {cfg['single_blocks']} single blocks, {cfg['parameters']:,} "
                      f"parameters, batch {m['batch']}, latent {'x'.join(map(str, m['latent']))} = "
                      f"{m['video_tokens']} video + {m['text_tokens']} text tokens, attention {cfg['attention_backend']}"]
        lines.append(f"  SDPA kernels {cfg.get('sdpa_kernels', 'default')}, compile {cfg.get('compile', False)}")
        for name in ("forward", "train_step"):
            p = m[name]
            mem = "-" if p["peak_memory_bytes"] is None else f"{p['peak_memory_bytes'] / 2**30:.2f} GiB"
            lines.append(f"  {name:<11} {_ms(p['seconds'])}  {_rate(p['flops'], 'FLOP')}  "
                         f"{_rate(p['flops_per_s'], 'FLOP/s')}  MFU {_pct(p.get('mfu'))}  peak {mem}  "
                         f"(first call {p.get('first_call_s', float('nan')):.2f} s)")
            for row in p.get("top_kernels", {}).get("top", []):
                lines.append(f"      {row['ms']:8.2f} ms {row['share']:6.1%} x{row['calls']:<4} {row['name'][:110]}")
    if "kernels" in r:
        k = r["kernels"]
        lines += ["", f"fused SDE kernels, {'x'.join(map(str, k['shape']))} {k['dtype']}"]
        if "error" in k:
            lines.append(f"  {k['error']}")
        else:
            hbm = f", HBM peak {k['hbm_gbps']:.0f} GB/s" if k["hbm_gbps"] else ""
            lines.append(f"  copy {_ms(k['copy_s'])} = {k['copy_gbps']:.1f} GB/s{hbm}")
            for row in k["rows"]:
                lines.append(f"  {row['op']:<24} fused {row['fused_s']['median'] * 1e3:9.3f} ms {row['fused_gbps']:8.1f} "
                             f"GB/s ({_pct(row['copy_fraction'])} of copy, {_pct(row.get('hbm_fraction'))} of HBM)  "
                             f"eager {row['eager_s']['median'] * 1e3:9.3f} ms  {row['speedup']:.1f}x")
    if "attention" in r:
        a = r["attention"]
        lines += ["", f"attention, grid {'x'.join(map(str, a['grid']))} + {a['text_tokens']} text = {a['sequence']} "
                      f"tokens, {a['heads']} x {a['head_dim']} {a['dtype']}; sliding tile {a['tile']} window "
                      f"{a['window']} vs {a['dense_backend']}"]
        b, c, n = a["block_mask"], a["check"], a["blocks_per_forward"]
        for name in ("forward", "forward_backward"):
            p = a[name]
            lines.append(f"  {name:<17} dense {_ms(p['dense_s'])}  sliding-tile {_ms(p['sliding_tile_s'])} (mask "
                         f"cached), first call {_ms(p['sliding_tile_first_s'])} (mask built)  speed-up "
                         f"{p['speedup']:.2f}x cached, {p['speedup_amortised']:.2f}x with one build per {n} blocks, "
                         f"{p['speedup_build_every_call']:.2f}x built every call")
        lines.append(f"  block mask: {_pct(b['sparsity'])} of the {b['block_size']} blocks skipped, built in "
                     f"{_ms(b['build_s'])}, once per shape (cached)")
        lines += [f"  {key}: {formula}" for key, formula in a["speedup_formulas"].items()]
        lines.append(f"  check, window {c['window']} (every tile) vs dense: rel err {c['rel_err']:.2e} "
                     f"(tolerance {c['tolerance']:.0e}) {'ok' if c['ok'] else 'FAILED'}")
        lines.append(f"  sliding-tile paths: {a['paths']}")
    if "fp8" in r:
        from .fp8 import format_fp8

        lines += format_fp8(r["fp8"])
    return "\n".join(lines)


__all__ = ["PARTS", "SMOKE", "Sizes", "format_report", "run"]
