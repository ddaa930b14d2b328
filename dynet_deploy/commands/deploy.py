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
        help="with --triton: where the onnxruntime op library is installed on the server (default: "
        "name it bare, found on LD_LIBRARY_PATH)",
    )
    p.add_argument("--plugin-dir", metavar="DIR", help="with --triton: where the TensorRT plugin library is installed")
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

    from ..deploy import check_deploy_flags, format_report, run_deploy
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
        op_library_dir=args.op_library_dir,
        plugin_library_dir=args.plugin_dir,
    )
    if args.json:
        print(json.dumps(res.to_dict(), indent=2, default=float))
    else:
        print(format_report(res))
        print(f"report: {res.out_dir / 'report.json'}")
    return 0 if res.passed else 1
