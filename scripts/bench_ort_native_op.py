"""Per-layer micro-benchmark of the native onnxruntime DyNetDynamicConv2d against a static Conv of the same shape.

For every distinct dynamic layer of the chosen zoo models at 224x224 (shapes read from the models with forward
hooks), two single-node graphs run in onnxruntime with the same session settings: the native DyNet layer (K basis
kernels, per-channel coefficients, bank as initializers) and an ordinary ``Conv`` (weights and bias as
initializers), the static baseline's layer. Runs are interleaved, ``--rounds`` each (more where a row would take under ``--min-seconds``), and medians are reported
with their ratio; per model, the per-layer medians are summed with each layer's multiplicity. The load average
is printed before and after, and every row carries the CPU other processes took while it was timed
(``dynet_deploy.bench.timing.ForeignLoad``); rows that the busy-machine rule (``bench.timing.busy_machine``) marks
are marked ``*`` and are not results: publish figures only from a quiet run.

    PYTHONPATH=. python scripts/bench_ort_native_op.py --models dy_resnet18 --batches 1 8 --threads 2

``--compare-lib OLD.so`` times a third session per row on another build of the op library (a copy of the previous
kernel's), in the same rounds, and prints native / previous: a kernel change measured against what it replaces.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from dynet_deploy.bench.timing import ForeignLoad
from dynet_deploy.models.registry import create_model
from dynet_deploy.nn import DynamicConv2d
from dynet_deploy.op import onnxruntime_lib, spec


def model_layers(name: str, size: int = 224):
    """(C_in, C_out, H, W, K, kH, kW, stride, pads, groups, coeff_channels) -> count, for one model at batch 1."""
    model = create_model(name).eval()
    layers = collections.Counter()

    def hook(mod, inputs, _out):
        x = inputs[0]
        layers[
            (
                x.shape[1],
                mod.out_channels,
                x.shape[2],
                x.shape[3],
                mod.num_bases,
                *mod.kernel_size,
                tuple(mod.stride),
                tuple(mod.pads),
                mod.groups,
                mod.coeff_channels,
            )
        ] += 1

    for mod in model.modules():
        if isinstance(mod, DynamicConv2d):
            mod.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return layers


def options(threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


def dynamic_session(layer, threads: int, rng, library=None):
    c_in, c_out, _, _, k, kh, kw, stride, pads, groups, c_c = layer
    weight = (rng.standard_normal((k, c_out, c_in // groups, kh, kw)) * 0.1).astype(np.float32)
    node = spec.make_node(
        ["x", "coeff", "weight"], ["y"], **spec.attributes(stride=stride, pads=pads, groups=groups, activation="relu")
    )
    graph = helper.make_graph(
        [node],
        "dyn",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c_in, "H", "W"]),
            helper.make_tensor_value_info("coeff", TensorProto.FLOAT, ["N", c_c, k]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c_out, None, None])],
        initializer=[numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(spec.OP_DOMAIN, spec.OP_DOMAIN_VERSION)]
    )
    so = options(threads)
    onnxruntime_lib.register(so, library)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def static_session(layer, threads: int, rng):
    c_in, c_out, _, _, _, kh, kw, stride, pads, groups, _ = layer
    weight = (rng.standard_normal((c_out, c_in // groups, kh, kw)) * 0.1).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    top, left, bottom, right = pads
    conv = helper.make_node(
        "Conv", ["x", "w", "b"], ["c"], strides=list(stride), pads=[top, left, bottom, right], group=groups
    )
    relu = helper.make_node("Relu", ["c"], ["y"])
    graph = helper.make_graph(
        [conv, relu],
        "static",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c_in, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c_out, None, None])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), options(threads), providers=["CPUExecutionProvider"])


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["dy_mobile", "dy_resnet18", "dy_resnet50"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=0.5, help="least timed seconds per row (more rounds)")
    ap.add_argument(
        "--compare-lib",
        help="a second build of the op library (e.g. the previous kernel, copied aside): timed in the same rounds, "
        "with the ratio current / that",
    )
    ap.add_argument("--grouped-only", action="store_true", help="only layers with groups > 1")
    args = ap.parse_args()

    print(
        f"load before: {os.getloadavg()}; onnxruntime {ort.__version__}; threads {args.threads}; "
        f"kernel ISA {onnxruntime_lib.cpu_isa()}"
    )
    rng = np.random.default_rng(0)
    busy_rows = 0
    for name in args.models:
        layers = model_layers(name)
        for batch in args.batches:
            total_dyn = total_static = total_prev = 0.0
            print(
                f"\n{name}, batch {batch}: layer (C_in->C_out HxW kHxkW /stride g=groups) x count | "
                f"native ms | static Conv ms | ratio"
                + (" | previous library ms | native / previous" if args.compare_lib else "")
            )
            for layer, count in layers.items():
                c_in, c_out, h, w, k, kh, kw, stride, pads, groups, c_c = layer
                if args.grouped_only and groups == 1:
                    continue
                dyn = dynamic_session(layer, args.threads, rng)
                prev = dynamic_session(layer, args.threads, rng, args.compare_lib) if args.compare_lib else None
                static = static_session(layer, args.threads, rng)
                x = rng.standard_normal((batch, c_in, h, w)).astype(np.float32)
                coeff = rng.uniform(0, 1, (batch, c_c, k)).astype(np.float32)
                run_dyn = lambda: dyn.run(None, {"x": x, "coeff": coeff})  # noqa: E731
                run_static = lambda: static.run(None, {"x": x})  # noqa: E731
                run_prev = (lambda: prev.run(None, {"x": x, "coeff": coeff})) if prev is not None else None  # noqa: E731
                for _ in range(args.warmup):
                    run_dyn()
                    run_static()
                    if run_prev is not None:
                        run_prev()
                # At least --min-seconds per row, so the CPU-time counters (10 ms ticks) can tell a busy machine.
                per_round = (timed(run_dyn) + timed(run_static)) / 1e3
                rounds = max(args.rounds, int(args.min_seconds / max(per_round, 1e-6)) + 1)
                td, ts, tp = [], [], []
                load = ForeignLoad().start()
                for _ in range(rounds):
                    td.append(timed(run_dyn))
                    ts.append(timed(run_static))
                    if run_prev is not None:
                        tp.append(timed(run_prev))
                load.stop()
                busy_rows += load.busy
                md, ms = statistics.median(td), statistics.median(ts)
                total_dyn += md * count
                total_static += ms * count
                mp = statistics.median(tp) if tp else 0.0
                total_prev += mp * count
                print(
                    f"  {c_in:4d}->{c_out:4d} {h:3d}x{w:<3d} {kh}x{kw} /{stride[0]} g={groups:<3d} x{count:<2d} | "
                    f"{md:8.3f} | {ms:8.3f} | {md / ms:5.2f} | "
                    + (f"{mp:8.3f} | {md / mp:5.2f} | " if tp else "")
                    + f"others {load.foreign_cores} cores"
                    + (" *" if load.busy else "")
                )
            print(
                f"  sum over the model's dynamic layers: native {total_dyn:.2f} ms, static Conv {total_static:.2f} ms, "
                f"ratio {total_dyn / total_static:.2f}"
                + (
                    f"; previous library {total_prev:.2f} ms, native / previous {total_dyn / total_prev:.2f}"
                    if args.compare_lib
                    else ""
                )
            )
    print(f"\nload after: {os.getloadavg()}")
    if busy_rows:
        print(
            f"{busy_rows} row(s) marked '*': the machine was busy while they were timed (bench.timing.busy_machine); "
            "re-measure them on a quiet machine"
        )


if __name__ == "__main__":
    main()
