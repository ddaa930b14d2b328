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

# The lowest ONNX opset this project exports and accepts (recipes, export, the deploy forms).
MIN_OPSET = 17


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


def fused_node_problems(model_path: Path) -> list[str]:
    """What makes a graph's DyNetDynamicConv2d nodes unrunnable, read from the file without running it.

    Checked against the op spec before a session is made, so a node edited after fusion (stride 0, a 2-D weight)
    is named with the attribute and its valid range, whichever backend would have met it first.
    """
    import onnx
    from onnx import helper

    from .op import spec

    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception:
        return []  # not ONNX: the runner says so
    shapes = {t.name: list(t.dims) for t in proto.graph.initializer}
    problems = []
    for node in proto.graph.node:
        if node.op_type != spec.OP_TYPE:
            continue
        label = node.name or spec.OP_TYPE
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in spec.ATTRIBUTE_NAMES}
        for attribute in spec.ATTRIBUTES:
            if attribute.name in attrs:
                try:
                    attribute.check(attrs[attribute.name])
                except ValueError as exc:
                    problems.append(f"{label}: {exc}")
        weight = shapes.get(node.input[2]) if len(node.input) > 2 else None
        if weight is not None:
            if len(weight) != 5:
                problems.append(
                    f"{label}: weight has shape {weight}; it must be [K, C_out, C_in/groups, kH, kW] (rank 5)"
                )
            elif isinstance(attrs.get("groups"), int) and attrs["groups"] >= 1 and weight[1] % attrs["groups"]:
                problems.append(f"{label}: groups={attrs['groups']} does not divide the weight's C_out={weight[1]}")
    return problems


def check_fused_nodes(model_path: Path, error) -> None:
    problems = fused_node_problems(model_path)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise error(
            f"{model_path.name} has DyNetDynamicConv2d node(s) that cannot run: {'; '.join(problems[:3])}{more}. "
            f"The graph was edited or damaged after fusion; fuse the exported graph again"
        )
