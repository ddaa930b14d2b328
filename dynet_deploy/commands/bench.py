"""``dynet-deploy bench``: latency, throughput and peak memory per backend and batch size, next to FLOPs.

With no arguments it measures the table of the DyNet paper's CPU claim: Dy-mobile, Dy-ResNet18 and
Dy-ResNet50 against MobileNetV2, ResNet18 and ResNet50, batch 1, 2 threads, 224x224, on PyTorch and
onnxruntime CPU (what ``make bench`` runs). See :mod:`dynet_deploy.bench` for how it measures.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..bench import BACKENDS, DEFAULT_BACKENDS, DEFAULT_BATCH_SIZES, DEFAULT_MODELS, DEFAULT_OUT_DIR, DEFAULT_REPEATS, DEFAULT_THREADS, DEFAULT_WARMUP

    p = subparsers.add_parser(
        "bench",
        help="time zoo models per backend and batch size (Dy models interleaved with their baselines), next to FLOPs",
        description="Latency (median, p90 over interleaved rounds after warm-up), throughput, peak memory and FLOPs "
        "for zoo models on each backend present. Every Dy model is timed in alternating rounds with its static "
        "baseline, and its speedup is printed next to its FLOPs ratio. Writes bench.txt, bench.json and bench.png "
        "to --out-dir. Absent backends (CUDA, TensorRT) are skipped with the reason.",
    )
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="NAME",
                   help=f"zoo models (a Dy model brings its baseline); default: {' '.join(DEFAULT_MODELS)}")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=list(DEFAULT_BATCH_SIZES), metavar="N", help="default: 1")
    p.add_argument("--threads", type=int, nargs="+", default=[DEFAULT_THREADS], metavar="N",
                   help=f"intra-op threads for every backend; several counts run one pass each, e.g. '2 1' "
                   f"(default {DEFAULT_THREADS})")
    p.add_argument("--backends", nargs="+", default=list(DEFAULT_BACKENDS), choices=BACKENDS, metavar="BACKEND",
                   help=f"from {', '.join(BACKENDS)}; default: {' '.join(DEFAULT_BACKENDS)}")
    p.add_argument("--input-size", nargs=2, type=int, default=[224, 224], metavar=("H", "W"), help="default: 224 224")
    p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help=f"timed rounds per model (default {DEFAULT_REPEATS})")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help=f"untimed runs per model first (default {DEFAULT_WARMUP})")
    p.add_argument("--dy-form", default="auto", choices=["auto", "feature", "kernel", "matmul", "matmul-nchwc"],
                   help="the graph the 'onnxruntime' backend runs for Dy models (default auto: the fastest, "
                   "matmul-nchwc where onnxruntime has NCHWc kernels, else matmul)")
    p.add_argument("--ort-spinning", action="store_true",
                   help="let onnxruntime's idle worker threads spin (its default); off by default because the "
                   "interleaved sessions' spinning workers take cores from each other")
    p.add_argument("--out-dir", default=DEFAULT_OUT_DIR, help=f"where bench.txt/json/png go (default {DEFAULT_OUT_DIR})")
    p.add_argument("--keep-onnx", metavar="DIR", help="keep the exported graphs in DIR (default: a temporary folder)")
    p.set_defaults(func=run)


def check_out_dir(out_dir: str, error=None) -> None:
    """Before minutes of timing: the output folder is (or can be made) a writable folder."""
    import os
    from pathlib import Path

    from ..errors import BenchError

    BenchError = error or BenchError  # noqa: N806 (the caller's stage error)
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise BenchError(f"--out-dir {out_dir!r} is a file, not a folder")
    probe = path
    while not probe.exists():  # the nearest existing folder is where it will be created
        if probe.is_symlink():
            raise BenchError(f"--out-dir {out_dir!r}: {str(probe)!r} is a dangling symbolic link")
        probe = probe.parent
    if not probe.is_dir():
        raise BenchError(f"--out-dir {out_dir!r} cannot be created: {str(probe)!r} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BenchError(f"--out-dir {out_dir!r} is not writable ({str(probe)!r} is not writable); choose another folder")


def check_backends_present(backends: list[str]) -> None:
    """Refuse a run in which no requested backend can run (an empty table is no result)."""
    from ..bench import BackendUnavailable, check_backend
    from ..errors import MissingDependencyError

    reasons = {}
    for backend in backends:
        try:
            check_backend(backend)
        except BackendUnavailable as exc:
            reasons[backend] = str(exc)
    if reasons and len(reasons) == len(set(backends)):
        raise MissingDependencyError(
            "none of the requested backends can run here: "
            + "; ".join(f"{b}: {why}" for b, why in reasons.items())
            + " (see 'dynet-deploy doctor'; --backends onnxruntime runs everywhere)"
        )


def run(args: argparse.Namespace) -> int:
    from ..bench import BenchConfig, format_table, run_bench, write_outputs

    cfg = BenchConfig(
        models=list(args.models), batch_sizes=list(args.batch_sizes), threads=list(args.threads), backends=list(args.backends),
        input_size=(args.input_size[0], args.input_size[1]), repeats=args.repeats, warmup=args.warmup,
        dy_form=args.dy_form, ort_spinning=args.ort_spinning, keep_onnx_dir=args.keep_onnx,
    )
    cfg.validate()
    check_out_dir(args.out_dir)
    if args.keep_onnx:
        check_out_dir(args.keep_onnx)
    check_backends_present(cfg.backends)
    result = run_bench(cfg, log=lambda msg: print(msg, flush=True))
    paths = write_outputs(result, args.out_dir)
    print()
    print(format_table(result))
    print()
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
