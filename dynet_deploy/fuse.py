"""The graph-surgeon pass: every dynamic-convolution subgraph -> one ``DyNetDynamicConv2d`` node.

Two shapes of subgraph are recognised, by structure, never by tensor or module names:

**Kernel form (batch-as-groups)**, what our ``--form kernel`` export and every public implementation
(timm's CondConv2d, DY-CNN, ODConv, ...) emit at a fixed batch ``B``: a ``Conv`` whose weight is computed at
run time, reading ``x`` reshaped from ``[B, C_in, H, W]`` to ``[1, B*C_in, H, W]`` (a zero ``Pad`` before or
after the reshape is absorbed into the pads) with ``group = B*g``; its output reshaped (and/or transposed
with only size-1 axes moving) back to ``[B, C_out, H', W']``. The weight's producers are walked back
through linear-algebra and shape ops (Gemm, MatMul, Einsum, Mul, ReduceSum, Reshape, Transpose, ...) to
the one run-time tensor they depend on: the coefficients. The aggregation is then *measured*, not
pattern-matched: the subgraph from the coefficients to the weight (and to a computed bias) is run on
onnxruntime with basis coefficients to read off the bank ``[K, C_out, C_in/g, kH, kW]`` (whatever the
exporter's permutation), and checked on fresh random coefficients to be exactly the linear map the op
computes, for each of three coefficient layouts (per expert ``[B, K]``, per channel ``[B, C_out, K]`` or
``[B, K, C_out]``). A subgraph that is not such a map is left untouched and reported.

**Feature form** (our ``--form feature`` export): a ``Conv`` with a constant weight of ``K*C_out`` outputs,
a Reshape to ``[N, C_out, K, H', W']`` (or ``[N, K, C_out, ...]``), a Mul with the coefficients broadcast to
that shape and a ReduceSum over the K axis. The bank is the Conv weight, permuted.

After either, a bias added to the output (static, or aggregated from the same coefficients: a bias bank),
a BatchNormalization with constant statistics, and a Relu or Clip(0, 6) are folded into the node, each
only while the tensor before it has no other reader. Readers of the block input or of any intermediate
tensor outside the subgraph (a residual branch, the coefficient predictor) keep their tensors: the pass
re-points the subgraph's final tensor to the new node and lets ``cleanup`` drop what nothing reads.

When every batch-as-groups conv is fused, the batch becomes dynamic: graph inputs and outputs get a
symbolic ``N`` and Reshape shape constants with the export batch baked in are rewritten (``0`` = copy).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import FuseError
from .fileio import atomic_path, check_output_path
from .ort_custom_op import INT_ATTRIBUTES, OP_DOMAIN, OP_DOMAIN_VERSION, OP_TYPE, PLUGIN_NAMESPACE, PLUGIN_VERSION

BATCH_DIM_NAME = "N"
# Ops the weight/bias aggregation may be built from; the numerical check, not this list, decides.
AGGREGATION_OPS = {
    "Reshape", "Transpose", "MatMul", "Gemm", "Einsum", "Mul", "Add", "Sub", "Div", "Neg", "ReduceSum",
    "Unsqueeze", "Squeeze", "Flatten", "Expand", "Identity", "Cast", "Concat", "Slice", "Gather", "Shape",
    "Split", "Tile", "ConstantOfShape", "Equal", "Where", "Range",
}
RESHAPE_LIKE = {"Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"}
PROBE_RTOL = 1e-4


# ---- report ---------------------------------------------------------------------------------------------------

@dataclass
class FusedConv:
    name: str
    form: str  # "kernel" or "feature"
    c_in: int
    c_out: int
    num_bases: int
    kernel: tuple[int, int]
    groups: int
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilation: tuple[int, int]
    coeff_mode: str  # "expert" or "channel"
    has_bias_bank: bool
    has_bias: bool
    activation: str
    folded_batchnorm: bool = False

    def describe(self) -> str:
        extra = [f"groups={self.groups}"] if self.groups > 1 else []
        if self.stride != (1, 1):
            extra.append(f"stride={self.stride}")
        if self.dilation != (1, 1):
            extra.append(f"dilation={self.dilation}")
        if any(self.pads):
            extra.append(f"pads={self.pads}")
        if self.has_bias_bank:
            extra.append("bias bank")
        if self.has_bias:
            extra.append("bias")
        if self.folded_batchnorm:
            extra.append("BN folded")
        if self.activation != "none":
            extra.append(self.activation)
        return (
            f"{self.name}: fused ({self.form} form) {self.c_in}->{self.c_out} k={self.kernel[0]}x{self.kernel[1]} "
            f"K={self.num_bases} coeff per {self.coeff_mode}" + (", " + ", ".join(extra) if extra else "")
        )


@dataclass
class FuseReport:
    matched: int
    left: int
    details: list[str]
    path: Path | None = None
    candidates: int = 0
    batch: str = "unchanged"  # "dynamic", "static B (reason)", "unchanged"
    fused: list[FusedConv] = field(default_factory=list)
    model: Any = field(default=None, repr=False)  # the fused onnx.ModelProto

    def summary(self) -> str:
        if self.candidates == 0:
            return "no dynamic convolution found; the graph is unchanged"
        return f"dynamic conv candidates: {self.candidates}, matched: {self.matched}, left: {self.left}; batch: {self.batch}"


class _NoMatch(Exception):
    """A candidate that is not (provably) a dynamic conv; the message says why."""


# ---- loading, shape inference -------------------------------------------------------------------------------

def load_onnx(model_or_path):
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    path = Path(model_or_path)
    if not path.is_file():
        raise FuseError(f"{str(path)!r} does not exist (give the .onnx file written by `dynet-deploy export`)")
    try:
        proto = onnx.load(str(path), load_external_data=True)
    except Exception as exc:
        raise FuseError(f"{str(path)!r} is not an ONNX model ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not proto.graph.node and not proto.graph.input:
        raise FuseError(f"{str(path)!r} is not an ONNX model (no graph inside)")
    return proto


def _shape_twin(proto):
    """A copy with every DyNetDynamicConv2d replaced by a Conv of the same geometry (for shape inference)."""
    from onnx import helper, numpy_helper

    twin = type(proto).FromString(proto.SerializeToString())
    inits = {t.name: t for t in twin.graph.initializer}
    nodes = []
    for node in twin.graph.node:
        if node.op_type != OP_TYPE:
            nodes.append(node)
            continue
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        w = inits.get(node.input[2])
        if w is None:
            raise FuseError(f"node {node.name!r}: weight {node.input[2]!r} is not an initializer")
        dims = list(w.dims)
        wname = f"{node.name}__shape_twin_w"
        twin.graph.initializer.append(numpy_helper.from_array(np.zeros(dims[1:], np.float32), wname))
        nodes.append(helper.make_node(
            "Conv", [node.input[0], wname], list(node.output), name=node.name + "__twin",
            strides=[a.get("stride_h", 1), a.get("stride_w", 1)],
            pads=[a.get("pad_top", 0), a.get("pad_left", 0), a.get("pad_bottom", 0), a.get("pad_right", 0)],
            dilations=[a.get("dilation_h", 1), a.get("dilation_w", 1)], group=a.get("groups", 1),
        ))
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


# ---- small graph helpers -------------------------------------------------------------------------------------

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
    pads = _const(node.inputs[1]) if len(node.inputs) > 1 else node.attrs.get("pads")
    if pads is None:
        return None
    pads = [int(p) for p in np.asarray(pads).ravel()]
    if len(node.inputs) > 2 and node.inputs[2].name:
        value = _const(node.inputs[2])
        if value is None or np.any(value != 0):
            return None
    if len(node.inputs) > 3 and node.inputs[3].name:
        axes = _const(node.inputs[3])
        if axes is None:
            return None
        axes = [int(a) % 4 for a in np.asarray(axes).ravel()]
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


# ---- tracing the aggregation ---------------------------------------------------------------------------------

def _walk_back(tensors: Sequence, stop: Callable | None = None) -> tuple[list, list]:
    """Producers of ``tensors`` through AGGREGATION_OPS; returns (nodes in the subgraph, run-time leaf tensors)."""
    import onnx_graphsurgeon as gs

    nodes, leaves, seen = [], [], set()
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


class _Probe:
    """Runs the subgraph ``leaf -> outputs`` on onnxruntime, ``batch`` samples at a time."""

    def __init__(self, nodes, leaf, outputs, batch: int, sample_shape: Sequence[int], opset_imports) -> None:
        import onnx
        import onnx_graphsurgeon as gs
        import onnxruntime as ort

        self.batch = batch
        self.sample_shape = list(sample_shape)
        inp = gs.Variable("probe_coefficients", dtype=np.float32, shape=[batch, *self.sample_shape])
        mapping = {id(leaf): inp}
        outs = [gs.Variable(f"probe_out_{i}", dtype=np.float32) for i in range(len(outputs))]
        for t, o in zip(outputs, outs):
            mapping[id(t)] = o
        copies = []
        order = {id(n): i for i, n in enumerate(nodes)}
        for n in sorted(nodes, key=lambda n: order[id(n)]):
            copies.append(gs.Node(
                n.op, name=n.name, attrs=dict(n.attrs),
                inputs=[self._map(t, mapping) for t in n.inputs],
                outputs=[self._map(t, mapping) for t in n.outputs],
                domain=n.domain,
            ))
        g = gs.Graph(nodes=copies, inputs=[inp], outputs=outs, opset=_default_opset(opset_imports))
        g.cleanup().toposort()
        model = gs.export_onnx(g)
        del model.opset_import[:]
        model.opset_import.extend(opset_imports)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self.out_names = [o.name for o in outs]

    @staticmethod
    def _map(t, mapping):
        import onnx_graphsurgeon as gs

        if id(t) in mapping:
            return mapping[id(t)]
        if isinstance(t, gs.Constant) or not t.name:
            return t
        v = gs.Variable(t.name, dtype=t.dtype, shape=t.shape)
        mapping[id(t)] = v
        return v

    def __call__(self, coeffs: np.ndarray) -> list[np.ndarray]:
        """``coeffs`` is ``[S, M]`` for any S; returns each output for each sample, stacked over S."""
        results: list[list[np.ndarray]] = [[] for _ in self.out_names]
        for start in range(0, coeffs.shape[0], self.batch):
            chunk = coeffs[start:start + self.batch]
            real = chunk.shape[0]
            if real < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - real, chunk.shape[1]), chunk.dtype)])
            outs = self.session.run(self.out_names, {"probe_coefficients": chunk.reshape(self.batch, *self.sample_shape).astype(np.float32)})
            for i, o in enumerate(outs):
                results[i].append((o, real))
        return results  # type: ignore[return-value]


def _default_opset(opset_imports) -> int:
    for o in opset_imports:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 17


# ---- the match -------------------------------------------------------------------------------------------------

@dataclass
class _Match:
    form: str
    x: Any
    leaf: Any
    layout: str  # "expert", "tk" ([C_out, K] per sample), "kt" ([K, C_out] per sample)
    num_bases: int
    c_in: int
    c_out: int
    weight: np.ndarray  # [K, C_out, C_in/g, kH, kW]
    bias_bank: np.ndarray | None
    bias: np.ndarray | None
    groups: int
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilation: tuple[int, int]
    output: Any  # the tensor the fused node produces
    activation: int = 0
    folded_batchnorm: bool = False


def _conv_geometry(conv, extra_pads) -> tuple[tuple[int, int], tuple[int, int, int, int], tuple[int, int]]:
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad not in ("NOTSET", ""):
        raise _NoMatch(f"Conv auto_pad={auto_pad} (explicit pads only)")
    stride = tuple(_ints(conv.attrs.get("strides"), 2, 1))
    dil = tuple(_ints(conv.attrs.get("dilations"), 2, 1))
    p = _ints(conv.attrs.get("pads"), 4, 0)
    if len(stride) != 2 or len(dil) != 2 or len(p) != 4:
        raise _NoMatch("not a 2D Conv")
    pads = (p[0] + extra_pads[0], p[1] + extra_pads[1], p[2] + extra_pads[2], p[3] + extra_pads[3])
    return stride, pads, dil  # type: ignore[return-value]


def _absorb_pads(t) -> tuple[Any, list[int]]:
    """Walk up through zero Pads on the spatial axes; returns (the unpadded tensor, accumulated pads)."""
    acc = [0, 0, 0, 0]
    while True:
        p = _producer(t)
        if p is None or p.op != "Pad":
            return t, acc
        pads = _pad_spatial(p)
        if pads is None:
            return t, acc
        acc = [a + b for a, b in zip(acc, pads)]
        t = p.inputs[0]


def _post_ops(graph, t, c_out: int, batch: int | None, leaf) -> tuple[Any, list, tuple | None, int]:
    """Follow ``t`` through bias Adds, a BatchNormalization and Relu/Clip(0,6), each with ``t`` its sole reader.

    Returns (final tensor, bias terms (tensors added), (scale, shift) of a folded BN or None, activation).
    """
    import onnx_graphsurgeon as gs

    bias_terms = []
    bn = None
    act = 0
    while True:
        reader = _sole_reader(t, graph)
        if reader is None:
            break
        if reader.op == "Add" and bn is None and act == 0:
            other = reader.inputs[1] if reader.inputs[0] is t else reader.inputs[0]
            if not _is_channel_vector(other.shape, c_out, batch):
                break
            if not isinstance(other, gs.Constant) and _const(other) is None:
                _, leaves = _walk_back([other])
                if len(leaves) != 1 or leaves[0] is not leaf:
                    break
            bias_terms.append(other)
            t = reader.outputs[0]
            continue
        if reader.op == "BatchNormalization" and bn is None and act == 0 and len(reader.outputs) == 1:
            params = [_const(i) for i in reader.inputs[1:5]]
            if any(p is None for p in params) or params[0].shape != (c_out,):
                break
            gamma, beta, mean, var = (p.astype(np.float64) for p in params)
            scale = gamma / np.sqrt(var + float(reader.attrs.get("epsilon", 1e-5)))
            bn = (scale, beta - scale * mean)
            t = reader.outputs[0]
            continue
        kind = _relu_kind(reader)
        if kind is not None and act == 0:
            act = kind
            t = reader.outputs[0]
        break
    return t, bias_terms, bn, act


def _is_channel_vector(shape, c_out: int, batch: int | None) -> bool:
    """A bias-like operand: ``[C_out,1,1]``, ``[1|N, C_out, 1, 1]`` (N = ``batch``, or symbolic when ``batch`` is None)."""
    if shape is None:
        return False
    shape = list(shape)
    if len(shape) == 4 and batch is None and not isinstance(shape[0], (int, np.integer)):
        shape[0] = None
    elif not all(isinstance(d, (int, np.integer)) for d in shape):
        return False
    if len(shape) == 3:
        return shape == [c_out, 1, 1]
    if len(shape) == 4:
        return shape[1] == c_out and shape[2:] == [1, 1] and (shape[0] in (1, batch))
    return False


def _per_sample_bias(arr: np.ndarray, samples: int, c_out: int) -> np.ndarray:
    """A bias term's value as ``[samples, C_out]`` (broadcasting a batch of 1)."""
    a = np.asarray(arr, dtype=np.float64)
    if a.size == c_out:
        return np.broadcast_to(a.reshape(1, c_out), (samples, c_out))
    if a.size == samples * c_out:
        return a.reshape(samples, c_out)
    raise _NoMatch(f"bias term of shape {list(a.shape)} does not fit {samples} samples x {c_out} channels")


