"""``dynet-deploy demo``: the main job on the bundled model."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the bundled recipe through deploy: export -> fuse -> build -> validation -> accuracy parity -> latency",
        description="Runs the bundled recipe (dynet_deploy/recipes/dy_resnet18_fmnist.json: the Dy-ResNet18 trained on "
        "Fashion-MNIST) through 'dynet-deploy deploy' and prints the closing tables. Without Debian's "
        "dataset-fashion-mnist package it falls back to sklearn's digits and says so.",
    )
    p.add_argument(
        "--out-dir",
        default="out/demo",
        help="where the artifacts and report.json go (default: out/demo; a previous demo there is replaced)",
    )
    p.add_argument(
        "--dataset",
        choices=["auto", "fashion-mnist", "digits"],
        default="auto",
        help="data set of the accuracy parity (default: auto, Fashion-MNIST where installed, else sklearn's digits)",
    )
    p.add_argument("--threads", type=int, default=2, help="threads for PyTorch and onnxruntime (default: 2)")
    p.add_argument("--limit", type=int, help="use only the first N test images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from polygraphy.logger import G_LOGGER

    from ..errors import DemoError
    from ..fileio import check_out_dir
    from ..guards import check_threads

    check_threads(args.threads, DemoError)
    if args.limit is not None and args.limit < 1:
        raise DemoError(f"--limit must be >= 1, got {args.limit}")
    check_out_dir(args.out_dir, DemoError)
    from ..demo import format_summary, run_demo

    G_LOGGER.module_severity = G_LOGGER.ERROR
    G_LOGGER.colors = sys.stderr.isatty() and sys.stdout.isatty()  # no escape codes in files and pipes
    res = run_demo(args.out_dir, args.dataset, args.threads, args.limit)
    print(format_summary(res))
    return 0 if res.passed else 1
