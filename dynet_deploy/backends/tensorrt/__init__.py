"""TensorRT: builds an engine from the fused graph with the DyNetDynamicConv2d plugin loaded, and runs it.

:mod:`.loader` imports TensorRT and loads the plugin library, :mod:`.builder` builds engines (and converts a fused
graph to fp16), :mod:`.runner` runs one. TensorRT is optional: everything here imports without it and says why it
cannot run.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Sequence

from ...errors import MissingDependencyError
from ..base import Availability, BenchVariant, DoctorCheck
from .builder import (
    EngineBuildResult,
    Profile,
    build_engine,
    check_plugin_inputs_fp16,
    convert_onnx_to_fp16,
    default_engine_path,
)
from .loader import import_tensorrt, load_plugin_library, tensorrt_available
from .runner import TensorRTRunner

BENCH_VARIANTS = (BenchVariant("tensorrt", "tensorrt", "fused"),)


class TensorRTBackend:
    name: str = "tensorrt"
    triton_backend: str = "tensorrt"
    artifact_is_graph: bool = False
    bench_variants: Sequence[BenchVariant] = BENCH_VARIANTS

    def availability(self, variant: BenchVariant | None = None) -> Availability:
        ok, why = tensorrt_available()
        if not ok:
            return Availability(False, f"TensorRT is not installed here ({why})")
        import torch

        if not torch.cuda.is_available():
            return Availability(False, "TensorRT needs a CUDA GPU; torch.cuda.is_available() is False")
        return Availability(True, why)

    def require(self) -> None:
        if not tensorrt_available()[0]:
            raise MissingDependencyError(
                "the tensorrt backend needs TensorRT (the `tensorrt` Python package with its libraries) and a CUDA GPU; "
                "neither is installed here. Use --backend onnxruntime, or run `dynet-deploy doctor` on the GPU machine"
            )

    def prepare(self, fused: Path, artifact: Path, *, batch: tuple[int, int, int], precision: str = "fp32") -> Path:
        build_engine(fused, artifact, profile=Profile(batch=batch), fp16=precision == "fp16")
        return Path(artifact)

    def open_runner(self, artifact: str | Path, **options: Any) -> TensorRTRunner:
        options.pop("threads", None)  # TensorRT runs on the GPU
        return TensorRTRunner(artifact, **options)

    def uses_plugin(self, runner) -> bool:
        return True

    def describe(self, runner) -> str:
        return "TensorRT"

    def polygraphy_runner(self, runner) -> Any:
        return runner.polygraphy_runner()

    def replay_args(self, uses_plugin: bool) -> tuple[list[str], str]:
        from ...op.native import TRT_LIBRARY, tensorrt_plugin_path

        plugin = tensorrt_plugin_path()
        if plugin is None:
            return [], f"the TensorRT plugin library ({TRT_LIBRARY}) is not built here; `make plugins` builds it"
        return ["--trt", "--plugins", shlex.quote(str(plugin))], ""

    def doctor_checks(self) -> list[DoctorCheck]:
        disables = "dynet-deploy build, validate/bench --backend tensorrt"
        try:
            import tensorrt as trt
        except ImportError as exc:
            return [DoctorCheck("TensorRT (python)", False, f"import tensorrt failed: {exc}", disables)]
        return [DoctorCheck("TensorRT (python)", True, f"{trt.__version__} at {trt.__file__}", disables)]


__all__ = [
    "EngineBuildResult",
    "Profile",
    "TensorRTBackend",
    "TensorRTRunner",
    "build_engine",
    "check_plugin_inputs_fp16",
    "convert_onnx_to_fp16",
    "default_engine_path",
    "import_tensorrt",
    "load_plugin_library",
    "tensorrt_available",
]
