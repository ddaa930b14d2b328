"""``dynet-deploy validate CKPT MODEL``: the deployed graph against the PyTorch reference."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..backends import BACKENDS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="compare an exported/fused graph (or engine) with the PyTorch reference",
        description="Runs the checkpoint's PyTorch model and MODEL on the chosen backend. Random inputs: fresh per "
        "batch size, compared with Polygraphy's comparator at the precision's tolerance (fp32: max-abs <= 1e-4 and "
        "relative <= 1e-5; fp16: 5e-2 and 1e-2; fp16-bank: 5e-3 and 1e-3; bf16-bank: 5e-2 and 1e-2; the graph's own "
        "precision unless --precision); inputs and reference outputs are saved in Polygraphy's JSON formats "
        "and the `polygraphy run` command that replays the check is printed. With --dataset, top-1 (or mIoU) parity "
        "over a whole test set. Writes report.json and report.txt; exits 1 on a mismatch.",
    )
    p.add_argument(
        "checkpoint", help="the checkpoint the graph was exported from (.safetensors/.json, or .pt with --model)"
    )
    p.add_argument("model", help="the ONNX graph (portable or fused) or, with --backend tensorrt, an engine")
    p.add_argument(
        "--backend",
        choices=list(BACKENDS),
        default="onnxruntime",
        help="runtime that runs MODEL: onnxruntime (an ONNX graph) or tensorrt (an engine); default: onnxruntime",
    )
    p.add_argument("--model-name", dest="model_name", help="zoo model name for a plain .pt state dict")
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16", "fp16-bank", "bf16-bank"],
        help="judge at this precision's tolerance and agreement target (default: the graph's own: fp16 for a graph "
        "written by `fuse --precision fp16`, whatever its input dtype, fp16-bank / bf16-bank for one written by "
        "`fuse --bank-dtype fp16|bf16`; with --backend tensorrt, fp32)",
    )
    p.add_argument(
        "--recipe",
        metavar="RECIPE.json",
        help="take the tolerances, agreement targets and batch sizes from a deployment recipe (dynet_deploy/recipes/*.json)",
    )
    p.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=None,
        metavar="B",
        help="batch sizes to try where the graph's batch is dynamic (default: the recipe's, else 1 4 3; a fixed-batch graph takes its own batch only)",
    )
    p.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="H W for graphs with a dynamic spatial size (default: what the checkpoint records, else the zoo entry's "
        "size; a graph fixed at a size takes only that one)",
    )
    p.add_argument(
        "--dataset",
        choices=["fashion-mnist", "digits", "auto", "synthetic-seg"],
        help="also measure accuracy parity on a data set (classification: the whole test split; segmentation: generated images and masks)",
    )
    p.add_argument("--limit", type=int, help="use only the first N samples of the data set")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument(
        "--out-dir",
        help="folder for inputs.json, reference.json, report.json, report.txt (must exist; default: MODEL's stem + .validate/ beside it)",
    )
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("--verbose", action="store_true", help="show Polygraphy's comparison log")
    p.set_defaults(func=run)


def _quiet_polygraphy(verbose: bool) -> None:
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.INFO if verbose else G_LOGGER.ERROR
    # Polygraphy colours its log whenever the `colored` module is present; escape codes belong on terminals only.
    G_LOGGER.colors = sys.stderr.isatty() and sys.stdout.isatty()


REPORT_FILES = ("inputs.json", "reference.json", "report.json", "report.txt")


def _check_values(args: argparse.Namespace) -> None:
    from ..errors import ValidationError

    if args.batch_sizes is not None and min(args.batch_sizes) < 1:
        raise ValidationError(f"--batch-sizes must be >= 1, got {' '.join(map(str, args.batch_sizes))}")
    from ..input_size import check_given_size

    check_given_size(args.input_size, "--input-size", ValidationError)
    if args.limit is not None and args.limit < 1:
        raise ValidationError(f"--limit must be >= 1, got {args.limit}")
    if args.dataset is None:
        from ..guards import refuse_unused_flags

        refuse_unused_flags(
            (("--limit", args.limit is not None),), "it limits --dataset's check; add --dataset", ValidationError
        )
    from ..guards import check_threads

    check_threads(args.threads, ValidationError)


def _model_in_chans(model) -> int | None:
    import torch

    args = getattr(model, "zoo_kwargs", {}) or {}
    if isinstance(args.get("in_chans"), int):
        return args["in_chans"]
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            return int(module.in_channels)
    return None


def _check_graph_fits(graph, model, args: argparse.Namespace, model_path: Path) -> None:
    """A fixed-batch graph refuses other batch sizes; the graph's channels must be the checkpoint's."""
    from ..errors import ValidationError

    if graph.fixed_batch is not None and args.batch_sizes is not None:
        other = [b for b in dict.fromkeys(args.batch_sizes) if b != graph.fixed_batch]
        if other:
            raise ValidationError(
                f"{model_path.name} has a fixed batch of {graph.fixed_batch}: it cannot take batch size "
                f"{', '.join(map(str, other))}; pass --batch-sizes {graph.fixed_batch}, or make the batch dynamic "
                f"('dynet-deploy fuse' does, or export with --dynamic-batch)"
            )
    want = graph.shape[1]
    have = _model_in_chans(model)
    if isinstance(want, int) and want > 0 and have is not None and have != want:
        raise ValidationError(
            f"{model_path.name} takes {want}-channel images but the checkpoint's model takes {have}: they are not "
            f"the same model; export the graph from this checkpoint ('dynet-deploy export CKPT -o MODEL.onnx')"
        )


def _check_dataset_size(graph, args: argparse.Namespace, model_path: Path) -> None:
    """Before anything runs: a graph fixed at another size than the data set's images cannot take them."""
    from ..data import dataset_info, resolve_dataset
    from ..errors import ValidationError

    ds_name = resolve_dataset(args.dataset)
    hw = graph.shape[2:]
    image = dataset_info(ds_name).image_size
    if all(isinstance(d, int) and d > 0 for d in hw) and tuple(hw) != tuple(image):
        raise ValidationError(
            f"{model_path.name} takes {hw[0]}x{hw[1]} images but {ds_name} images are {image[0]}x{image[1]}; "
            f"export the graph at the data set's size ('dynet-deploy export CKPT --input-size {image[0]} "
            f"{image[1]} -o MODEL.onnx', the default for checkpoints that record it) or with --dynamic-hw"
        )


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import checkpoint_input_paths, load_checkpoint
    from ..errors import ValidationError
    from ..fileio import check_output_path
    from ..graph import check_readable_file
    from ..guards import check_dataset_for_task
    from ..models import model_info
    from ..validate import read_graph_input, require_backend

    _check_values(args)
    _quiet_polygraphy(args.verbose)
    require_backend(args.backend)
    model_path = check_readable_file(args.model, ValidationError, "model")
    check_readable_file(args.checkpoint, ValidationError, "checkpoint")
    inputs = [model_path, *checkpoint_input_paths(args.checkpoint)]
    if args.out_dir:
        out_dir = Path(args.out_dir)
        if not out_dir.is_dir():
            raise ValidationError(f"output folder {str(out_dir)!r} does not exist or is not a folder; create it first")
    else:
        out_dir = model_path.with_name(model_path.stem + ".validate")
        if out_dir.exists() and not out_dir.is_dir():
            raise ValidationError(f"{str(out_dir)!r} (the default output folder) is a file; pass --out-dir")
    if out_dir.is_dir():
        for fname in REPORT_FILES:  # before anything runs: no report may land on an input
            check_output_path(out_dir / fname, ValidationError, inputs=inputs)
    else:
        check_output_path(out_dir, ValidationError)

    model = load_checkpoint(args.checkpoint, model_name=args.model_name)
    name = getattr(model, "zoo_name", None) or args.model_name or Path(args.checkpoint).stem
    task = model_info(name).task if getattr(model, "zoo_name", None) else "classification"
    check_dataset_for_task(args.dataset, task, ValidationError)  # before any file is written
    graph = None
    if args.backend == "onnxruntime":
        from ..graph import check_fused_nodes

        graph = read_graph_input(model_path)
        _check_graph_fits(graph, model, args, model_path)
        check_fused_nodes(model_path, ValidationError)
        if args.dataset in ("fashion-mnist", "digits", "auto") and task == "classification":
            _check_dataset_size(graph, args, model_path)
    input_size = _input_size(args, model, name, task, graph)
    created = not out_dir.exists()
    out_dir.mkdir(exist_ok=True)
    try:
        return _validate(args, model, name, task, model_path, input_size, out_dir)
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a failed run leaves no empty folder behind
        raise


