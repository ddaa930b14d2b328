"""The one channel for progress and messages.

- Messages: every module logs through :mod:`logging` under the ``dynet_deploy`` logger (``get_logger(__name__)``);
  the command line (:func:`configure_cli_logging`) shows its INFO and above on stderr, one plain line each, so
  stdout carries only a command's results. A library user sees them by configuring :mod:`logging` as usual.
- Progress bars: :func:`progress` wraps a loop in a transient bar on stderr where stderr is a terminal, and in
  nothing in files, pipes and CI logs; a stage's start is announced by a message, so a log shows what is running.

Stages take ``progress: bool | None`` (None: decide from stderr) and wrap their loops in :func:`progress`.
"""

from __future__ import annotations

import logging
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

LOGGER = "dynet_deploy"


def get_logger(name: str = LOGGER) -> logging.Logger:
    """The package's logger for module ``name`` (a child of ``dynet_deploy``)."""
    return logging.getLogger(name if name == LOGGER or name.startswith(LOGGER + ".") else f"{LOGGER}.{name}")


def progress_enabled(progress: bool | None = None) -> bool:
    """``progress`` when given, else whether stderr is a terminal."""
    return sys.stderr.isatty() if progress is None else bool(progress)


def progress(items: Iterable[T], *, desc: str, unit: str = "it", enabled: bool | None = None) -> Iterator[T]:
    """``items`` with a transient progress bar on stderr where :func:`progress_enabled` says so."""
    if not progress_enabled(enabled):
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, unit=unit, leave=False, file=sys.stderr)


class _StderrHandler(logging.Handler):
    """Each record as one plain line on the current ``sys.stderr`` (above a progress bar, where one is drawn)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if sys.stderr.isatty():
                from tqdm import tqdm

                tqdm.write(line, file=sys.stderr)  # keeps a running bar below the line
            else:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
        except Exception:
            self.handleError(record)


def configure_cli_logging(verbose: bool = False) -> None:
    """Show the package's messages (INFO, DEBUG with ``verbose``) on stderr; once per process."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


__all__ = ["LOGGER", "configure_cli_logging", "get_logger", "progress", "progress_enabled"]
