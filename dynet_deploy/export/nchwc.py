"""Move the run-time-weight convs of a ``matmul``-form graph onto onnxruntime's blocked NCHWc conv kernel.

The ``matmul-nchwc`` form, onnxruntime CPU only: onnxruntime blocks constant-weight convs itself but runs a conv
whose weight is computed at run time through im2col + GEMM, 1.3-1.7x slower."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..errors import ExportError
from ..graph import MIN_OPSET

NCHWC_DOMAIN = "com.microsoft.nchwc"


# The NCHWc rewrite is kept when at least this share of a model's dynamic convs fit it. On Dy-mobile (grouped
# convs, widths like 30 and 162) only about a fifth fit, and the reorders around those isolated convs made the
# model slower (measured 1 thread: 25.8 ms against 20.7 ms in the matmul form).
NCHWC_MIN_SHARE = 0.5


@functools.lru_cache(maxsize=1)
def nchwc_block_size() -> int | None:
    """onnxruntime's NCHWc channel block on this machine (8 with AVX2, 16 with AVX-512), or None if absent.

    Read from onnxruntime itself: ``ReorderInput`` pads 4 channels up to one block.
    """
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        node = helper.make_node("ReorderInput", ["x"], ["y"], domain=NCHWC_DOMAIN)
        graph = helper.make_graph(
            [node],
            "probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, 1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", MIN_OPSET), helper.make_opsetid(NCHWC_DOMAIN, 1)]
        )
        so = ort.SessionOptions()
        so.log_severity_level = 4
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        out = sess.run(None, {"x": np.zeros((1, 4, 1, 1), np.float32)})[0]
        return int(out.shape[1])
    except Exception:  # no NCHWc kernels in this build (non-x86, or a minimal build)
        return None


def _producer(t):
    return t.inputs[0] if t.inputs else None


def _fusion_matmul(weight_t):
    """The MatMul(coeff, constant bank) behind a run-time conv weight, through Reshapes; else None."""
    import onnx_graphsurgeon as gs

    node = _producer(weight_t)
    chain = []
    while node is not None and node.op == "Reshape" and len(node.outputs[0].outputs) == 1:
        chain.append(node)
        node = _producer(node.inputs[0])
    if node is None or node.op != "MatMul" or len(node.outputs[0].outputs) != 1:
        return None, []
    bank = node.inputs[1]
    if not isinstance(bank, gs.Constant) or np.asarray(bank.values).ndim != 3:
        return None, []
    return node, chain


def _sole_activation(graph, t):
    """(activation name, params, node) when ``t``'s sole reader is a Relu or Clip(0, 6) that onnxruntime can fuse."""
    import onnx_graphsurgeon as gs

    readers = t.outputs
    if len(readers) != 1 or t in graph.outputs:
        return None
    act = readers[0]
    if act.op == "Relu":
        return "Relu", None, act
    if act.op == "Clip" and len(act.inputs) == 3 and all(isinstance(i, gs.Constant) for i in act.inputs[1:]):
        lo, hi = (float(np.asarray(i.values)) for i in act.inputs[1:])
        return "Clip", [lo, hi], act
    return None


