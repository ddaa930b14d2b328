"""onnxruntime behind ``run({name: array}) -> {name: array}``, for portable and fused (plugin) graphs.

A graph containing ``DyNetDynamicConv2d`` runs on the native onnxruntime custom-op library
(``libdynet_dynamic_conv_ort.so``, see :mod:`dynet_deploy.op.onnxruntime_lib`), registered on the session:
float32 and float16, nodes with 3, 4 or 5 inputs as they are on disk.
Inputs are checked against the graph (rank, dtype, fixed dims) before the session sees them, so a wrong
input is a :class:`RuntimeBackendError` that names the input and the expected shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ...errors import RuntimeBackendError
from ...graph import load_onnx
from ...op.spec import OP_DOMAIN, OP_TYPE

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}
GRAPH_OPT_LEVELS = ("disable", "basic", "extended", "all")


def uses_dynamic_conv_op(model_proto) -> bool:
    return any(n.op_type == OP_TYPE for n in model_proto.graph.node)


class OnnxruntimeRunner:
    """An onnxruntime session over a model file (or ModelProto).

    Args:
        threads: intra-op threads (None: onnxruntime's default).
        graph_optimization_level: ``"disable" | "basic" | "extended" | "all"`` (default ``"all"``).
        providers: onnxruntime execution providers (default CPU).
        spinning: whether idle intra-op workers spin (None: onnxruntime's default). Interleaved sessions each keep
            their own pool, and the idle pool's spinning workers compete with the running one for the cores.
    """

    def __init__(
        self,
        model,
        threads: int | None = None,
        graph_optimization_level: str = "all",
        providers: Sequence[str] | None = None,
        spinning: bool | None = None,
    ) -> None:
        import onnxruntime as ort

        proto = load_onnx(model, RuntimeBackendError)
        self.path = None if not isinstance(model, (str, Path)) else Path(model)
        so = ort.SessionOptions()
        if threads is not None:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        if graph_optimization_level not in GRAPH_OPT_LEVELS:
            raise RuntimeBackendError(
                f"graph_optimization_level must be one of {GRAPH_OPT_LEVELS}, got {graph_optimization_level!r}"
            )
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization_level]
        so.log_severity_level = 3
        ort.set_default_logger_severity(3)
        if spinning is not None:
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.uses_custom_op = uses_dynamic_conv_op(proto)
        if self.uses_custom_op:
            from ...errors import MissingDependencyError
            from ...op import onnxruntime_lib

            for node in proto.graph.node:
                if node.op_type == OP_TYPE and node.domain != OP_DOMAIN:
                    raise RuntimeBackendError(
                        f"node {node.name!r} is {node.domain}::{node.op_type}; the onnxruntime op is registered in "
                        f"domain {OP_DOMAIN!r} (re-run `dynet-deploy fuse`)"
                    )
            try:
                self.custom_op_library = onnxruntime_lib.register(so)
            except MissingDependencyError as exc:
                raise RuntimeBackendError(f"this graph has {OP_TYPE} nodes: {exc}") from None
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(proto.SerializeToString(), so, providers=self.providers)
        except Exception as exc:
            raise RuntimeBackendError(f"onnxruntime could not load the model: {exc}") from None
        self._inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def input_spec(self) -> dict[str, tuple[list[int | str | None], np.dtype]]:
        """``{name: (shape with symbolic dims as names, numpy dtype)}``."""
        return {n: (list(i.shape), np.dtype(_ORT_TYPES.get(i.type, np.float32))) for n, i in self._inputs.items()}

    def check_inputs(self, feeds: Mapping[str, np.ndarray]) -> None:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise RuntimeBackendError(f"missing input(s) {missing}; the graph takes {self.input_names}")
        unknown = [n for n in feeds if n not in self._inputs]
        if unknown:
            raise RuntimeBackendError(f"unknown input(s) {unknown}; the graph takes {self.input_names}")
        for name, (shape, dtype) in self.input_spec().items():
            arr = feeds[name]
            if not isinstance(arr, np.ndarray):
                raise RuntimeBackendError(f"input {name!r} must be a numpy array, got {type(arr).__name__}")
            if arr.ndim != len(shape):
                raise RuntimeBackendError(
                    f"input {name!r} has rank {arr.ndim} (shape {list(arr.shape)}); the graph expects rank {len(shape)}: "
                    f"{_shape_str(shape)}"
                )
            if arr.dtype != dtype:
                raise RuntimeBackendError(
                    f"input {name!r} is {arr.dtype}; the graph expects {np.dtype(dtype).name} (cast it first)"
                )
            for axis, (want, got) in enumerate(zip(shape, arr.shape)):
                if isinstance(want, int) and want > 0 and want != got:
                    what = {0: "batch", 1: "channels"}.get(axis, f"dim {axis}")
                    raise RuntimeBackendError(
                        f"input {name!r} has {what} {got}; the graph expects {want} (shape {_shape_str(shape)}"
                        + (
                            ", a fixed batch: export with a dynamic batch or run `dynet-deploy fuse`"
                            if axis == 0
                            else ""
                        )
                        + ")"
                    )

        # One symbolic dimension (N, H, ...) must take one value across inputs (x and coeff share N).
        seen: dict[str, tuple[str, int]] = {}
        for name, (shape, _) in self.input_spec().items():
            for axis, want in enumerate(shape):
                if isinstance(want, str) and want:
                    got = int(feeds[name].shape[axis])
                    if want in seen and seen[want][1] != got:
                        other, value = seen[want]
                        raise RuntimeBackendError(
                            f"input {name!r} has {want}={got} (dim {axis}) but input {other!r} has {want}={value}; they must agree"
                        )
                    seen.setdefault(want, (name, got))

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(feeds)
        try:
            outs = self.session.run(self.output_names, dict(feeds))
        except Exception as exc:
            raise RuntimeBackendError(f"onnxruntime failed: {exc}") from None
        return dict(zip(self.output_names, outs))

    def bound_run(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        """A call that runs the session on ``feeds`` (checked once here), for timing loops."""
        self.run(feeds)  # checks the inputs and runs the graph once through the checked path
        session, names, bound = self.session, self.output_names, dict(feeds)
        return lambda: session.run(names, bound)


def _shape_str(shape: Sequence) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"
