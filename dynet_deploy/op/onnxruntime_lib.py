"""The native onnxruntime custom-op library of DyNetDynamicConv2d (``libdynet_dynamic_conv_ort.so``).

Built by ``make plugins`` from plugins/dynamic_conv/dynetDynamicConvOrt.cpp when onnxruntime's C/C++ API headers
are available (the Makefile fetches them). It registers the op (domain ``trt.plugins``, op versions 1 and 2, a
node's version read from its ``plugin_version``) for the CPU execution provider in float32 and float16 (a version-2
float32 node may carry a float16 / bfloat16 weight bank), and for the CUDA execution provider in builds with the CUDA
kernels. Inputs 3 to 6 and output 1 are optional in its definition, so fused graphs load unchanged (3 to 7 inputs,
1 or 2 outputs, as the node's ``has_*`` attributes say).

The library is looked up like the other native libraries (:mod:`dynet_deploy.op.native`): in
``$DYNET_DEPLOY_PLUGIN_DIR``, the package's ``lib/`` (an installed wheel), ``build/`` at the repository root.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from ..errors import MissingDependencyError, RuntimeBackendError
from .native import ENV_PLUGIN_DIR, ORT_LIBRARY, ensure_cuda_library_path, find_library, search_dirs


def library_path() -> Path | None:
    """Path of the built onnxruntime custom-op library, or None when it was not built."""
    return find_library(ORT_LIBRARY)


def require_library() -> Path:
    """Path of the library; MissingDependencyError saying how to build it when it is absent."""
    path = library_path()
    if path is None:
        raise MissingDependencyError(
            f"the onnxruntime custom-op library {ORT_LIBRARY} is not in {', '.join(map(str, search_dirs()))}; "
            f"build it with 'make plugins' (it fetches onnxruntime's headers; or pass -DONNXRUNTIME_INCLUDE_DIR=... "
            f"to cmake) or set {ENV_PLUGIN_DIR} to the folder holding it"
        )
    return path


def register(session_options, path: str | Path | None = None) -> Path:
    """Register the library on an ``onnxruntime.SessionOptions``; returns the library's path.

    Raises MissingDependencyError when the library is absent and RuntimeBackendError when onnxruntime refuses it
    (for example an onnxruntime older than the headers it was built against).
    """
    lib = Path(path) if path is not None else require_library()
    if not lib.is_file():
        raise MissingDependencyError(
            f"onnxruntime custom-op library {str(lib)!r} does not exist; build it with 'make plugins'"
        )
    ensure_cuda_library_path()  # where the CUDA kernel's cuDNN / cuBLAS tactics find the wheels' libraries
    try:
        session_options.register_custom_ops_library(str(lib))
    except Exception as exc:  # onnxruntime raises its own Fail/RuntimeException types
        raise RuntimeBackendError(f"onnxruntime could not load {lib.name}: {exc}") from None
    return lib


def cpu_isa(path: str | Path | None = None) -> str:
    """The CPU kernel's instruction set in this process: "avx512", "avx2" or "generic" (``DYNET_CPU_ISA`` lowers it)."""
    lib = ctypes.CDLL(str(Path(path) if path is not None else require_library()))
    lib.dynet_ort_cpu_isa.restype = ctypes.c_char_p
    lib.dynet_ort_cpu_isa.argtypes = []
    return lib.dynet_ort_cpu_isa().decode()


def cpu_path(params, path: str | Path | None = None) -> str:
    """The CPU kernel's loop nest for a call with these DynetConvParams (see ``native.make_params``): "direct",
    "gemm-small", "gemm-implicit", "gemm-im2col" or "narrow" ("invalid" when the parameters have no output size)."""
    lib = ctypes.CDLL(str(Path(path) if path is not None else require_library()))
    lib.dynet_ort_cpu_path.restype = ctypes.c_char_p
    lib.dynet_ort_cpu_path.argtypes = [ctypes.c_void_p]
    return lib.dynet_ort_cpu_path(ctypes.byref(params)).decode()
