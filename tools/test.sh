#!/usr/bin/env bash
# Runs the whole test suite (after setting up .venv). Arguments go to pytest.
# pytest exits non-zero when no test ran (exit 5), and so does this script.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh" dev
cd "$ROOT"
exec "$PY" -m pytest "$@"
