"""``dynet-deploy deploy RECIPE.json``: a recipe end to end, every artifact and a report in one folder."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deploy",
        help="a recipe end to end: export -> fuse -> build -> validate -> latency, artifacts + report in one folder",
        description="Reads a deployment recipe (dynet_deploy/recipes/*.json; fields in dynet_deploy/recipes/README.md), takes its checkpoint "
        "through export, fuse, the TensorRT build (skipped with the reason where TensorRT or the plugin library is "
        "absent), validation on random inputs and on the recipe's data set, and a short latency run. Writes every "
        "artifact, report.json and report.txt into one folder, renamed into place only when complete. --triton "
        "also writes a Triton Inference Server model repository. Exits 1 when a check fails.",
    )
    p.add_argument(
        "recipe", metavar="RECIPE.json", help="deployment recipe, e.g. dynet_deploy/recipes/dy_resnet18_fmnist.json"
    )
    p.add_argument("-o", "--out-dir", help="output folder (default: out/<recipe name>); must be new or empty")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--triton", action="store_true", help="also write a Triton model repository (triton/)")
    p.add_argument(
        "--op-library-dir",
        metavar="DIR",
        help="with --triton: the absolute folder where the onnxruntime op library is installed on the server "
        "(default: the library's absolute path on this machine)",
    )
    p.add_argument(
        "--copy-op-library",
        action="store_true",
        help="with --triton: copy the op library into the onnxruntime model's folder and name that copy, at the "
        "repository's absolute path, in config.pbtxt",
    )
    p.add_argument(
        "--plugin-dir",
        metavar="DIR",
        help="with --triton: the absolute folder where the TensorRT plugin library is installed on the server",
    )
    p.add_argument(
        "--instance-kind",
        choices=("cpu", "gpu"),
        help="with --triton: run the onnxruntime model on CPU instances (default) or GPU instances",
    )
    p.add_argument(
        "--gpu-accelerator",
        choices=("cuda", "tensorrt"),
        help="with --instance-kind gpu: onnxruntime's CUDA execution provider (default) or its TensorRT one, "
        "which loads the TensorRT plugin library",
    )
    p.add_argument("--dataset", choices=["fashion-mnist", "digits", "auto"], help="override the recipe's data set")
    p.add_argument("--limit", type=int, help="use only the first N samples of the data set")
    p.add_argument(
        "--threads", type=int, help="threads for PyTorch and onnxruntime (default: the recipe's latency.threads)"
    )
    p.add_argument("--json", action="store_true", help="print report.json instead of report.txt")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from polygraphy.logger import G_LOGGER

    from ..deploy import check_deploy_flags, format_report, run_deploy, triton_options
    from ..errors import RecipeError
    from ..recipe import load_recipe

    recipe = load_recipe(args.recipe)
    if args.limit is not None and args.limit < 1:
        raise RecipeError(f"--limit must be >= 1, got {args.limit}")
    check_deploy_flags(recipe, args)
    G_LOGGER.module_severity = G_LOGGER.ERROR
    res = run_deploy(
        recipe,
        args.out_dir,
        triton=args.triton,
        force=args.force,
        dataset=args.dataset,
        limit=args.limit,
        threads=args.threads,
        triton_options=triton_options(args) if args.triton else None,
    )
    if args.json:
        print(json.dumps(res.to_dict(), indent=2, default=float))
    else:
        print(format_report(res))
        print(f"report: {res.out_dir / 'report.json'}")
    return 0 if res.passed else 1
