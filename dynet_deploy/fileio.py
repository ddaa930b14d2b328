"""Atomic file writes: a failed stage leaves nothing half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import DynetDeployError


def check_output_path(path: str | os.PathLike, error: type[DynetDeployError] = DynetDeployError) -> Path:
    """Return ``path`` as a Path after checking that its folder exists and is writable."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise error(f"output folder {str(parent)!r} does not exist; create it first (mkdir -p {parent})")
    if not parent.is_dir():
        raise error(f"{str(parent)!r} is not a folder")
    if p.exists() and p.is_dir():
        raise error(f"output path {str(p)!r} is a folder; give a file name")
    if not os.access(parent, os.W_OK):
        raise error(f"output folder {str(parent)!r} is not writable")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, error: type[DynetDeployError] = DynetDeployError) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    dest = check_output_path(path, error)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent if str(dest.parent) else ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, error: type[DynetDeployError] = DynetDeployError) -> Path:
    with atomic_path(path, error) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, error: type[DynetDeployError] = DynetDeployError) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), error)
