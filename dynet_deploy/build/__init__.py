"""Build: a fused ONNX -> TensorRT engine with the plugin library loaded (:mod:`.engine`)."""

from .engine import (
    EngineBuildResult, Profile, build_engine, check_plugin_inputs_fp16, convert_onnx_to_fp16, default_engine_path,
    import_tensorrt, load_plugin_library,
)

__all__ = [
    "EngineBuildResult", "Profile", "build_engine", "check_plugin_inputs_fp16", "convert_onnx_to_fp16",
    "default_engine_path", "import_tensorrt", "load_plugin_library",
]
