"""Make a fixed-batch graph's batch dynamic: symbolic ``N`` on inputs and outputs, baked-in batch constants of
Reshape (and Resize sizes) rewritten."""

from __future__ import annotations

from typing import Any

import numpy as np

from .graph import infer_shapes

BATCH_DIM_NAME = "N"


def _dim0(vi):
    dims = vi.type.tensor_type.shape.dim
    if not dims:
        return None
    d = dims[0]
    return d.dim_value if d.HasField("dim_value") else (d.dim_param or None)


def _dynamic_resize_sizes(work, node, shapes, inits, const_nodes, batch: int) -> int:
    """Resize with constant ``sizes`` starting with the batch: take N from the input's shape instead."""
    from onnx import helper, numpy_helper

    if len(node.input) < 4 or not node.input[3]:
        return 0
    src = shapes.get(node.input[0])
    if src is None or not isinstance(_dim0(src), str):
        return 0
    tensor = inits.get(node.input[3])
    if tensor is None and node.input[3] in const_nodes:
        tensor = const_nodes[node.input[3]].attribute[0].t
    if tensor is None:
        return 0
    value = numpy_helper.to_array(tensor)
    if value.ndim != 1 or value.size < 2 or value[0] != batch:
        return 0
    base = f"{node.name or node.output[0]}__dynamic_batch"
    rest = numpy_helper.from_array(value[1:].astype(np.int64), f"{base}_rest_sizes")
    work.graph.initializer.append(rest)
    inits[rest.name] = rest
    shape_n = helper.make_node("Shape", [node.input[0]], [f"{base}_n"], name=f"{base}_shape", start=0, end=1)
    concat = helper.make_node("Concat", [f"{base}_n", rest.name], [f"{base}_sizes"], name=f"{base}_concat", axis=0)
    nodes = list(work.graph.node)
    at = nodes.index(node)
    work.graph.node.insert(at, concat)
    work.graph.node.insert(at, shape_n)
    node.input[3] = f"{base}_sizes"
    return 1


def make_batch_dynamic(proto, batch: int) -> tuple[Any, str]:
    """Give inputs/outputs a symbolic batch; rewrite Reshape shape constants baking in ``batch``.

    Returns (new proto, description); the proto is returned unchanged (with the reason) if some
    graph output still ends up with the fixed batch.
    """
    from onnx import numpy_helper

    work = type(proto).FromString(proto.SerializeToString())
    for vi in list(work.graph.input) + list(work.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == batch:
            dims[0].Clear()
            dims[0].dim_param = BATCH_DIM_NAME
    inits = {t.name: t for t in work.graph.initializer}
    const_nodes = {n.output[0]: n for n in work.graph.node if n.op_type == "Constant"}
    fixed = 0
    for _ in range(64):
        inferred = infer_shapes(work)
        shapes = {
            vi.name: vi
            for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
        }
        changed = 0
        for node in list(work.graph.node):
            if node.op_type == "Resize":
                changed += _dynamic_resize_sizes(work, node, shapes, inits, const_nodes, batch)
                continue
            if node.op_type != "Reshape" or len(node.input) < 2:
                continue
            src = shapes.get(node.input[0])
            if src is None or not isinstance(_dim0(src), str):
                continue
            tensor = inits.get(node.input[1])
            if tensor is None and node.input[1] in const_nodes:
                tensor = const_nodes[node.input[1]].attribute[0].t
            if tensor is None:
                continue
            value = numpy_helper.to_array(tensor).copy()
            if value.ndim != 1 or value.size == 0 or value[0] != batch:
                continue
            if -1 not in value:
                value[0] = -1
            elif 0 not in value:
                value[0] = 0  # copy the (symbolic) batch from the input; needs allowzero = 0
                for a in node.attribute:
                    if a.name == "allowzero":
                        a.i = 0
            else:
                continue
            new_name = f"{node.input[1]}__dynamic_batch_{fixed}"
            work.graph.initializer.append(numpy_helper.from_array(value.astype(np.int64), new_name))
            inits[new_name] = work.graph.initializer[-1]
            node.input[1] = new_name
            changed += 1
            fixed += 1
        if not changed:
            break
    inferred = infer_shapes(work)
    stuck = [o.name for o in inferred.graph.output if _dim0(o) == batch]
    if stuck:
        return proto, f"static {batch} (outputs {stuck} keep the export batch)"
    # drop now-unused shape constants
    import onnx_graphsurgeon as gs

    g = gs.import_onnx(inferred)
    g.cleanup()
    out = gs.export_onnx(g)
    out.metadata_props.extend(proto.metadata_props)
    return out, f"dynamic ({fixed} Reshape constants rewritten)"
