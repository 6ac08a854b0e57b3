"""`dancegrpo-hpc validate CONFIG [key.sub=value ...] [--world-size N]`: checks a run's
config without weights or GPUs and prints its layout, batch sizes, tokens per sample
and per-rank memory estimate. Exit 0 when valid; one error line and exit 2 when not.

A config for a GPU cluster validates on a laptop: GPU-only choices (Transformer
Engine, FP8, flash-attn) are checked by name and reported as run-time needs;
--no-check-paths skips the file-system checks and --no-check-rewards turns unknown
reward names into a warning (rewards that register themselves at run time).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
from typing import List, Optional

from .checks import InputError, require
from .config import Config, check_layout, check_world_size, load_config
from .config import check_paths as check_config_paths  # validate() has a check_paths flag
from .models.family import get_family
from .memory import GIB, batch_sizes, check_model, estimate_memory, latent_shape, model_config, parameter_counts, \
    text_tokens, video_tokens

# choice -> the package it imports at run time (all need CUDA)
_RUNTIME_PACKAGES = {("attention", "flash"): "flash_attn", ("attention", "xformers"): "xformers",
                     ("attention", "te"): "transformer_engine",
                     ("layer_spec", "transformer_engine"): "transformer_engine"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. parallel.ulysses=4")
    parser.add_argument("--world-size", type=int, default=None,
                        help="ranks the run will use (default: WORLD_SIZE, else parallel.world_size, else "
                             "tensor x ulysses)")
    parser.add_argument("--no-check-paths", action="store_true",
                        help="skip checking that model and data paths exist (a cluster config on another machine)")
    parser.add_argument("--no-check-rewards", action="store_true",
                        help="warn instead of failing on reward names this installation has not registered")


def world_size(config: Config, given: Optional[int]) -> int:
    if given is None and os.environ.get("WORLD_SIZE"):
        raw = os.environ["WORLD_SIZE"]
        require(raw.isdigit(), f"validate: environment WORLD_SIZE={raw!r} must be a positive integer")
        given = int(raw)
    pool = config.rollout.reward_ranks
    if given is None and config.parallel.world_size is not None:  # the world the config is written for
        given = config.parallel.world_size + pool
    if given is None:
        given = config.parallel.tensor * config.parallel.ulysses + pool
    require(isinstance(given, int) and given >= 1, f"validate: --world-size must be a positive integer; got {given!r}")
    require(given > pool, f"config: rollout.reward_ranks={pool} leaves no training rank in a world of {given}; "
                          "launch more ranks or lower rollout.reward_ranks")
    return given - pool  # the training ranks (the reward pool is the last reward_ranks of the launch)


def check_rewards(config: Config, strict: bool) -> List[str]:
    """Names not registered here; an error when strict."""
    from .rewards import known_rewards

    known = known_rewards()
    missing = []
    for i, spec in enumerate(config.rewards):
        spec.validate(f"rewards[{i}]")
        if spec.name not in known:
            require(not strict, f"config: rewards[{i}].name: unknown reward {spec.name!r}; known rewards: "
                                f"{', '.join(known)} (--no-check-rewards if it registers at run time)")
            missing.append(spec.name)
    return missing


def runtime_needs(config: Config) -> List[str]:
    m = config.model
    needs = []
    for (field, value), package in _RUNTIME_PACKAGES.items():
        if getattr(m, field) == value:
            here = "" if importlib.util.find_spec(package) is not None else ", not installed here"
            needs.append(f"{package.replace('_', '-')} (model.{field}={value}{here})")
    if m.fp8 is not None:
        needs.append(f"Hopper GPUs for FP8 (model.fp8={m.fp8})")
    if m.attention == "sliding_tile":
        needs.append("CUDA for FlexAttention's backward (model.attention=sliding_tile)")
    return sorted(set(needs), key=needs.index)


def report(config: Config, world: int, model, missing_rewards: List[str], source: str) -> str:
    p, r, t, s, d = config.parallel, config.rollout, config.train, config.sampling, config.data
    dp = check_layout(config, world)
    counts = parameter_counts(config, model)
    shape = latent_shape(config, model)
    video, text = video_tokens(shape, model), text_tokens(config, model)
    sizes = batch_sizes(config, dp)
    memory = estimate_memory(config, world, model)
    trained = math.ceil(t.timestep_fraction * (s.steps - 1))
    zero = f"ZeRO-1 over dp x ulysses = {dp * p.ulysses} ranks" if p.zero and dp * p.ulysses > 1 else "no ZeRO"
    lines = [
        f"{source}: valid",
        f"model       {model.variant} ({config.model.family}): {_count(counts['parameters'])} parameters, "
        f"{get_family(config.model.family).describe(model)}; {_count(counts['parameters_per_rank'])} per TP rank in "
        f"{config.model.dtype}",
        f"layout      world {world} = data {dp} x tensor {p.tensor} x ulysses {p.ulysses}; Megatron SP "
        f"{'on' if p.sequence_parallel else 'off'}; {zero}",
        f"rollout     {r.prompts_per_iteration} prompts x {r.group_size} samples per iteration; per data-parallel rank "
        f"{sizes['local']} samples, {sizes['rollout_forward']} per sampling forward, {s.steps} steps ({s.kind}, "
        f"eta {s.eta}, shift {s.shift})",
        f"training    per rank {sizes['kept']} kept samples" + (f" (best {t.best_of_n} of {r.group_size})"
                                                                 if t.best_of_n else "")
        + f", {t.updates_per_rollout} x {sizes['per_update']} samples per optimizer step, {sizes['train_forward']} per "
          f"training forward, {trained} of {s.steps} steps trained per sample",
        f"tokens      {d.frames} frames x {d.height} x {d.width} -> latent {' x '.join(map(str, shape))} -> "
        f"{video} video + {text} text tokens per sample; {math.ceil((video + text) / p.ulysses)} per rank "
        f"(ulysses {p.ulysses})",
    ]
    unit, scale = ("GiB", GIB) if memory["total"] >= GIB else ("MiB", 2**20)  # small runs read better in MiB
    lines.append(f"memory per rank (estimate, {unit}):")
    for key, note in _memory_notes(config, dp).items():
        lines.append(f"  {key.replace('_', ' '):<18} {memory[key] / scale:8.2f}  {note}")
    if r.reward_ranks:
        lines.append(f"rewards     on a pool of {r.reward_ranks} separate ranks: launch {world + r.reward_ranks} = "
                     f"{world} training + {r.reward_ranks} reward ranks")
    for need in runtime_needs(config):
        lines.append(f"needs at run time: {need}")
    if missing_rewards:
        lines.append(f"warning: rewards not registered here: {', '.join(missing_rewards)} (they must register "
                     "at run time)")
    return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _memory_notes(config: Config, dp: int) -> dict:
    p, t, m = config.parallel, config.train, config.model
    zero = dp * p.ulysses if p.zero else 1
    placement = "pinned host memory" if config.rollout.buffer_device == "cpu" else "device"
    return {
        "parameters": f"{m.dtype}, this TP rank's share",
        "gradients": m.dtype,
        "optimizer": ("AdamW moments" + (" + master weights" if m.dtype != "float32" else "") + ", float32"
                      + (f", / {zero} ranks" if zero > 1 else "")),
        "ema": "float32 copy" if t.ema_decay is not None else "(train.ema_decay unset)",
        "reference": "model copy for KL" if t.kl_coef > 0 else "(train.kl_coef = 0)",
        "rollout_latents": f"(T + 1) float32 latents per local sample ({placement})" if placement == "device"
        else "(in pinned host memory, below)",
        "rollout_log_probs": "T float32 per local sample",
        "conditioning": "text embeddings per local sample, float32",
        "activations": f"one training micro-batch, {m.activation_checkpointing:.0%} of blocks checkpointed",
        "rollout_forward": "one sampling micro-batch, no grad (not added to activations)",
        "total": "device: resident + max(activations, rollout forward)",
        "host_pinned": "rollout latents in pinned host memory",
    }


def check_paths_or_hint(config: Config) -> None:
    """config.check_paths, its error naming --no-check-paths: a cluster config checked on a
    machine without the cluster's files still gets its layout and memory checked that way."""
    try:
        check_config_paths(config)
    except InputError as exc:
        raise InputError(f"{exc} (on a machine without these files, --no-check-paths checks the layout only)") from None


def validate(path: str, overrides=(), world: Optional[int] = None, check_paths: bool = True,
             strict_rewards: bool = True) -> str:
    """The report text; raises InputError with one line on the first problem."""
    config = load_config(path, overrides, paths=False)
    if check_paths:
        check_paths_or_hint(config)
    world = world_size(config, world)
    check_world_size(config, world + config.rollout.reward_ranks)  # the trainer refuses another size
    check_layout(config, world)
    model = model_config(config)
    check_model(config, model, latent_shape(config, model))
    missing = check_rewards(config, strict_rewards)
    return report(config, world, model, missing, path)


def run(args) -> int:
    try:
        text = validate(args.config, args.overrides, args.world_size,
                        check_paths=not getattr(args, "no_check_paths", False),
                        strict_rewards=not getattr(args, "no_check_rewards", False))
    except InputError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dancegrpo-hpc validate", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    from .train import parse_args

    return run(parse_args(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
