#!/usr/bin/env bash
# The one prepared GPU check of the DyNetDynamicConv2d CUDA kernels: one run that fits a 10-minute command.
# Needs: an NVIDIA GPU, PyTorch with CUDA (and its cuDNN), numpy, nvcc and cmake. No TensorRT, no network.
#   1. builds the kernels for sm_90 (CUDA_ARCHS overrides), with the cuDNN tactic when CMake finds cuDNN (CUDNN_ROOT
#      or the Python's nvidia-cudnn package, which a CUDA build of torch brings);
#   2. scripts/gpu_check.py: every tactic the library lists, in fp32 and fp16, against PyTorch float64 and the C++
#      reference on the zoo's layers plus synthetic ones at N = 1, 3, 8, 32 (outputs pre-filled with NaN), tactic
#      agreement, NaN propagation, CUDA-graph capture, malformed calls, op version 2 (spatial, residual and the mean
#      output through dynet_conv_cuda_plan_run_v2, every tactic, fp32 and fp16, against the op's Python reference;
#      NaN in the residual, CUDA-graph capture), shapes at the 2^31-1 element limit (every
#      output row), then per-layer timing against static cuDNN and batch-as-groups at N = 1, 8, 32 (each timed output
#      checked), the model-level table (Dy-mobile, Dy-ResNet18, Dy-ResNet50 against MobileNetV2, ResNet18, ResNet50:
#      static channels-last cuDNN with BN folded, the Dy model as batch-as-groups and through the custom op
#      torch.ops.dynet.dynamic_conv2d with the fastest tactic per layer; fp16 and fp32, N = 1, 8, 32) and a
#      per-kernel profile of Dy-ResNet50 (torch.profiler; the full table in logs/profile_dy_resnet50.txt);
#   3. compute-sanitizer memcheck and racecheck on small shapes (PYTORCH_NO_CUDA_MEMORY_CACHING=1, so the
#      sanitizer sees every allocation), when compute-sanitizer is installed.
# Worst case by its timeouts: build 100 s, gpu_check.py 330 s (budgets inside: correctness 70 s, op version 2 30 s,
# limit shapes 40 s, per-layer timing 45 s, model table 100 s), sanitizers 2 x 40 s: 8.5 minutes. Writes under $OUT (default: a fresh
# temporary folder): summary.txt (short: read it first) and logs/. Prints the summary, then the verdict as the last
# line. Exit status: 0 pass, 1 a check failed, 2 not a CUDA machine / tools missing, 3 INCOMPLETE (a correctness or
# limit-shape part cut by its time budget, or a tactic x dtype with fewer checks than its minimum). Extra arguments
# go to gpu_check.py (e.g. --strict-perf, --timing-budget 100).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
OUT=${OUT:-$(mktemp -d /tmp/dynet_gpu_check.XXXXXX)}
LOGS="$OUT/logs"
mkdir -p "$LOGS"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
START=$(date +%s)
step() { echo; echo "== gpu_check: $* ($(( $(date +%s) - START ))s)"; }
summ() { echo "$*" >>"$SUMMARY"; }
finish() {  # finish STATUS VERDICT: print the summary, then the verdict last
  summ ""
  summ "verdict: $2 (exit $1, $(( $(date +%s) - START ))s; logs in $LOGS)"
  echo
  echo "================ summary ($SUMMARY) ================"
  cat "$SUMMARY"
  echo "gpu_check: $2"
  exit "$1"
}
die() { echo "gpu_check: FAIL: $2" >&2; summ "FAIL: $2"; finish "$1" "FAIL: $2"; }

summ "DyNetDynamicConv2d GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
step "environment"
command -v nvidia-smi >/dev/null 2>&1 || die 2 "nvidia-smi not found: this is not a CUDA machine"
nvidia-smi -L || die 2 "nvidia-smi lists no GPU"
summ "gpu: $(nvidia-smi -L | head -n 1)"
"$PYTHON" - <<'PY' || die 2 "PyTorch cannot use CUDA here ($PYTHON); install a CUDA build of torch"
import sys, torch, numpy
ok = torch.cuda.is_available()
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), numpy {numpy.__version__}, cuda available: {ok}")
sys.exit(0 if ok else 1)
PY
if ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do [ -x "$d/nvcc" ] && PATH="$d:$PATH" && break; done
fi
command -v nvcc >/dev/null 2>&1 || die 2 "nvcc not found (add the CUDA toolkit's bin/ to PATH)"
command -v cmake >/dev/null 2>&1 || die 2 "cmake not found"
summ "nvcc: $(nvcc --version | tail -n 1)"

