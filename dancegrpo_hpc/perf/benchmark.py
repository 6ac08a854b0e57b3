"""Measured throughput of a training config, phase by phase (tools/benchmark.py is its CLI).

    report = run_benchmark(config, warmup=1, rounds=3)

The trainer is built exactly as `dancegrpo-hpc train` builds it (rl.trainer.Trainer:
world, policy, optimizer, rewards, worker). Each round then runs one iteration phase by
phase, synchronously and each phase timed on its own:
    encode      text conditioning of the round's prompts (world.encode)
    rollout     the SDE sampler's DiT forwards (PolicyWorker.generate_rollouts, no reward overlap)
    decode      the VAE decode of the final latents, per rollout micro-batch (world.decode)
    reward      every reward model on those videos (AsyncRewardRunner: submit + collect)
    advantages  group advantages and the kept samples (assign_advantages)
    train       log-prob recompute + backward + optimizer steps over the trained timesteps
                (PolicyWorker.update_policy)
and one more iteration as the trainer runs it (Trainer.run_iteration, rewards overlapping
the sampling): `iteration`. The sum of the phases minus `iteration` is what the overlap saves.

Per phase: seconds (median, min, max over rounds), videos/s, DiT tokens/s (video tokens
per sample x sample-forwards), the DiT FLOPs per GPU from the performance model
(perf.model.dit_flops: matmul FLOPs, padded text, trained pairs x forward-equivalents)
and the FLOP/s they imply, MFU against the GPU's peak when the GPU is a known preset,
and peak memory (perf.measure). Figures are this rank's; a data-parallel run's
throughput is dp times the per-rank videos/s.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import tempfile
from typing import Callable, Dict, List, Optional, Tuple

SCHEMA = "dancegrpo-benchmark/1"
PHASES = ("encode", "rollout", "decode", "reward", "advantages", "train")
DEFINITIONS = {
    "videos": "samples the phase processed on this rank (train: the kept samples it trained on)",
    "dit_forwards": "sample-level DiT forwards (rollout: samples x steps x CFG branches; train: trained "
                    "(sample, timestep) pairs x CFG-training branches, each a forward + backward)",
    "tokens": "video tokens per sample x dit_forwards",
    "flops": "DiT matmul FLOPs per GPU (dancegrpo_hpc.perf.model.dit_flops; text at its padded length; a "
             "trained pair costs forward + backward (2x) + recompute of the checkpointed fraction)",
    "mfu": "flops / seconds / the GPU's dense peak for the model's precision (perf.model.peak_flops)",
}


def _bench_config(config, output_dir: str):
    """The config with every output into output_dir and no logging side effects."""
    logging = dataclasses.replace(config.logging, tensorboard=False, progress=False, sample_grid=False)
    return dataclasses.replace(config, output_dir=output_dir, logging=logging)


class _Rounds:
    """Per phase and round: seconds, peak bytes and the work counts of that round."""

    def __init__(self):
        self.data: Dict[str, List[Dict]] = {}

    def add(self, name: str, phase, **counts) -> None:
        self.data.setdefault(name, []).append(dict(counts, seconds=phase.seconds, peak_bytes=phase.peak_bytes))
        self.memory_kind = phase.memory_kind


def _one_round(trainer, iteration: int, timer, rounds: _Rounds) -> None:
    """One iteration phase by phase (see the module docstring): Trainer.run_iteration's
    steps without the reward overlap."""
    import torch

    c, topo, world = trainer.config, trainer.topo, trainer.world
    g = c.rollout.group_size
    prompts, prompt_ids = trainer.prompts_for(iteration)
    with timer() as p:
        cond = world.encode(prompts, topo.device, negative=c.sampling.cfg_scale > 1)
    rounds.add("encode", p, videos=len(prompts) * g)
    with timer() as p:
        batch = trainer.worker.generate_rollouts(cond, prompts, prompt_ids, iteration, world.latent_shape, None,
                                                 trainer.guide_for)
    n = len(batch)
    rounds.add("rollout", p, videos=n)
    mb = c.rollout.micro_batch or n
    parts = [slice(s, min(n, s + mb)) for s in range(0, n, mb)]
    conds = [batch.cond.select(torch.arange(part.start, part.stop, device=batch.cond.device)) for part in parts]
    with timer() as p:  # per micro-batch, as the trainer decodes; I2V worlds take the reference frame from cond
        videos = [world.decode(batch.latents[part, -1], cond) for part, cond in zip(parts, conds)]
    rounds.add("decode", p, videos=n)
    with timer() as p:
        for part, video in zip(parts, videos):
            trainer.runner.submit(video, batch.prompts[part], batch.sample_ids[part].tolist())
        results = trainer.runner.collect()
    rounds.add("reward", p, videos=n)
    with timer() as p:
        adv = trainer.advantages(batch, results)
    rounds.add("advantages", p, videos=n)
    with timer() as p:
        trainer.update(batch, adv, iteration)
    kept = len(adv.kept)
    rounds.add("train", p, videos=kept, pairs=kept * c.train.epochs * _trained_timesteps(c))


def _trained_timesteps(config) -> int:
    from ..rl.timesteps import num_train_timesteps

    return num_train_timesteps(config.sampling.steps, config.train.timestep_fraction)


def run_benchmark(config, warmup: int = 1, rounds: int = 3, world=None, source: Optional[Dict] = None,
                  log: Optional[Callable[[str], None]] = None) -> Dict:
    """Builds the trainer for `config` (outputs into a temporary directory, removed after),
    runs `warmup` untimed and `rounds` timed rounds (each: the phases, then one trainer
    iteration) and returns the report (module docstring). world: a data.World to use
    instead of the one config.data names; source: {path, overrides} for the report."""
    import torch.distributed as dist

    from ..checks import require
    from ..distributed import parallel
    from ..rl.trainer import Trainer
    from .measure import LoadMonitor, Phase, device_info

    require(isinstance(rounds, int) and rounds >= 1, f"benchmark: rounds must be an integer >= 1; got {rounds!r}")
    require(isinstance(warmup, int) and warmup >= 0, f"benchmark: warmup must be an integer >= 0; got {warmup!r}")
    load = LoadMonitor().start()  # other processes' CPU share over the run: flags unreliable timings
    owns_dist = not dist.is_initialized()
    out_dir = tempfile.mkdtemp(prefix="dancegrpo-benchmark-")
    trainer = None
    try:
        trainer = Trainer(_bench_config(config, out_dir), world=world)
        device = trainer.topo.device
        timed, discard = _Rounds(), _Rounds()
        for r in range(warmup + rounds):
            sink = timed if r >= warmup else discard
            _one_round(trainer, 2 * r, lambda: Phase(device), sink)
            with Phase(device) as p:
                metrics = trainer.run_iteration(2 * r + 1)
            trained = metrics["trained_samples"] // trainer.topo.dp  # global -> this rank (equal split)
            sink.add("iteration", p, videos=config.local_samples(trainer.topo.dp),
                     pairs=trained * config.train.epochs * _trained_timesteps(config),
                     split={key: metrics[key] for key in ("time_rollout_s", "time_reward_wait_s", "time_train_s")})
            if log is not None:
                label = f"round {r + 1 - warmup}/{rounds}" if r >= warmup else f"warm-up {r + 1}/{warmup}"
                log(f"[benchmark] {label}: iteration {p.seconds:.3f} s, phases "
                    + ", ".join(f"{name} {sink.data[name][-1]['seconds']:.3f}" for name in PHASES))
        info = device_info(device, config)
        info["machine"] = load.stop()
        info["load_average"] = info["machine"]["load_average"]  # 1/5/15-min at start and end
        return _report(config, trainer, timed, info, warmup, rounds, source or {})
    finally:
        if trainer is not None:
            trainer.close()
        shutil.rmtree(out_dir, ignore_errors=True)
        if owns_dist:
            parallel.destroy()


def _stats(values: List[float]) -> Dict:
    from .measure import spread

    return dict(spread(values), rounds=list(values))


def _report(config, trainer, timed: _Rounds, info: Dict, warmup: int, rounds: int, source: Dict) -> Dict:
    from .model import dit_flops

    topo = trainer.topo
    plan = dit_flops(config, topo.world)
    peak = info.get("peak_flops_s")

    def phase(name: str) -> Dict:
        data = timed.data[name]
        seconds = _stats([d["seconds"] for d in data])
        t = seconds["median"]
        videos = statistics.mean(d["videos"] for d in data)
        out = {"seconds": seconds, "videos": videos, "videos_per_s": videos / t,
               "peak_memory_bytes": max(d["peak_bytes"] for d in data)}
        rollout = videos if name in ("rollout", "iteration") else 0
        pairs = statistics.mean(d["pairs"] for d in data) if "pairs" in data[0] else 0
        if rollout or pairs:
            work = dit_flops(config, topo.world, rollout_samples=rollout, trained_pairs=pairs)
            forwards = work["rollout_forwards"] + work["train_forwards"]
            flops = work["rollout"]["total"] + work["train"]["total"]
            out.update(dit_forwards=forwards, tokens=forwards * plan["video_tokens"],
                       tokens_per_s=forwards * plan["video_tokens"] / t, flops=flops, flops_per_s=flops / t)
            if peak:
                out["mfu"] = flops / t / peak
        if name == "iteration":
            out["trainer_split_s"] = {key: statistics.median(d["split"][key] for d in data)
                                      for key in data[0]["split"]}
        return out

    phases = {name: phase(name) for name in PHASES}
    iteration = phase("iteration")
    sequential = sum(phases[name]["seconds"]["median"] for name in PHASES)
    p = config.parallel
    return {
        "schema": SCHEMA,
        "config": {**source, "resolved": config.to_dict()},
        "device": info,
        "layout": {"world_size": topo.world, "tensor": p.tensor, "ulysses": p.ulysses, "data": topo.dp,
                   "sequence_parallel": p.sequence_parallel, "zero": p.zero, "rank": topo.rank},
        "workload": {"prompts": config.rollout.prompts_per_iteration // topo.dp,
                     "group_size": config.rollout.group_size,
                     "videos": config.local_samples(topo.dp), "steps": config.sampling.steps, "cfg": plan["cfg"],
                     "rollout_micro_batch": config.rollout.micro_batch, "latent": list(plan["latent"]),
                     "video_tokens": plan["video_tokens"], "text_tokens": plan["text_tokens"],
                     "forward_flops_per_sample": plan["forward"]["total"],
                     "trained_timesteps": plan["trained_timesteps"],
                     "forward_equivalents_per_trained_pair": plan["passes"],
                     "optimizer_steps": config.train.updates_per_rollout * config.train.epochs,
                     "model_parallel_gpus": plan["group"]},
        "warmup": warmup, "rounds": rounds,
        "phases": phases,
        "iteration": iteration,
        "overlap": {"phases_sum_s": sequential, "iteration_s": iteration["seconds"]["median"],
                    "saved_s": sequential - iteration["seconds"]["median"],
                    "hideable_s": phases["reward"]["seconds"]["median"],
                    "note": "the trainer decodes each rollout micro-batch as it finishes (on the sampling thread) and "
                            "scores it on reward threads while the next one samples: the overlap hides at most the "
                            "reward phase (hideable_s); a larger saved_s is run-to-run noise"},
        "memory": {"kind": timed.memory_kind},
        "definitions": DEFINITIONS,
    }



# ---- reading a report -----------------------------------------------------------------------------
def is_report(obj) -> bool:
    return isinstance(obj, dict) and obj.get("schema") == SCHEMA


def calibration_input(report: Dict) -> Tuple[object, Dict[str, float], int]:
    """(config, measurement, world_size) for perf.model.calibrate from a benchmark report:
    the measurement in tools/bench_train.py's keys, so both tools calibrate one way."""
    from ..checks import require
    from ..config import config_from_dict
    from .model import dit_flops

    require(is_report(report), f"benchmark report: not a {SCHEMA} JSON object")
    config = config_from_dict(report["config"]["resolved"], paths=False)
    world_size, dp = report["layout"]["world_size"], report["layout"]["data"]
    rollout, train = report["phases"]["rollout"], report["phases"]["train"]
    require(train.get("flops"), "benchmark report: its train phase trained nothing (every group dropped); "
                                "calibrate from a run that trains")
    # dropped groups shrink the measured update; scale its time to the config's planned work at the measured rate
    planned = dit_flops(config, world_size)["train"]["total"]
    step_s = train["seconds"]["median"] * planned / train["flops"] / report["workload"]["optimizer_steps"]
    return config, {"rollout_batched_sps": rollout["videos_per_s"] * dp, "train_step_s": step_s}, world_size


