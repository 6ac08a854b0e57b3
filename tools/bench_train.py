#!/usr/bin/env python
"""Trainer benchmark on the toy world: rollout throughput batched vs one sample at a
time (the public DanceGRPO code's way), the time of one training step, and what a
training step holds for backward with 1 vs all trainable timesteps.

    python tools/bench_train.py [--json] [--rounds 7]

Method (dancegrpo_hpc/perf/measure.py), built to survive a shared machine:
- batched vs sequential rollouts run as interleaved pairs in one process, the two timed
  back to back (A B, B A, ...) after a warm-up of each; the speed-up is the median of the
  per-pair ratios, reported with its quartiles and range. A load that comes and goes hits
  both members of a pair alike; separately taken medians (the old method) read 0.15x-2.34x.
- the training step: median [quartiles, range] over rounds.
- memory: the bytes autograd saves for backward (perf.measure.SavedTensorBytes: unique
  storages, the model's own parameters and buffers excluded), peak over one training
  step. Exact and repeatable on CPU, where the process's RSS depended on allocator caching
  and page faults (it read 0.33-0.54 for all timesteps vs one). On CUDA also the allocator's
  peak above the level before the step (torch.cuda.max_memory_allocated).
- the CPU other processes used meanwhile; a WARNING line when it makes the timings unreliable.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as `train` does on CPU (read when torch loads)


def _trainer(overrides, out_dir):
    from dancegrpo_hpc.config import load_config
    from dancegrpo_hpc.rl.trainer import Trainer

    base = [f"output_dir={tempfile.mkdtemp(dir=out_dir)}", "logging.tensorboard=false", "logging.progress=false",
            "rewards=[{name: toy_text_alignment}]"]
    return Trainer(load_config(os.path.join(ROOT, "examples", "toy_t2v.yaml"), base + overrides))


def _rollout(trainer, iteration):
    prompts, ids = trainer.prompts_for(iteration)
    cond = trainer.world.encode(prompts, trainer.topo.device)
    return trainer.worker.generate_rollouts(cond, prompts, ids, iteration, trainer.world.latent_shape)


def _sync(device):
    from dancegrpo_hpc.perf.measure import synchronize

    return lambda: synchronize(device)


def measure_rollouts(common, out_dir, rounds):
    """(seconds batched, seconds sequential) per interleaved pair, samples per rollout."""
    from dancegrpo_hpc.perf.measure import interleaved_times

    batched = _trainer(common + ["rollout.micro_batch=0"], out_dir)
    sequential = _trainer(common + ["rollout.micro_batch=1"], out_dir)
    try:
        samples = len(_rollout(batched, 1))
        # the same prompts and noise every call (iteration 1): each call does the same work
        pairs = interleaved_times([lambda: _rollout(batched, 1), lambda: _rollout(sequential, 1)], rounds,
                                  warmup=1, sync=_sync(batched.topo.device))
        return pairs, samples
    finally:
        batched.close()
        sequential.close()


def measure_train_step(common, out_dir, rounds):
    """Seconds per optimizer step over rounds (default tau), and the trained timesteps."""
    import torch

    from dancegrpo_hpc.perf.measure import interleaved_times
    from dancegrpo_hpc.rl.timesteps import num_train_timesteps

    trainer = _trainer(common, out_dir)
    try:
        batch = _rollout(trainer, 0)
        adv = torch.randn(len(batch), generator=torch.Generator().manual_seed(0))
        steps = []

        def step():
            stats = trainer.worker.update_policy(batch, adv, 1)
            steps.append(max(1.0, stats["optimizer_steps"]))

        times = [t for (t,) in interleaved_times([step], rounds, warmup=1, sync=_sync(trainer.topo.device))]
        k = num_train_timesteps(batch.num_steps, trainer.config.train.timestep_fraction)
        return [t / s for t, s in zip(times, steps[1:])], k
    finally:
        trainer.close()


def measure_step_memory(common, out_dir, tau):
    """What one training step with timestep fraction tau holds: peak saved-tensor bytes,
    and on CUDA the allocator's peak above the level before the step."""
    import torch

    from dancegrpo_hpc.perf.measure import Phase, SavedTensorBytes
    from dancegrpo_hpc.rl.timesteps import num_train_timesteps

    trainer = _trainer(common + [f"train.timestep_fraction={tau}"], out_dir)
    try:
        batch = _rollout(trainer, 0)
        adv = torch.randn(len(batch), generator=torch.Generator().manual_seed(0))
        trainer.worker.update_policy(batch, adv, 0)  # warm-up: allocates the optimizer state
        model = trainer.model
        with Phase(trainer.topo.device) as phase, \
                SavedTensorBytes(exclude=list(model.parameters()) + list(model.buffers())) as saved:
            trainer.worker.update_policy(batch, adv, 1)
        out = {"timesteps": num_train_timesteps(batch.num_steps, tau), "saved_bytes": saved.peak_bytes}
        if trainer.topo.device.type == "cuda":
            out["cuda_peak_above_start_bytes"] = phase.peak_bytes - phase.start_bytes
        return out
    finally:
        trainer.close()