step "build the CUDA kernels"
# The build stays out of $OUT, which holds only the summary and logs (a runner may copy $OUT back).
BUILD=${DYNET_GPU_CHECK_BUILD:-$(mktemp -d "${TMPDIR:-/tmp}/dynet_gpu_check_build.XXXXXX")}
ARCHS=${CUDA_ARCHS:-90}
cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DDYNET_BUILD_TENSORRT=OFF \
  -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" -DPython3_EXECUTABLE="$(command -v "$PYTHON")" >"$LOGS/configure.log" 2>&1 \
  || { tail -n 20 "$LOGS/configure.log"; die 1 "cmake configure failed (log: $LOGS/configure.log)"; }
grep "dynet:" "$LOGS/configure.log" | tee -a "$SUMMARY"
timeout "${BUILD_TIMEOUT:-100}" cmake --build "$BUILD" -j"$(nproc)" >"$LOGS/build.log" 2>&1 \
  || { tail -n 30 "$LOGS/build.log"; die 1 "the CUDA kernels do not build (log: $LOGS/build.log)"; }
[ -f "$BUILD/libdynet_dynamic_conv_cuda.so" ] || die 1 "CMake did not build libdynet_dynamic_conv_cuda.so (was nvcc found?)"
export DYNET_DEPLOY_PLUGIN_DIR="$BUILD"

step "correctness, limit shapes, per-layer and model-level timing, profile"
timeout "${GPU_CHECK_TIMEOUT:-330}" "$PYTHON" "$REPO/scripts/gpu_check.py" --lib-dir "$BUILD" \
  --summary "$LOGS/gpu_check.summary.txt" --timing-budget "${TIMING_BUDGET:-45}" --limit-budget 40 \
  --correctness-budget 70 --v2-budget 30 --model-budget "${MODEL_BUDGET:-100}" --profile-out "$LOGS/profile_dy_resnet50.txt" "$@" \
  2>&1 | tee "$LOGS/gpu_check.log"
rc=${PIPESTATUS[0]}
summ ""
[ -f "$LOGS/gpu_check.summary.txt" ] && cat "$LOGS/gpu_check.summary.txt" >>"$SUMMARY"
[ "$rc" -eq 124 ] && die 1 "gpu_check.py timed out (log: $LOGS/gpu_check.log)"
if [ "$rc" -eq 3 ]; then
  summ "INCOMPLETE: a correctness or limit-shape part was cut short (see above)"
  finish 3 "INCOMPLETE: gpu_check.py ran out of its time budget or ran too few checks (log: $LOGS/gpu_check.log)"
fi
[ "$rc" -ne 0 ] && die "$rc" "gpu_check.py reported failures (exit $rc; log: $LOGS/gpu_check.log)"

step "compute-sanitizer"
SAN=$(command -v compute-sanitizer || true)
[ -z "$SAN" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && SAN=/usr/local/cuda/bin/compute-sanitizer
summ ""
if [ -z "$SAN" ]; then
  summ "compute-sanitizer not found: memcheck/racecheck skipped"
else
  FILTER=()
  help=$("$SAN" --help 2>&1 || true)
  # Instrument only our kernels (namespace dynet): PyTorch's and cuDNN's own kernels are not under test.
  if grep -q -- "--kernel-name" <<<"$help"; then FILTER=(--kernel-name kns=dynet)
  elif grep -q -- "--kernel-regex" <<<"$help"; then FILTER=(--kernel-regex kns=dynet); fi
  for tool in memcheck racecheck; do
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${SANITIZER_TIMEOUT:-40}" "$SAN" --tool "$tool" --error-exitcode 1 \
      "${FILTER[@]}" "$PYTHON" "$REPO/scripts/gpu_check.py" --lib-dir "$BUILD" --sanitize >"$LOGS/$tool.log" 2>&1
    rc=$?
    tail -n 5 "$LOGS/$tool.log"
    if [ $rc -eq 124 ]; then summ "compute-sanitizer $tool: timed out (not counted as a failure; log $LOGS/$tool.log)"
    elif [ $rc -ne 0 ]; then summ "compute-sanitizer $tool: ERRORS"; grep -m 5 "=========" "$LOGS/$tool.log" >>"$SUMMARY"
      die 1 "compute-sanitizer $tool found errors (log: $LOGS/$tool.log)"
    else summ "compute-sanitizer $tool: clean ($(grep -m1 "ERROR SUMMARY" "$LOGS/$tool.log" || echo no summary line))"; fi
  done
fi

finish 0 "PASS"
