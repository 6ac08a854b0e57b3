#!/usr/bin/env python
"""Throughput of a training config, phase by phase: encode, rollout (DiT sampling), VAE
decode, rewards, advantages, training update, and one iteration as the trainer runs it
(rewards overlapping the sampling). Seconds (median, min, max over rounds), videos/s,
DiT tokens/s, DiT FLOP/s from the performance model's count, MFU on a known GPU
(H100 / H800 / H200 SXM), peak memory per phase.

    python tools/benchmark.py examples/toy_t2v.yaml --rounds 3
    python tools/benchmark.py examples/toy_t2v.yaml sampling.steps=4 --set rollout.group_size=4 --json
    python tools/benchmark.py CONFIG --json --out bench.json
    python tools/perf_model.py --calibrate bench.json CONFIG --world-size 64   # predict at the measured rates

Overrides are the trainer's dotted keys (positional as for `dancegrpo-hpc train`, or
--set KEY=VALUE). Checkpoints, metrics and TensorBoard events go to a temporary
directory that is removed afterwards. Under torchrun every rank measures its own share;
rank 0 prints. The method and every definition: dancegrpo_hpc/perf/benchmark.py. Exit 2
with one line on bad input.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=None, help="trainer YAML config (default: the toy defaults)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sampling.steps=4")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="one more dotted override (repeatable)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--out", default=None, help="also write the JSON report to this file")
    parser.add_argument("--quiet", action="store_true", help="no per-round progress lines on stderr")
    return parser.parse_intermixed_args(argv)


def main(argv=None) -> int:
    from dancegrpo_hpc.train import _cuda_visible

    if os.environ.get("THP_MEM_ALLOC_ENABLE") is None and not _cuda_visible():
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"  # as `train` does: cheaper fresh CPU allocations (read at import)
    args = parse(sys.argv[1:] if argv is None else argv)
    from dancegrpo_hpc.checks import InputError
    from dancegrpo_hpc.config import load_config

    config_path, overrides = args.config, list(args.overrides) + list(args.sets)
    if config_path is not None and "=" in config_path and not os.path.exists(config_path):
        overrides.insert(0, config_path)  # an override where the config would be
        config_path = None
    source = {"path": config_path, "name": os.path.splitext(os.path.basename(config_path))[0] if config_path else
              "defaults", "overrides": overrides,
              "command": " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, os.getcwd())] +
                                  (sys.argv[1:] if argv is None else list(argv)))}
    try:
        config = load_config(config_path, overrides)
        with warnings.catch_warnings():  # megatron-core warns that TE / Apex are absent
            warnings.simplefilter("ignore")
            from dancegrpo_hpc.perf.benchmark import format_report, run_benchmark
            from dancegrpo_hpc.perf.measure import emit_report

            log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
            report = run_benchmark(config, warmup=args.warmup, rounds=args.rounds, source=source, log=log)
    except InputError as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 2
    if report["layout"]["rank"] != 0:
        return 0
    emit_report(report, args.out, args.json, format_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
