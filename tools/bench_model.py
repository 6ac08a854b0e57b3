#!/usr/bin/env python
"""Our HunyuanVideo DiT vs diffusers' HunyuanVideoTransformer3DModel on the same
small config, same weights, same inputs, same threads: forward (no autograd, as in
rollouts) and forward+backward, ratio printed. Inputs are a GRPO group: samples that
share one prompt of 48 tokens, padded to 256 as HunyuanVideo's text encoder hands
it over ("medium-nopad": no padding, where both models do the same work).

Method: each config runs in a fresh process, both models in it, with PyTorch's
transparent-huge-page allocation (THP_MEM_ALLOC_ENABLE=1, as recommended for CPU
runs; --no-thp to measure without). Each round runs both models once, back to back,
the order alternating round by round (perf.measure.interleaved_times; a fixed order
biases the result: each run inherits the allocator and cache state the other left).
Times are medians over rounds; the speedup is the median of the per-round ratios
diffusers / ours, reported with their quartiles and range; a WARNING line says when
other processes used the CPUs meanwhile. On our 2-core VMs first touches of fresh
memory are expensive and glibc's reuse of freed memory depends on allocation order,
which is why these isolations matter.

    python tools/bench_model.py [--configs small,medium] [--threads 2] [--json]
With --json the last line is {"rows": [{"config", "pass", "ours_s", "diffusers_s", "speedup",
"speedup_spread"}], "machine": {...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch

from dancegrpo_hpc.perf.measure import LoadMonitor, format_spread, interleaved_times, spread

CONFIGS = {
    # name: (config overrides of the tiny preset, latent (frames, height, width), text tokens, valid prompt tokens)
    # Text as HunyuanVideo's encoder hands it over: the prompt padded to 256 tokens.
    "small": (dict(num_attention_heads=4, attention_head_dim=32, num_layers=2, num_single_layers=4,
                   text_embed_dim=64, pooled_projection_dim=32, rope_axes_dim=(8, 12, 12)), (5, 16, 16), 256, 48),
    "medium": (dict(num_attention_heads=8, attention_head_dim=32, num_layers=2, num_single_layers=4,
                    text_embed_dim=128, pooled_projection_dim=64, rope_axes_dim=(8, 12, 12)), (9, 24, 24), 256, 48),
    # No text padding at all: dropping padding cannot help here, the models do the same work.
    "medium-nopad": (dict(num_attention_heads=8, attention_head_dim=32, num_layers=2, num_single_layers=4,
                          text_embed_dim=128, pooled_projection_dim=64, rope_axes_dim=(8, 12, 12)), (9, 24, 24), 48, 48),
}


def build(name: str, batch: int):
    from diffusers import HunyuanVideoTransformer3DModel

    from dancegrpo_hpc.models.hunyuan_video import TINY, HunyuanVideoDiT

    overrides, (f, h, w), text_len, valid = CONFIGS[name]
    cfg = TINY.replace(variant=name, **overrides)
    torch.manual_seed(0)
    ref = HunyuanVideoTransformer3DModel(**cfg.to_diffusers())
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.05)
    ours = HunyuanVideoDiT.from_diffusers(ref)
    gen = torch.Generator().manual_seed(1)
    # A GRPO group: samples share one prompt, padded to the maximum text length.
    mask = torch.zeros(batch, text_len, dtype=torch.long)
    mask[:, :valid] = 1
    inputs = dict(hidden_states=torch.randn(batch, cfg.in_channels, f, h, w, generator=gen),
                  timestep=torch.full((batch,), 500.0),
                  encoder_hidden_states=torch.randn(batch, text_len, cfg.text_embed_dim, generator=gen),
                  encoder_attention_mask=mask,
                  pooled_projections=torch.randn(batch, cfg.pooled_projection_dim, generator=gen),
                  guidance=torch.full((batch,), 6000.0))
    return ref, ours, inputs


def compare(ours_fn, ref_fn, rounds: int):
    """(median ours s, median diffusers s, spread of the per-round ratios diffusers/ours)."""
    pairs = interleaved_times([ours_fn, ref_fn], rounds, warmup=2)
    return (statistics.median(o for o, _ in pairs), statistics.median(r for _, r in pairs),
            spread(r / o for o, r in pairs))


def run_config(name: str, args) -> list:
    """Times one config in this process: forward without autograd (as in rollouts) and
    forward + backward."""
    torch.set_num_threads(args.threads)
    ref, ours, inputs = build(name, args.batch)
    with torch.no_grad():
        expected = ref(**inputs, return_dict=False)[0]
        check = ((ours(**inputs) - expected).norm() / expected.norm()).item()

    def run(model, is_ref, backward):
        def call():
            return model(**inputs, return_dict=False)[0] if is_ref else model(**inputs)

        def fwd():
            with torch.no_grad():
                call()

        def fwd_bwd():
            model.zero_grad(set_to_none=True)
            call().float().square().mean().backward()

        return fwd_bwd if backward else fwd

    rows = []
    for pass_name, backward in (("fwd", False), ("fwd_bwd", True)):
        ours_s, ref_s, ratios = compare(run(ours, False, backward), run(ref, True, backward), args.rounds)
        rows.append({"config": name, "pass": pass_name, "ours_s": ours_s, "diffusers_s": ref_s,
                     "speedup": ratios["median"], "speedup_spread": ratios, "output_rel_err": check})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="small,medium,medium-nopad")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--no-thp", action="store_true", help="measure without transparent huge pages")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_config(args.worker, args)))
        return 0
    rows = []
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="0" if args.no_thp else "1")
    with LoadMonitor() as load:  # counts the workers' CPU as ours once they have exited
        for name in args.configs.split(","):
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--threads", str(args.threads),
                   "--batch", str(args.batch), "--rounds", str(args.rounds)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return out.returncode
            rows += json.loads(out.stdout.strip().splitlines()[-1])
    machine = load.report()
    print(f"HunyuanVideo DiT: ours vs diffusers, {args.threads} threads, batch {args.batch}, float32, same weights, "
          f"THP {'off' if args.no_thp else 'on'}")
    print(f"median of {args.rounds} rounds, back to back in alternating order; speedup = median per-round "
          "diffusers/ours [IQR, range, n]")
    print(f"{'config':8s} {'pass':8s} {'ours ms':>9s} {'diffusers ms':>13s} {'rel err':>9s}  speedup")
    for r in rows:
        print(f"{r['config']:8s} {r['pass']:8s} {r['ours_s'] * 1e3:9.1f} {r['diffusers_s'] * 1e3:13.1f} "
              f"{r['output_rel_err']:9.1e}  {format_spread(r['speedup_spread'], unit='x')}")
    if machine["warning"]:
        print(machine["warning"])
    if args.json:
        print(json.dumps({"threads": args.threads, "batch": args.batch, "thp": not args.no_thp, "rows": rows,
                          "machine": machine}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