def _measure_aggregation(graph, leaf, weight_t, bias_ts, batch: int, c_out: int, j: int, layouts: Sequence[str], opset_imports):
    """Read off the bank (and bias bank / static bias) by probing; verify on random coefficients.

    Returns (layout, K, weight bank [K, C_out, J] or None, bias_bank [K, C_out] or None, bias [C_out] or None).
    """
    outputs = ([weight_t] if weight_t is not None else []) + list(bias_ts)
    sub_nodes, leaves = _walk_back(outputs, stop=lambda t: t is leaf)
    if any(lf is not leaf for lf in leaves):
        raise _NoMatch("the aggregation depends on more than one run-time tensor")
    leaf_shape = _int_shape(leaf)
    if leaf_shape is None:
        if weight_t is not None:
            raise _NoMatch(f"coefficient tensor {leaf.name!r} has no static shape")
        leaf_shape = [batch] + [int(d) for d in leaf.shape[1:]] if leaf.shape and all(isinstance(d, int) for d in leaf.shape[1:]) else None
        if leaf_shape is None:
            raise _NoMatch(f"coefficient tensor {leaf.name!r} has unknown per-sample shape")
    if leaf_shape[0] != batch:
        if weight_t is not None:
            raise _NoMatch(f"coefficient tensor {leaf.name!r} has batch {leaf_shape[0]}, the conv {batch}")
        leaf_shape = [batch] + leaf_shape[1:]
    sample = leaf_shape[1:]
    m = int(np.prod(sample)) if sample else 1
    try:
        probe = _Probe(sub_nodes, leaf, outputs, batch, sample, opset_imports)
    except Exception as exc:
        raise _NoMatch(f"the aggregation subgraph does not run on its own ({type(exc).__name__}: {str(exc)[:120]})") from None

    def evaluate(coeffs: np.ndarray) -> list[np.ndarray]:
        raw = probe(coeffs)
        s = coeffs.shape[0]
        per_out = []
        for i, chunks in enumerate(raw):
            parts = []
            for arr, real in chunks:
                a = np.asarray(arr, dtype=np.float64)
                if i == 0 and weight_t is not None:
                    parts.append(a.reshape(batch, c_out * j)[:real])
                else:
                    parts.append(_per_sample_bias(a, batch, c_out)[:real])
            per_out.append(np.concatenate(parts)[:s])
        return per_out

    rng = np.random.default_rng(0)
    reasons = []
    for layout in layouts:
        if layout == "expert":
            k = m
        else:
            if m % c_out:
                continue
            k = m // c_out
        if k < 1:
            continue
        basis = np.zeros((k + 1, m))  # row 0: all zero; row 1+k: basis k
        for kk in range(k):
            if layout == "expert":
                basis[kk + 1, kk] = 1.0
            elif layout == "tk":
                basis[kk + 1].reshape(c_out, k)[:, kk] = 1.0
            else:
                basis[kk + 1].reshape(k, c_out)[kk, :] = 1.0
        base_out = evaluate(basis)
        rand = rng.uniform(0.05, 1.0, size=(max(2, batch), m))
        rand_out = evaluate(rand)
        if layout == "expert":
            c_tk = np.repeat(rand.reshape(-1, 1, k), c_out, axis=1)
        elif layout == "tk":
            c_tk = rand.reshape(-1, c_out, k)
        else:
            c_tk = rand.reshape(-1, k, c_out).transpose(0, 2, 1)
        ok = True
        results = []
        for idx, (outs, actual) in enumerate(zip(base_out, rand_out)):
            zero = outs[0]
            deltas = outs[1:] - zero  # [K, C_out*J] or [K, C_out]
            if weight_t is not None and idx == 0:
                scale = np.abs(outs[1:]).max() if deltas.size else 0.0
                if np.abs(zero).max() > 1e-6 * max(scale, 1e-12):
                    ok = False
                    reasons.append(f"{layout}: the kernel has a part that does not scale with the coefficients")
                    break
                d = deltas.reshape(k, c_out, j)
                pred = np.einsum("stk,ktj->stj", c_tk, d).reshape(actual.shape)
                results.append(d)
            else:
                d = deltas.reshape(k, c_out)
                pred = zero[None, :] + np.einsum("stk,kt->st", c_tk, d)
                results.append((d, zero))
            err = np.abs(pred - actual).max() if actual.size else 0.0
            if err > PROBE_RTOL * max(np.abs(actual).max(), 1e-6):
                ok = False
                reasons.append(f"{layout}: not a coefficient-weighted sum of {k} bases (probe error {err:.2e})")
                break
        if not ok:
            continue
        bank = results[0] if weight_t is not None else None
        bias_bank = None
        bias = None
        for r in results[1 if weight_t is not None else 0:]:
            d, zero = r
            bias_bank = d if bias_bank is None else bias_bank + d
            bias = zero if bias is None else bias + zero
        return layout, k, bank, bias_bank, bias
    raise _NoMatch("; ".join(reasons) or f"coefficient tensor of {m} values per sample fits no layout for C_out={c_out}")


