"""The one ONNX loader every stage uses: a model or a path in, a ``ModelProto`` out, or the stage's error.

Each stage passes its own error type, so a bad path reads ``error (fuse): ...`` or ``error (validate): ...``
with the same wording everywhere: missing, a directory, unreadable and not-ONNX are told apart.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from .errors import DynetDeployError, summarise


def check_readable_file(
    path: str | os.PathLike, error: type[DynetDeployError], what: str = "file", hint: str = ""
) -> Path:
    """``path`` as a Path if it is a readable regular file, else ``error`` saying which of the usual faults it is:
    missing, a broken symbolic link, a link loop, a directory, not a regular file, unreadable."""
    p = Path(path)
    suffix = f" ({hint})" if hint else ""
    if not str(path):
        raise error(f"the {what} path is empty; give a file")
    if p.is_symlink():
        try:
            p.resolve(strict=True)
        except RuntimeError:
            raise error(f"{what} {str(p)!r} is a symbolic link loop; point it at a real file") from None
        except OSError:
            raise error(
                f"{what} {str(p)!r} is a broken symbolic link (its target {os.readlink(p)!r} does not exist){suffix}"
            ) from None
    try:
        st = p.stat()
    except FileNotFoundError:
        raise error(f"{what} {str(p)!r} does not exist{suffix}") from None
    except NotADirectoryError:
        raise error(
            f"{what} {str(p)!r} does not exist (a part of its path is a file, not a directory){suffix}"
        ) from None
    except OSError as exc:  # ELOOP in a parent, ENAMETOOLONG, EACCES on a parent, ...
        if exc.errno == errno.ELOOP:
            raise error(f"{what} {str(p)!r} cannot be resolved: a symbolic link loop in its path") from None
        raise error(f"{what} {str(p)!r} cannot be opened: {exc.strerror or exc}{suffix}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {str(p)!r} is a directory, not a file{suffix}")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {str(p)!r} is not a regular file (a device, pipe or socket)")
    if not os.access(p, os.R_OK):
        raise error(f"{what} {str(p)!r} is not readable (permission denied); check its mode and owner")
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
        raise error(f"{str(path)!r} is not an ONNX model ({type(exc).__name__}: {summarise(exc, 200)})") from None
    if not proto.graph.node and not proto.graph.input:
        raise error(f"{str(path)!r} is not an ONNX model (no graph inside)")
    return proto
