"""A reduced-precision weight bank (op version 2): every ``DyNetDynamicConv2d`` node's ``weight`` stored as float16
or bfloat16 while the graph computes in float32.

The kernel widens each bank value exactly to fp32 and fuses the kernels in fp32, so the narrowed graph computes the
fp32 op on the rounded bank (round to nearest even): the only error is the rounding of the bank, about ``2^-11``
(fp16) or ``2^-8`` (bf16) of each weight. It halves the bytes a batch-1 call streams. Only the onnxruntime CPU
library takes it; the CUDA kernels and the TensorRT plugin refuse a bank narrower than the I/O, and so does
``dynet-deploy build`` (:func:`refuse_narrowed_bank`). The graph records ``fp16-bank`` / ``bf16-bank`` as its
precision (``dynet_deploy.precision``), which selects its tolerance and agreement target.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DynetDeployError, FuseError
from ..op.spec import BANK_DTYPES, OP_TYPE

# Each narrowed dtype: onnx element type, numpy dtype (bfloat16 from ml_dtypes, which onnx uses too), the graph's
# precision name.
PRECISION_OF_BANK = {"fp16": "fp16-bank", "bf16": "bf16-bank"}


def _numpy_dtype(bank_dtype: str):
    if bank_dtype == "fp16":
        return np.dtype(np.float16)
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def _elem_types(proto) -> dict[str, int]:
    types = {t.name: t.data_type for t in proto.graph.initializer}
    for vi in (*proto.graph.input, *proto.graph.value_info, *proto.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types.setdefault(vi.name, vi.type.tensor_type.elem_type)
    return types


def graph_bank_dtype(proto) -> str:
    """``"fp32"``, ``"fp16"`` or ``"bf16"``: how the graph's op nodes store their bank relative to their input ``x``
    (``"fp32"``: in the I/O type, also for an fp16 graph and a graph without op nodes)."""
    from onnx import TensorProto

    narrow: dict[int, str] = {TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16"}
    types = _elem_types(proto)
    found = set()
    for node in proto.graph.node:
        if node.op_type != OP_TYPE or len(node.input) < 3:
            continue
        x_type = types.get(node.input[0], TensorProto.FLOAT)
        w_type = types.get(node.input[2], x_type)
        if x_type == TensorProto.FLOAT and w_type in narrow:
            found.add(narrow[w_type])
    if len(found) > 1:
        return "bf16" if "bf16" in found else "fp16"  # the coarser one sets the tolerance
    return found.pop() if found else "fp32"


def narrow_bank(proto: Any, bank_dtype: str, error: type[DynetDeployError] = FuseError) -> tuple[Any, int]:
    """Store every op node's weight as ``bank_dtype`` (``"fp16"`` / ``"bf16"``), in place; returns (proto, nodes).

    Refused (``error``) for an fp16 graph (its bank is in its I/O type already), for a weight that is not an fp32
    initializer, and for weights a float16 bank cannot hold (finite values beyond its range of 65504).
    ``"fp32"`` changes nothing. The op version and the precision metadata are the caller's (:func:`apply_bank`).
    """
    from onnx import TensorProto, numpy_helper

    if bank_dtype not in BANK_DTYPES:
        raise error(f"bank dtype must be one of {', '.join(BANK_DTYPES)}, got {bank_dtype!r}")
    if bank_dtype == "fp32":
        return proto, 0
    types = _elem_types(proto)
    inits = {t.name: t for t in proto.graph.initializer}
    readers: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    count = 0
    target = _numpy_dtype(bank_dtype)
    for node in proto.graph.node:
        if node.op_type != OP_TYPE:
            continue
        label = node.name or OP_TYPE
        x_type = types.get(node.input[0], TensorProto.FLOAT)
        if x_type != TensorProto.FLOAT:
            raise error(
                f"{label}: its input x is {TensorProto.DataType.Name(x_type)}; a {bank_dtype} bank is for fp32 graphs "
                "(an fp16 graph stores its bank in fp16 already): fuse without --precision fp16"
            )
        init = inits.get(node.input[2])
        if init is None or readers.get(init.name, 0) != 1:
            raise error(f"{label}: weight {node.input[2]!r} is not an initializer read by this node alone")
        if init.data_type != TensorProto.FLOAT:
            raise error(
                f"{label}: weight {init.name!r} is {TensorProto.DataType.Name(init.data_type)}, not FLOAT: the bank "
                "is narrowed already; fuse the exported graph again"
            )
        w = numpy_helper.to_array(init)
        with np.errstate(over="ignore"):  # overflow is reported below, with the node
            narrowed = w.astype(target)
        overflow = np.isfinite(w) & ~np.isfinite(narrowed.astype(np.float32))
        if overflow.any():
            raise error(
                f"{label}: {int(overflow.sum())} weight value(s) beyond {bank_dtype}'s range "
                f"(largest |w| {float(np.abs(w[np.isfinite(w)]).max()):.3g}); keep the fp32 bank"
            )
        init.CopyFrom(numpy_helper.from_array(narrowed, init.name))
        count += 1
    return proto, count


def apply_bank(proto: Any, bank_dtype: str, error: type[DynetDeployError] = FuseError) -> tuple[Any, int]:
    """:func:`narrow_bank`, then the graph's precision recorded and its op version stamped (2 when narrowed)."""
    from ..op.spec import stamp_version
    from ..precision import set_precision_metadata

    proto, count = narrow_bank(proto, bank_dtype, error)
    if count:
        set_precision_metadata(proto, PRECISION_OF_BANK[bank_dtype])
        stamp_version(proto)
    return proto, count


def refuse_narrowed_bank(proto: Any, error: type[DynetDeployError], where: str) -> None:
    """``error`` when the graph's bank is narrowed: only the onnxruntime CPU library takes one."""
    bank = graph_bank_dtype(proto)
    if bank != "fp32":
        raise error(
            f"the graph's weight bank is stored in {bank} (`dynet-deploy fuse --bank-dtype {bank}`), which only the "
            f"onnxruntime CPU op library runs; {where} takes the bank in the graph's own type: fuse the exported "
            "graph again without --bank-dtype"
        )


__all__ = ["PRECISION_OF_BANK", "apply_bank", "graph_bank_dtype", "narrow_bank", "refuse_narrowed_bank"]