def _match_kernel_form(graph, conv, opset_imports) -> _Match:
    """Batch-as-groups: Conv(x as [1, B*C_in, H, W], weight computed at run time, group = B*g)."""
    w_t = conv.inputs[1]
    w_shape = _int_shape(w_t)
    if w_shape is None or len(w_shape) != 4:
        raise _NoMatch("the run-time weight has no static 4D shape")
    xin = conv.inputs[0]
    xin_shape = _int_shape(xin)
    if xin_shape is None or len(xin_shape) != 4:
        raise _NoMatch("the Conv input has no static 4D shape")
    if xin_shape[0] != 1:
        raise _NoMatch(f"the Conv input has batch {xin_shape[0]}, not the batch-as-groups [1, B*C, H, W]")
    # x: [B, C_in, H, W] -> (Pad) -> Reshape [1, B*C_in, H', W'] -> (Pad) -> Conv
    t, pads_after = _absorb_pads(xin)
    r = _producer(t)
    if r is None or r.op not in ("Reshape", "Flatten", "Unsqueeze"):
        raise _NoMatch("the Conv input is not a batch-folding Reshape of a [B, C, H, W] tensor")
    x = r.inputs[0]
    x_shape = _int_shape(x)
    t_shape = _int_shape(t)
    if x_shape is None or len(x_shape) != 4 or t_shape is None or t_shape[1] != x_shape[0] * x_shape[1] or t_shape[2:] != x_shape[2:]:
        raise _NoMatch(f"the reshape {x_shape} -> {t_shape} does not fold the batch into the channels")
    x, pads_before = _absorb_pads(x)
    extra = [a + b for a, b in zip(pads_after, pads_before)]
    b, c_in = x_shape[0], x_shape[1]
    group = int(conv.attrs.get("group", 1))
    if group % b:
        raise _NoMatch(f"Conv group {group} is not a multiple of the batch {b}")
    g = group // b
    if w_shape[0] % b or c_in != w_shape[1] * g:
        raise _NoMatch(f"weight {w_shape} does not fit batch {b}, {c_in} input channels and {g} groups")
    c_out = w_shape[0] // b
    kh, kw = w_shape[2], w_shape[3]
    stride, pads, dil = _conv_geometry(conv, extra)
    # output: [1, B*C_out, H', W'] -> Reshape/Transpose (size-1 axes only) -> [B, C_out, H', W']
    y = conv.outputs[0]
    y_shape = _int_shape(y)
    if y_shape is None:
        raise _NoMatch("the Conv output has no static shape")
    target = [b, c_out, y_shape[2], y_shape[3]]
    while _int_shape(y) != target:
        reader = _sole_reader(y, graph)
        if reader is None or reader.op not in ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"):
            raise _NoMatch(f"the Conv output is not reshaped back to {target}")
        if reader.op == "Transpose" and not _is_memory_preserving_transpose(reader):
            raise _NoMatch("the Conv output is transposed across the batch/channel layout")
        y = reader.outputs[0]
    # At batch 1 the Conv output already has the target shape, and the reshape back is a no-op: absorb it
    # (and any like it) so that a following activation is seen and folded.
    while True:
        reader = _sole_reader(y, graph)
        if reader is None or reader.op not in ("Reshape", "Squeeze", "Unsqueeze") or _int_shape(reader.outputs[0]) != target:
            break
        y = reader.outputs[0]
    # the coefficients: the one run-time tensor the weight depends on
    _, leaves = _walk_back([w_t])
    if len(leaves) != 1:
        names = ", ".join(repr(lf.name) for lf in leaves[:3])
        raise _NoMatch(f"the weight depends on {len(leaves)} run-time tensors ({names}), not one coefficient tensor")
    leaf = leaves[0]
    bias_ts = []
    if len(conv.inputs) > 2 and conv.inputs[2].name:
        cb = conv.inputs[2]
        if _const(cb) is None:
            _, bl = _walk_back([cb])
            if len(bl) != 1 or bl[0] is not leaf:
                raise _NoMatch("the Conv bias depends on another run-time tensor than the weight")
        bias_ts.append(cb)
    final, post_bias, bn, act = _post_ops(graph, y, c_out, b, leaf)
    bias_ts += post_bias
    dyn_bias = [t_ for t_ in bias_ts if _const(t_) is None]
    const_bias = [t_ for t_ in bias_ts if _const(t_) is not None]
    j = w_shape[1] * kh * kw
    layout, k, bank, bias_bank, bias = _measure_aggregation(
        graph, leaf, w_t, dyn_bias, b, c_out, j, ("tk", "kt", "expert"), opset_imports
    )
    for cb in const_bias:
        v = _per_sample_bias(_const(cb), b, c_out)
        if np.abs(v - v[:1]).max() > 0:
            raise _NoMatch("a constant bias differs between samples")
        bias = v[0] if bias is None else bias + v[0]
    weight = bank.reshape(k, c_out, w_shape[1], kh, kw)
    return _finish_match("kernel", x, leaf, layout, k, c_in, c_out, weight, bias_bank, bias, g, stride, pads, dil, final, bn, act)


