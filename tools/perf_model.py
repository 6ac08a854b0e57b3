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
    python tools/perf_model.py examples/hunyuan_t2v_64gpu.yaml --calibration      # measured GPU efficiencies
    python tools/perf_model.py CONFIG --calibration gpu_measure.json  # a tools/gpu_measure.py --json report

The model and every formula: dancegrpo_hpc/perf/model.py; hardware figures and their
datasheet sources: dancegrpo_hpc/perf/hardware.py. --calibrate fits the achieved FLOP/s
of a measured run and, with a CONFIG, predicts it at those rates instead of peak x MFU.
--calibration FILE (default examples/calibration/h200_2026-12-04.json) predicts with the
GEMM, attention and memory-bound efficiencies measured on a GPU (perf/calibration.py).
The world size: --world-size, else the config's parallel.world_size, else tensor x ulysses.
The measurement is tools/benchmark.py's JSON (it names its own config and layout) or
tools/bench_train.py's (the toy run examples/toy_t2v.yaml with --bench-prompts x
--bench-group samples). Exit 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
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
DEFAULT_FILE = os.path.join(ROOT, "examples", "calibration", "h200_2026-12-04.json")
ATTENTION_CHOICES = ("sdpa", "flash", "xformers", "te", "sliding_tile")


def _triple(text: str):
    parts = text.replace("x", ",").split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected three positive integers T,H,W; got {text!r}")
    return tuple(int(p) for p in parts)


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=None, help="trainer YAML config (optional with --preset)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. parallel.ulysses=8")
    parser.add_argument("--world-size", type=int, default=None,
                        help="GPUs (default: the config's parallel.world_size, else tensor x ulysses)")
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
    a.add_argument("--decode-overlap", type=float, default=0.0,
                   help="fraction of the VAE decode hidden behind sampling (engine: 0, decoded on the sampling thread)")
    a.add_argument("--reward-overlap", type=float, default=None,
                   help="fraction of the rewards hidden behind sampling (engine: all but the last micro-batch)")
    a.add_argument("--split-decode", action=argparse.BooleanOptionalAction, default=True,
                   help="decode and score each video on one GPU of its tensor x ulysses group, as the engine does; "
                        "--no-split-decode: every GPU of the group decodes and scores all of them (the engine "
                        "before rl/reward_split.py)")
    a.add_argument("--rollout-attention", choices=ATTENTION_CHOICES, help="attention in sampling (default: "
                                                                          "model.attention)")
    a.add_argument("--train-attention", choices=ATTENTION_CHOICES, help="attention in training (default: "
                                                                        "model.attention)")
    a.add_argument("--sta-tile", type=_triple, default=(6, 8, 8), help="sliding tile: tokens per tile T,H,W")
    a.add_argument("--sta-window", type=_triple, default=(3, 3, 3), help="sliding tile: tiles per window T,H,W")
    a.add_argument("--sta-speedup", type=float, default=None,
                   help="sliding tile: a fixed speed-up over dense sdpa instead of the window's density")
    a.add_argument("--sta-mask-builds", type=int, default=1, help="block-mask builds per iteration (one per shape)")
    c = parser.add_argument_group("calibration")
    c.add_argument("--calibrate", metavar="JSON", help="tools/benchmark.py or tools/bench_train.py --json output")
    c.add_argument("--calibrate-config", default=BENCH_CONFIG,
                   help="bench_train.py measurements: the measured run's config (toy_t2v.yaml)")
    c.add_argument("--bench-prompts", type=int, default=2, help="bench_train.py --prompts of the measurement")
    c.add_argument("--bench-group", type=int, default=8, help="bench_train.py --group of the measurement")
    c.add_argument("--calibration", nargs="?", const=DEFAULT_FILE, default=None, metavar="FILE",
                   help="GPU calibration file or tools/gpu_measure.py report (default file: "
                        "examples/calibration/h200_2026-12-04.json)")
    c.add_argument("--calibration-entry", default=None, metavar="NAME",
                   help="an entry of the calibration file (default: its \"use\")")
    return parser.parse_intermixed_args(argv)


