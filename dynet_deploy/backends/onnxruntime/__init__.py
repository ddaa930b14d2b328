"""onnxruntime: runs portable graphs as they are and fused graphs with the native DyNetDynamicConv2d op library.

Its artifact is the graph itself (nothing to build). Bench times it on three kinds of graph (the data in
:data:`BENCH_VARIANTS`) and on the CUDA execution provider where onnxruntime has one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..base import Availability, BenchVariant, DoctorCheck
from .runner import GRAPH_OPT_LEVELS, OnnxruntimeRunner, uses_dynamic_conv_op

CUDA_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")

BENCH_VARIANTS = (
    BenchVariant("onnxruntime", "onnxruntime", "deploy"),
    BenchVariant("onnxruntime-portable", "onnxruntime", "portable"),
    BenchVariant("onnxruntime-fused", "onnxruntime", "fused"),
    BenchVariant("onnxruntime-cuda", "onnxruntime", "portable", {"providers": CUDA_PROVIDERS}),
)


class OnnxruntimeBackend:
    name: str = "onnxruntime"
    triton_backend: str = "onnxruntime"
    artifact_is_graph: bool = True
    bench_variants: Sequence[BenchVariant] = BENCH_VARIANTS

    def availability(self, variant: BenchVariant | None = None) -> Availability:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return Availability(False, f"import onnxruntime failed: {exc}")
        providers = (variant.runner_options().get("providers") if variant else None) or ()
        have = ort.get_available_providers()
        missing = [p for p in providers if p not in have]
        if missing:
            return Availability(
                False, f"onnxruntime {ort.__version__} has no {missing[0]} here (providers: {', '.join(have)})"
            )
        if variant is not None and variant.graph_kind == "fused":
            try:
                from ... import fuse  # noqa: F401
            except ImportError as exc:
                return Availability(False, f"the fuse pass is not available ({exc})")
        return Availability(True, str(ort.__version__))

    def require(self) -> None:
        return None  # a base dependency

    def prepare(self, fused: Path, artifact: Path, *, batch: tuple[int, int, int], precision: str = "fp32") -> Path:
        return Path(fused)  # onnxruntime runs the graph as it is

    def open_runner(self, artifact: str | Path, **options: Any) -> OnnxruntimeRunner:
        return OnnxruntimeRunner(artifact, **options)

    def uses_plugin(self, runner) -> bool:
        return bool(runner.uses_custom_op)

    def describe(self, runner) -> str:
        return "onnxruntime" + (" (DyNetDynamicConv2d op)" if runner.uses_custom_op else "")

    def polygraphy_runner(self, runner) -> Any:
        from polygraphy.backend.onnxrt import OnnxrtRunner

        return OnnxrtRunner(runner.session, name="onnxruntime")

    def replay_args(self, uses_plugin: bool) -> tuple[list[str], str]:
        if not uses_plugin:
            return ["--onnxrt"], ""
        # Polygraphy's --onnxrt cannot register onnxruntime custom-op libraries: `dynet-deploy run --load-outputs`
        # replays a fused graph on onnxruntime instead (validate.random_inputs.replay_commands).
        return [], "Polygraphy's --onnxrt cannot load the DyNetDynamicConv2d op library"

    def doctor_checks(self) -> list[DoctorCheck]:
        try:
            import onnxruntime as ort

            return [
                DoctorCheck(
                    "onnxruntime providers", True, ", ".join(ort.get_available_providers()), "GPU execution providers"
                )
            ]
        except Exception as exc:
            return [DoctorCheck("onnxruntime providers", False, f"import failed: {exc}", "onnxruntime runs")]


__all__ = ["GRAPH_OPT_LEVELS", "OnnxruntimeBackend", "OnnxruntimeRunner", "uses_dynamic_conv_op"]