def _finish_match(form, x, leaf, layout, k, c_in, c_out, weight, bias_bank, bias, groups, stride, pads, dil, final, bn, act) -> _Match:
    weight = np.asarray(weight, dtype=np.float64)
    if bias_bank is not None and not np.any(bias_bank):
        bias_bank = None
    if bias is not None and not np.any(bias):
        bias = None
    if bn is not None:
        scale, shift = bn
        weight = weight * scale.reshape(1, -1, 1, 1, 1)
        if bias_bank is not None:
            bias_bank = bias_bank * scale.reshape(1, -1)
        bias = shift + (scale * bias if bias is not None else 0.0)
    return _Match(
        form=form, x=x, leaf=leaf, layout=layout, num_bases=k, c_in=c_in, c_out=c_out,
        weight=weight.astype(np.float32),
        bias_bank=None if bias_bank is None else np.asarray(bias_bank, np.float32),
        bias=None if bias is None else np.asarray(bias, np.float32),
        groups=groups, stride=stride, pads=pads, dilation=dil, output=final, activation=act,
        folded_batchnorm=bn is not None,
    )


def _feature_form_chain(graph, conv):
    """(reshape node, mul node, reducesum node, pre-reshape bias Add or None) when ``conv`` starts the pattern."""
    t = conv.outputs[0]
    conv_add = None
    reader = _sole_reader(t, graph)
    if reader is not None and reader.op == "Add":
        conv_add = reader
        reader = _sole_reader(reader.outputs[0], graph)
    if reader is None or reader.op != "Reshape":
        return None
    rs = reader
    mul = _sole_reader(rs.outputs[0], graph)
    if mul is None or mul.op != "Mul":
        return None
    red = _sole_reader(mul.outputs[0], graph)
    if red is None or red.op != "ReduceSum":
        return None
    return rs, mul, red, conv_add


