"""Coefficient predictors in fewer nodes: the sigmoid moved next to the FC and the slices made one ``Split``.

DyNet's predictor (:class:`~dynet_deploy.nn.CoefficientPredictor`) ends in an FC of ``M = sum_i C_i * K`` outputs
that every exporter writes as, per fed layer ``i``, ``Slice`` (columns ``[s_i, s_i + C_i*K)``) -> ``Reshape``
``[N, C_i, K]`` -> ``Sigmoid`` (dynamo drops a slice of every column). The pass rewrites the group to::

    Sigmoid([N, M]) -> Reshape [N, M/K, K] -> Split(axis 1, [C_1, C_2, ...])      (no Split for one layer)

which is exact: the sigmoid is element-wise, and the slices of a row-major ``[N, M]`` reshaped to ``[N, C_i, K]``
are the consecutive channel blocks of ``[N, M/K, K]``. onnxruntime then fuses the FC (``Gemm``) with the sigmoid
(``FusedGemm``), which a slice between them prevented: Dy-mobile's nine nodes after the FC per block (onnxruntime
made its three slices one ``Split`` already) become two, a Dy-ResNet predictor's three become one.

Rewritten only when the slices cover the FC's columns exactly once, in order or not, every reshape gives
``[N, C_i, K]`` with one ``K``, and every tensor of the chain has no other reader; anything else is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .graph import _const, export_like

INT64_MAX = np.iinfo(np.int64).max


@dataclass
class PredictorRewrite:
    source: str  # the FC output the coefficients are cut from
    layers: int  # layers it feeds (Split outputs)
    nodes_before: int
    nodes_after: int


@dataclass
class _Chain:
    start: int
    stop: int
    channels: int
    bases: int
    nodes: list
    out: Any  # the sigmoid's output: what the layers read


def _only_reader(t):
    return t.outputs[0] if len(t.outputs) == 1 else None


def _scalar(t) -> int | None:
    v = _const(t) if t is not None else None
    if v is None or v.size != 1:
        return None
    return int(np.asarray(v).ravel()[0])


def _slice_range(node, width: int) -> tuple[int, int] | None:
    """[start, stop) of a Slice over axis 1 of a 2-D tensor with step 1, else None."""
    if len(node.inputs) < 3 or "starts" in node.attrs:  # opset < 10 keeps them as attributes
        return None
    start, stop = _scalar(node.inputs[1]), _scalar(node.inputs[2])
    axis = _scalar(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else 0
    step = _scalar(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4].name else 1
    if start is None or stop is None or axis is None or axis % 2 != 1 or step != 1:
        return None
    start = max(0, min(width, start + width if start < 0 else start))
    stop = max(0, min(width, stop + width if stop < 0 else stop))
    return (start, stop) if stop > start else None


def _reshape_nck(node, n) -> tuple[int, int] | None:
    """(C, K) of a Reshape to [N, C, K] that keeps the batch (-1, or 0 without allowzero, or the fixed N)."""
    target = _const(node.inputs[1]) if len(node.inputs) > 1 else None
    if target is None or target.ndim != 1 or target.size != 3:
        return None
    a, c, k = (int(v) for v in target)
    keeps_batch = a == -1 or (a == 0 and not int(node.attrs.get("allowzero", 0))) or (isinstance(n, int) and a == n)
    return (c, k) if keeps_batch and c > 0 and k > 0 else None


def _chain(sigmoid, graph) -> tuple[Any, _Chain] | None:
    """(source tensor, chain) for Sigmoid <- Reshape [<- Slice] <- source, each link read once."""
    reshape = sigmoid.inputs[0].inputs[0] if sigmoid.inputs[0].inputs else None
    if reshape is None or reshape.op != "Reshape" or _only_reader(reshape.outputs[0]) is not sigmoid:
        return None
    if reshape.outputs[0] in graph.outputs or sigmoid.inputs[0] in graph.outputs:
        return None
    src = reshape.inputs[0]
    nodes = [reshape, sigmoid]
    slc = src.inputs[0] if len(src.inputs) == 1 and src.inputs[0].op == "Slice" else None
    if slc is not None:
        if _only_reader(src) is not reshape or src in graph.outputs:
            return None
        nodes.insert(0, slc)
        src = slc.inputs[0]
    shape = src.shape
    if shape is None or len(shape) != 2 or not isinstance(shape[1], (int, np.integer)):
        return None
    width = int(shape[1])
    rng = (0, width) if slc is None else _slice_range(slc, width)
    ck = _reshape_nck(reshape, shape[0])
    if rng is None or ck is None or ck[0] * ck[1] != rng[1] - rng[0]:
        return None
    return src, _Chain(rng[0], rng[1], ck[0], ck[1], nodes, sigmoid.outputs[0])


def rewrite_predictors(proto: Any) -> tuple[Any, list[PredictorRewrite]]:
    """Rewrite every matching predictor tail of an ``onnx.ModelProto``; returns (new proto, what was rewritten)."""
    import onnx_graphsurgeon as gs

    from .graph import _default_opset, infer_shapes

    if _default_opset(proto.opset_import) < 13:  # Split's sizes as an input
        return proto, []
    graph = gs.import_onnx(infer_shapes(proto))
    groups: dict[int, tuple[Any, list[_Chain]]] = {}
    for node in graph.nodes:
        if node.op != "Sigmoid" or len(node.inputs) != 1 or len(node.outputs) != 1:
            continue
        found = _chain(node, graph)
        if found is not None:
            src, chain = found
            groups.setdefault(id(src), (src, []))[1].append(chain)
    done: list[PredictorRewrite] = []
    for src, chains in groups.values():
        chains.sort(key=lambda c: c.start)
        width = int(src.shape[1])
        heads = {id(c.nodes[0]) for c in chains}
        bases = {c.bases for c in chains}
        contiguous = all(a.stop == b.start for a, b in zip(chains, chains[1:]))
        if (
            len(bases) != 1
            or not contiguous
            or chains[0].start != 0
            or chains[-1].stop != width
            or src in graph.outputs
            or {id(n) for n in src.outputs} != heads
            or len(src.outputs) != len(chains)
        ):
            continue
        (k,) = bases
        base = src.name
        dtype = src.dtype or np.float32
        sig = gs.Variable(f"{base}__sigmoid", dtype=dtype, shape=list(src.shape))
        new_nodes = [gs.Node("Sigmoid", name=f"{base}__sigmoid", inputs=[src], outputs=[sig])]
        target = gs.Constant(f"{base}__shape_NCK", np.array([-1, width // k, k], np.int64))
        outs = [c.out for c in chains]
        for c in chains:
            for n in c.nodes:
                n.inputs.clear()
                n.outputs.clear()
        if len(chains) == 1:
            new_nodes.append(gs.Node("Reshape", name=f"{base}__reshape_NCK", inputs=[sig, target], outputs=outs))
        else:
            nck = gs.Variable(f"{base}__NCK", dtype=dtype, shape=[src.shape[0], width // k, k])
            sizes = gs.Constant(f"{base}__split_sizes", np.array([c.channels for c in chains], np.int64))
            new_nodes.append(gs.Node("Reshape", name=f"{base}__reshape_NCK", inputs=[sig, target], outputs=[nck]))
            new_nodes.append(
                gs.Node("Split", name=f"{base}__split", attrs={"axis": 1}, inputs=[nck, sizes], outputs=outs)
            )
        graph.nodes.extend(new_nodes)
        done.append(PredictorRewrite(base, len(chains), sum(len(c.nodes) for c in chains), len(new_nodes)))
    if not done:
        return proto, []
    return export_like(graph, proto), done


def summarise_predictors(done: list[PredictorRewrite]) -> str:
    before = sum(d.nodes_before for d in done)
    after = sum(d.nodes_after for d in done)
    return (
        f"coefficient predictors: {len(done)} rewritten (sigmoid next to the FC, slices as one Split): "
        f"{before} -> {after} nodes"
    )
