"""``dynet-deploy bench``: latency, throughput and peak memory per backend and batch size, next to FLOPs.

With no arguments it measures the table of the DyNet paper's CPU claim: Dy-mobile, Dy-ResNet18 and
Dy-ResNet50 against MobileNetV2, ResNet18 and ResNet50, batch 1, 2 threads, 224x224, on PyTorch and
onnxruntime CPU (what ``make bench`` runs). See :mod:`dynet_deploy.bench` for how it measures.
"""

from __future__ import annotations

import argparse

from ..fileio import check_out_dir
from ..input_size import GIVEN, GRAPH, InputSize, check_given_size, resolve_input_size


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..bench import (
        BACKENDS,
        DEFAULT_BACKENDS,
        DEFAULT_BATCH_SIZES,
        DEFAULT_MODELS,
        DEFAULT_OUT_DIR,
        DEFAULT_PROCESSES,
        DEFAULT_REPEATS,
        DEFAULT_THREAD_COUNTS,
        DEFAULT_WARMUP,
        MEASURES,
        MIN_PROCESSES,
    )

    p = subparsers.add_parser(
        "bench",
        help="time zoo models per backend and batch size (Dy models interleaved with their baselines), next to FLOPs",
        description="Latency (median, p90 over interleaved rounds after warm-up), throughput, peak memory and FLOPs "
        "for zoo models on each backend present. Every Dy model is timed in alternating rounds with its static "
        "baseline, and its speedup is printed next to its FLOPs ratio. Writes bench.txt, bench.json and bench.png "
        "to --out-dir. Absent backends (CUDA, TensorRT) are skipped with the reason.",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"zoo models (a Dy model brings its baseline); default: {' '.join(DEFAULT_MODELS)}, or none "
        "when --checkpoint or --onnx is given",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="CKPT",
        help="your own checkpoint (repeatable): timed on every backend like a zoo model; a Dy checkpoint is "
        "paired with its static baseline built with the same arguments",
    )
    p.add_argument("--model-args", metavar="JSON", help="create_model keyword arguments for --checkpoint, as JSON")
    p.add_argument(
        "--onnx",
        action="append",
        default=[],
        metavar="FILE",
        help="your own ONNX graph, portable or fused (repeatable): timed on the onnxruntime backends and TensorRT",
    )
    p.add_argument(
        "--batch-sizes",
        nargs="+",
        type=int,
        default=list(DEFAULT_BATCH_SIZES),
        metavar="N",
        help=f"default: {' '.join(map(str, DEFAULT_BATCH_SIZES))}",
    )
    p.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="intra-op threads for every backend; several counts run one pass each (default: "
        f"{' '.join(map(str, DEFAULT_THREAD_COUNTS))} for the interleaved measure, onnxruntime's default for the "
        "process measure)",
    )
    p.add_argument(
        "--measures",
        nargs="+",
        default=["interleaved"],
        choices=MEASURES,
        metavar="MEASURE",
        help="interleaved: each pair in this process, alternating rounds, idle workers not spinning (the default); "
        "process: each model alone in its own process with onnxruntime's defaults (workers spinning), processes "
        "alternating static, Dy, ..., median of the process medians (what a deployment runs; about doubles the run)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=DEFAULT_PROCESSES,
        metavar="N",
        help=f"processes per model for the process measure (at least {MIN_PROCESSES}; default {DEFAULT_PROCESSES})",
    )
    p.add_argument(
        "--backends",
        nargs="+",
        default=list(DEFAULT_BACKENDS),
        choices=BACKENDS,
        metavar="BACKEND",
        help=f"from {', '.join(BACKENDS)}; default: {' '.join(DEFAULT_BACKENDS)}",
    )
    p.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        default=None,
        metavar=("H", "W"),
        help="input height and width (default: a --onnx graph's fixed size, a --checkpoint's recorded size, else the "
        "zoo entries' size, else 224 224; they must agree)",
    )
    p.add_argument(
        "--repeats", type=int, default=DEFAULT_REPEATS, help=f"timed rounds per model (default {DEFAULT_REPEATS})"
    )
    p.add_argument(
        "--warmup", type=int, default=DEFAULT_WARMUP, help=f"untimed runs per model first (default {DEFAULT_WARMUP})"
    )
    p.add_argument(
        "--dy-form",
        default="auto",
        choices=["auto", "feature", "kernel", "matmul", "matmul-nchwc"],
        help="the graph the 'onnxruntime' backend runs for Dy models (default auto: the fastest, "
        "matmul-nchwc where onnxruntime has NCHWc kernels, else matmul)",
    )
    p.add_argument(
        "--bank-dtype",
        choices=["fp32", "fp16", "bf16"],
        default="fp32",
        help="the fused graph's weight banks in this type (as `fuse --bank-dtype`; onnxruntime CPU only, default fp32)",
    )
    p.add_argument(
        "--no-fold",
        action="store_true",
        help="fuse without the epilogue folds (as `fuse --no-fold`: residual Adds and pools kept, op version 1)",
    )
    p.add_argument(
        "--ort-spinning",
        action="store_true",
        help="let onnxruntime's idle worker threads spin (its default); off by default because the "
        "interleaved sessions' spinning workers take cores from each other",
    )
    p.add_argument(
        "--out-dir", default=DEFAULT_OUT_DIR, help=f"where bench.txt/json/png go (default {DEFAULT_OUT_DIR})"
    )
    p.add_argument("--keep-onnx", metavar="DIR", help="keep the exported graphs in DIR (default: a temporary folder)")
    p.set_defaults(func=run)


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