def _match_feature_form(graph, conv, chain, opset_imports) -> _Match:
    rs, mul, red, conv_add = chain
    w = _const(conv.inputs[1])
    if w is None or w.ndim != 4:
        raise _NoMatch("feature form: the Conv weight is not a 4D constant")
    r_shape = rs.outputs[0].shape
    if r_shape is None or len(r_shape) != 5 or not all(isinstance(d, (int, np.integer)) for d in r_shape[1:3]):
        raise _NoMatch("feature form: the Reshape after the Conv is not to [N, A, B, H, W] with known A, B")
    a_dim, b_dim = int(r_shape[1]), int(r_shape[2])
    if a_dim * b_dim != w.shape[0]:
        raise _NoMatch(f"feature form: Reshape to {a_dim}x{b_dim} does not split the Conv's {w.shape[0]} outputs")
    if red.attrs.get("keepdims", 1) != 0:
        raise _NoMatch("feature form: ReduceSum keeps the K axis")
    axes = _const(red.inputs[1]) if len(red.inputs) > 1 else red.attrs.get("axes")
    if axes is None or np.asarray(axes).size != 1:
        raise _NoMatch("feature form: ReduceSum over several or unknown axes")
    axis = int(np.asarray(axes).ravel()[0]) % 5
    if axis not in (1, 2):
        raise _NoMatch(f"feature form: ReduceSum over axis {axis}")
    k, c_out = (b_dim, a_dim) if axis == 2 else (a_dim, b_dim)
    coeff = mul.inputs[1] if mul.inputs[0] is rs.outputs[0] else mul.inputs[0]
    cshape = coeff.shape
    if cshape is None or len(cshape) != 5 or cshape[3:] != [1, 1] and list(cshape[3:]) != [1, 1]:
        raise _NoMatch("feature form: the coefficients are not broadcast as [N, A, B, 1, 1]")
    ca, cb = cshape[1], cshape[2]
    if axis == 2:
        if cb != k or ca not in (1, c_out):
            raise _NoMatch(f"feature form: coefficient shape {cshape} does not fit C_out={c_out}, K={k}")
        layout = "tk" if ca == c_out and c_out != 1 else "expert"
    else:
        if ca != k or cb not in (1, c_out):
            raise _NoMatch(f"feature form: coefficient shape {cshape} does not fit C_out={c_out}, K={k}")
        layout = "kt" if cb == c_out and c_out != 1 else "expert"
    if isinstance(cshape[0], int) and cshape[0] == 1 and isinstance(r_shape[0], int) and r_shape[0] != 1:
        raise _NoMatch("feature form: the coefficients are not per sample")
    leaf = coeff
    while True:
        p = _producer(leaf)
        if p is None or p.op not in RESHAPE_LIKE:
            break
        leaf = p.inputs[0]
    if _const(leaf) is not None:
        raise _NoMatch("feature form: the coefficients are constant")
    x, extra = _absorb_pads(conv.inputs[0])
    group = int(conv.attrs.get("group", 1))
    c_in = int(w.shape[1]) * group
    x_shape = x.shape
    if x_shape is not None and len(x_shape) == 4 and isinstance(x_shape[1], (int, np.integer)) and int(x_shape[1]) != c_in:
        raise _NoMatch(f"feature form: weight {list(w.shape)} with {group} groups does not fit {x_shape[1]} input channels")
    stride, pads, dil = _conv_geometry(conv, extra)
    kh, kw = w.shape[2], w.shape[3]
    j_shape = (w.shape[1], kh, kw)
    if axis == 2:
        bank = w.reshape(c_out, k, *j_shape).transpose(1, 0, 2, 3, 4)
    else:
        bank = w.reshape(k, c_out, *j_shape)
    # a bias inside the K-wide conv is a bias bank
    pre_bias = None
    if len(conv.inputs) > 2 and conv.inputs[2].name:
        pre_bias = _const(conv.inputs[2])
        if pre_bias is None:
            raise _NoMatch("feature form: the Conv bias is computed at run time")
    if conv_add is not None:
        other = conv_add.inputs[1] if conv_add.inputs[0] is conv.outputs[0] else conv_add.inputs[0]
        v = _const(other)
        if v is None or v.size != w.shape[0]:
            raise _NoMatch("feature form: the Add after the Conv is not a per-output constant")
        pre_bias = v.ravel() if pre_bias is None else pre_bias + v.ravel()
    bias_bank0 = None
    if pre_bias is not None:
        pb = np.asarray(pre_bias, np.float64).reshape(a_dim, b_dim)
        bias_bank0 = pb.T if axis == 2 else pb  # [K, C_out]
    y = red.outputs[0]
    batch = r_shape[0] if isinstance(r_shape[0], (int, np.integer)) else None
    final, bias_ts, bn, act = _post_ops(graph, y, c_out, batch, leaf)
    dyn_bias = [t for t in bias_ts if _const(t) is None]
    bias_bank, bias = None, None
    if dyn_bias:
        probe_batch = int(batch) if batch else 2
        _, _, _, bias_bank, bias = _measure_aggregation(graph, leaf, None, dyn_bias, probe_batch, c_out, 0, (layout,), opset_imports)
    for cb in bias_ts:
        v = _const(cb)
        if v is not None:
            v = np.asarray(v, np.float64).reshape(-1, c_out)
            if v.shape[0] != 1:
                raise _NoMatch("feature form: a constant bias differs between samples")
            bias = v[0] if bias is None else bias + v[0]
    if bias_bank0 is not None:
        bias_bank = bias_bank0 if bias_bank is None else bias_bank + bias_bank0
    return _finish_match("feature", x, leaf, layout, k, c_in, c_out, bank, bias_bank, bias, group, stride, pads, dil, final, bn, act)


