#!/usr/bin/env bash
# Every GPU check of the project in one command, for a machine with one CUDA GPU
# (docs/GPU_VALIDATION.md records what it printed). From the repository root:
#
#   bash tools/gpu_check.sh [OUT_DIR]        # default $OUT, else ./gpu_check
#
# Where megatron-core / diffusers are not installed (an offline GPU machine), put their
# wheels in .whl/ first (../shared/gpu/README.md); they are installed into a private
# folder on PYTHONPATH. Each step has its own time limit and its own log; a failing step
# is reported and the next one runs. Steps, in order of what matters most:
#   1. build the CUDA kernels;
#   2. pytest -m gpu (every GPU-marked test; includes the DiT training at the issue size,
#      the on-policy ratio on CUDA, cuDNN SDPA kernels, FP8 against CPU);
#   3. gpu_measure: DiT MFU compiled and eager (cuDNN attention), fused-kernel bandwidth,
#      sliding tile vs dense, FP8 eager and compiled;
#   4. the toy GRPO run on CUDA.
# All steps together take about 25 minutes on an H200 at most (each step's limit below); STEPS
# picks some, for a machine lent for less time than that, e.g.
#   STEPS="build pytest_gpu" bash tools/gpu_check.sh && STEPS="build mfu_compiled fp8_compiled" bash tools/gpu_check.sh
set -uo pipefail
OUT_DIR="${1:-${OUT:-gpu_check}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1 && ! "$PY" -c "import megatron.core, diffusers" >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/dancegrpo_site \
    .whl/*.whl > "$OUT_DIR/wheels.log" 2>&1
  export PYTHONPATH="/tmp/dancegrpo_site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

failed=()
step() {  # step NAME SECONDS COMMAND...
  local name="$1" limit="$2"
  shift 2
  if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then
    return 0
  fi
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  printf '%-16s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - start))" "$*" | tee -a "$OUT_DIR/summary.txt"
  [ "$rc" -eq 0 ] || failed+=("$name")
}

step build 180 env DANCEGRPO_CUDA=1 CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$PY" setup.py -q build_ext --inplace
step pytest_gpu 420 "$PY" -m pytest -m gpu -q -x -p no:cacheprovider tests/ \
  --deselect tests/test_gpu_measure.py::test_defaults_on_cuda
step mfu_compiled 300 "$PY" tools/gpu_measure.py --only mfu --compile --profile 12 --out "$OUT_DIR/mfu_compiled.json"
step mfu_eager 200 "$PY" tools/gpu_measure.py --only mfu --profile 8 --out "$OUT_DIR/mfu_eager.json"
step kernels_attention 200 "$PY" tools/gpu_measure.py --only kernels,attention --out "$OUT_DIR/kernels_attention.json"
step fp8 240 "$PY" tools/gpu_measure.py --only fp8 --out "$OUT_DIR/fp8.json"
step fp8_compiled 300 "$PY" tools/gpu_measure.py --only fp8 --fp8-compile --out "$OUT_DIR/fp8_compiled.json"
step toy_grpo 200 "$PY" -m dancegrpo_hpc.train examples/toy_t2v.yaml output_dir=/tmp/gpu_check_toy_run train.iterations=3 \
  eval.samples_per_prompt=1 logging.sample_grid=false

if [ "${#failed[@]}" -gt 0 ]; then
  echo "gpu_check: failed steps: ${failed[*]} (logs in $OUT_DIR)" | tee -a "$OUT_DIR/summary.txt"
  exit 1
fi
echo "gpu_check: every step passed (logs and JSON in $OUT_DIR)" | tee -a "$OUT_DIR/summary.txt"
