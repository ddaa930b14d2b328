"""The ``dynet-deploy`` command line.

Each stage module owns its sub-command: it defines ``register(subparsers)`` which adds a parser
and sets ``func`` (called with the parsed namespace, returning an exit code). The CLI imports
stage modules lazily enough that ``--help`` works with only the base dependencies.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import DynetDeployError, summarise

DEBUG_ENV = "DYNET_DEPLOY_DEBUG"  # set to 1 to see the traceback of an unexpected exception

# (module, command) in the order they appear in --help.
COMMAND_MODULES = [
    "dynet_deploy.commands.zoo",
    "dynet_deploy.commands.export",
    "dynet_deploy.commands.fuse",
    "dynet_deploy.commands.build",
    "dynet_deploy.commands.validate",
    "dynet_deploy.commands.bench",
    "dynet_deploy.commands.run",
    "dynet_deploy.commands.deploy",
    "dynet_deploy.commands.train",
    "dynet_deploy.commands.demo",
    "dynet_deploy.commands.doctor",
    "dynet_deploy.commands.checkpoint",
]


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line: ``error (usage): ...``, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error (usage): {self.prog}: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
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


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    from .fileio import Terminated, install_termination_handler
    from .progress import configure_cli_logging

    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: one line and SystemExit(2), from _Parser.error
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    install_termination_handler()
    configure_cli_logging()  # the package's messages and progress lines on stderr (dynet_deploy.progress)
    try:
        return int(args.func(args) or 0)
    except DynetDeployError as exc:
        print(f"error ({exc.stage}): {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted (no output was left half-written)", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated by SIGTERM (no output was left half-written)", file=sys.stderr)
        return 143
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): nothing more to say.
        with __import__("contextlib").suppress(Exception):
            sys.stdout = open(os.devnull, "w")
        return 1
    except MemoryError:
        print("error (memory): out of memory; use a smaller batch or input size", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: one line by default, the traceback on request
        if os.environ.get(DEBUG_ENV):
            raise
        print(
            f"error (internal): {type(exc).__name__}: {summarise(exc, 500)}. This is a bug in dynet-deploy; "
            f"rerun with {DEBUG_ENV}=1 for the traceback and report it",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
