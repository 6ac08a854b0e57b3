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
  ) | sha256sum | cut -d' ' -f1
}
# The stamp holds the build signature on its first line and the extras installed
# with it on the second: a build with [dev] also serves a run that needs no extras.
STAMP="$VENV/.dancegrpo-build"
SIGNATURE="$(build_signature)"
STAMPED_SIGNATURE="$(sed -n 1p "$STAMP" 2>/dev/null || true)"
INSTALLED_EXTRAS=""
[ "$STAMPED_SIGNATURE" = "$SIGNATURE" ] && INSTALLED_EXTRAS="$(sed -n 2p "$STAMP")"
ALL_EXTRAS="$INSTALLED_EXTRAS"
MISSING_EXTRAS=""
for extra in ${EXTRAS//,/ }; do
  case ",$INSTALLED_EXTRAS," in
    *",$extra,"*) ;;
    *) MISSING_EXTRAS="$MISSING_EXTRAS $extra"; ALL_EXTRAS="${ALL_EXTRAS:+$ALL_EXTRAS,}$extra" ;;
  esac
done
if [ "$STAMPED_SIGNATURE" != "$SIGNATURE" ] || [ -n "$MISSING_EXTRAS" ] \
  || ! (cd / && "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('dancegrpo_hpc._C') is None)") >/dev/null 2>&1; then
  setup_log "building and installing dancegrpo-hpc${ALL_EXTRAS:+[$ALL_EXTRAS]} (csrc/ via CMake)"
  "$PY" -m pip install --quiet --no-build-isolation -e "$ROOT${ALL_EXTRAS:+[$ALL_EXTRAS]}"
  printf '%s\n%s\n' "$SIGNATURE" "$ALL_EXTRAS" > "$STAMP"
fi
