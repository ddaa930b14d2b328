# Two entry points do all set-up on a fresh Debian machine with Python 3.11:
#   make demo   - the main job on the bundled model
#   make test   - the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BUILD  ?= build
# torch is pinned to the CPU build first so that the package's torch range installs nothing more.
TORCH_SPEC ?= torch==2.13.0
CUDNN ?= 1

.PHONY: setup venv data ort-headers plugins demo test test-fast test-sanitize lint zoo bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	@# cuDNN + cuBLAS wheels (about 1 GB to download) only where nvcc builds the CUDA kernels, for their cuDNN
	@# tactic; CUDNN=0 skips them (the CUDA library is then built without that tactic).
	if [ "$(CUDNN)" != 0 ] && command -v nvcc >/dev/null 2>&1; then $(PY) -m pip install -q -e ".[test,cudnn]"; fi
	touch $@

venv: $(VENV)/.installed

# Fashion-MNIST from Debian's package; skipped (with a message) where apt-get is unavailable.
data:
	@if [ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null || \
	  echo "note: could not install dataset-fashion-mnist; the demo falls back to sklearn's digits"; \
	else echo "note: run 'sudo apt-get install dataset-fashion-mnist' for Fashion-MNIST; falling back to sklearn's digits"; fi

# onnxruntime's C/C++ API headers (MIT, API version 29) for the native onnxruntime op library, from the npm package
# that ships them (pinned and checksum-verified in cmake/onnxruntime_headers.cmake, which the wheel build uses too);
# fetched into an ignored cache folder, never committed. Override ORT_INCLUDE_DIR to use the include/ folder of an
# onnxruntime release instead.
ORT_INCLUDE_DIR ?= .cache/onnxruntime/include

$(ORT_INCLUDE_DIR)/onnxruntime_cxx_api.h:
	cmake -DDEST=$(ORT_INCLUDE_DIR) -P cmake/onnxruntime_headers.cmake

ort-headers: $(ORT_INCLUDE_DIR)/onnxruntime_cxx_api.h

plugins: ort-headers
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DONNXRUNTIME_INCLUDE_DIR=$(abspath $(ORT_INCLUDE_DIR)) \
	  -DPython3_EXECUTABLE=$(abspath $(PY)) >/dev/null
	cmake --build $(BUILD) -j2

setup: venv data plugins

demo: setup
	$(VENV)/bin/dynet-deploy demo

zoo: venv
	$(VENV)/bin/dynet-deploy zoo

bench: setup
	$(VENV)/bin/dynet-deploy bench

# ruff (lint and format check) and mypy on the package (config in pyproject.toml), then the whole suite;
# `make test-fast` is the subset without the `slow` marker.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: setup lint
	$(PY) -m pytest -q -rs

test-fast: setup
	$(PY) -m pytest -q -rs -m "not slow"

clean:
	rm -rf $(BUILD) $(SANITIZE_BUILD) .pytest_cache

# The CPU reference and the onnxruntime op built with AddressSanitizer + UBSan into their own folder (no CUDA, no
# TensorRT), then the native-op tests and the attribute fuzz run against them. Python itself is not instrumented, so
# the ASan runtime is preloaded (the compiler's libasan.so, and libstdc++ so that ASan finds the C++ throw it wraps)
# and leak detection is off (the interpreter keeps memory at exit by design); any ASan or UBSan report fails.
SANITIZE_BUILD ?= build-sanitize
SANITIZE ?= address,undefined
SANITIZE_TESTS ?= tests/test_op_fuzz.py tests/test_plugin_cpu_reference.py tests/test_ort_native_op.py
test-sanitize: venv ort-headers
	cmake -S . -B $(SANITIZE_BUILD) -DCMAKE_BUILD_TYPE=Release -DDYNET_SANITIZE=$(SANITIZE) \
	  -DONNXRUNTIME_INCLUDE_DIR=$(abspath $(ORT_INCLUDE_DIR)) -DPython3_EXECUTABLE=$(abspath $(PY)) >/dev/null
	cmake --build $(SANITIZE_BUILD) -j2
	DYNET_DEPLOY_PLUGIN_DIR=$(abspath $(SANITIZE_BUILD)) \
	  LD_PRELOAD="$$($${CXX:-c++} -print-file-name=libasan.so) $$($${CXX:-c++} -print-file-name=libstdc++.so)" \
	  ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  $(PY) -m pytest -q -rs -m "not slow" -p no:cacheprovider $(SANITIZE_TESTS)
