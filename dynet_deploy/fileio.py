"""Atomic file writes, and the checks every output path passes before a stage runs.

* :func:`atomic_path` writes to a hidden temporary file beside the destination and renames it into place
  only when the block succeeds, so a failed or interrupted stage leaves nothing half-written. The file
  gets the permissions of any file the user creates (``0666`` less the umask), not ``mkstemp``'s ``0600``.
* :func:`check_output_path` refuses an output that would overwrite one of the command's inputs (the same
  path, a symbolic link to it or a hard link of it) and, where a stage's outputs have one kind, a file
  name with the wrong suffix. It runs before anything is loaded or computed.
* :func:`check_output_folder` decides whether a command may write a whole folder: ``--force`` replaces only a
  folder this tool wrote (it holds :data:`OUTPUT_MARKER`, written by :func:`mark_output_folder`) and never one that
  holds an input, the current folder or one above it; a symbolic link is refused rather than replaced.
* :func:`refuse_existing` keeps a command from replacing files without ``--force``.
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
from typing import Callable, Iterable, Iterator

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


OUTPUT_MARKER = ".dynet-deploy-output"  # in every folder a command creates whole; --force replaces only those
NAME_MAX = 255  # bytes in one path component on Linux's file systems


def mark_output_folder(folder: PathLike, command: str) -> Path:
    """Write the marker that lets a later ``--force`` replace ``folder`` (one line: which command wrote it)."""
    return atomic_write_text(Path(folder) / OUTPUT_MARKER, f"written by dynet-deploy {command}\n")


def _inside(path: Path, folder: Path) -> bool:
    try:
        real, top = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    except (OSError, RuntimeError):
        return False
    return real == top or top in real.parents


def refuse_folder_holding_inputs(
    folder: PathLike,
    inputs: Iterable[PathLike | None],
    error: type[DynetDeployError] = DynetDeployError,
    flag: str = "-o",
) -> None:
    """Raise ``error`` when one of ``inputs`` lies in ``folder`` (or is it): writing there could replace it."""
    for given in inputs:
        if given is not None and _inside(Path(given), Path(folder)):
            raise error(
                f"{flag} {str(folder)!r} holds the input {str(given)!r}; this command writes its files there and "
                f"could replace it: give a {flag} folder that holds none of the inputs"
            )


def check_output_folder(
    out: PathLike,
    force: bool,
    inputs: Iterable[PathLike | None] = (),
    error: type[DynetDeployError] = DynetDeployError,
    flag: str = "-o",
    written_before_marker: Callable[[Path], bool] | None = None,
) -> Path:
    """Check that ``out`` may be created (or, with ``force``, replaced) as a whole folder; before any work.

    Refused: a symbolic link (it would be replaced by a folder, not followed), a file, a name longer than the file
    system allows, a parent that cannot be created or written, a non-empty folder without ``force``, and with
    ``force`` a folder without :data:`OUTPUT_MARKER`, the current folder or one above it, or one holding an input.
    ``written_before_marker`` recognises a folder the command wrote before it wrote markers.
    """
    p = Path(out)
    inputs = [i for i in inputs if i is not None]
    if not str(out).strip():
        raise error(f"{flag} is empty; give an output folder")
    if len(os.fsencode(p.name)) > NAME_MAX:  # before any look-up: the OS refuses the name itself
        raise error(f"{flag}: the folder name is {len(os.fsencode(p.name))} bytes; file systems allow {NAME_MAX}")
    if p.is_symlink():
        raise error(
            f"{flag} {str(p)!r} is a symbolic link; the output folder is replaced as a whole, so give the folder's "
            f"own path (e.g. {os.path.realpath(p)!r}) or a new name"
        )
    if p.exists() and not p.is_dir():
        raise error(f"{flag} {str(p)!r} exists and is not a folder; give another {flag}")
    here = Path.cwd()
    if p.exists() and _inside(here, p):
        raise error(
            f"{flag} {str(p)!r} is the current folder or holds it; the output folder is replaced as a whole: "
            f"give a new sub-folder, e.g. {flag} {str(p / 'deploy-out')!r}"
        )
    refuse_folder_holding_inputs(p, inputs, error, flag)
    if p.is_dir() and any(p.iterdir()):
        if not force:
            raise error(f"output folder {str(p)!r} is not empty; give another {flag}, or --force to replace it")
        earlier = written_before_marker is not None and written_before_marker(p)
        if not (p / OUTPUT_MARKER).is_file() and not earlier:
            raise error(
                f"{str(p)!r} was not written by dynet-deploy (no {OUTPUT_MARKER} in it); --force replaces only "
                f"folders this tool wrote: give another {flag}"
            )
    parent = p.parent if str(p.parent) else Path(".")
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise error(f"{str(existing)!r} is not a folder, so {flag} {str(p)!r} cannot be created there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise error(f"folder {str(existing)!r} is not writable, so {flag} {str(p)!r} cannot be created; choose another")
    return p


def refuse_existing(
    paths: Iterable[PathLike], force: bool, error: type[DynetDeployError] = DynetDeployError, what: str = "output"
) -> None:
    """Raise ``error`` when any of ``paths`` exists and ``force`` is off: replacing it needs ``--force``."""
    if force:
        return
    there = [str(p) for p in paths if os.path.lexists(p)]
    if there:
        raise error(
            f"{what} {', '.join(repr(p) for p in there)} already exist{'s' if len(there) == 1 else ''}; "
            "give another name, or --force to replace it"
        )


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
