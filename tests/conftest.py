"""Shared by every test file: the native libraries, found or built once per session, and the small models.

Tests that run the native op (the onnxruntime op library, the CPU reference) must not depend on which test file
happened to build ``build/`` first: :func:`native_libraries` builds whatever this machine can build before any test
runs, and a test that needs a library this machine cannot build skips with the reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dynet_deploy.errors import DynetDeployError
from dynet_deploy.op import native, onnxruntime_lib

_BUILD_ERROR: list[str] = []  # why ensure_built failed this session, if it did

# A tiny zoo model for CPU tests: Dy-ResNet18 at 1/8 width, 1-channel 28x28 inputs, 10 classes.
SMALL = dict(num_classes=10, in_chans=1, small_input=True, width_mult=0.125)


@pytest.fixture(scope="session", autouse=True)
def native_libraries() -> dict[str, Path | None]:
    """{library file name: path, or None where it cannot be built here}, after building once what is missing."""
    try:
        native.ensure_built()
    except DynetDeployError as exc:  # no cmake, no compiler: the tests that need a library skip with this
        _BUILD_ERROR.append(str(exc))
    return {
        name: native.find_library(name)
        for name in (native.CPU_LIBRARY, native.CUDA_LIBRARY, native.ORT_LIBRARY, native.TRT_LIBRARY)
    }


@pytest.fixture(scope="session")
def ort_op_library(native_libraries) -> Path:
    """The onnxruntime op library; skips with the reason where it cannot be built (no onnxruntime headers)."""
    path = native_libraries[native.ORT_LIBRARY]
    if path is None:
        pytest.skip(
            f"{onnxruntime_lib.ORT_LIBRARY} not built: onnxruntime's headers are absent "
            "(run 'make ort-headers' or set ONNXRUNTIME_INCLUDE_DIR)" + "".join(f"; {e}" for e in _BUILD_ERROR)
        )
    return path
