#!/usr/bin/env python
"""Fused SDE kernels vs the eager reference (the same math as separate torch ops),
side by side in one run, with the machine's copy bandwidth measured in the same run.

Per size: time (median), effective GB/s (bytes the op must read and write: each
input read once, each output written once) and the fused/eager speedup. The
rollout op writes into preallocated buffers as the sampler does (a trajectory
slot); `dance_step_alloc` shows it with fresh outputs. Timings of one size are
interleaved, back to back (copy, fused, eager, then eager, fused, copy, ...:
perf.measure.interleaved_times), so machine noise hits all alike; the speedup's spread
is that of the per-round eager/fused ratios, and a WARNING line says when other
processes used the CPUs meanwhile.

    python tools/bench_kernels.py [--sizes 1M,16M,64M] [--threads 2] [--json]
With --json the last line printed is one JSON object:
    {"copy_gbps", "rows": [{"numel", "op", "fused_s", "eager_s", "speedup", "speedup_spread", "fused_gbps", ...}],
     "machine": {"others_cpu_share", "warning", ...}, ...}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from dancegrpo_hpc.ops import fused, fused_available, reference
from dancegrpo_hpc.perf.measure import LoadMonitor, format_spread, interleaved_times, spread

BATCH = 4  # samples per call; each holds numel / BATCH elements
TARGET_NUMEL = 16 << 20
TARGET_SPEEDUP, TARGET_COPY_FRACTION = 3.0, 0.70


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
    return int(float(text[:-1] if text[-1] in "KMG" else text) * scale)


def bench_size(numel: int, reps: int):
    n = numel // BATCH
    gen = torch.Generator().manual_seed(0)
    x, v, noise = (torch.randn(BATCH, n, generator=gen) for _ in range(3))
    prev, mean = torch.empty_like(x), torch.empty_like(x)
    src, dst = torch.randn(BATCH * n, generator=gen), torch.empty(BATCH * n)
    t = torch.linspace(0.9, 0.6, BATCH, dtype=torch.float64)
    tn = t - 0.05
    stored = reference.step("dance", v, x, noise, t, tn, 0.3)[0]
    grad_out = torch.randn(BATCH)
    v_leaf = v.clone().requires_grad_(True)

    def fused_fwd_bwd(kind):
        lp = fused.log_prob(kind, v, x, stored, t, tn, 0.3, False)
        return torch.ops.dancegrpo_hpc.dance_log_prob_backward(grad_out, v, x, stored, t, tn, 0.3, False), lp

    def eager_fwd_bwd(kind):
        v_leaf.grad = None
        lp = reference.log_prob(kind, v_leaf, x, stored, t, tn, 0.3)
        lp.backward(grad_out)
        return v_leaf.grad

    cases = [
        # op, bytes per element (fused minimum), fused call, eager call
        ("dance_step", 20, lambda: fused.step("dance", v, x, noise, t, tn, 0.3, False, out=prev, mean_out=mean),
         lambda: reference.step("dance", v, x, noise, t, tn, 0.3)),
        ("flow_step", 20, lambda: fused.step("flow", v, x, noise, t, tn, 0.7, False, out=prev, mean_out=mean),
         lambda: reference.step("flow", v, x, noise, t, tn, 0.7)),
        ("dance_step_alloc", 20, lambda: fused.step("dance", v, x, noise, t, tn, 0.3, False, mean_out=torch.empty_like(x)),
         lambda: reference.step("dance", v, x, noise, t, tn, 0.3)),
        ("dance_log_prob", 12, lambda: fused.log_prob("dance", v, x, stored, t, tn, 0.3, False),
         lambda: reference.log_prob("dance", v, x, stored, t, tn, 0.3)),
        ("dance_log_prob_fwd_bwd", 28, lambda: fused_fwd_bwd("dance"), lambda: eager_fwd_bwd("dance")),
    ]
    rows = []
    for op, bpe, fused_fn, eager_fn in cases:
        rounds = interleaved_times([lambda: dst.copy_(src), fused_fn, eager_fn], reps)
        copy_s, fused_s, eager_s = (statistics.median(r[i] for r in rounds) for i in range(3))
        copy_gbps = 8 * numel / copy_s / 1e9
        fused_gbps = bpe * numel / fused_s / 1e9
        rows.append({
            "numel": numel, "op": op, "fused_s": fused_s, "eager_s": eager_s, "speedup": eager_s / fused_s,
            "speedup_spread": spread(eager / fused for _, fused, eager in rounds),
            "fused_gbps": fused_gbps, "eager_gbps": bpe * numel / eager_s / 1e9, "copy_gbps": copy_gbps,
            "copy_fraction": fused_gbps / copy_gbps, "bytes_per_element": bpe,
        })
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,16M,64M", help="comma-separated element counts (K/M/G suffixes)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2, our CI machine)")
    parser.add_argument("--reps", type=int, default=0, help="timed rounds per op (default: by size)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    if not fused_available():
        print(f"bench_kernels: fused kernels unavailable: {fused.fused_unavailable_reason()}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    rows = []
    with LoadMonitor() as load:
        for numel in sizes:
            reps = args.reps or max(5, min(40, int(4e8 / numel)))
            rows += bench_size(numel, reps)
    machine = load.report()

    isa = torch.ops.dancegrpo_hpc.cpu_isa()
    print(f"fused SDE kernels vs eager torch, {args.threads} threads, CPU ISA {isa}, batch {BATCH}, float32")
    print(f"{'numel':>10s} {'op':24s} {'fused ms':>9s} {'eager ms':>9s} {'speedup':>8s} {'fused GB/s':>11s} "
          f"{'eager GB/s':>11s} {'copy GB/s':>10s} {'of copy':>8s}  per-round speedup")
    for r in rows:
        print(f"{r['numel']:>10d} {r['op']:24s} {r['fused_s'] * 1e3:9.2f} {r['eager_s'] * 1e3:9.2f} {r['speedup']:7.1f}x "
              f"{r['fused_gbps']:11.1f} {r['eager_gbps']:11.2f} {r['copy_gbps']:10.1f} {r['copy_fraction']:7.0%}  "
              f"{format_spread(r['speedup_spread'], fmt='{:.1f}', unit='x')}")
    target_rows = [r for r in rows if r["numel"] == TARGET_NUMEL and r["op"] == "dance_step"]
    targets = {}
    if target_rows:
        r = target_rows[0]
        targets = {
            "numel": TARGET_NUMEL, "op": "dance_step",
            "speedup": r["speedup"], "speedup_target": TARGET_SPEEDUP, "speedup_met": r["speedup"] >= TARGET_SPEEDUP,
            "copy_fraction": r["copy_fraction"], "copy_fraction_target": TARGET_COPY_FRACTION,
            "copy_fraction_met": r["copy_fraction"] >= TARGET_COPY_FRACTION,
        }
        print(f"target at 16M (dance_step, fused forward): speedup {r['speedup']:.1f}x (>= {TARGET_SPEEDUP}x: "
              f"{'met' if targets['speedup_met'] else 'MISSED'}), {r['copy_fraction']:.0%} of copy bandwidth "
              f"(>= {TARGET_COPY_FRACTION:.0%}: {'met' if targets['copy_fraction_met'] else 'MISSED'})")
    copy_ref = [r["copy_gbps"] for r in rows if r["numel"] == (TARGET_NUMEL if target_rows else sizes[-1])]
    if machine["warning"]:
        print(machine["warning"])
    if args.json:
        print(json.dumps({"copy_gbps": statistics.median(copy_ref), "threads": args.threads, "isa": isa,
                          "batch": BATCH, "rows": rows, "targets": targets, "machine": machine}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
