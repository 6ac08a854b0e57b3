#!/usr/bin/env bash
# Quick start: sets up .venv and runs GRPO on the embedded toy world (about 5 minutes
# on 2 CPU cores). Extra arguments are dotted overrides and options in any order, e.g.
# train.iterations=5 or --resume auto. Output: runs/quickstart (metrics.jsonl, TensorBoard,
# reward curve, before/after GIF, checkpoints, summary.json). It ends by saying how to put
# the dancegrpo-hpc command of .venv on PATH.
set -euo pipefail
args=("$@")
set --  # _env.sh reads its own arguments as package extras
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
export THP_MEM_ALLOC_ENABLE=1
status=0
"$PY" -m dancegrpo_hpc.train examples/toy_t2v.yaml output_dir=runs/quickstart ${args[@]+"${args[@]}"} || status=$?
if [ "$status" -eq 0 ]; then
  printf '\nThe dancegrpo-hpc command is installed in %s: run `source %s/bin/activate` to put it on PATH\n(or call %s/bin/dancegrpo-hpc directly).\n' \
    "$VENV" "$VENV" "$VENV"
fi
exit "$status"