# ---- the rewrite -----------------------------------------------------------------------------------------------

def _coefficients_for(graph, match: _Match, cache: dict):
    """The ``[N, C_c, K]`` tensor the node reads: the coefficient tensor, reshaped (and transposed) as needed."""
    import onnx_graphsurgeon as gs

    c_c = 1 if match.layout == "expert" else match.c_out
    key = (id(match.leaf), match.layout, c_c, match.num_bases)
    if key in cache:
        return cache[key]
    leaf = match.leaf
    shape = leaf.shape
    batch_dim = shape[0] if shape else None
    base = leaf.name
    if match.layout == "kt":
        mid = gs.Variable(f"{base}__as_NKC", dtype=np.float32, shape=[batch_dim, match.num_bases, c_c])
        graph.nodes.append(gs.Node("Reshape", name=f"{base}__reshape_NKC", inputs=[leaf, gs.Constant(f"{base}__shape_NKC", np.array([-1, match.num_bases, c_c], np.int64))], outputs=[mid]))
        out = gs.Variable(f"{base}__as_NCK", dtype=np.float32, shape=[batch_dim, c_c, match.num_bases])
        graph.nodes.append(gs.Node("Transpose", name=f"{base}__transpose_NCK", attrs={"perm": [0, 2, 1]}, inputs=[mid], outputs=[out]))
    elif shape is not None and len(shape) == 3 and list(shape[1:]) == [c_c, match.num_bases]:
        out = leaf
    else:
        out = gs.Variable(f"{base}__as_NCK", dtype=np.float32, shape=[batch_dim, c_c, match.num_bases])
        graph.nodes.append(gs.Node("Reshape", name=f"{base}__reshape_NCK", inputs=[leaf, gs.Constant(f"{base}__shape_NCK", np.array([-1, c_c, match.num_bases], np.int64))], outputs=[out]))
    cache[key] = out
    return out


