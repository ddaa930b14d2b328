"""One channel for progress and messages (dynet_deploy.progress): bars only on a terminal, messages through logging
on stderr, no ``log=`` parameters or bare prints in the library, a training log interval that fits the epoch."""

from __future__ import annotations

import ast
import fcntl
import io
import logging
import os
import select
import struct
import sys
import termios
from pathlib import Path

from dynet_deploy.progress import configure_cli_logging, get_logger, progress, progress_enabled
from dynet_deploy.train import TrainConfig, log_interval, train

PACKAGE = Path(__file__).resolve().parents[1] / "dynet_deploy"


def _terminal():
    """A real pseudo-terminal of 24 x 80: (what a program writes to, the side that reads what it shows)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # a bar needs a width
    return os.fdopen(slave, "w", buffering=1), master


def test_bar_only_where_stderr_is_a_terminal(monkeypatch):
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    assert not progress_enabled()
    assert list(progress(range(5), desc="work")) == list(range(5))
    assert pipe.getvalue() == ""  # nothing in files, pipes and CI logs

    tty, master = _terminal()
    try:
        monkeypatch.setattr(sys, "stderr", tty)
        assert progress_enabled()
        assert list(progress(range(5), desc="work", unit="batch")) == list(range(5))
        tty.flush()
        assert select.select([master], [], [], 5)[0], "nothing was drawn on the terminal"
        shown = os.read(master, 4096).decode(errors="replace")
        assert "work" in shown and "batch" in shown  # the bar was drawn
        assert not progress_enabled(False) and list(progress(range(2), desc="x", enabled=False)) == [0, 1]
    finally:
        tty.close()
        os.close(master)


def test_cli_channel_shows_package_messages_on_the_current_stderr(monkeypatch):
    configure_cli_logging()
    configure_cli_logging()  # once per process: no second handler
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    get_logger("dynet_deploy.deploy").info("[1/7] checkpoint ...")
    monkeypatch.setattr(sys, "stderr", second)  # the stream is looked up per message (pytest swaps it per test)
    get_logger("validate.dataset").info("  pytorch reference: 96 images")
    get_logger("dynet_deploy.deploy").debug("not at INFO")
    logging.getLogger("someone.else").info("another library's message")
    assert first.getvalue() == "[1/7] checkpoint ...\n"
    assert second.getvalue() == "  pytorch reference: 96 images\n"


def _functions():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def test_no_log_parameters_and_no_bare_print_in_the_library():
    """Messages go through logging (dynet_deploy.progress); only the commands print their results on stdout."""
    log_params = [
        f"{p.relative_to(PACKAGE)}:{f.name}"
        for p, f in _functions()
        for a in [*f.args.args, *f.args.kwonlyargs]
        if a.arg == "log"
    ]
    assert not log_params, f"functions taking a log= callback: {log_params}"
    prints = []
    for path in PACKAGE.rglob("*.py"):
        # the command line, and bench's worker program (its stdout is the JSON line the bench reads)
        if (
            path.parent.name == "commands"
            or path.name == "cli.py"
            or path.relative_to(PACKAGE).as_posix() == "bench/worker.py"
        ):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Name) and node.id == "print":
                prints.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not prints, f"print in the library (log through dynet_deploy.progress instead): {prints}"


def test_log_interval_fits_the_epoch():
    assert log_interval(None, 469) == (117, "")  # about four lines per epoch
    assert log_interval(None, 5) == (0, "")  # a tiny epoch: its own line is enough
    assert log_interval(20, 47) == (20, "")
    assert log_interval(0, 47) == (0, "")
    every, note = log_interval(100, 47)
    assert every == 0 and "--log-every 100" in note and "47 steps" in note and "after each epoch" in note


def test_training_says_when_the_interval_exceeds_the_epoch(caplog):
    cfg = TrainConfig(
        model="dy_resnet18",
        model_args={"width_mult": 0.125},
        dataset="digits",
        epochs=1,
        batch_size=32,
        train_limit=96,
        test_limit=32,
        log_every=100,
        threads=1,
    )
    with caplog.at_level(logging.INFO, logger="dynet_deploy.train"):
        train(cfg)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("note: --log-every 100 is not shorter than an epoch (3 steps)") for line in lines)
    assert any(line.startswith("epoch 1/1: loss") for line in lines)
