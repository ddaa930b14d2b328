"""Atomic file writes, and the checks every output path passes before a stage runs.

* :func:`atomic_path` writes to a hidden temporary file beside the destination and renames it into place
  only when the block succeeds, so a failed or interrupted stage leaves nothing half-written. The file
  gets the permissions of any file the user creates (``0666`` less the umask), not ``mkstemp``'s ``0600``.
* :func:`check_output_path` refuses an output that would overwrite one of the command's inputs (the same
  path, a symbolic link to it or a hard link of it) and, where a stage's outputs have one kind, a file
  name with the wrong suffix. It runs before anything is loaded or computed.
* :func:`install_termination_handler` turns SIGTERM into an exception like Ctrl-C's, so the temporary
  file of an interrupted write is removed in both cases.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator

from .errors import DynetDeployError

PathLike = str | os.PathLike


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back (process-wide, so under a lock).
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def _same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name one file: equal after resolving links, or hard links of one inode."""
    try:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
    except (OSError, RuntimeError):  # a symlink loop: compared by inode below, if both exist
        pass
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwriting_inputs(
    output: PathLike,
    inputs: Iterable[PathLike | None],
    error: type[DynetDeployError] = DynetDeployError,
    what: str = "output",
) -> None:
    """Raise ``error`` when ``output`` is (or links to) one of ``inputs``: writing it would destroy that input."""
    out = Path(output)
    for given in inputs:
        if given is None:
            continue
        src = Path(given)
        if _same_file(out, src):
            how = "is" if str(out) == str(src) else "is the same file as"
            raise error(
                f"{what} {str(out)!r} {how} the input {str(src)!r}: writing it would destroy the input; "
                f"choose another {what} path"
            )


def check_output_path(
    path: PathLike,
    error: type[DynetDeployError] = DynetDeployError,
    inputs: Iterable[PathLike | None] = (),
    suffixes: tuple[str, ...] = (),
    why: str = "",
) -> Path:
    """Return ``path`` as a Path after checking it can be written without harm.

    Its folder must exist and be writable, it must not be a folder, it must not resolve to any of
    ``inputs``, and when ``suffixes`` are given its name must end in one of them (``why`` says what kind of
    file is written, for the message).
    """
    p = Path(path)
    if not str(path):
        raise error("the output path is empty; give a file name")
    refuse_overwriting_inputs(p, inputs, error)
    if suffixes and not p.name.lower().endswith(tuple(s.lower() for s in suffixes)):
        kind = f" ({why})" if why else ""
        raise error(
            f"output {str(p)!r} should end in {' or '.join(suffixes)}{kind}; e.g. "
            f"{str(p.with_name(p.stem + suffixes[0]) if p.suffix else p.with_name(p.name + suffixes[0]))!r}"
        )
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise error(f"output folder {str(parent)!r} does not exist; create it first (mkdir -p {parent})")
    if not parent.is_dir():
        raise error(f"{str(parent)!r} is not a directory")
    if p.is_dir():
        raise error(f"output path {str(p)!r} is a directory; give a file name")
    if p.is_symlink() and not p.exists():
        raise error(f"output path {str(p)!r} is a dangling or looping symbolic link; remove it or choose another name")
    if not os.access(parent, os.W_OK):
        raise error(f"output folder {str(parent)!r} is not writable")
    return p


@contextlib.contextmanager
def atomic_path(path: PathLike, error: type[DynetDeployError] = DynetDeployError) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    dest = check_output_path(path, error)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent if str(dest.parent) else ".")
    tmp_path = Path(tmp)
    os.close(fd)
    try:
        yield tmp_path
        # mkstemp creates 0600, and some writers (safetensors) replace the file with their own; an artifact is
        # read by other users and services like any file the user makes: 0666 less the umask.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: PathLike, data: bytes, error: type[DynetDeployError] = DynetDeployError) -> Path:
    with atomic_path(path, error) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, error: type[DynetDeployError] = DynetDeployError) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), error)


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so cleanups (``atomic_path``'s among them) run as on Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def install_termination_handler() -> bool:
    """Make SIGTERM raise :class:`Terminated`; only in the main thread (returns whether it was installed)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def check_out_dir(out_dir: str, error: type[Exception] | None = None) -> None:
    """Before minutes of timing: the output folder is (or can be made) a writable folder."""
    from .errors import BenchError as DefaultError

    BenchError = error or DefaultError  # noqa: N806 (the caller's stage error)
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise BenchError(f"--out-dir {out_dir!r} is a file, not a folder")
    probe = path
    while not probe.exists():  # the nearest existing folder is where it will be created
        if probe.is_symlink():
            raise BenchError(f"--out-dir {out_dir!r}: {str(probe)!r} is a dangling symbolic link")
        probe = probe.parent
    if not probe.is_dir():
        raise BenchError(f"--out-dir {out_dir!r} cannot be created: {str(probe)!r} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BenchError(
            f"--out-dir {out_dir!r} is not writable ({str(probe)!r} is not writable); choose another folder"
        )