def _rewrite(graph, match: _Match, name: str, index: int, cache: dict) -> FusedConv:
    import onnx_graphsurgeon as gs

    coeff = _coefficients_for(graph, match, cache)
    inputs = [match.x, coeff, gs.Constant(f"{name}_weight", match.weight)]
    if match.bias_bank is not None:
        inputs.append(gs.Constant(f"{name}_bias_bank", match.bias_bank))
    if match.bias is not None:
        inputs.append(gs.Constant(f"{name}_bias", match.bias))
    attrs: dict[str, Any] = {
        "stride_h": match.stride[0], "stride_w": match.stride[1],
        "pad_top": match.pads[0], "pad_left": match.pads[1], "pad_bottom": match.pads[2], "pad_right": match.pads[3],
        "dilation_h": match.dilation[0], "dilation_w": match.dilation[1], "groups": match.groups,
        "activation": match.activation, "has_bias_bank": int(match.bias_bank is not None), "has_bias": int(match.bias is not None),
    }
    attrs = {k: int(attrs[k]) for k in INT_ATTRIBUTES}
    attrs.update(plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE)
    out = match.output
    out.inputs.clear()  # detach only the subgraph's last node; every other reader keeps its tensors
    graph.nodes.append(gs.Node(OP_TYPE, name=name, domain=OP_DOMAIN, attrs=attrs, inputs=inputs, outputs=[out]))
    k, c_out = match.num_bases, match.c_out
    return FusedConv(
        name=name, form=match.form, c_in=match.c_in, c_out=c_out, num_bases=k,
        kernel=(int(match.weight.shape[3]), int(match.weight.shape[4])), groups=match.groups,
        stride=tuple(match.stride), pads=tuple(match.pads), dilation=tuple(match.dilation),  # type: ignore[arg-type]
        coeff_mode="expert" if match.layout == "expert" else "channel",
        has_bias_bank=match.bias_bank is not None, has_bias=match.bias is not None,
        activation={0: "none", 1: "relu", 2: "relu6"}[match.activation], folded_batchnorm=match.folded_batchnorm,
    )


