"""Euphonium on the toy world: iterations (and wall time) to reach a held-out reward
target with and without process-reward-gradient guidance, over several seeds.

Each run is the trainer itself (`python -m dancegrpo_hpc.train`, one process per run)
on examples/toy_t2v.yaml: the same prompts per iteration, samples, steps and updates
in both arms; the guided arm adds one PRM gradient per guided rollout step (the toy
PRM decodes the denoised estimate with the linear toy VAE and scores it; no backward
through the DiT), so its extra compute is small and shows in the wall times. Progress
is measured by the held-out evaluation, which samples the policy alone (deterministic
ODE, fixed seeds, no guidance), so guidance counts only as far as it was internalised.

    python tools/guidance_experiment.py [--seeds 0 1 2] [--iterations 40] [--eval-every 4]
        [--target 0.45 0.5] [--name ARM] [--json results.json] [guidance overrides, e.g. guidance.scale=2.0]

Per target it prints the iterations each arm needed (first evaluation at or above the
target, and "sustained": at or above it from then on) and the paired speed-up per seed
(plain / guided; a plain run that never got there counts as the run length, a lower bound).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDED = ["guidance.process_reward=toy_latent", "guidance.scale=2.0"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=os.path.join(ROOT, "examples", "toy_t2v.yaml"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--target", type=float, nargs="+", default=None,
                   help="held-out reward target(s); default: the initial reward + 50%% and + 75%% of the best gain seen")
    p.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    p.add_argument("--json", default=None, help="also write the curves and results here")
    p.add_argument("--reuse", action="store_true",
                   help="read a run whose folder already holds summary.json instead of training it again "
                        "(runs are deterministic: a plain arm can serve several guided settings)")
    p.add_argument("--name", default="guided",
                   help="the guided arm's folder and label, so that several guided settings share one --out "
                        "and its plain runs (with --reuse)")
    p.add_argument("guided", nargs="*", help="overrides of the guided arm (default: %s)" % " ".join(GUIDED))
    return p.parse_args(argv)


def run(config: str, out: str, seed: int, iterations: int, eval_every: int, extra, reuse: bool = False) -> dict:
    """One training run; returns {'curve': [(iteration, eval reward)], 'wall_s': float}."""
    if not (reuse and os.path.exists(os.path.join(out, "summary.json"))):
        _train(config, out, seed, iterations, eval_every, extra)
    return _read(out)


def _train(config: str, out: str, seed: int, iterations: int, eval_every: int, extra) -> None:
    cmd = [sys.executable, "-m", "dancegrpo_hpc.train", config, f"output_dir={out}", f"seed={seed}",
           f"train.iterations={iterations}", f"eval.every={eval_every}", "checkpoint.every=0",
           "logging.progress=false", "logging.tensorboard=false", "logging.sample_grid=false", *extra]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def _read(out: str) -> dict:
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    curve = [(0, summary["reward_before"])]
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "eval_reward" in row:
                curve.append((row["iteration"], row["eval_reward"]))
    curve.append((summary["iterations"], summary["reward_after"]))
    # null: an evaluation where no held-out sample scored is no point of the curve
    return {"curve": [(it, r) for it, r in curve if r is not None], "wall_s": summary["wall_s"]}


def first_reaching(curve, target, sustained: bool = False):
    """First evaluated iteration whose reward is >= target (sustained: and every later
    evaluation too); None: never within the run."""
    for k, (it, _) in enumerate(curve):
        rest = curve[k:] if sustained else curve[k:k + 1]
        if all(r >= target for _, r in rest):
            return it
    return None


def paired_speedups(plain, guided, iterations: int):
    """Per seed, plain iterations / guided iterations to the target. A plain run that never
    got there counts as reaching it at `iterations` (a lower bound, flagged); a guided
    run that never did gives None for that seed."""
    out = []
    for p, g in zip(plain, guided):
        if g is None:
            out.append(None)
        else:
            out.append((max(p if p is not None else iterations, 1) / max(g, 1), p is None))
    return out


def describe(values) -> str:
    done = [v for v in values if v is not None]
    if len(done) < len(values):
        return f"{len(values) - len(done)}/{len(values)} never"
    spread = statistics.stdev(done) if len(done) > 1 else 0.0
    return f"{statistics.mean(done):.1f} +- {spread:.1f}"


def describe_speedups(pairs) -> str:
    if not pairs or any(p is None for p in pairs):
        return "n/a"
    values = [v for v, _ in pairs]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    bound = ">= " if any(censored for _, censored in pairs) else ""
    return f"{bound}{statistics.mean(values):.2f}x +- {spread:.2f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    guided = args.guided or GUIDED
    out = args.out or tempfile.mkdtemp(prefix="guidance-experiment-")
    arms = {"plain": [], args.name: list(guided)}
    results = {arm: {} for arm in arms}
    for arm, extra in arms.items():
        for seed in args.seeds:
            res = run(args.config, os.path.join(out, f"{arm}-seed{seed}"), seed, args.iterations, args.eval_every,
                      extra, args.reuse)
            results[arm][seed] = res
            print(f"{arm:6s} seed {seed}: " + " ".join(f"{it}:{r:.3f}" for it, r in res["curve"])
                  + f"  ({res['wall_s']:.0f} s)", flush=True)
    start = statistics.mean(r["curve"][0][1] for arm in results.values() for r in arm.values())
    best = max(rw for arm in results.values() for r in arm.values() for _, rw in r["curve"])
    targets = args.target or [round(start + f * (best - start), 3) for f in (0.5, 0.75)]
    rows = []
    per_iter = {arm: statistics.mean(results[arm][s]["wall_s"] / args.iterations for s in args.seeds) for arm in arms}
    print(f"\nheld-out reward at iteration 0: {start:.3f}; guided arm: {' '.join(guided)}")
    print(f"{'target':>8} {'reach':>9} {'plain iters':>14} {(args.name + ' iters'):>16} {'speed-up per seed':>20}")
    for target in targets:
        row = {"target": target, "seconds_per_iteration": per_iter}
        for kind in ("first", "sustained"):
            its = {arm: [first_reaching(results[arm][s]["curve"], target, kind == "sustained") for s in args.seeds]
                   for arm in arms}
            pairs = paired_speedups(its["plain"], its[args.name], args.iterations)
            row[kind] = {"iterations": its, "speedups": pairs}
            print(f"{target:8.3f} {kind:>9} {describe(its['plain']):>14} {describe(its[args.name]):>16} "
                  f"{describe_speedups(pairs):>20}")
        rows.append(row)
    print("seconds per iteration (wall, evaluations included): "
          + ", ".join(f"{arm} {per_iter[arm]:.2f}" for arm in arms))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results, "targets": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
