"""Command line: `dancegrpo-hpc COMMAND ...` (or `python -m dancegrpo_hpc.cli`)."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dancegrpo-hpc", description="GRPO alignment of video flow-matching models")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check-sampling",
        help="sample Gaussian data with its exact velocity through every SDE kind and check the marginals",
    )
    check.add_argument("--samples", type=int, default=20000)
    check.add_argument("--seed", type=int, default=0)
    from . import train

    train_parser = commands.add_parser("train", help="run GRPO training from a YAML config (+ dotted overrides)")
    train.add_arguments(train_parser)
    from . import validate

    validate_parser = commands.add_parser(
        "validate", help="check a config (divisibility, paths) and print a per-rank memory estimate without loading weights")
    validate.add_arguments(validate_parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    # train and validate take options anywhere among the config and overrides; argparse parses a
    # subcommand's arguments in the plain (non-intermixed) way, so they are parsed by their own parser
    intermixed = {"train": train_parser, "validate": validate_parser}
    if argv and argv[0] in intermixed:
        args = train.parse_args(intermixed[argv[0]], argv[1:])
        args.command = argv[0]
    else:
        args = parser.parse_args(argv)

    if args.command == "train":
        return train.run_or_report(args)
    if args.command == "validate":
        return validate.run(args)

    if args.command == "check-sampling":
        from .sampling import analytic

        return analytic.main(["--samples", str(args.samples), "--seed", str(args.seed)])
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
