#!/usr/bin/env python
"""The issue #6 GPU measurements in one command: DiT train-step MFU (bf16, the 13B width
with 2 dual + 4 single blocks, 14 x 60 x 60 latent + 256 text tokens), the fused SDE
kernels' achieved bandwidth (96 x 16 x 14 x 60 x 60 float32), and sliding-tile vs dense
attention at 30 x 48 x 80 video + 256 text tokens (24 heads x 128, bf16).

    python tools/gpu_measure.py                       # all three on the GPU, a table
    python tools/gpu_measure.py --json --out gpu.json # one JSON object
    python tools/gpu_measure.py --only mfu --layers 4 --single-layers 8 --backend flash
    python tools/gpu_measure.py --smoke               # tiny sizes, runs on CPU in seconds
    python tools/gpu_measure.py --only fp8 [--fp8-compile]  # FP8 linears vs bf16, GEMMs and DiT step

Method and definitions: dancegrpo_hpc/perf/gpu_measure/. Size flags override the
defaults (or the --smoke sizes). Exit 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def dims(text: str):
    return tuple(int(x) for x in text.lower().split("x"))


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="mfu,kernels,attention",
                   help="comma-separated parts: mfu, kernels, attention, fp8 (FP8 linears vs bf16; not in the default)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CPU, seconds): checks the logic, not the speed")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--out", help="also write the JSON report to this file")
    p.add_argument("--warmup", type=int)
    p.add_argument("--reps", type=int, help="timed calls per measurement (median reported)")
    g = p.add_argument_group("mfu")
    g.add_argument("--preset", help="model width preset (default hunyuan-t2v-13b)")
    g.add_argument("--layers", type=int, help="dual-stream blocks (default 2)")
    g.add_argument("--single-layers", type=int, help="single-stream blocks (default 4)")
    g.add_argument("--latent", type=dims, help="latent FxHxW (default 14x60x60; channels from the preset)")
    g.add_argument("--text-tokens", type=int, help="text tokens (default 256)")
    g.add_argument("--batch", type=int)
    g.add_argument("--backend", help="DiT attention backend: sdpa (default), flash, xformers, te, sliding_tile")
    g.add_argument("--checkpoint-fraction", type=float, help="activation-checkpointed fraction of blocks (default 0)")
    g.add_argument("--compile", action="store_true", default=None, help="regional torch.compile of each block")
    g.add_argument("--sdpa-kernels", help="SDPA kernels in priority order, e.g. cudnn,flash (default: the backend's)")
    g.add_argument("--profile", type=int, help="print torch.profiler's top N kernels of a forward and a train step")
    g = p.add_argument_group("fp8")
    g.add_argument("--fp8-compile", action="store_true", default=None,
                   help="regional torch.compile (block.compile() per DiT block) in the fp8 part's DiT step")
    g = p.add_argument_group("kernels")
    g.add_argument("--kernel-shape", type=dims, help="latent tensor BxCxFxHxW (default 96x16x14x60x60)")
    g.add_argument("--kernel-dtype", choices=("float32", "bfloat16"))
    g = p.add_argument_group("attention")
    g.add_argument("--grid", type=dims, help="video token grid TxHxW (default 30x48x80)")
    g.add_argument("--attn-text-tokens", type=int, help="text tokens (default 256)")
    g.add_argument("--heads", type=int)
    g.add_argument("--head-dim", type=int)
    g.add_argument("--tile", type=dims, help="tokens per tile (default 6x8x8)")
    g.add_argument("--window", type=dims, help="tiles per window, odd (default 3x3x3)")
    g.add_argument("--dense", help="dense backend to compare with: sdpa (default) or flash")
    g.add_argument("--attn-dtype", choices=("float32", "bfloat16"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    import torch

    from dancegrpo_hpc.checks import InputError

    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")  # megatron-core
    from dancegrpo_hpc.perf.gpu_measure import SMOKE, Sizes, format_report, run
    from dancegrpo_hpc.perf.measure import emit_report

    base = SMOKE if args.smoke else Sizes()
    fields = set(Sizes.__dataclass_fields__)
    sizes = base.replace(**{k: v for k, v in vars(args).items() if k in fields})
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        report = run(sizes, [p.strip() for p in args.only.split(",") if p.strip()], device, smoke=args.smoke,
                     fp8_compile=args.fp8_compile)
    except InputError as exc:
        print(f"gpu_measure: {exc}", file=sys.stderr)
        return 2
    emit_report(report, args.out, args.json, format_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
