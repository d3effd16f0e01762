#!/usr/bin/env bash
# DO-Conv on a CUDA machine in one command (`make gpu-check`): the core's tests on every device
# (CUDA included), then the device benchmark (tools/benchmark.py --device) in float32, bfloat16
# and float16 autocast. Needs torch, this checkout, and for the full benchmark torchvision (timm
# for one test); no OpenMMLab, no network. About 5 minutes on one H100/H200.
#
# Writes under $OUT when set, else work_dirs/gpu_check/: pytest.txt (the tests' output, its
# summary line last), bench_<precision>.json, summary.md (the summary line and the tables) and
# gpu_check.log (everything). Exits non-zero when a test or a benchmark failed.
#
# Settings (environment): PYTHON (default .venv/bin/python where it exists, else python3),
# DEVICE (default cuda), QUICK=1 (tiny sizes, one run each: how the CPU test runs this script),
# GPU_CHECK_TESTS (pytest arguments, default: tests/core and the device benchmark's tests),
# BENCH_MODELS (default: the benchmark's; 'toy CNN' needs torch alone).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
DEVICE=${DEVICE:-cuda}
DIR=${OUT:-work_dirs/gpu_check}
mkdir -p "$DIR" || { echo "gpu_check: cannot create $DIR" >&2; exit 1; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
read -r -a TESTS <<< "${GPU_CHECK_TESTS:-tests/core tests/benchmarks/test_torch_models.py}"
BENCH=(--device "$DEVICE")
[ "${QUICK:-0}" = 1 ] && BENCH+=(--quick --repeats 1)
MODELS=()
[ -n "${BENCH_MODELS:-}" ] && MODELS=(--models "$BENCH_MODELS")
failed=0

{
    echo "== gpu_check $(git rev-parse --short HEAD 2>/dev/null || echo '(no git)') on $(hostname), $(date -u +%FT%TZ)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$PY" -c 'import sys, torch; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")'
    echo "== tests: ${TESTS[*]}"
    "$PY" -m pytest "${TESTS[@]}" -q -rs -p no:cacheprovider 2>&1 | tee "$DIR/pytest.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || failed=1
    {
        echo "# gpu_check: $(git rev-parse --short HEAD 2>/dev/null), device $DEVICE"
        echo
        echo "tests: $(tail -n 1 "$DIR/pytest.txt")"
    } > "$DIR/summary.md"
    for amp in fp32 bf16 fp16; do
        echo "== benchmark, $amp"
        extra=()
        [ "$amp" != fp32 ] && extra=(--amp "$amp")
        if "$PY" tools/benchmark.py "${BENCH[@]}" "${MODELS[@]}" "${extra[@]}" \
                --json "$DIR/bench_$amp.json" > "$DIR/bench_$amp.md"; then
            cat "$DIR/bench_$amp.md"
            { echo; cat "$DIR/bench_$amp.md"; } >> "$DIR/summary.md"
        else
            failed=1
            echo "gpu_check: the $amp benchmark failed"
        fi
        rm -f "$DIR/bench_$amp.md"
    done
    echo "== done: $([ $failed = 0 ] && echo 'all passed' || echo 'FAILED (see above)'); files in $DIR"
    exit $failed
} 2>&1 | tee "$DIR/gpu_check.log"
exit "${PIPESTATUS[0]}"
