#!/usr/bin/env bash
# The one prepared GPU check of the DyNetDynamicConv2d CUDA kernels (issue 4, part 4).
# Needs: an NVIDIA GPU, PyTorch with CUDA, numpy, nvcc and cmake. No TensorRT, no network. About 3-5 minutes:
#   1. builds the kernels for this GPU (cmake, CMAKE_CUDA_ARCHITECTURES=native unless CUDA_ARCHS is set);
#   2. checks them against PyTorch on the zoo's Dy-ResNet50 / Dy-mobile layer shapes (fp32 rel <= 1e-5,
#      fp16 rel <= 1e-2), CUDA-graph capture, malformed calls; then prints the timing table against
#      batch-as-groups and a static cuDNN conv (scripts/gpu_check.py);
#   3. runs compute-sanitizer memcheck and racecheck on small shapes, when compute-sanitizer is installed.
# Exit status: 0 all checks passed, 1 a check failed, 2 not a CUDA machine / tools missing.
# Extra arguments go to gpu_check.py (e.g. --strict-perf, --timing-budget 100).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
START=$(date +%s)
step() { echo; echo "== gpu_check: $* ($(( $(date +%s) - START ))s)"; }
die() { echo "gpu_check: FAIL: $2" >&2; exit "$1"; }

step "environment"
command -v nvidia-smi >/dev/null 2>&1 || die 2 "nvidia-smi not found: this is not a CUDA machine"
nvidia-smi -L || die 2 "nvidia-smi lists no GPU"
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
nvcc --version | tail -n 2

step "build the CUDA kernels"
BUILD=${DYNET_GPU_CHECK_BUILD:-$(mktemp -d /tmp/dynet_gpu_check.XXXXXX)/build}
ARCHS=${CUDA_ARCHS:-native}
configure() {
  cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DDYNET_BUILD_TENSORRT=OFF \
    -DCMAKE_CUDA_ARCHITECTURES="$1" >"$BUILD.configure.log" 2>&1
}
mkdir -p "$(dirname "$BUILD")"
if ! configure "$ARCHS"; then
  echo "configure with CUDA architectures '$ARCHS' failed; retrying with the project default"
  rm -rf "$BUILD"
  cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DDYNET_BUILD_TENSORRT=OFF >"$BUILD.configure.log" 2>&1 \
    || { cat "$BUILD.configure.log"; die 1 "cmake configure failed"; }
fi
grep "dynet:" "$BUILD.configure.log"
timeout 240 cmake --build "$BUILD" -j"$(nproc)" || die 1 "the CUDA kernels do not build"
[ -f "$BUILD/libdynet_dynamic_conv_cuda.so" ] || die 1 "CMake did not build libdynet_dynamic_conv_cuda.so (was nvcc found?)"
export DYNET_DEPLOY_PLUGIN_DIR="$BUILD"

step "correctness and timing"
timeout "${GPU_CHECK_TIMEOUT:-270}" "$PYTHON" "$REPO/scripts/gpu_check.py" --lib-dir "$BUILD" "$@"
rc=$?
[ $rc -eq 124 ] && die 1 "gpu_check.py timed out"
[ $rc -ne 0 ] && die "$rc" "gpu_check.py reported failures (exit $rc)"

step "compute-sanitizer"
SAN=$(command -v compute-sanitizer || true)
[ -z "$SAN" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && SAN=/usr/local/cuda/bin/compute-sanitizer
if [ -z "$SAN" ]; then
  echo "compute-sanitizer not found: memcheck/racecheck skipped (install the CUDA toolkit's compute-sanitizer)"
else
  FILTER=()
  help=$("$SAN" --help 2>&1 || true)
  # Instrument only our kernels (namespace dynet): PyTorch's own kernels are not under test and slow it down.
  if grep -q -- "--kernel-name" <<<"$help"; then FILTER=(--kernel-name kns=dynet)
  elif grep -q -- "--kernel-regex" <<<"$help"; then FILTER=(--kernel-regex kns=dynet); fi
  for tool in memcheck racecheck; do
    timeout 120 "$SAN" --tool "$tool" --error-exitcode 1 "${FILTER[@]}" \
      "$PYTHON" "$REPO/scripts/gpu_check.py" --lib-dir "$BUILD" --sanitize > "$BUILD.$tool.log" 2>&1
    rc=$?
    tail -n 5 "$BUILD.$tool.log"
    if [ $rc -eq 124 ]; then echo "WARNING: compute-sanitizer $tool timed out after 120s (not counted as a failure)"
    elif [ $rc -ne 0 ]; then die 1 "compute-sanitizer $tool found errors (log: $BUILD.$tool.log)"
    else echo "compute-sanitizer $tool: clean"; fi
  done
fi

step "PASS"
