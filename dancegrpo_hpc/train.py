"""`dancegrpo-hpc train CONFIG [key.sub=value ...] [--resume auto]`, also
`python -m dancegrpo_hpc.train`; the same entry point under torchrun (gloo on CPU,
nccl on GPU)."""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The train command's arguments; parse them with parse_args, so options may come
    before, between or after the config and the overrides."""
    parser.add_argument("config", nargs="?", default=None, help="YAML config (default: the toy world defaults)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.iterations=5 output_dir=runs/x")
    parser.add_argument("--resume", default="none",
                        help="'auto' (latest checkpoint in output_dir, if any), 'none', or a checkpoint directory")
    parser.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                        help="on resume, let config KEY (e.g. train.lr, or a section such as train) differ from the "
                             "checkpoint's; repeatable. Without it a change that breaks the exact resume is refused")
    parser.add_argument("--no-memory-check", action="store_true",
                        help="start even when the memory estimate exceeds this device's free memory (the estimate "
                             "is a model: for a machine it misjudges, e.g. with swap or memory freed by the time "
                             "the run allocates)")


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Options in any order among the positionals (`CONFIG --resume auto a=1 b=2`): argparse's
    plain parse_args takes the nargs="*" overrides only before the first option and rejects
    the rest as unrecognized arguments."""
    return parser.parse_intermixed_args(argv)


def run(args) -> int:
    if os.environ.get("THP_MEM_ALLOC_ENABLE") is None and not _cuda_visible():
        # on CPU, transparent huge pages make fresh allocations several times cheaper (read at torch import)
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
    # cheap first: the config is parsed and checked before any model or data is touched
    from .config import load_config

    config_path = args.config
    overrides = list(args.overrides)
    if config_path is not None and "=" in config_path and not os.path.exists(config_path):
        overrides.insert(0, config_path)
        config_path = None
    config = load_config(config_path, overrides)
    from .distributed import parallel

    pool = None
    if config.rollout.reward_ranks:
        from .rewards.pool import initialize

        pool = initialize(config.rollout.reward_ranks)
        if pool.is_server:
            return _serve_rewards(config, pool)
    from .rl.trainer import Trainer

    trainer = Trainer(config, resume=args.resume, reward_pool=pool,
                      check_memory=not getattr(args, "no_memory_check", False),
                      allow_changes=getattr(args, "allow_change", ()))
    try:
        trainer.train()
    finally:
        trainer.close()
        parallel.destroy()
    return 0


def _serve_rewards(config, pool) -> int:
    """A reward rank: builds the configured rewards and scores its clients' batches."""
    from .rewards import AsyncRewardRunner, build_rewards
    from .rewards.pool import serve

    with AsyncRewardRunner(build_rewards(config.rewards), max_workers=config.rollout.reward_workers) as runner:
        batches = serve(pool, runner)
    print(f"[reward pool] rank {pool.rank}: scored {batches} batches for training ranks {pool.clients()}", flush=True)
    return 0


def _cuda_visible() -> bool:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "") not in ("", "-1") or os.path.exists("/dev/nvidia0")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dancegrpo-hpc train", description="GRPO training")
    add_arguments(parser)
    return run_or_report(parse_args(parser, argv))


def run_or_report(args) -> int:
    """run(args), with bad input reported as one line (exit 2) instead of a traceback."""
    from .checks import InputError

    try:
        return run(args)
    except InputError as error:
        print(f"dancegrpo-hpc train: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