SEGMENTATION_CHECK_HW = (64, 96)  # synthetic segmentation runs small where nothing records a size


def _input_size(args: argparse.Namespace, model, name: str, task: str, graph) -> tuple[int, int] | None:
    """H W of the random inputs (dynet_deploy.input_size's rule); an engine (no graph here) takes its own."""
    from ..errors import ValidationError
    from ..input_size import resolve_input_size

    fallback = SEGMENTATION_CHECK_HW if task == "segmentation" else None
    if graph is None:
        return tuple(args.input_size) if args.input_size else fallback
    size = resolve_input_size(
        args.input_size,
        checkpoint=args.checkpoint,
        model_name=getattr(model, "zoo_name", None) or args.model_name,
        model_args=getattr(model, "zoo_kwargs", None),
        graph_shape=graph.shape,
        fallback=fallback,
        error=ValidationError,
    )
    if size.note():
        print(size.note())
    return size.hw


def _validate(args, model, name, task, model_path, input_size, out_dir) -> int:
    from ..checkpoint import read_checkpoint_config
    from ..errors import ValidationError
    from ..validate import synthetic_segmentation, validate_dataset, validate_random, write_report

    recipe = tolerance = None
    batch_sizes = args.batch_sizes or [1, 4, 3]  # a fixed-batch graph runs its own batch whatever these are
    if args.recipe:
        from ..recipe import load_recipe
        from ..validate import Tolerance, read_graph_input

        recipe = load_recipe(args.recipe)
        spec = recipe.tolerance(args.precision or read_graph_input(model_path).precision)
        tolerance = Tolerance(spec.max_abs, spec.rel)
        batch_sizes = args.batch_sizes or list(recipe.validate.batch_sizes)
    report = validate_random(
        model,
        model_path,
        args.backend,
        batch_sizes,
        input_size,
        args.seed,
        out_dir,
        args.threads,
        tolerance=tolerance,
        model_name=name,
        precision=args.precision,
    )
    payload: dict = {"random_inputs": report.to_dict()}
    text = [f"== {name}: {model_path.name} on {args.backend} ({report.precision}), random inputs", report.table()]
    if report.replay_command:
        text.append("replay by hand:\n  " + report.replay_command)
    if report.replay_tensorrt:
        text.append("  " + report.replay_tensorrt)

    ds_report = None
    if args.dataset:
        if args.dataset == "synthetic-seg" or task == "segmentation":
            if task != "segmentation":
                raise ValidationError("--dataset synthetic-seg needs a segmentation model")
            if args.dataset not in ("synthetic-seg",):
                raise ValidationError(f"a segmentation model takes --dataset synthetic-seg, not {args.dataset!r}")
            h, w = input_size or SEGMENTATION_CHECK_HW
            num_classes = int(getattr(model, "num_classes", 0) or 0) or None
            n = args.limit or 16
            images, masks = synthetic_segmentation(n, h, w, num_classes or 19, seed=args.seed)
            ds_report = validate_dataset(
                model,
                model_path,
                images,
                masks,
                "synthetic-seg",
                args.backend,
                batch=4,
                threads=args.threads,
                progress=None,  # a bar where stderr is a terminal (dynet_deploy.progress)
                model_name=name,
                precision=args.precision,
            )
        else:
            from ..data import load_dataset, resolve_dataset

            ds_name = resolve_dataset(args.dataset)
            cfg = (
                read_checkpoint_config(args.checkpoint)
                if Path(args.checkpoint).suffix in (".safetensors", ".json")
                else {}
            )
            trained_on = (cfg.get("metadata") or {}).get("dataset")
            x_t, y_t = load_dataset(ds_name, "test", limit=args.limit)
            ds_report = validate_dataset(
                model,
                model_path,
                x_t.numpy(),
                y_t.numpy(),
                ds_name,
                args.backend,
                threads=args.threads,
                progress=None,  # a bar where stderr is a terminal (dynet_deploy.progress)
                model_name=name,
                precision=args.precision,
            )
            target = recipe.agreement(ds_report.precision) if recipe is not None else None
            if target is not None:
                ds_report.target_agreement = target
            if trained_on and trained_on != ds_name:
                note = (
                    f"the checkpoint was trained on {trained_on}; accuracy on {ds_name} is not meaningful, agreement is"
                )
                ds_report.notes = "; ".join(n for n in (ds_report.notes, note) if n)
        payload["dataset"] = ds_report.to_dict()
        text += [
            f"== {ds_report.dataset} ({ds_report.samples} {'images' if ds_report.task == 'classification' else 'pixels'})",
            ds_report.table(),
        ]
        if ds_report.notes:
            text.append("note: " + ds_report.notes)

    passed = report.passed and (ds_report is None or ds_report.passed)
    payload["passed"] = passed
    from ..provenance import provenance

    payload["provenance"] = provenance(args.checkpoint, [model_path])
    nan_ref = sum(c.reference_non_finite for c in report.checks) + (ds_report.reference_non_finite if ds_report else 0)
    nan_out = sum(c.non_finite for c in report.checks) + (ds_report.non_finite if ds_report else 0)
    if passed:
        text.append("PASSED")
    elif nan_ref:
        text.append(
            f"FAILED: PyTorch's reference outputs NaN/Inf ({nan_ref} values): the checkpoint's weights hold NaN/Inf "
            f"(see 'dynet-deploy checkpoint inspect')"
        )
    elif nan_out:
        text.append(f"FAILED: the deployed graph outputs NaN/Inf ({nan_out} values) where PyTorch's outputs are finite")
    else:
        text.append("FAILED: the deployed graph does not match the PyTorch reference")
    write_report(out_dir / "report.json", payload)
    from ..fileio import atomic_write_text

    atomic_write_text(out_dir / "report.txt", "\n".join(text) + "\n", ValidationError)
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print("\n".join(text))
        print(f"report: {out_dir / 'report.json'}")
    return 0 if passed else 1