# ---- the human table ------------------------------------------------------------------------------
def _rate(x: Optional[float], unit: str) -> str:
    if x is None:
        return "-"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.2f} {unit}"


def format_report(r: Dict) -> str:
    d, w, lay = r["device"], r["workload"], r["layout"]
    src = r["config"]
    lines = [
        f"benchmark {src.get('name') or 'config'}"
        + (f" ({' '.join(src['overrides'])})" if src.get("overrides") else "")
        + f": {d.get('name', d['type'])}, torch {d['torch']}, {d['threads']} threads"
        + (f", load average {d['load_average']['start'][0]:.1f} -> {d['load_average']['end'][0]:.1f}"
           if d.get("load_average", {}).get("start") else ""),
        f"layout tensor {lay['tensor']} x ulysses {lay['ulysses']} x data {lay['data']}; per rank "
        f"{w['prompts']} prompts x {w['group_size']} = {w['videos']} videos x {w['steps']} steps"
        f"{' x 2 (CFG)' if w['cfg'] > 1 else ''}, latent {' x '.join(map(str, w['latent']))} = {w['video_tokens']} "
        f"video tokens, DiT forward {_rate(w['forward_flops_per_sample'], 'FLOP')} per sample",
        f"{r['rounds']} rounds after {r['warmup']} warm-up; seconds are medians [min, max]",
        "",
        f"{'phase':<12}{'seconds':>10}{'[min, max]':>20}{'videos/s':>10}{'tokens/s':>12}{'FLOP/s':>14}"
        f"{'MFU':>8}{'peak mem':>11}",
    ]
    for name, p in list(r["phases"].items()) + [("iteration", r["iteration"])]:
        s = p["seconds"]
        mfu = f"{p['mfu']:.1%}" if "mfu" in p else "-"
        spread = f"[{s['min']:.4f}, {s['max']:.4f}]"
        lines.append(f"{name:<12}{s['median']:10.4f}{spread:>20}{p['videos_per_s']:10.2f}"
                     f"{_rate(p.get('tokens_per_s'), ''):>12}{_rate(p.get('flops_per_s'), 'FLOP/s'):>14}{mfu:>8}"
                     f"{p['peak_memory_bytes'] / 2**20:7.0f} MiB")
    o = r["overlap"]
    split = r["iteration"].get("trainer_split_s", {})
    lines += [
        "",
        f"phases in sequence {o['phases_sum_s']:.3f} s, iteration as the trainer runs it {o['iteration_s']:.3f} s: "
        f"difference {o['saved_s']:.3f} s; the overlap can hide at most the reward phase, {o['hideable_s']:.3f} s",
        "trainer's own split: " + ", ".join(f"{k.replace('time_', '').replace('_s', '')} {v:.3f} s"
                                             for k, v in split.items()),
        f"peak memory: {r['memory']['kind']}",
    ]
    if "note" in d:
        lines.append(d["note"])
    if d.get("machine", {}).get("warning"):
        lines.append(d["machine"]["warning"])
    return "\n".join(lines)
