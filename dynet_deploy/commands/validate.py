"""``dynet-deploy validate CKPT MODEL``: the deployed graph against the PyTorch reference."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="compare an exported/fused graph (or engine) with the PyTorch reference",
        description="Runs the checkpoint's PyTorch model and MODEL on the chosen backend. Random inputs: fresh per "
        "batch size, compared with Polygraphy's comparator at the precision's tolerance (fp32: max-abs <= 1e-4 and "
        "relative <= 1e-5; fp16: 5e-2 and 1e-2); inputs and reference outputs are saved in Polygraphy's JSON formats "
        "and the `polygraphy run` command that replays the check is printed. With --dataset, top-1 (or mIoU) parity "
        "over a whole test set. Writes report.json and report.txt; exits 1 on a mismatch.",
    )
    p.add_argument("checkpoint", help="the checkpoint the graph was exported from (.safetensors/.json, or .pt with --model)")
    p.add_argument("model", help="the ONNX graph (portable or fused) or, with --backend tensorrt, an engine")
    p.add_argument("--backend", choices=["onnxruntime", "tensorrt"], default="onnxruntime")
    p.add_argument("--model-name", dest="model_name", help="zoo model name for a plain .pt state dict")
    p.add_argument("--recipe", metavar="RECIPE.json", help="take the tolerances, agreement targets and batch sizes from a deployment recipe (export/*.json)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, metavar="B", help="batch sizes to try where the graph's batch is dynamic (default: the recipe's, else 1 4 3)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="H W for graphs with a dynamic spatial size")
    p.add_argument(
        "--dataset",
        choices=["fashion-mnist", "digits", "auto", "synthetic-seg"],
        help="also measure accuracy parity on a data set (classification: the whole test split; segmentation: generated images and masks)",
    )
    p.add_argument("--limit", type=int, help="use only the first N samples of the data set")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--out-dir", help="folder for inputs.json, reference.json, report.json, report.txt (must exist; default: MODEL's stem + .validate/ beside it)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("--verbose", action="store_true", help="show Polygraphy's comparison log")
    p.set_defaults(func=run)


def _quiet_polygraphy(verbose: bool) -> None:
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.INFO if verbose else G_LOGGER.ERROR


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint, read_checkpoint_config
    from ..errors import ValidationError
    from ..models import model_info
    from ..validate import require_backend, synthetic_segmentation, validate_dataset, validate_random, write_report

    _quiet_polygraphy(args.verbose)
    require_backend(args.backend)
    model_path = Path(args.model)
    if not model_path.is_file():
        raise ValidationError(f"model {str(model_path)!r} not found")
    if args.out_dir:
        out_dir = Path(args.out_dir)
        if not out_dir.is_dir():
            raise ValidationError(f"output folder {str(out_dir)!r} does not exist; create it first")
    else:
        out_dir = model_path.with_name(model_path.stem + ".validate")
        out_dir.mkdir(exist_ok=True)

    model = load_checkpoint(args.checkpoint, model_name=args.model_name)
    name = getattr(model, "zoo_name", None) or args.model_name or Path(args.checkpoint).stem
    task = model_info(name).task if getattr(model, "zoo_name", None) else "classification"
    input_size = tuple(args.input_size) if args.input_size else None
    if input_size is None and task == "segmentation":
        input_size = (64, 96)

    recipe = tolerance = None
    batch_sizes = args.batch_sizes or [1, 4, 3]
    if args.recipe:
        from ..recipe import load_recipe
        from ..validate import Tolerance, read_graph_input

        recipe = load_recipe(args.recipe)
        spec = recipe.tolerance(read_graph_input(model_path).precision)
        tolerance = Tolerance(spec.max_abs, spec.rel)
        batch_sizes = args.batch_sizes or list(recipe.validate.batch_sizes)
    report = validate_random(
        model, model_path, args.backend, batch_sizes, input_size, args.seed, out_dir, args.threads,
        tolerance=tolerance, model_name=name,
    )
    payload: dict = {"random_inputs": report.to_dict()}
    text = [f"== {name}: {model_path.name} on {args.backend} ({report.precision}), random inputs", report.table()]
    if report.replay_command:
        text.append("replay by hand:\n  " + report.replay_command)

    ds_report = None
    if args.dataset:
        if args.dataset == "synthetic-seg" or task == "segmentation":
            if task != "segmentation":
                raise ValidationError("--dataset synthetic-seg needs a segmentation model")
            if args.dataset not in ("synthetic-seg",):
                raise ValidationError(f"a segmentation model takes --dataset synthetic-seg, not {args.dataset!r}")
            h, w = input_size or (64, 96)
            num_classes = int(getattr(model, "num_classes", 0) or 0) or None
            n = args.limit or 16
            images, masks = synthetic_segmentation(n, h, w, num_classes or 19, seed=args.seed)
            ds_report = validate_dataset(model, model_path, images, masks, "synthetic-seg", args.backend, batch=4, threads=args.threads, progress=sys.stderr.isatty(), model_name=name)
        else:
            from ..data import load_dataset, resolve_dataset

            ds_name = resolve_dataset(args.dataset)
            cfg = read_checkpoint_config(args.checkpoint) if Path(args.checkpoint).suffix in (".safetensors", ".json") else {}
            trained_on = (cfg.get("metadata") or {}).get("dataset")
            images, labels = load_dataset(ds_name, "test", limit=args.limit)
            ds_report = validate_dataset(
                model, model_path, images.numpy(), labels.numpy(), ds_name, args.backend, threads=args.threads,
                progress=sys.stderr.isatty(), model_name=name,
            )
            target = recipe.agreement(ds_report.precision) if recipe is not None else None
            if target is not None:
                ds_report.target_agreement = target
            if trained_on and trained_on != ds_name:
                ds_report.notes = f"the checkpoint was trained on {trained_on}; accuracy on {ds_name} is not meaningful, agreement is"
        payload["dataset"] = ds_report.to_dict()
        text += [f"== {ds_report.dataset} ({ds_report.samples} {'images' if ds_report.task == 'classification' else 'pixels'})", ds_report.table()]
        if ds_report.notes:
            text.append("note: " + ds_report.notes)

    passed = report.passed and (ds_report is None or ds_report.passed)
    payload["passed"] = passed
    text.append("PASSED" if passed else "FAILED: the deployed graph does not match the PyTorch reference")
    write_report(out_dir / "report.json", payload)
    from ..fileio import atomic_write_text

    atomic_write_text(out_dir / "report.txt", "\n".join(text) + "\n", ValidationError)
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print("\n".join(text))
        print(f"report: {out_dir / 'report.json'}")
    return 0 if passed else 1
