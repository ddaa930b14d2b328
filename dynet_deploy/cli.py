"""The ``dynet-deploy`` command line.

Each stage module owns its sub-command: it defines ``register(subparsers)`` which adds a parser
and sets ``func`` (called with the parsed namespace, returning an exit code). The CLI imports
stage modules lazily enough that ``--help`` works with only the base dependencies.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import DynetDeployError

# (module, command) in the order they appear in --help.
COMMAND_MODULES = [
    "dynet_deploy.commands.zoo",
    "dynet_deploy.commands.export",
    "dynet_deploy.commands.fuse",
    "dynet_deploy.commands.build",
    "dynet_deploy.commands.validate",
    "dynet_deploy.commands.bench",
    "dynet_deploy.commands.deploy",
    "dynet_deploy.commands.train",
    "dynet_deploy.commands.demo",
    "dynet_deploy.commands.doctor",
    "dynet_deploy.commands.checkpoint",
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="dynet-deploy",
        description="Deploy dynamic-convolution CNNs: export to ONNX, fuse into DyNetDynamicConv2d, "
        "run on onnxruntime or TensorRT, validate against PyTorch, benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # command not part of this build
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DynetDeployError as exc:
        print(f"error ({exc.stage}): {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
