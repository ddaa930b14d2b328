"""Graph helpers of the fusion pass: shape inference, constants, producers and readers, walking back, pads and activations."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..errors import FuseError
from ..op.spec import OP_TYPE, conv_arguments, read_attributes

# Ops the weight/bias aggregation may be built from; the numerical check, not this list, decides.
AGGREGATION_OPS = {
    "Reshape",
    "Transpose",
    "MatMul",
    "Gemm",
    "Einsum",
    "Mul",
    "Add",
    "Sub",
    "Div",
    "Neg",
    "ReduceSum",
    "Unsqueeze",
    "Squeeze",
    "Flatten",
    "Expand",
    "Identity",
    "Cast",
    "Concat",
    "Slice",
    "Gather",
    "Shape",
    "Split",
    "Tile",
    "ConstantOfShape",
    "Equal",
    "Where",
    "Range",
}


RESHAPE_LIKE = {"Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"}


class _NoMatch(Exception):
    """A candidate that is not (provably) a dynamic conv; the message says why."""


def _shape_twin(proto):
    """A copy with every DyNetDynamicConv2d replaced by a Conv of the same geometry (and a GlobalAveragePool for a
    mean output), for shape inference."""
    from onnx import helper, numpy_helper

    twin = type(proto).FromString(proto.SerializeToString())
    inits = {t.name: t for t in twin.graph.initializer}
    nodes = []
    for node in twin.graph.node:
        if node.op_type != OP_TYPE:
            nodes.append(node)
            continue
        try:
            conv = conv_arguments(read_attributes(node))
        except ValueError as exc:
            raise FuseError(f"node {node.name!r}: {exc}") from None
        w = inits.get(node.input[2])
        if w is None:
            raise FuseError(f"node {node.name!r}: weight {node.input[2]!r} is not an initializer")
        dims = list(w.dims)
        wname = f"{node.name}__shape_twin_w"
        twin.graph.initializer.append(numpy_helper.from_array(np.zeros(dims[1:], np.float32), wname))
        nodes.append(
            helper.make_node(
                "Conv",
                [node.input[0], wname],
                [node.output[0]],
                name=node.name + "__twin",
                strides=list(conv["stride"]),
                pads=list(conv["pads"]),
                dilations=list(conv["dilation"]),
                group=conv["groups"],
            )
        )
        if len(node.output) > 1 and node.output[1]:  # the mean output (op version 2): GlobalAveragePool(y)
            nodes.append(
                helper.make_node(
                    "GlobalAveragePool", [node.output[0]], [node.output[1]], name=node.name + "__twin_mean"
                )
            )
    del twin.graph.node[:]
    twin.graph.node.extend(nodes)
    return twin


def infer_shapes(proto):
    """Shape inference through DyNetDynamicConv2d nodes (via a Conv twin); returns a new proto."""
    import onnx

    twin = _shape_twin(proto)
    del twin.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(twin, data_prop=True)
    out = type(proto).FromString(proto.SerializeToString())
    del out.graph.value_info[:]
    out.graph.value_info.extend(inferred.graph.value_info)
    by_name = {o.name: o for o in inferred.graph.output}
    for o in out.graph.output:
        if o.name in by_name:
            o.type.CopyFrom(by_name[o.name].type)
    return out


def _const(t) -> np.ndarray | None:
    import onnx_graphsurgeon as gs

    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    if isinstance(t, gs.Variable) and len(t.inputs) == 1 and t.inputs[0].op == "Constant":
        v = t.inputs[0].attrs.get("value")
        return None if v is None else np.asarray(v.values)
    return None


def _int_shape(t) -> list[int] | None:
    if t is None or t.shape is None:
        return None
    if not all(isinstance(d, (int, np.integer)) and d >= 0 for d in t.shape):
        return None
    return [int(d) for d in t.shape]


def _producer(t):
    return t.inputs[0] if t is not None and len(t.inputs) == 1 else None


def _sole_reader(t, graph):
    """The only node reading ``t``'s data, or None when several read it or it is a graph output.

    Shape nodes do not count: they read only the shape (TorchScript's ``y.shape[-1]`` for a reshape target),
    which the fused node's output has too.
    """
    if t in graph.outputs:
        return None
    readers = [n for n in t.outputs if n.op != "Shape"]
    return readers[0] if len(readers) == 1 else None


def _ints(v, n: int, default: int) -> list[int]:
    if v is None:
        return [default] * n
    return [int(i) for i in v]


def _pad_spatial(node) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of a zero-constant Pad touching only the last two axes of a 4D tensor."""
    mode = node.attrs.get("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode != "constant":
        return None
    given = _const(node.inputs[1]) if len(node.inputs) > 1 else node.attrs.get("pads")
    if given is None:
        return None
    pads = [int(p) for p in np.asarray(given).ravel()]
    if len(node.inputs) > 2 and node.inputs[2].name:
        value = _const(node.inputs[2])
        if value is None or np.any(value != 0):
            return None
    if len(node.inputs) > 3 and node.inputs[3].name:
        given_axes = _const(node.inputs[3])
        if given_axes is None:
            return None
        axes = [int(a) % 4 for a in np.asarray(given_axes).ravel()]
        full = [0] * 8
        for i, a in enumerate(axes):
            full[a], full[a + 4] = pads[i], pads[i + len(axes)]
        pads = full
    if len(pads) != 8 or any(p < 0 for p in pads) or pads[0] or pads[1] or pads[4] or pads[5]:
        return None
    return (pads[2], pads[3], pads[6], pads[7])


def _is_memory_preserving_transpose(node) -> bool:
    shape = _int_shape(node.inputs[0])
    perm = node.attrs.get("perm")
    if shape is None or perm is None:
        return False
    moved = [p for p in perm if shape[p] != 1]
    return moved == sorted(moved)


def _relu_kind(node) -> int | None:
    """1 for Relu, 2 for Clip(0, 6), 1 for Clip(0, +inf); None otherwise."""
    if node.op == "Relu":
        return 1
    if node.op != "Clip":
        return None
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        lo, hi = node.attrs.get("min", -np.inf), node.attrs.get("max", np.inf)
    else:
        lo = _const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else np.array(-np.inf)
        hi = _const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else np.array(np.inf)
        if lo is None or hi is None:
            return None
    lo, hi = float(np.asarray(lo)), float(np.asarray(hi))
    if lo == 0.0 and hi == 6.0:
        return 2
    if lo == 0.0 and np.isinf(hi):
        return 1
    return None


def _walk_back(tensors: Sequence, stop: Callable | None = None) -> tuple[list, list]:
    """Producers of ``tensors`` through AGGREGATION_OPS; returns (nodes in the subgraph, run-time leaf tensors)."""
    import onnx_graphsurgeon as gs

    nodes: list = []
    leaves: list = []
    seen: set[int] = set()
    stack = list(tensors)
    while stack:
        t = stack.pop()
        if id(t) in seen or isinstance(t, gs.Constant) or not t.name:
            continue
        seen.add(id(t))
        p = _producer(t)
        if p is None:
            leaves.append(t)  # a graph input
            continue
        if p.op == "Constant":
            continue
        if p.op not in AGGREGATION_OPS or (stop is not None and stop(t)):
            leaves.append(t)
            continue
        if all(p is not n for n in nodes):
            nodes.append(p)
        stack.extend(p.inputs)
    return nodes, leaves


def _default_opset(opset_imports) -> int:
    for o in opset_imports:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 17


def export_like(graph, proto):
    """``graph`` (cleaned up, sorted) as a ModelProto keeping ``proto``'s opset imports, IR version and metadata:
    the passes after the fusion change nodes only."""
    import onnx_graphsurgeon as gs

    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    del out.opset_import[:]
    out.opset_import.extend(proto.opset_import)
    out.ir_version = proto.ir_version
    del out.metadata_props[:]
    out.metadata_props.extend(proto.metadata_props)
    return out
