"""The least time a model can take on this machine: its bytes over the measured bandwidth plus its multiply-adds
over the measured peak, both measured here with onnxruntime's own kernels at the benchmark's thread count.

At batch ``B`` a model reads all its parameters once per batch (a Dy model's whole basis bank, whatever the
coefficients) and does ``B`` times its multiply-adds, so ``roofline_ms = param_bytes / bandwidth + B * MACs / peak``.
Activations are left out (they mostly stay in cache at these sizes), which makes the bound lower, never higher.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

BANDWIDTH_BYTES = 128 * 2**20  # far larger than the last-level caches of the machines this runs on
GEMM_SIZE = 1024


@dataclass
class MachinePeaks:
    threads: int
    bandwidth_gbs: float  # GB/s streaming a float32 array through ReduceSum
    peak_gmacs: float  # G multiply-adds/s of a square fp32 MatMul

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _session(graph, threads: int, optimize: bool):
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:  # keep the ReduceSum over a constant from being folded away at load
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _best_seconds(run, repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_peaks(threads: int, repeats: int = 7) -> MachinePeaks:
    """Bandwidth and GEMM peak with onnxruntime at ``threads`` threads (best of ``repeats``: a bound, not a median)."""
    from onnx import TensorProto, helper, numpy_helper

    n = BANDWIDTH_BYTES // 4
    big = numpy_helper.from_array(np.full(n, 0.5, np.float32), "big")  # values do not change a streaming read
    g = helper.make_graph(
        [helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0), helper.make_node("Add", ["s", "x"], ["y"])],
        "stream", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], initializer=[big],
    )
    sess = _session(g, threads, optimize=False)
    feeds = {"x": np.zeros((), np.float32)}
    bw = BANDWIDTH_BYTES / _best_seconds(lambda: sess.run(None, feeds), repeats) / 1e9

    m = GEMM_SIZE
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((m, m), dtype=np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["c"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, m])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, m])], initializer=[w],
    )
    sess = _session(g, threads, optimize=True)
    feeds = {"a": np.random.default_rng(2).standard_normal((m, m), dtype=np.float32)}
    peak = m**3 / _best_seconds(lambda: sess.run(None, feeds), repeats) / 1e9
    return MachinePeaks(threads, round(bw, 2), round(peak, 2))


def roofline_ms(param_bytes: int, macs: float, batch: int, peaks: MachinePeaks) -> float:
    return 1e3 * (param_bytes / (peaks.bandwidth_gbs * 1e9) + batch * macs / (peaks.peak_gmacs * 1e9))
