#!/usr/bin/env bash
# Quick start: sets up .venv and runs GRPO on the embedded toy world (about 5 minutes
# on 2 CPU cores). Extra arguments are dotted overrides, e.g. train.iterations=5, or
# --resume auto. Output: runs/quickstart (metrics.jsonl, TensorBoard, reward curve,
# before/after GIF, checkpoints, summary.json).
set -euo pipefail
args=("$@")
set --  # _env.sh reads its own arguments as package extras
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
export THP_MEM_ALLOC_ENABLE=1
exec "$PY" -m dancegrpo_hpc.train examples/toy_t2v.yaml output_dir=runs/quickstart ${args[@]+"${args[@]}"}