def run(prompts: int, group: int, rounds: int) -> dict:
    from dancegrpo_hpc.checks import require
    from dancegrpo_hpc.perf.measure import LoadMonitor, spread

    for name, value in (("--rounds", rounds), ("--prompts", prompts), ("--group", group)):
        require(isinstance(value, int) and value >= 1, f"{name} must be an integer >= 1; got {value!r}")
    common = [f"rollout.prompts_per_iteration={prompts}", f"rollout.group_size={group}"]
    train = common + ["rollout.micro_batch=0"]  # its rollout only supplies the batch to train on
    out_dir = tempfile.mkdtemp(prefix="bench-train-")
    start = time.perf_counter()
    try:
        with LoadMonitor() as load:
            pairs, samples = measure_rollouts(common, out_dir, rounds)
            step_s, k = measure_train_step(train, out_dir, rounds)
            one = measure_step_memory(train, out_dir, 1e-6)
            every = measure_step_memory(train, out_dir, 1.0)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    batched_sps = spread(samples / a for a, _ in pairs)
    sequential_sps = spread(samples / b for _, b in pairs)
    out = {
        # medians: the keys tools/perf_model.py --calibrate reads
        "rollout_batched_sps": batched_sps["median"],
        "rollout_sequential_sps": sequential_sps["median"],
        "train_step_s": spread(step_s)["median"],
        "rollout_speedup": spread(b / a for a, b in pairs),  # per pair: sequential seconds / batched seconds
        "rollout_pairs_s": [list(pair) for pair in pairs],  # [batched, sequential] seconds, pair by pair
        "rollout_batched_sps_spread": batched_sps,
        "rollout_sequential_sps_spread": sequential_sps,
        "train_step_s_spread": spread(step_s),
        "train_step_s_rounds": step_s,
        "train_timesteps": k,
        "memory": {"kind": "peak bytes autograd saved for backward during one training step (unique storages, "
                           "model parameters and buffers excluded)", "one_timestep": one, "all_timesteps": every,
                   "ratio": every["saved_bytes"] / one["saved_bytes"]},
        "workload": {"prompts": prompts, "group": group, "samples": samples, "rounds": rounds},
        "machine": load.report(),
        "wall_s": time.perf_counter() - start,
    }
    if "cuda_peak_above_start_bytes" in one:
        out["memory"]["cuda_ratio"] = every["cuda_peak_above_start_bytes"] / max(1, one["cuda_peak_above_start_bytes"])
    return out


def format_report(r: dict) -> str:
    from dancegrpo_hpc.perf.measure import format_spread

    w, m = r["workload"], r["memory"]
    one, every = m["one_timestep"], m["all_timesteps"]
    load = r["machine"]
    share = load["others_cpu_share"]
    lines = [
        f"toy world, {w['prompts']} prompts x {w['group']} samples, {w['rounds']} interleaved rounds "
        f"(median [IQR, range, n]); other processes used "
        + (f"{share:.0%}" if share is not None else "an unknown share") + f" of the {load['cpus']} CPUs",
        f"rollout batched     {format_spread(r['rollout_batched_sps_spread'])} samples/s",
        f"rollout sequential  {format_spread(r['rollout_sequential_sps_spread'])} samples/s",
        f"batched/sequential  {format_spread(r['rollout_speedup'], unit='x')} (per back-to-back pair)",
        f"train step          {format_spread(r['train_step_s_spread'], fmt='{:.3f}', unit=' s')} for "
        f"{w['samples']} samples x {r['train_timesteps']} timesteps",
        f"saved for backward, 1 timestep        {one['saved_bytes'] / 2**20:8.2f} MiB",
        f"saved for backward, all {every['timesteps']} timesteps  {every['saved_bytes'] / 2**20:8.2f} MiB "
        f"(ratio {m['ratio']:.2f}: each timestep's backward runs before the next forward)",
    ]
    if "cuda_ratio" in m:
        lines.append(f"CUDA allocator peak above the step's start: 1 timestep "
                     f"{one['cuda_peak_above_start_bytes'] / 2**20:.1f} MiB, all "
                     f"{every['cuda_peak_above_start_bytes'] / 2**20:.1f} MiB (ratio {m['cuda_ratio']:.2f})")
    if load["warning"]:
        lines.append(load["warning"])
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rollout pairs and timed training steps")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per rollout")
    parser.add_argument("--group", type=int, default=8, help="samples per prompt")
    args = parser.parse_args(argv)
    from dancegrpo_hpc.checks import InputError
    from dancegrpo_hpc.perf.measure import emit_report

    try:
        report = run(args.prompts, args.group, args.rounds)
    except InputError as exc:
        print(f"bench_train: {exc}", file=sys.stderr)
        return 2
    emit_report(report, as_json=args.json, formatter=format_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
