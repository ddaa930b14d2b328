"""A graph's precision: converting a fused graph to fp16, and reading which precision a graph computes in.

:func:`convert_to_fp16` turns a fused (or portable) fp32 graph into an fp16 one with onnxconverter-common, keeping
every DyNetDynamicConv2d node and feeding it fp16 tensors (its weight, bias_bank and bias become fp16
initializers). With ``keep_io_types`` (the default) the graph still takes and returns fp32 arrays (Casts at the
edges), so callers feed the same arrays as for the fp32 graph. ``fuse --precision fp16`` and the TensorRT fp16 build
both use it.

:func:`graph_precision` says which tolerance a graph is judged at: ``"fp16"`` when the graph says so in its
metadata (``dynet_deploy.precision``, written by the conversion), when its image input is fp16, or when most of its
floating-point weights are fp16; ``"fp32"`` otherwise. An fp16-math graph with fp32 I/O is thus judged as fp16. An
fp32 graph whose op nodes store their weight bank in float16 / bfloat16 (``fuse --bank-dtype``) is ``"fp16-bank"`` /
``"bf16-bank"`` (from its metadata, else from its op weights' types).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from .errors import BuildError, DynetDeployError
from .fileio import atomic_write_bytes
from .op.spec import OP_TYPE
from .provenance import stamp_producer

PRECISION_KEY = "dynet_deploy.precision"  # ONNX metadata_props key
IO_DTYPES = ("fp32", "fp16")
# An fp32 graph whose op nodes store their weight bank narrowed (`fuse --bank-dtype`): its own tolerance.
BANK_PRECISIONS = ("fp16-bank", "bf16-bank")
PRECISIONS = ("fp32", "fp16", *BANK_PRECISIONS)


def tensor_elem_types(model) -> dict[str, int]:
    """Element type of every tensor whose type the graph states (initializers, inputs, outputs, value_info)."""
    types = {init.name: init.data_type for init in model.graph.initializer}
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types.setdefault(vi.name, vi.type.tensor_type.elem_type)
    for node in model.graph.node:
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to":
                    types[node.output[0]] = attr.i
    return types


def check_op_inputs_fp16(model, error: type[DynetDeployError] = BuildError) -> None:
    """Every input of every DyNetDynamicConv2d node is fp16 (the op takes one dtype for all its inputs)."""
    from onnx import TensorProto

    types = tensor_elem_types(model)
    for node in model.graph.node:
        if node.op_type != OP_TYPE:
            continue
        for name in node.input:
            t = types.get(name)
            if name and t is not None and t != TensorProto.FLOAT16:
                raise error(
                    f"{OP_TYPE} node {node.name!r}: input {name!r} is {TensorProto.DataType.Name(t)} after the fp16 "
                    "conversion; the op needs all its inputs in one dtype"
                )


def convert_to_fp16(
    src: Any, dst: str | Path | None = None, keep_io_types: bool = True, error: type[DynetDeployError] = BuildError
):
    """Convert an fp32 graph (path or ModelProto) to fp16, keeping every DyNetDynamicConv2d node.

    Returns the converted ModelProto, also written atomically to ``dst`` if given. ``keep_io_types``: the graph's
    inputs and outputs stay fp32. Raises ``error`` if the graph is already fp16, if an op node is lost or left with
    a non-fp16 input, or if the result does not pass onnx.checker.
    """
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src)) if not isinstance(src, onnx.ModelProto) else src
    precision = graph_precision(model)
    if precision == "fp16":
        raise error("the graph is fp16 already; convert the fp32 graph")
    if precision in BANK_PRECISIONS:
        raise error(
            f"the graph's weight bank is narrowed ({precision}, `fuse --bank-dtype`); an fp16 graph stores its bank "
            "in fp16 anyway: convert the graph fused without --bank-dtype"
        )
    before = [n.name for n in model.graph.node if n.op_type == OP_TYPE]
    try:
        with warnings.catch_warnings():
            # The converter warns once per weight it rounds to fp16's smallest normal value (1e-7): expected here.
            warnings.simplefilter("ignore", UserWarning)
            converted = float16.convert_float_to_float16(model, keep_io_types=keep_io_types)
    except Exception as exc:  # the converter raises plain exceptions of several kinds
        raise error(f"fp16 conversion failed: {exc}") from exc
    after = [n for n in converted.graph.node if n.op_type == OP_TYPE]
    if len(after) != len(before):
        raise error(f"fp16 conversion changed the number of {OP_TYPE} nodes ({len(before)} -> {len(after)})")
    check_op_inputs_fp16(converted, error)
    set_precision_metadata(converted, "fp16")
    try:
        onnx.checker.check_model(converted)
    except onnx.checker.ValidationError as exc:
        raise error(f"the fp16 ONNX does not pass onnx.checker: {exc}") from exc
    if dst is not None:
        stamp_producer(converted)
        atomic_write_bytes(dst, converted.SerializeToString(), error)
    return converted


def set_precision_metadata(model, precision: str) -> None:
    for prop in model.metadata_props:
        if prop.key == PRECISION_KEY:
            prop.value = precision
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = PRECISION_KEY, precision


def graph_precision(model) -> str:
    """``"fp16"``, ``"fp32"``, or for an fp32 graph with a narrowed bank ``"fp16-bank"`` / ``"bf16-bank"``: the
    precision ``model`` (a ModelProto) computes in (see the module docstring)."""
    import numpy as np
    from onnx import TensorProto

    from .fuse.bank import graph_bank_dtype

    for prop in model.metadata_props:
        if prop.key == PRECISION_KEY and prop.value in PRECISIONS:
            return prop.value
    bank = graph_bank_dtype(model)
    if bank != "fp32":
        return f"{bank}-bank"
    inits = {i.name for i in model.graph.initializer}
    for i in model.graph.input:
        if i.name not in inits and i.type.tensor_type.elem_type == TensorProto.FLOAT16:
            return "fp16"
    counts = {TensorProto.FLOAT: 0, TensorProto.FLOAT16: 0}
    for init in model.graph.initializer:
        if init.data_type in counts:
            counts[init.data_type] += int(np.prod(init.dims)) if len(init.dims) else 1
    return "fp16" if counts[TensorProto.FLOAT16] > counts[TensorProto.FLOAT] else "fp32"


__all__ = [
    "BANK_PRECISIONS",
    "IO_DTYPES",
    "PRECISIONS",
    "PRECISION_KEY",
    "check_op_inputs_fp16",
    "convert_to_fp16",
    "graph_precision",
    "set_precision_metadata",
    "tensor_elem_types",
]
