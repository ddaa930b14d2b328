"""The one ONNX loader every stage uses: a model or a path in, a ``ModelProto`` out, or the stage's error.

Each stage passes its own error type, so a bad path reads ``error (fuse): ...`` or ``error (validate): ...``
with the same wording everywhere: missing, a directory, unreadable and not-ONNX are told apart.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import DynetDeployError


def check_readable_file(path: str | os.PathLike, error: type[DynetDeployError], what: str = "file", hint: str = "") -> Path:
    """``path`` as a Path if it is a readable regular file, else ``error`` saying which of the usual faults it is."""
    p = Path(path)
    suffix = f" ({hint})" if hint else ""
    try:
        p.stat()
    except FileNotFoundError:
        if p.is_symlink():
            raise error(f"{what} {str(p)!r} is a broken symbolic link{suffix}") from None
        raise error(f"{what} {str(p)!r} does not exist{suffix}") from None
    except OSError as exc:  # ELOOP, ENAMETOOLONG, EACCES on a parent, ...
        raise error(f"{what} {str(p)!r} cannot be opened: {exc.strerror or exc}{suffix}") from None
    if p.is_dir():
        raise error(f"{what} {str(p)!r} is a directory, not a file{suffix}")
    if not os.access(p, os.R_OK):
        raise error(f"{what} {str(p)!r} is not readable (permission denied)")
    return p


def load_onnx(model_or_path: Any, error: type[DynetDeployError], *, external_data: bool = True, hint: str = ""):
    """Load an ONNX model (a ``ModelProto`` passes through), raising ``error`` with a one-line reason."""
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    path = check_readable_file(model_or_path, error, "ONNX model", hint)
    try:
        proto = onnx.load(str(path), load_external_data=external_data)
    except Exception as exc:
        raise error(f"{str(path)!r} is not an ONNX model ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not proto.graph.node and not proto.graph.input:
        raise error(f"{str(path)!r} is not an ONNX model (no graph inside)")
    return proto
