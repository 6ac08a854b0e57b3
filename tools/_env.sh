# Sourced by tools/quickstart.sh and tools/test.sh. Creates or reuses .venv (it
# sees the system site-packages, so a torch already on the machine, e.g. a CUDA
# build on a cluster, is reused), installs torch==2.13.0 only when none is
# importable (never a CUDA build on a CPU machine), and installs this package
# (`pip install -e .`, which builds csrc/ with CMake) only when the sources, the
# torch version or the requested extras changed since the last build.
# Usage: source tools/_env.sh [EXTRAS]; afterwards $ROOT and $PY are set.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRAS="${1:-}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
setup_log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  setup_log "creating $VENV"
  "${PYTHON:-python3}" -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  setup_log "no torch found: installing torch==2.13.0"
  "$PY" "$ROOT/tools/install_torch.py"
fi

# The editable build runs without build isolation (an isolated build would fetch a
# fresh, multi-GB torch to compile against): its build tools must be here.
if ! "$PY" -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 70)" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "setuptools>=70"
fi
command -v cmake >/dev/null 2>&1 || "$PY" -m pip install --quiet cmake ninja
export PATH="$VENV/bin:$PATH"

build_signature() {
  (
    cd "$ROOT"
    find csrc CMakeLists.txt setup.py pyproject.toml -type f -print0 | sort -z | xargs -0 sha256sum
    "$PY" -c "import importlib.metadata as m; print(m.version('torch'))"
    echo "extras=$EXTRAS"
  ) | sha256sum | cut -d' ' -f1
}
STAMP="$VENV/.dancegrpo-build"
SIGNATURE="$(build_signature)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$SIGNATURE" ] \
  || ! (cd / && "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('dancegrpo_hpc._C') is None)") >/dev/null 2>&1; then
  setup_log "building and installing dancegrpo-hpc${EXTRAS:+[$EXTRAS]} (csrc/ via CMake)"
  "$PY" -m pip install --quiet --no-build-isolation -e "$ROOT${EXTRAS:+[$EXTRAS]}"
  echo "$SIGNATURE" > "$STAMP"
fi
