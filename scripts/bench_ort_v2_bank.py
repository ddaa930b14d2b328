"""Per-layer micro-benchmark of op version 2 on the native onnxruntime CPU kernel: the weight bank stored in fp32,
float16 or bfloat16 (a reduced-precision bank, widened where the kernels are fused), and the cost of the residual and
mean epilogue.

Each row is one DyNetDynamicConv2d layer (per-channel coefficients, ReLU, the bank as an initializer) in several
single-node sessions with the same settings, timed in interleaved rounds: ``fp32`` / ``fp16`` / ``bf16`` banks
(version-2 nodes using nothing else), and ``fp32+res+mean`` (an fp32 bank with the residual input and the mean
output); ``--variants`` picks others (``fp32+res``, ``fp32+mean``, ...). Medians (and minima, in parentheses) and their ratios to the fp32 bank are printed, with the CPU other processes took while each row was
timed (``dynet_deploy.bench.timing.ForeignLoad``; rows the busy-machine rule marks carry ``*`` and are not results)
and the load average before and after.

    PYTHONPATH=. python scripts/bench_ort_v2_bank.py --batches 1 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import ml_dtypes
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from dynet_deploy.bench.timing import ForeignLoad, busy_machine
from dynet_deploy.op import onnxruntime_lib, spec

# (C_in, C_out, H, W, K, kernel, stride): ResNet18's 3x3 layers at 224x224 input, K = 4 basis kernels.
RESNET18_LAYERS = [
    (64, 64, 56, 56, 4, 3, 1),
    (128, 128, 28, 28, 4, 3, 1),
    (256, 256, 14, 14, 4, 3, 1),
    (512, 512, 7, 7, 4, 3, 1),
]
BANKS = {"fp32": (np.float32, TensorProto.FLOAT), "fp16": (np.float16, TensorProto.FLOAT16)}
BANKS["bf16"] = (ml_dtypes.bfloat16, TensorProto.BFLOAT16)


def options(threads: int, library=None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    onnxruntime_lib.register(so, library)
    return so


def session(layer, variant: str, threads: int, weight: np.ndarray, library=None):
    """A session of one variant: ``BANK[+res][+mean]`` (bank fp32 / fp16 / bf16; the residual input, the mean output)."""
    bank, *extras = variant.split("+")
    residual, mean = "res" in extras, "mean" in extras
    c_in, c_out, h, w, k, ks, stride = layer
    pad = ks // 2
    attrs = spec.attributes(
        stride=(stride, stride),
        pads=(pad, pad, pad, pad),
        activation="relu",
        has_residual=residual,
        has_mean=mean,
    )
    inputs = ["x", "coeff", "weight"] + (["residual"] if residual else [])
    outputs = ["y"] + (["mean"] if mean else [])
    node = spec.make_node(inputs, outputs, version=2, **attrs)
    graph_inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c_in, "H", "W"]),
        helper.make_tensor_value_info("coeff", TensorProto.FLOAT, ["N", c_out, k]),
    ]
    if residual:
        graph_inputs.append(helper.make_tensor_value_info("residual", TensorProto.FLOAT, ["N", c_out, None, None]))
    graph_outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs]
    np_type, _ = BANKS[bank]
    graph = helper.make_graph(
        [node],
        "v2",
        graph_inputs,
        graph_outputs,
        initializer=[numpy_helper.from_array(weight.astype(np_type), "weight")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(spec.OP_DOMAIN, 2)]
    )
    return ort.InferenceSession(
        model.SerializeToString(), options(threads, library), providers=["CPUExecutionProvider"]
    )


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", nargs="+", type=int, default=[1])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=1.0, help="least timed seconds per row (more rounds)")
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["fp32", "fp16", "bf16", "fp32+res+mean"],
        help="BANK[+res][+mean] each (bank fp32, fp16 or bf16); ratios are to the first",
    )
    ap.add_argument("--layers", nargs="+", type=int, help="indices into the layer list (default: all)")
    ap.add_argument(
        "--compare-lib", help="another build of the op library (a copy of the previous kernel): its fp32 and fp16 rows"
    )
    ap.add_argument(
        "--cold",
        type=int,
        default=0,
        metavar="MB",
        help="write a buffer of this many MB before every timed call (not timed), so the bank comes from memory as in "
        "a whole model, whose other layers evict it; 0 (default): back-to-back calls, the bank as cached as it fits",
    )
    args = ap.parse_args()
    print(
        f"load before: {os.getloadavg()}; onnxruntime {ort.__version__}; threads {args.threads}; "
        f"kernel ISA {onnxruntime_lib.cpu_isa()}"
    )
    for v in args.variants:
        bank, *extras = v.split("+")
        if bank not in BANKS or not set(extras) <= {"res", "mean"}:
            ap.error(f"variant {v!r}: expected BANK[+res][+mean] with BANK one of {sorted(BANKS)}")
    variants = [(v, None) for v in args.variants]
    if args.compare_lib:
        variants += [("fp32", args.compare_lib), ("fp16", args.compare_lib)]
    names = [v + (" prev" if lib else "") for v, lib in variants]
    rng = np.random.default_rng(0)
    evict = np.zeros(args.cold << 18, np.float32) if args.cold > 0 else None
    if evict is not None:
        print(f"cold bank: {args.cold} MB written before every timed call")
    busy_rows = 0
    for batch in args.batches:
        print(
            f"\nbatch {batch}: layer (C_in->C_out HxW kxk K) | "
            + " | ".join(f"{n} ms median (min)" for n in names)
            + " | "
            + " | ".join(f"{n}/fp32" for n in names[1:])
        )
        for index, layer in enumerate(RESNET18_LAYERS):
            if args.layers is not None and index not in args.layers:
                continue
            c_in, c_out, h, w, k, ks, stride = layer
            weight = (rng.standard_normal((k, c_out, c_in, ks, ks)) * 0.05).astype(np.float32)
            sessions = [session(layer, v, args.threads, weight, lib) for v, lib in variants]
            x = rng.standard_normal((batch, c_in, h, w)).astype(np.float32)
            coeff = rng.uniform(0, 1, (batch, c_out, k)).astype(np.float32)
            h_out, w_out = (h - 1) // stride + 1, (w - 1) // stride + 1
            residual = rng.standard_normal((batch, c_out, h_out, w_out)).astype(np.float32)
            feeds = [{"x": x, "coeff": coeff, **({"residual": residual} if "+res" in v else {})} for v, _ in variants]
            runs = [lambda s=s, f=f: s.run(None, f) for s, f in zip(sessions, feeds)]
            for _ in range(args.warmup):
                for run in runs:
                    run()
            per_round = sum(timed(run) for run in runs) / 1e3
            rounds = max(args.rounds, int(args.min_seconds / max(per_round, 1e-6)) + 1)
            times: list[list[float]] = [[] for _ in runs]
            load = ForeignLoad().start()
            for r in range(rounds):
                order = range(len(runs)) if r % 2 == 0 else reversed(range(len(runs)))
                for i in order:
                    if evict is not None:
                        np.add(evict, 1, out=evict)
                    times[i].append(timed(runs[i]))
            load.stop()
            busy = busy_machine(load.load_before, load.load_after, load.foreign_cores).busy
            busy_rows += busy
            med = [statistics.median(t) for t in times]
            low = [min(t) for t in times]
            print(
                f"  {c_in:4d}->{c_out:4d} {h:3d}x{w:<3d} {ks}x{ks} K={k} | "
                + " | ".join(f"{m:7.3f} ({lo:.3f})" for m, lo in zip(med, low))
                + " | "
                + " | ".join(f"{m / med[0]:5.2f} ({lo / low[0]:.2f})" for m, lo in zip(med[1:], low[1:]))
                + f" | others {load.foreign_cores} cores, {rounds} rounds"
                + (" *" if busy else "")
            )
    print(f"\nload after: {os.getloadavg()}")
    if busy_rows:
        print(f"{busy_rows} row(s) marked '*': the machine was busy while they were timed; re-measure on a quiet one")


if __name__ == "__main__":
    main()
