"""Epilogue folds over a fused graph (op version 2): what follows a ``DyNetDynamicConv2d`` node moves into it.

Two folds, each exact (the op computes what the removed nodes computed, summation order apart):

**Residual** (``has_residual``): a node without activation whose output ``y`` has one reader, an ``Add`` of ``y``
and another tensor ``r`` of exactly ``y``'s shape (no broadcasting: every dimension known and equal, a symbolic one
by name or, through onnxruntime's symbolic shape inference, as the same expression of the input dims), takes ``r`` as its ``residual`` input; the ``Add`` disappears. A ``Relu``, ``Clip(0, 6)`` or
``Clip(0, inf)`` that is the ``Add``'s only reader becomes the node's activation and disappears too. Refused
(the graph keeps its nodes) when ``y`` has another reader (it must exist before the residual), when the node has
its own activation (``act(y) + r`` is not ``act(y + r)``), when ``y`` is a graph output, or when the shapes
cannot be proved equal; the activation alone stays when the ``Add``'s sum has another reader.

**Mean** (``has_mean``): a ``GlobalAveragePool`` (or ``ReduceMean`` over axes 2 and 3 with ``keepdims=1``,
the axes as attribute or as a constant input) reading a node's output ``y`` (after the residual fold) is
replaced by the node's ``mean`` output. ``y`` keeps its other readers; a second pool of the same ``y`` reads the
same ``mean``.

Shape readers (``Shape`` nodes) of a folded tensor follow it: the shapes are equal. The pass is structural and
runs on either exporter's graph (TorchScript's ``Clip`` with constant inputs, dynamo's ``ReduceMean`` with an
axes input), with a fixed or a dynamic batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..op.spec import OP_DOMAIN, OP_TYPE, Activation, gs_attributes, read_attributes
from .graph import _const, _relu_kind, export_like


@dataclass
class EpilogueFold:
    """What was folded into one op node."""

    node: str
    residual: str | None = None  # the residual tensor's name
    activation: str = "none"  # the activation folded with the residual ("none": none)
    mean: int = 0  # pools replaced by the node's mean output
    refused: str = ""  # why the Add that is the node's only reader was left (empty: folded, or no such Add)

    def describe(self) -> str:
        done = []
        if self.residual is not None:
            done.append("residual Add" + (f" + {self.activation}" if self.activation != "none" else ""))
        if self.mean:
            done.append("mean (GlobalAveragePool)" + (f" x{self.mean}" if self.mean > 1 else ""))
        text = f"{self.node}: folded " + ", ".join(done) if done else f"{self.node}:"
        return text + (f"; residual Add left: {self.refused}" if self.refused else "")


def _is_op(node) -> bool:
    return node.op == OP_TYPE and node.domain == OP_DOMAIN


def _data_readers(t) -> list:
    return [n for n in t.outputs if n.op != "Shape"]


def _known_shape(t) -> list | None:
    """The shape with every dimension known (an int >= 0 or a symbol), else None."""
    shape = t.shape
    if shape is None:
        return None
    out: list[int | str] = []
    for d in shape:
        if isinstance(d, (int, np.integer)) and d >= 0:
            out.append(int(d))
        elif isinstance(d, str) and d:
            out.append(d)
        else:
            return None
    return out


def _same_shape(a, b, symbolic: dict[str, list]) -> bool:
    """Equal shapes, proved: ONNX's inferred shapes equal (a symbolic dim by name), or else onnxruntime's symbolic
    shapes (dims as expressions of the graph's input dims, e.g. ``floor(H/2 - 1/2) + 1``) equal."""
    sa, sb = _known_shape(a), _known_shape(b)
    if sa is not None and sa == sb:
        return True
    xa, xb = symbolic.get(a.name), symbolic.get(b.name)
    return xa is not None and xa == xb


def symbolic_shapes(proto) -> dict[str, list]:
    """Every tensor's shape from onnxruntime's symbolic shape inference (on the graph with each op node stood in for
    by a Conv), dims as ints or expressions of the input dims; ``{}`` where it is unavailable or fails.

    Run without ``auto_merge``: two different expressions are never assumed equal, so equal expressions are equal
    for every input size. ONNX's own inference names each unknown output dim anew (a dilated FCN's residual and conv
    output get different names), which this proves equal."""
    from .graph import _shape_twin

    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:
        return {}
    twin = _shape_twin(proto)
    del twin.graph.value_info[:]
    try:
        inferred = SymbolicShapeInference.infer_shapes(twin, auto_merge=False)
    except Exception:  # the tool raises plain exceptions of several kinds on what it cannot infer
        return {}
    shapes: dict[str, list] = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims: list = []
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.dim_param:
                dims.append(d.dim_param)
            else:
                break
        else:
            shapes[vi.name] = dims
    return shapes


def _reduce_axes(node, rank: int) -> set[int] | None:
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        axes = _const(node.inputs[1])
        if axes is None:
            return None
    if axes is None:
        return None  # no axes: every axis is reduced
    return {int(a) % rank for a in np.asarray(axes).ravel()}


def is_global_mean(node, x) -> bool:
    """``node`` computes ``GlobalAveragePool(x)`` for a 4-D ``x``: [N, C, 1, 1]."""
    shape = x.shape
    if shape is None or len(shape) != 4 or len(node.outputs) != 1 or not node.inputs or node.inputs[0] is not x:
        return False
    if node.op == "GlobalAveragePool":
        return True
    if node.op == "ReduceMean":
        return int(node.attrs.get("keepdims", 1)) == 1 and _reduce_axes(node, 4) == {2, 3}
    return False


def _replace_input(node, old, new) -> None:
    for i, t in enumerate(node.inputs):
        if t is old:
            node.inputs[i] = new


def _set_attrs(node, **changes: int) -> None:
    values = read_attributes(node)
    values.update(changes)
    node.attrs = gs_attributes(values, version=2)


def _fold_residual(graph, node, fold: EpilogueFold, symbolic: dict[str, list]) -> None:
    import onnx_graphsurgeon as gs

    attrs = read_attributes(node)
    y = node.outputs[0]
    readers = _data_readers(y)
    if len(readers) != 1 or readers[0].op != "Add":
        return  # no Add, or y is read elsewhere too (it must exist before any residual is added)
    (add,) = readers
    if attrs["has_residual"] or attrs["has_mean"]:
        fold.refused = "the node already has a residual or a mean"
        return
    if attrs["activation"] != Activation.NONE:
        fold.refused = f"the node has its own activation ({Activation(attrs['activation']).name.lower()})"
        return
    if y in graph.outputs:
        fold.refused = "the node's output is a graph output"
        return
    if len(add.inputs) != 2 or len(add.outputs) != 1:
        return
    r = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
    if r is y:
        fold.refused = "the Add adds the output to itself"
        return
    if isinstance(r, gs.Constant) or _const(r) is not None:
        fold.refused = "the other addend is a constant (a bias, not a residual)"
        return
    z = add.outputs[0]
    if not (_same_shape(r, y, symbolic) and _same_shape(z, y, symbolic)):
        fold.refused = f"shapes not provably equal (output {y.shape}, other addend {r.shape})"
        return
    if y.dtype is not None and r.dtype is not None and np.dtype(y.dtype) != np.dtype(r.dtype):
        fold.refused = f"dtypes differ ({y.dtype} and {r.dtype})"
        return
    final, act_node, act = z, None, int(Activation.NONE)
    z_readers = _data_readers(z)
    if z not in graph.outputs and len(z_readers) == 1:
        kind = _relu_kind(z_readers[0])
        if kind is not None and len(z_readers[0].outputs) == 1:
            act_node, act = z_readers[0], kind
            final = act_node.outputs[0]
    shape_readers = [n for n in y.outputs if n.op == "Shape"]
    if act_node is not None:
        shape_readers += [n for n in z.outputs if n.op == "Shape"]
        act_node.outputs.clear()
        act_node.inputs.clear()
    add.outputs.clear()
    add.inputs.clear()
    node.outputs[0] = final
    node.inputs.append(r)
    for s in shape_readers:
        _replace_input(s, y, final)
        _replace_input(s, z, final)
    _set_attrs(node, has_residual=1, activation=act)
    fold.residual = r.name
    fold.activation = Activation(act).name.lower()


def _fold_mean(graph, node, fold: EpilogueFold) -> None:
    attrs = read_attributes(node)
    if attrs["has_mean"]:
        return
    y = node.outputs[0]
    pools = [n for n in y.outputs if is_global_mean(n, y)]
    if not pools:
        return
    first, rest = pools[0], pools[1:]
    mean = first.outputs[0]
    first.outputs.clear()
    first.inputs.clear()
    node.outputs.append(mean)
    for pool in rest:
        out = pool.outputs[0]
        if out in graph.outputs:
            continue  # a graph output keeps its own pool
        for reader in list(out.outputs):
            _replace_input(reader, out, mean)
        pool.outputs.clear()
        pool.inputs.clear()
    fold.mean = 1 + sum(not p.outputs for p in rest)
    _set_attrs(node, has_mean=1)


def fold_epilogues(proto: Any, residual: bool = True, mean: bool = True) -> tuple[Any, list[EpilogueFold]]:
    """Both folds over every op node of a fused ``onnx.ModelProto``; returns (new proto, one entry per node
    something was folded into or refused for). The op version is left to :func:`~dynet_deploy.op.spec.stamp_version`."""
    import onnx_graphsurgeon as gs

    from .graph import infer_shapes

    graph = gs.import_onnx(infer_shapes(proto))
    ops = [n for n in graph.nodes if _is_op(n)]
    symbolic = symbolic_shapes(proto) if residual and ops else {}
    folds: list[EpilogueFold] = []
    for node in ops:
        fold = EpilogueFold(node.name)
        if residual:
            _fold_residual(graph, node, fold, symbolic)
        if mean:
            _fold_mean(graph, node, fold)
        if fold.residual is not None or fold.mean or fold.refused:
            folds.append(fold)
    if not any(f.residual is not None or f.mean for f in folds):
        return proto, folds
    return export_like(graph, proto), folds


def summarise_folds(folds: list[EpilogueFold]) -> str:
    """One line: how many residual Adds (with which activations) and pools were folded, and refusals."""
    residual = [f for f in folds if f.residual is not None]
    acts: dict[str, int] = {}
    for f in residual:
        acts[f.activation] = acts.get(f.activation, 0) + 1
    with_act = ", ".join(f"{n} with {a}" for a, n in sorted(acts.items()) if a != "none")
    means = sum(f.mean for f in folds)
    refused = sum(bool(f.refused) for f in folds)
    text = f"epilogue folds: {len(residual)} residual Add{'s' if len(residual) != 1 else ''}"
    text += f" ({with_act})" if with_act else ""
    text += f", {means} GlobalAveragePool{'s' if means != 1 else ''} -> mean"
    return text + (f"; {refused} residual Add{'s' if refused != 1 else ''} left (reasons above)" if refused else "")