def user_models(args: argparse.Namespace) -> tuple[dict, dict, list[InputSize]]:
    """(user models by label, model_kwargs for their baselines, the input sizes they decide) from --checkpoint/--onnx.

    A size is decided by --input-size, a graph's fixed size or a checkpoint's record (dynet_deploy.input_size); a
    checkpoint that records none and a graph of any size take the size the other models decide.
    """
    import json
    from pathlib import Path

    from ..bench.run import UserModel
    from ..checkpoint import read_checkpoint_config
    from ..errors import BenchError, DynetDeployError
    from ..graph import check_readable_file
    from ..validate import read_graph_input

    model_args: dict = {}
    if args.model_args is not None:
        try:
            model_args = json.loads(args.model_args)
        except json.JSONDecodeError as exc:
            raise BenchError(
                f"--model-args is not valid JSON ({exc.msg}); give an object, e.g. '{{\"num_classes\": 10}}'"
            ) from None
        if not isinstance(model_args, dict):
            raise BenchError(f"--model-args must be a JSON object, got a {type(model_args).__name__}")
    users: dict = {}
    baseline_kwargs: dict = {}
    sizes: list[InputSize] = []

    def label_for(path: Path) -> str:
        label, i = path.stem, 2
        while label in users or label in (args.models or []):
            label, i = f"{path.stem}#{i}", i + 1
        return label

    for ckpt in args.checkpoint:
        path = check_readable_file(ckpt, BenchError, "checkpoint")
        label = label_for(path)
        users[label] = UserModel(label, checkpoint=str(path), model_args=model_args)
        try:
            config = read_checkpoint_config(path)
        except DynetDeployError:
            config = None  # a plain state dict: load_checkpoint says what it needs
        if config is not None:
            from ..models import model_info

            info = model_info(config["model"])
            if info.baseline:
                baseline_kwargs[info.baseline] = {**config.get("model_args", {}), **model_args}
        size = resolve_input_size(args.input_size, checkpoint=str(path), model_args=model_args, error=BenchError)
        if size.source == GIVEN or size.recorded:
            sizes.append(size)
    for onnx_file in args.onnx:
        path = check_readable_file(onnx_file, BenchError, "ONNX graph")
        label = label_for(path)
        users[label] = UserModel(label, onnx=str(path))
        try:
            shape = read_graph_input(path).shape
        except DynetDeployError as exc:
            raise BenchError(f"--onnx: {exc}") from None
        size = resolve_input_size(args.input_size, graph_shape=shape, error=BenchError)
        if size.source in (GIVEN, GRAPH):
            sizes.append(size)
    return users, baseline_kwargs, sizes


def bench_input_size(args: argparse.Namespace, models: list[str], decided: list[InputSize]) -> tuple[int, int]:
    """The one H W every model is benched at: what the user models decide, else the zoo entries' size; one only."""
    from ..errors import BenchError

    sizes = decided or [resolve_input_size(args.input_size, model_name=m, error=BenchError) for m in models]
    hws = sorted({s.hw for s in sizes}) or [resolve_input_size(args.input_size, error=BenchError).hw]
    if len(hws) > 1:
        raise BenchError(
            f"the given models take different input sizes ({hws}); pass --input-size H W or bench them in separate runs"
        )
    return hws[0]


def run(args: argparse.Namespace) -> int:
    from ..bench import DEFAULT_MODELS, DEFAULT_THREAD_COUNTS, BenchConfig, format_table, run_bench, write_outputs
    from ..errors import BenchError
    from ..fileio import check_output_path

    check_given_size(args.input_size, "--input-size", BenchError)
    users, baseline_kwargs, decided = user_models(args)
    models = list(args.models) if args.models is not None else ([] if users else list(DEFAULT_MODELS))
    size = bench_input_size(args, models, decided)
    cfg = BenchConfig(
        models=models + list(users),
        batch_sizes=list(args.batch_sizes),
        threads=list(args.threads) if args.threads is not None else list(DEFAULT_THREAD_COUNTS),
        backends=list(args.backends),
        input_size=(size[0], size[1]),
        repeats=args.repeats,
        warmup=args.warmup,
        dy_form=args.dy_form,
        ort_spinning=args.ort_spinning,
        keep_onnx_dir=args.keep_onnx,
        model_kwargs=baseline_kwargs,
        user_models=users,
        measures=list(dict.fromkeys(args.measures)),
        processes=args.processes,
        process_threads=list(args.threads) if args.threads is not None else [None],
        fold=not args.no_fold,
        bank_dtype=args.bank_dtype,
    )
    cfg.validate()
    from ..guards import check_threads

    for n in cfg.threads:
        check_threads(n, BenchError)
    check_out_dir(args.out_dir)
    from pathlib import Path

    inputs = [u.checkpoint or u.onnx for u in users.values()]
    if args.keep_onnx:
        check_out_dir(args.keep_onnx)
        from ..fileio import refuse_folder_holding_inputs

        refuse_folder_holding_inputs(args.keep_onnx, inputs, BenchError, "--keep-onnx")
    if Path(args.out_dir).is_dir():
        for name in ("bench.txt", "bench.json", "bench.png"):  # before minutes of timing: no report lands on an input
            check_output_path(Path(args.out_dir) / name, BenchError, inputs=inputs)
    check_backends_present(cfg.backends)
    result = run_bench(cfg)
    paths = write_outputs(result, args.out_dir)
    print()
    print(format_table(result))
    print()
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
