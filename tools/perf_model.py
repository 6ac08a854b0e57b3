#!/usr/bin/env python
"""Analytic performance model of one DanceGRPO iteration: rollout, decode, rewards,
training, communication volume and time per GPU, memory per GPU.

    python tools/perf_model.py examples/hunyuan_t2v_64gpu.yaml --world-size 64 --hardware h800
    python tools/perf_model.py --preset hunyuan-t2v-13b --frames 53 --height 480 --width 480 \\
        --steps 16 --prompts 32 --group-size 24 --tau 0.6 --tp 2 --ulysses 4 --world-size 64
    python tools/perf_model.py CONFIG key.sub=value ... --json
    python tools/bench_train.py --json > bench.json       # on the machine to calibrate
    python tools/benchmark.py SMALL_CONFIG --json --out bench.json   # or: any config, measured phase by phase
    python tools/perf_model.py --calibrate bench.json [CONFIG ...]

The model and every formula: dancegrpo_hpc/perf/model.py; hardware figures and their
datasheet sources: dancegrpo_hpc/perf/hardware.py. --calibrate fits the achieved FLOP/s
of a measured run and, with a CONFIG, predicts it at those rates instead of peak x MFU.
The measurement is tools/benchmark.py's JSON (it names its own config and layout) or
tools/bench_train.py's (the toy run examples/toy_t2v.yaml with --bench-prompts x
--bench-group samples). Exit 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dancegrpo_hpc.checks import InputError, require  # noqa: E402

# explicit arguments -> dotted config overrides
EXPLICIT = {"preset": "model.preset", "frames": "data.frames", "height": "data.height", "width": "data.width",
            "steps": "sampling.steps", "group_size": "rollout.group_size", "prompts": "rollout.prompts_per_iteration",
            "tau": "train.timestep_fraction", "tp": "parallel.tensor", "ulysses": "parallel.ulysses",
            "cfg_scale": "sampling.cfg_scale", "best_of_n": "train.best_of_n",
            "updates": "train.updates_per_rollout", "checkpointing": "model.activation_checkpointing"}
# a config without a YAML file for a real model: the paths config.check() asks for (never read here)
PLACEHOLDERS = ["model.path=perf-model", "data.source=prompts", "data.prompts=perf-model", "data.vae=perf-model",
                "data.embeddings=perf-model", "model.dtype=bfloat16"]
BENCH_CONFIG = os.path.join(ROOT, "examples", "toy_t2v.yaml")


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=None, help="trainer YAML config (optional with --preset)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. parallel.ulysses=8")
    parser.add_argument("--world-size", type=int, default=None, help="GPUs (default: tensor x ulysses)")
    parser.add_argument("--hardware", default="h800", help="h800 | h100 | h200")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    group = parser.add_argument_group("explicit run (instead of or on top of CONFIG)")
    group.add_argument("--preset")
    for name in ("frames", "height", "width", "steps", "group-size", "prompts", "tp", "ulysses", "best-of-n",
                 "updates"):
        group.add_argument(f"--{name}", type=int)
    for name in ("tau", "cfg-scale", "checkpointing"):
        group.add_argument(f"--{name}", type=float)
    a = parser.add_argument_group("assumptions (dancegrpo_hpc.perf.Assumptions)")
    a.add_argument("--rollout-mfu", type=float, default=0.45)
    a.add_argument("--train-mfu", type=float, default=0.40)
    a.add_argument("--comm-efficiency", type=float, default=0.70)
    a.add_argument("--comm-overlap", type=float, default=0.0)
    a.add_argument("--decode-s", type=float, default=3.0, help="VAE decode, seconds per video on one GPU")
    a.add_argument("--reward-s", type=float, default=0.25, help="rewards, seconds per video on one GPU")
    a.add_argument("--text-tokens", type=int, default=None, help="text tokens per sample (default: padded 256)")
    c = parser.add_argument_group("calibration")
    c.add_argument("--calibrate", metavar="JSON", help="tools/benchmark.py or tools/bench_train.py --json output")
    c.add_argument("--calibrate-config", default=BENCH_CONFIG,
                   help="bench_train.py measurements: the measured run's config (toy_t2v.yaml)")
    c.add_argument("--bench-prompts", type=int, default=2, help="bench_train.py --prompts of the measurement")
    c.add_argument("--bench-group", type=int, default=8, help="bench_train.py --group of the measurement")
    return parser.parse_intermixed_args(argv)


def target_config(args):
    """The config to predict, or None when only a calibration was asked for."""
    from dancegrpo_hpc.config import load_config

    explicit = [f"{key}={getattr(args, name)}" for name, key in EXPLICIT.items() if getattr(args, name) is not None]
    if args.config is None and not explicit and not args.overrides:
        require(args.calibrate is not None, "perf_model: give a trainer config, --preset (explicit run) or --calibrate")
        return None
    if args.config is not None and not os.path.isfile(args.config) and "=" in args.config:
        args.overrides.insert(0, args.config)  # an override where the config would be
        args.config = None
    base = []
    if args.config is None and (args.preset or "toy") != "toy":
        base = PLACEHOLDERS
    return load_config(args.config, base + args.overrides + explicit, paths=False)


def run(args) -> dict:
    from dancegrpo_hpc.config import load_config
    from dancegrpo_hpc.perf import Assumptions, calibrate, estimate, hardware
    from dancegrpo_hpc.perf.benchmark import calibration_input, is_report
    from dancegrpo_hpc.validate import world_size

    hw = hardware(args.hardware)
    out = {}
    rates = None
    if args.calibrate:
        require(os.path.isfile(args.calibrate), f"perf_model: --calibrate {args.calibrate!r} is not a file")
        with open(args.calibrate) as f:
            try:
                measurement = json.loads(f.read().strip().splitlines()[-1])
            except (ValueError, IndexError) as exc:
                raise InputError(f"perf_model: --calibrate {args.calibrate!r} is not benchmark.py / bench_train.py "
                                 f"JSON ({exc})")
        require(isinstance(measurement, dict), f"perf_model: --calibrate {args.calibrate!r} must hold a JSON object")
        measured_world = 1
        if is_report(measurement):  # benchmark.py: the report names its config and layout
            bench, measurement, measured_world = calibration_input(measurement)
        else:
            bench = load_config(args.calibrate_config, [f"rollout.prompts_per_iteration={args.bench_prompts}",
                                                        f"rollout.group_size={args.bench_group}"], paths=False)
        out["calibration"] = calibrate(bench, measurement, world_size=measured_world, hw=hw)
        rates = {"rollout": out["calibration"]["rollout_flops_s"], "train": out["calibration"]["train_flops_s"]}
    config = target_config(args)
    if config is not None:
        assumptions = Assumptions(args.rollout_mfu, args.train_mfu, args.comm_efficiency, args.comm_overlap,
                                  args.decode_s, args.reward_s, args.text_tokens)
        out["estimate"] = estimate(config, world_size(config, args.world_size), hw, assumptions, rates)
    return out


def format_calibration(cal: dict) -> str:
    from dancegrpo_hpc.perf.model import flop_rate

    mfu, peak = cal.get("mfu", {}), cal.get("peak", {}).get("hardware")
    lines = [f"calibration: DiT forward of the measured run {cal['forward_flops_per_sample'] / 1e9:.3f} GFLOP "
             "per sample"]
    for key, label in (("rollout", "rollout, batched"), ("rollout_sequential", "rollout, one sample at a time"),
                       ("train", "training step")):
        if f"{key}_flops_s" in cal:
            lines.append(f"  {label:<31} {flop_rate(cal[f'{key}_flops_s']):>16} achieved"
                         + (f"  ({mfu[key]:.2%} of {peak}'s peak, if measured there)" if key in mfu else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    try:
        with warnings.catch_warnings():  # megatron-core warns that TE / Apex are absent
            warnings.simplefilter("ignore")
            out = run(args)
    except InputError as exc:
        print(f"perf_model: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out))
        return 0
    from dancegrpo_hpc.perf import format_report

    if "calibration" in out:
        print(format_calibration(out["calibration"]))
        if "estimate" in out:
            print("prediction at the calibrated rates:\n")
    if "estimate" in out:
        print(format_report(out["estimate"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