def target_config(args):
    """The config to predict, or None when only a calibration was asked for."""
    from dancegrpo_hpc.config import load_config

    explicit = [f"{key}={getattr(args, name)}" for name, key in EXPLICIT.items() if getattr(args, name) is not None]
    if args.config is None and not explicit and not args.overrides:
        require(args.calibrate is not None or args.calibration is not None,
                "perf_model: give a trainer config, --preset (explicit run) or --calibrate")
        return None
    if args.config is not None and not os.path.isfile(args.config) and "=" in args.config:
        args.overrides.insert(0, args.config)  # an override where the config would be
        args.config = None
    base = []
    if args.config is None and (args.preset or "toy") != "toy":
        base = PLACEHOLDERS
    return load_config(args.config, base + args.overrides + explicit, paths=False)


def _read_json(path: str, flag: str) -> dict:
    """A JSON object: the whole file, else its last line (tools print logs before their JSON)."""
    require(os.path.isfile(path), f"perf_model: {flag} {path!r} is not a file")
    with open(path) as f:
        text = f.read().strip()
    for candidate in (text, text.splitlines()[-1] if text else ""):
        try:
            data = json.loads(candidate)
            break
        except ValueError as exc:
            error = exc
    else:
        raise InputError(f"perf_model: {flag} {path!r} is not benchmark.py / bench_train.py / gpu_measure.py JSON "
                         f"({error})")
    require(isinstance(data, dict), f"perf_model: {flag} {path!r} must hold a JSON object")
    return data


def run(args) -> dict:
    from dancegrpo_hpc.config import load_config
    from dancegrpo_hpc.perf import Assumptions, calibrate, estimate, hardware
    from dancegrpo_hpc.perf.benchmark import calibration_input, is_report
    from dancegrpo_hpc.perf.calibration import load_calibration
    from dancegrpo_hpc.validate import world_size

    hw = hardware(args.hardware)
    out = {}
    rates = calibration = None
    if args.calibration and "=" in args.calibration and not os.path.isfile(args.calibration):
        args.overrides.append(args.calibration)  # `--calibration key=value`: an override after the bare flag
        args.calibration = DEFAULT_FILE
    if args.calibration:
        calibration = load_calibration(args.calibration, args.calibration_entry)
    if args.calibrate:
        measurement = _read_json(args.calibrate, "--calibrate")
        measured_world, bench = 1, None
        if is_report(measurement):  # benchmark.py: the report names its config and layout
            bench, measurement, measured_world = calibration_input(measurement)
        elif "schema" not in measurement:  # bench_train.py: the toy run it measures
            bench = load_config(args.calibrate_config, [f"rollout.prompts_per_iteration={args.bench_prompts}",
                                                        f"rollout.group_size={args.bench_group}"], paths=False)
        fitted = calibrate(bench, measurement, world_size=measured_world, hw=hw)
        if "calibration" in fitted:  # tools/gpu_measure.py: GPU efficiencies, used like --calibration
            calibration = dataclasses.replace(fitted["calibration"], name=os.path.basename(args.calibrate))
        else:
            out["calibration"] = fitted
            rates = {"rollout": fitted["rollout_flops_s"], "train": fitted["train_flops_s"]}
    if calibration is not None:
        out["gpu_calibration"] = calibration.to_dict()
    config = target_config(args)
    if config is not None:
        assumptions = Assumptions(args.rollout_mfu, args.train_mfu, args.comm_efficiency, args.comm_overlap,
                                  args.decode_s, args.reward_s, args.text_tokens, decode_overlap=args.decode_overlap,
                                  reward_overlap=args.reward_overlap, split_decode=args.split_decode,
                                  rollout_attention=args.rollout_attention, train_attention=args.train_attention,
                                  sta_tile=args.sta_tile, sta_window=args.sta_window, sta_speedup=args.sta_speedup,
                                  sta_mask_builds=args.sta_mask_builds)
        out["estimate"] = estimate(config, world_size(config, args.world_size), hw, assumptions, rates, calibration)
    out["_calibration"] = calibration
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
    calibration = out.pop("_calibration")
    if args.json:
        print(json.dumps(out))
        return 0
    from dancegrpo_hpc.perf import format_report
    from dancegrpo_hpc.perf.calibration import format_calibration as format_gpu_calibration

    if calibration is not None:
        print(format_gpu_calibration(calibration) + "\n")
    if "calibration" in out:
        print(format_calibration(out["calibration"]))
        if "estimate" in out:
            print("prediction at the calibrated rates:\n")
    if "estimate" in out:
        print(format_report(out["estimate"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
