"""Checks on command-line values that every command shares, run before any stage starts.

* :func:`check_threads`: a thread count between 1 and a small multiple of the cores this process may use, and
  below the process's thread limit (``RLIMIT_NPROC``) where one is set; onnxruntime hangs, rather than fails,
  when it cannot start the threads it was asked for.
* :func:`loads_json`: ``json.loads`` that reports nesting too deep for Python's parser as the caller's error.
* :func:`check_library_dir`: a folder written into a Triton config (``--op-library-dir``, ``--plugin-dir``) must be
  an absolute path on one line, without characters a config string or a shell would mangle.
* :func:`check_dataset_for_task`: a data set the model's task cannot be scored on.
* :func:`refuse_unused_flags`: a flag that does not apply to what the command was given is an error, not ignored.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

from .errors import DynetDeployError

THREADS_PER_CORE = 4  # the largest multiple of the usable cores accepted by --threads
THREAD_LIMIT_MARGIN = 16  # threads kept free under RLIMIT_NPROC for the interpreter's and the libraries' own


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _thread_limit_room() -> int | None:
    """Threads this process may still start under RLIMIT_NPROC (less a margin), or None where there is no limit."""
    try:
        import resource
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        running = len(os.listdir("/proc/self/task"))
    except OSError:
        running = 1
    return max(0, soft - running - THREAD_LIMIT_MARGIN)


def max_threads() -> int:
    """The largest thread count a command accepts on this machine."""
    bound = THREADS_PER_CORE * usable_cores()
    room = _thread_limit_room()
    return bound if room is None else max(1, min(bound, room))


def check_threads(
    value: int | None, error: type[DynetDeployError] = DynetDeployError, flag: str = "--threads", where: str = ""
) -> int | None:
    """Return ``value`` (None: the library's default) after checking it is a usable thread count.

    ``flag`` names the option or field; ``where`` (e.g. ``"recipe r.json: "``) prefixes the message only.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(f"{where}{flag} must be >= 1, got {value}")
    cores, room = usable_cores(), _thread_limit_room()
    bound = max_threads()
    if value > bound:
        why = f"{THREADS_PER_CORE} x the {cores} usable core(s)"
        if room is not None and room < THREADS_PER_CORE * cores:
            why = f"the process's thread limit (ulimit -u) leaves room for about {room} more"
        raise error(
            f"{where}{flag} {value} is more than this machine can use ({why}); give {flag} between 1 and {bound}"
        )
    return value


def loads_json(text: str, error: type[DynetDeployError], what: str) -> Any:
    """``json.loads(text)``; nesting deeper than the parser's recursion limit raises ``error``, not RecursionError.

    A json.JSONDecodeError passes through, for the caller to report with its line and column.
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise error(
            f"{what} is nested too deeply to read (lists or objects inside one another beyond Python's recursion "
            "limit); no real file of this kind nests more than a few levels: check that it is the file you meant"
        ) from None


def check_library_dir(value: str | None, flag: str, error: type[DynetDeployError] = DynetDeployError) -> str | None:
    """A folder on the serving machine, written into ``config.pbtxt`` and the launch command: absolute, one line."""
    if value is None:
        return None
    if not value.strip():
        raise error(f"{flag} is empty; give the absolute folder where the library is installed on the server")
    bad = sorted({repr(ch) for ch in value if ord(ch) < 0x20 or ch in "\"'\\\x7f"})
    if bad:
        raise error(
            f"{flag} {value!r} holds {', '.join(bad)}, which a Triton config string or the launch command would "
            "mangle; give a plain absolute folder, e.g. /opt/dynet/lib"
        )
    if not value.startswith("/"):
        raise error(
            f"{flag} {value!r} is relative; the server resolves it from its own working folder, so give the "
            "absolute folder where the library is installed on the server, e.g. /opt/dynet/lib"
        )
    return value


def check_dataset_for_task(dataset: str | None, task: str, error: type[DynetDeployError]) -> None:
    """A classifier is scored on an image data set, a segmentation model on synthetic-seg: refuse other pairings."""
    if dataset is None:
        return
    if dataset == "synthetic-seg" and task != "segmentation":
        raise error(
            "--dataset synthetic-seg scores segmentation models (mIoU) and this model is a classifier; "
            "give --dataset fashion-mnist, digits or auto"
        )
    if task == "segmentation" and dataset != "synthetic-seg":
        raise error(f"a segmentation model takes --dataset synthetic-seg, not {dataset!r}")


def refuse_unused_flags(given: Iterable[tuple[str, bool]], why: str, error: type[DynetDeployError]) -> None:
    """Raise ``error`` naming every flag in ``given`` (name, was given) when ``why`` says they cannot apply."""
    used = [flag for flag, present in given if present]
    if used:
        raise error(f"{' and '.join(used)} {'does' if len(used) == 1 else 'do'} not apply: {why}")


__all__ = [
    "check_dataset_for_task",
    "check_library_dir",
    "check_threads",
    "loads_json",
    "max_threads",
    "refuse_unused_flags",
    "usable_cores",
]
