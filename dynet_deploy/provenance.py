"""Where a result came from: the tool, the files it read and wrote (with sha256), the op library, the runtimes.

Every ``report.json`` the tool writes (``deploy``, ``validate``, ``train``'s ``.report.json``) carries
:func:`provenance` under the key ``"provenance"``, and every ONNX file it writes names the tool as its producer
(:func:`stamp_producer`), so an artifact found later can be traced to the tool version, the checkpoint and the op
library that made it::

    "provenance": {
      "tool": {"name": "dynet-deploy", "version": "0.1.0"},
      "checkpoint": {"path": "/abs/m.safetensors", "sha256": "...",
                     "config": {"path": "/abs/m.json", "sha256": "..."}},
      "models": [{"path": "/abs/model.plugin.onnx", "sha256": "..."}],
      "op_library": {"path": "/abs/libdynet_dynamic_conv_ort.so", "sha256": "...", "abi_version": 1},
      "versions": {"python": "3.11.2", "torch": "2.13.0+cpu", "onnxruntime": "1.23.0", "onnx": "1.19.0"}
    }

A file that does not exist is recorded with ``"sha256": null`` and the reason; the op library, when it was not
built, with ``"path": null`` and the reason.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any, Iterable

from . import __version__

TOOL_NAME = "dynet-deploy"
TOOL_VERSION = __version__


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: str | os.PathLike, shown_as: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"path": absolute path, "sha256": ...}`` of a file; ``shown_as`` is the path to report (where a file
    written in a staging folder will be once it is renamed into place)."""
    p = Path(path)
    shown = str(Path(shown_as if shown_as is not None else p).absolute())
    try:
        return {"path": shown, "sha256": sha256_file(p)}
    except OSError as exc:
        return {"path": shown, "sha256": None, "error": f"{type(exc).__name__}: {exc.strerror or exc}"}


def checkpoint_record(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """The checkpoint's weights and, for a safetensors checkpoint, its JSON config beside it."""
    if path is None:
        return None
    from .checkpoint import CONFIG_SUFFIX, WEIGHTS_SUFFIX

    p = Path(path)
    weights = p.with_suffix(WEIGHTS_SUFFIX) if p.suffix == CONFIG_SUFFIX else p
    record = file_record(weights)
    config = weights.with_suffix(CONFIG_SUFFIX)
    if weights.suffix == WEIGHTS_SUFFIX or config.is_file():
        record["config"] = file_record(config)
    return record


def op_library_record(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The native onnxruntime op library: path, sha256 and the C ABI version it reports
    (``dynet_conv_abi_version``, ``DYNET_DYNAMIC_CONV_ABI_VERSION`` when it was built)."""
    from .op.native import ORT_LIBRARY, find_library

    lib = Path(path) if path is not None else find_library(ORT_LIBRARY)
    if lib is None or not lib.is_file():
        return {
            "path": None,
            "sha256": None,
            "abi_version": None,
            "error": f"{ORT_LIBRARY} was not found (make plugins)",
        }
    record: dict[str, Any] = file_record(lib.resolve())
    try:
        handle = ctypes.CDLL(str(lib.resolve()))
        fn = handle.dynet_conv_abi_version
        fn.restype, fn.argtypes = ctypes.c_int32, []
        record["abi_version"] = int(fn())
    except (OSError, AttributeError) as exc:
        record["abi_version"] = None
        record["error"] = f"could not read its ABI version: {exc}"
    return record


def _version(module: str, *dists: str) -> str | None:
    """A package's version: the imported module's ``__version__``, else the installed distribution's."""
    import sys

    mod = sys.modules.get(module)
    if mod is not None and getattr(mod, "__version__", None):
        return str(mod.__version__)
    for dist in dists or (module,):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def runtime_versions() -> dict[str, str | None]:
    return {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime", "onnxruntime", "onnxruntime-gpu"),
        "onnx": _version("onnx"),
    }


def provenance(
    checkpoint: str | os.PathLike | None = None,
    models: Iterable[str | os.PathLike | tuple[str | os.PathLike, str | os.PathLike]] = (),
    op_library: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The ``"provenance"`` block of a report (module docstring). ``models``: paths, or ``(file, shown_as)`` pairs
    for files read in one place and reported at another."""
    rows = []
    for m in models:
        if isinstance(m, tuple):
            rows.append(file_record(m[0], m[1]))
        else:
            rows.append(file_record(m))
    return {
        "tool": {"name": TOOL_NAME, "version": TOOL_VERSION},
        "checkpoint": checkpoint_record(checkpoint),
        "models": rows,
        "op_library": op_library_record(op_library),
        "versions": runtime_versions(),
    }


def stamp_producer(proto) -> None:
    """Name this tool and its version as the producer of an ONNX ModelProto about to be written."""
    proto.producer_name = TOOL_NAME
    proto.producer_version = TOOL_VERSION


__all__ = [
    "TOOL_NAME",
    "TOOL_VERSION",
    "checkpoint_record",
    "file_record",
    "op_library_record",
    "provenance",
    "runtime_versions",
    "sha256_file",
    "stamp_producer",
]
