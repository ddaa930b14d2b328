"""The one progress channel: a bar on stderr when stderr is a terminal, nothing in files, pipes and CI logs.

Stages take ``progress: bool | None`` (None: decide from stderr) and wrap their loops in :func:`progress`.
"""

from __future__ import annotations

import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


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