# ---- making the batch dynamic ----------------------------------------------------------------------------------

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
        shapes = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
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


# ---- the pass ----------------------------------------------------------------------------------------------------

def fuse_dynamic_convs(model_or_path, out_path: str | Path | None = None, make_dynamic_batch: bool = True, verbose: bool = False):
    """Fuse every recognised dynamic conv of ``model_or_path`` into one ``DyNetDynamicConv2d`` node.

    Writes ``out_path`` atomically (weights embedded) when given. Returns a :class:`FuseReport`; when
    ``out_path`` is None the fused ``onnx.ModelProto`` is in ``report.model``.
    """
    import onnx
    import onnx_graphsurgeon as gs

    import onnxruntime as ort

    if out_path is not None:
        check_output_path(out_path, FuseError)
    original = load_onnx(model_or_path)
    ort.set_default_logger_severity(3)  # constant folding and probes run small sessions; keep them quiet
    try:
        proto = infer_shapes(original)
    except Exception as exc:
        raise FuseError(f"shape inference failed on the input graph: {str(exc)[:300]}") from None
    graph = gs.import_onnx(proto)
    opset_imports = [o for o in proto.opset_import]
    # Shapes resolve in rounds: folding Shape ops gives Reshape targets, inference then gives more shapes.
    for _ in range(4):
        before = len(graph.nodes)
        graph.fold_constants(error_ok=True).cleanup()
        proto = infer_shapes(gs.export_onnx(graph))
        graph = gs.import_onnx(proto)
        if len(graph.nodes) == before:
            break

    candidates = []
    for node in graph.nodes:
        if node.op != "Conv" or len(node.inputs) < 2:
            continue
        if _const(node.inputs[1]) is None:
            candidates.append(("kernel", node, None))
        else:
            chain = _feature_form_chain(graph, node)
            if chain is not None:
                candidates.append(("feature", node, chain))
    details: list[str] = []
    fused: list[FusedConv] = []
    left = 0
    cache: dict = {}
    used_names = {n.name for n in graph.nodes}
    for i, (form, conv, chain) in enumerate(candidates):
        label = conv.name or f"Conv#{i}"
        try:
            if form == "kernel":
                match = _match_kernel_form(graph, conv, opset_imports)
            else:
                match = _match_feature_form(graph, conv, chain, opset_imports)
        except _NoMatch as exc:
            left += 1
            details.append(f"{label}: left ({form} form candidate): {exc}")
            continue
        name = f"{label}/{OP_TYPE}" if label else f"{OP_TYPE}_{i}"
        while name in used_names:
            name += "_"
        used_names.add(name)
        info = _rewrite(graph, match, name, i, cache)
        fused.append(info)
        details.append(info.describe())

    report = FuseReport(matched=len(fused), left=left, details=details, candidates=len(candidates), fused=fused)
    if not candidates:
        report.details.append("no dynamic convolution found: no Conv with a run-time weight and no feature-fusion pattern")
        if out_path is not None:
            report.path = _write_unchanged(model_or_path, original, out_path)
        report.model = original
        return report

    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    del out.opset_import[:]
    out.opset_import.extend(o for o in opset_imports if o.domain != OP_DOMAIN)
    if fused:
        out.opset_import.append(onnx.helper.make_opsetid(OP_DOMAIN, OP_DOMAIN_VERSION))
    out.metadata_props.extend(original.metadata_props)
    out.ir_version = original.ir_version
    batch = _static_batch(out)
    if batch is not None and make_dynamic_batch:
        still_batched = [n.name for n in out.graph.node if n.op_type == "Conv" and not _is_initializer(out, n.input[1])]
        if still_batched:
            report.batch = f"static {batch} ({len(still_batched)} batch-as-groups Conv left)"
        else:
            out, report.batch = make_batch_dynamic(out, batch)
    elif batch is None:
        report.batch = "dynamic (as exported)"
    else:
        report.batch = f"static {batch} (kept)"
    try:
        out = infer_shapes(out)
        onnx.checker.check_model(out, full_check=True)
    except Exception as exc:
        raise FuseError(f"the fused graph fails onnx.checker / shape inference: {str(exc)[:400]}") from None
    if out_path is not None:
        with atomic_path(out_path, FuseError) as tmp:
            onnx.save(out, str(tmp))
        report.path = Path(out_path)
    report.model = out
    return report


def _is_initializer(proto, name: str) -> bool:
    return any(t.name == name for t in proto.graph.initializer) or any(n.op_type == "Constant" and n.output[0] == name for n in proto.graph.node)


def _static_batch(proto) -> int | None:
    batches = {_dim0(i) for i in proto.graph.input if i.type.tensor_type.shape.dim}
    if len(batches) == 1:
        (b,) = batches
        return b if isinstance(b, int) and b > 0 else None
    return None


def _write_unchanged(model_or_path, proto, out_path) -> Path:
    import onnx

    src = None if not isinstance(model_or_path, (str, Path)) else Path(model_or_path)
    uses_external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    with atomic_path(out_path, FuseError) as tmp:
        if src is not None and not uses_external and src.resolve() != Path(out_path).resolve():
            shutil.copyfile(src, tmp)
        else:
            onnx.save(proto, str(tmp))
    return Path(out_path)
