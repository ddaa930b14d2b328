"""Loading TensorRT and the DyNetDynamicConv2d plugin library: what the builder and the runner both need first.

TensorRT is imported lazily (it is optional and heavy); the plugin library is loaded with ctypes before a network is
parsed or an engine deserialised, so TensorRT's plugin registry holds the DyNetDynamicConv2d creator.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from ...errors import MissingDependencyError


def import_tensorrt():
    try:
        import tensorrt as trt  # noqa: PLC0415 - optional, heavy
    except ImportError as exc:
        raise MissingDependencyError(
            "TensorRT is not installed (import tensorrt failed: "
            f"{exc}). Building engines needs TensorRT 10.x or 11.x with its Python bindings on a CUDA machine; "
            "export and fuse still work, and onnxruntime runs the plugin ONNX (see 'dynet-deploy doctor')."
        ) from exc
    return trt


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def tensorrt_available() -> tuple[bool, str]:
    """(available, version or reason) without raising."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        return False, f"import tensorrt failed: {exc}"
    return True, str(trt.__version__)


_LOADED_PLUGIN_LIBS: dict[str, ctypes.CDLL] = {}


def load_plugin_library(path=None) -> Path:
    """Load the TensorRT plugin library with ctypes (its REGISTER_TENSORRT_PLUGIN registers the creator)."""
    from ...op import native as plugin_lib

    lib_path = Path(path) if path is not None else plugin_lib.tensorrt_plugin_path()
    if lib_path is None:
        raise MissingDependencyError(
            f"the TensorRT plugin library {plugin_lib.TRT_LIBRARY} was not built: run "
            "'cmake -S . -B build -DTensorRT_ROOT=/path/to/TensorRT && cmake --build build' "
            f"or set {plugin_lib.ENV_PLUGIN_DIR}"
        )
    if not lib_path.is_file():
        raise MissingDependencyError(f"plugin library {lib_path} does not exist")
    key = str(lib_path.resolve())
    if key not in _LOADED_PLUGIN_LIBS:
        try:
            _LOADED_PLUGIN_LIBS[key] = ctypes.CDLL(key, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            raise MissingDependencyError(f"could not load plugin library {lib_path}: {exc}") from exc
    return lib_path