def _blocked_filter(w: np.ndarray, block: int) -> np.ndarray:
    """OIHW -> the NCHWc kernel's ``[O/B, I/B, kH, kW, B_in, B_out]``, stored in a tensor of the OIHW shape."""
    o, i, kh, kw = w.shape
    return np.ascontiguousarray(
        w.reshape(o // block, block, i // block, block, kh, kw).transpose(0, 2, 4, 5, 3, 1)
    ).reshape(w.shape)


class _NchwcRewriter:
    """Moves convs onto onnxruntime's NCHWc kernel and keeps their outputs blocked while readers allow it.

    ``blocked`` maps a plain (NCHW) tensor to the blocked tensor holding the same values; the plain tensor stays
    available through a ReorderOutput for readers that need it, and ``cleanup`` drops the ReorderOutputs nobody
    reads. What is rewritten, in graph order:

    * a dynamic conv of the ``matmul`` form (group 1, channels divisible by the block): its kernel fusion writes
      the blocked weight (see the comment above);
    * a static conv (constant weight, group 1, channels divisible by the block) whose input is already blocked,
      e.g. a residual projection: its weight is blocked here, once;
    * ``Add(conv, other)`` (+ ``Relu``) after a rewritten conv: the residual sum and the activation move into the
      conv (its ``Sum`` input), as onnxruntime's own NCHWc transformer does for static ResNets;
    * ``GlobalAveragePool`` of a blocked tensor (a coefficient predictor), or ``ReduceMean`` over H and W (the
      deploy-form predictor): run on the blocked layout, whose ``[N, C, 1, 1]`` result is the NCHW one.
    """

    def __init__(self, graph, block: int) -> None:
        self.graph = graph
        self.block = block
        self.blocked: dict[str, Any] = {}
        self.convs: dict[str, Any] = {}  # blocked output name -> the NCHWc Conv node writing it
        self.channels: dict[str, int] = {}  # blocked output name -> channels
        self.dynamic = 0
        self.static = 0
        self.residual = 0

    @staticmethod
    def _var(name: str):
        import onnx_graphsurgeon as gs

        return gs.Variable(name, np.float32)

    def to_blocked(self, t):
        if t.name not in self.blocked:
            self.blocked[t.name] = self.graph.layer(
                op="ReorderInput",
                domain=NCHWC_DOMAIN,
                name=f"{t.name}_to_nchwc",
                inputs=[t],
                outputs=[self._var(f"{t.name}_nchwc")],
            )[0]
        return self.blocked[t.name]

    def _publish(self, blocked, plain, channels: int) -> None:
        """``plain`` becomes a ReorderOutput of ``blocked``; later readers of ``plain`` may use ``blocked``."""
        self.graph.layer(
            op="ReorderOutput",
            domain=NCHWC_DOMAIN,
            name=f"{plain.name}_from_nchwc",
            inputs=[blocked],
            attrs={"channels": channels},
            outputs=[plain],
        )
        self.blocked[plain.name] = blocked
        self.channels[blocked.name] = channels

    def _take_activation(self, t, attrs: dict):
        """Fuse ``t``'s sole Relu/Clip reader into ``attrs``; returns the tensor the fused node now writes."""
        act = _sole_activation(self.graph, t)
        if act is None:
            return t
        attrs["activation"] = act[0]
        if act[1] is not None:
            attrs["activation_params"] = act[1]
        out = act[2].outputs[0]
        act[2].outputs.clear()
        act[2].inputs.clear()
        return out

    def _emit_conv(self, conv, weight, c_out: int) -> None:
        attrs = {a: conv.attrs[a] for a in ("kernel_shape", "strides", "pads", "dilations") if a in conv.attrs}
        attrs["group"] = 1
        out = self._take_activation(conv.outputs[0], attrs)
        inputs = [self.to_blocked(conv.inputs[0]), weight] + ([conv.inputs[2]] if len(conv.inputs) > 2 else [])
        y = self._var(f"{out.name}_nchwc")
        self.graph.layer(
            op="Conv", domain=NCHWC_DOMAIN, name=f"{conv.name}_nchwc", inputs=inputs, attrs=attrs, outputs=[y]
        )
        node = y.inputs[0]
        conv.outputs.clear()
        conv.inputs.clear()
        self.convs[y.name] = node
        self._publish(y, out, c_out)

    def dynamic_conv(self, conv) -> bool:
        import onnx_graphsurgeon as gs

        if len(conv.inputs) < 2 or isinstance(conv.inputs[1], gs.Constant) or int(conv.attrs.get("group", 1)) != 1:
            return False
        if (
            conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET")
            or len(conv.attrs.get("kernel_shape", ())) != 2
        ):
            return False
        mm, chain = _fusion_matmul(conv.inputs[1])
        if mm is None:
            return False
        bank = np.asarray(mm.inputs[1].values)
        c_out, k, j = bank.shape
        kh, kw = (int(v) for v in conv.attrs["kernel_shape"])
        c_in = j // (kh * kw)
        block = self.block
        if c_out % block or c_in % block or c_in * kh * kw != j or mm.inputs[0].shape not in (None, [c_out, 1, k]):
            return False
        name = conv.name or f"dynamic_conv_{self.dynamic}"
        # Each row's J in (C_in/B, kH, kW, B_in) order; one Transpose then moves B_out innermost.
        permuted = bank.reshape(c_out, k, c_in // block, block, kh, kw).transpose(0, 1, 2, 4, 5, 3).reshape(c_out, k, j)
        mm.inputs[1] = gs.Constant(f"{mm.inputs[1].name}_nchwc", np.ascontiguousarray(permuted))
        g = self.graph
        rows = g.layer(
            op="Reshape",
            name=f"{name}_rows",
            inputs=[mm.outputs[0], gs.Constant(f"{name}_rows_shape", np.array([c_out // block, block, j], np.int64))],
            outputs=[self._var(f"{name}_rows")],
        )[0]
        moved = g.layer(
            op="Transpose",
            name=f"{name}_block_out",
            inputs=[rows],
            attrs={"perm": [0, 2, 1]},
            outputs=[self._var(f"{name}_block_out")],
        )[0]
        weight = g.layer(
            op="Reshape",
            name=f"{name}_blocked_weight",
            inputs=[moved, gs.Constant(f"{name}_weight_shape", np.array([c_out, c_in, kh, kw], np.int64))],
            outputs=[self._var(f"{name}_blocked_weight")],
        )[0]
        for node in chain:
            node.outputs.clear()
        self._emit_conv(conv, weight, c_out)
        self.dynamic += 1
        return True

    def static_conv(self, conv) -> bool:
        import onnx_graphsurgeon as gs

        if (
            len(conv.inputs) < 2
            or conv.inputs[0].name not in self.blocked
            or not isinstance(conv.inputs[1], gs.Constant)
        ):
            return False
        if len(conv.inputs) > 2 and not isinstance(conv.inputs[2], gs.Constant):
            return False
        w = np.asarray(conv.inputs[1].values)
        if (
            w.ndim != 4
            or w.dtype != np.float32
            or int(conv.attrs.get("group", 1)) != 1
            or w.shape[0] % self.block
            or w.shape[1] % self.block
        ):
            return False
        if conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            return False
        conv.attrs.setdefault("kernel_shape", list(w.shape[2:]))
        self._emit_conv(conv, gs.Constant(f"{conv.inputs[1].name}_nchwc", _blocked_filter(w, self.block)), w.shape[0])
        self.static += 1
        return True

    def residual_add(self, add) -> bool:
        if len(add.inputs) != 2 or not any(t.name in self.blocked for t in add.inputs):
            return False
        for a, b in (add.inputs, add.inputs[::-1]):
            if a.name not in self.blocked or b.shape is not None and len(b.shape) != 4:
                continue
            conv_out = self.blocked[a.name]
            conv = self.convs.get(conv_out.name)
            # The conv may take the sum only if nothing else reads its own result, and it has a bias input
            # (Sum is the fourth input) and no activation yet (the activation applies after the sum).
            if conv is None or len(conv.inputs) != 3 or "activation" in conv.attrs or a.outputs != [add]:
                continue
            if [n.op for n in conv_out.outputs] != ["ReorderOutput"] or self.blocked.get(b.name) is conv_out:
                continue
            # The other operand (the identity branch) is reordered once if it is still plain: one ReorderInput
            # instead of an Add, a Relu and the ReorderOutput/ReorderInput pair around them.
            out = self._take_activation(add.outputs[0], conv.attrs)
            conv.inputs.append(self.to_blocked(b))
            conv_out.outputs[0].outputs.clear()  # the conv's own ReorderOutput: nothing reads it any more
            add.outputs.clear()
            add.inputs.clear()
            self._publish(conv_out, out, self.channels[conv_out.name])
            self.residual += 1
            return True
        return False

    def global_average_pool(self, pool) -> bool:
        t = pool.inputs[0]
        if t.name not in self.blocked:
            return False
        pooled = pool.outputs[0]
        pool.outputs.clear()
        pool.inputs.clear()
        self.graph.layer(
            op="GlobalAveragePool",
            domain=NCHWC_DOMAIN,
            name=f"{pooled.name}_nchwc",
            inputs=[self.blocked[t.name]],
            outputs=[pooled],
        )
        return True

    def spatial_mean(self, mean) -> bool:
        """``ReduceMean`` over H and W without kept dims (a deploy-form predictor): the NCHWc pooling + Flatten."""
        import onnx_graphsurgeon as gs

        t = mean.inputs[0]
        if t.name not in self.blocked or int(mean.attrs.get("keepdims", 1)) != 0:
            return False
        axes = mean.attrs.get("axes")
        if axes is None and len(mean.inputs) > 1 and isinstance(mean.inputs[1], gs.Constant):
            axes = np.asarray(mean.inputs[1].values).tolist()
        if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
            return False
        pooled = mean.outputs[0]
        mean.outputs.clear()
        mean.inputs.clear()
        pooled4d = self.graph.layer(
            op="GlobalAveragePool",
            domain=NCHWC_DOMAIN,
            name=f"{pooled.name}_nchwc",
            inputs=[self.blocked[t.name]],
            outputs=[self._var(f"{pooled.name}_nchwc")],
        )[0]
        self.graph.layer(
            op="Flatten", name=f"{pooled.name}_flatten", inputs=[pooled4d], attrs={"axis": 1}, outputs=[pooled]
        )
        return True

    def run(self) -> None:
        self.graph.toposort()
        for node in list(self.graph.nodes):
            if node.domain not in (None, "", "ai.onnx") or not node.outputs:
                continue
            if node.op == "Conv":
                self.dynamic_conv(node) or self.static_conv(node)
            elif node.op == "Add":
                self.residual_add(node)
            elif node.op == "GlobalAveragePool":
                self.global_average_pool(node)
            elif node.op == "ReduceMean":
                self.spatial_mean(node)


def nchwc_dynamic_convs(model_proto, block: int | None = None):
    """Rewrite a ``matmul``-form graph onto onnxruntime's NCHWc kernels (see :class:`_NchwcRewriter`).

    Only convs with ``group == 1`` and channel counts divisible by the block qualify; the others (the grouped
    convs of Dy-mobile, odd widths, the batch-as-groups conv of a batch > 1) stay as they are, and onnxruntime
    still blocks the static convs it can. Returns ``(model_proto, number of dynamic convs rewritten)``.
    """
    import onnx
    import onnx_graphsurgeon as gs

    block = block or nchwc_block_size()
    if not block:
        raise ExportError("this onnxruntime has no NCHWc kernels (x86 builds have them); use the 'matmul' form")
    graph = gs.import_onnx(model_proto)
    rewriter = _NchwcRewriter(graph, block)
    rewriter.run()
    graph.cleanup().toposort()
    out_proto = gs.export_onnx(graph)
    if not any(o.domain == NCHWC_DOMAIN for o in out_proto.opset_import):
        out_proto.opset_import.append(onnx.helper.make_opsetid(NCHWC_DOMAIN, 1))
    del out_proto.metadata_props[:]
    out_proto.metadata_props.extend(model_proto.metadata_props)
    return out_proto, rewriter.dynamic
