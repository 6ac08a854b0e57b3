"""Trainer benchmark on the toy world: rollout throughput batched vs one sample at a
time (the public DanceGRPO code's way), the time of one training step, and the
peak memory of a training step with 1 vs all trainable timesteps.

    python tools/bench_train.py [--json] [--rounds 3]

Every measurement runs in a fresh process (allocator state and page-fault costs
otherwise leak between configs on these VMs); each round runs the configs in a
random order; figures are medians over rounds. Peak memory: on GPU
torch.cuda.max_memory_allocated above the pre-step level; on CPU the process's
peak resident set (VmHWM, reset through /proc/self/clear_refs) above the RSS
before the step.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1))


class PeakMemory:
    """Peak bytes allocated above the level at entry (GPU allocator, or CPU RSS)."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.base = _status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = _status_kb("VmHWM") * 1024 - self.base


def _trainer(overrides):
    from dancegrpo_hpc.config import load_config
    from dancegrpo_hpc.rl.trainer import Trainer

    out = tempfile.mkdtemp(prefix="bench-train-")
    base = [f"output_dir={out}", "logging.tensorboard=false", "logging.progress=false", "rewards=[{name: toy_text_alignment}]"]
    return Trainer(load_config(os.path.join(ROOT, "examples", "toy_t2v.yaml"), base + overrides))


def _rollout(trainer, iteration):
    prompts, ids = trainer.prompts_for(iteration)
    cond = trainer.world.encode(prompts, trainer.topo.device)
    return trainer.worker.generate_rollouts(cond, prompts, ids, iteration, trainer.world.latent_shape)


def child(kind: str, args) -> dict:
    import torch

    common = [f"rollout.prompts_per_iteration={args.prompts}", f"rollout.group_size={args.group}"]
    if kind in ("batched", "sequential"):
        trainer = _trainer(common + [f"rollout.micro_batch={0 if kind == 'batched' else 1}"])
        _rollout(trainer, 0)  # warm-up
        start = time.perf_counter()
        batch = _rollout(trainer, 1)
        elapsed = time.perf_counter() - start
        trainer.close()
        return {"samples_per_s": len(batch) / elapsed}
    tau = {"one": 1e-6, "all": 1.0, "step": 0.6}[kind]
    trainer = _trainer(common + [f"train.timestep_fraction={tau}"])
    batch = _rollout(trainer, 0)
    adv = torch.randn(len(batch))
    trainer.worker.update_policy(batch, adv, 0)  # warm-up (allocates optimizer state)
    with PeakMemory(trainer.topo.device) as mem:
        start = time.perf_counter()
        stats = trainer.worker.update_policy(batch, adv, 1)
        elapsed = time.perf_counter() - start
    trainer.close()
    from dancegrpo_hpc.rl.timesteps import num_train_timesteps

    k = num_train_timesteps(batch.num_steps, tau)
    return {"train_step_s": elapsed / max(1.0, stats["optimizer_steps"]), "peak_mb": mem.peak / 2**20,
            "timesteps": k}


def _run_child(kind: str, args) -> dict:
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--prompts", str(args.prompts),
           "--group", str(args.group)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"bench_train child {kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per rollout")
    parser.add_argument("--group", type=int, default=8, help="samples per prompt")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args)))
        return 0
    kinds = ["batched", "sequential", "step", "one", "all"]
    results = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for kind in random.sample(kinds, len(kinds)):
            results[kind].append(_run_child(kind, args))

    def med(kind, key):
        return statistics.median(r[key] for r in results[kind])

    out = {
        "rollout_batched_sps": med("batched", "samples_per_s"),
        "rollout_sequential_sps": med("sequential", "samples_per_s"),
        "train_step_s": med("step", "train_step_s"),
        "peak_mem_1_timestep_mb": med("one", "peak_mb"),
        "peak_mem_all_timesteps_mb": med("all", "peak_mb"),
    }
    if args.json:
        print(json.dumps(out))
        return 0
    samples = args.prompts * args.group
    print(f"toy world, {args.prompts} prompts x {args.group} samples, medians of {args.rounds} rounds (fresh process each)")
    print(f"rollout batched     {out['rollout_batched_sps']:8.2f} samples/s")
    print(f"rollout sequential  {out['rollout_sequential_sps']:8.2f} samples/s   "
          f"(batched is {out['rollout_batched_sps'] / out['rollout_sequential_sps']:.2f}x)")
    print(f"train step          {out['train_step_s']:8.3f} s for {samples} samples x "
          f"{results['step'][0]['timesteps']} timesteps (default tau 0.6)")
    print(f"peak memory, 1 timestep    {out['peak_mem_1_timestep_mb']:8.1f} MB")
    print(f"peak memory, all {results['all'][0]['timesteps']} timesteps {out['peak_mem_all_timesteps_mb']:8.1f} MB "
          f"(ratio {out['peak_mem_all_timesteps_mb'] / max(out['peak_mem_1_timestep_mb'], 1e-9):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
