"""Every option of every command says what it does (argparse help text), so ``--help`` documents the whole CLI."""

from __future__ import annotations

import argparse

from dynet_deploy.cli import build_parser


def _subparsers(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", sub
                yield from _subparsers(sub, f"{prefix}{name} ")


def test_every_option_of_every_command_has_help():
    parser = build_parser()
    commands = list(_subparsers(parser))
    assert len(commands) >= 12  # every command module registered
    missing = []
    for name, sub in [("dynet-deploy", parser), *commands]:
        for action in sub._actions:
            if (
                isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
                or action.help == argparse.SUPPRESS
            ):
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, "options without help text: " + ", ".join(missing)
