#!/usr/bin/env bash
# Quick start: sets up .venv and runs the main job on the embedded toy world.
# Until the trainer exists, the main job is the analytic sampling check: Gaussian
# data sampled with its exact velocity through every SDE kind must come out right.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
exec "$PY" -m dancegrpo_hpc.cli check-sampling "$@"
