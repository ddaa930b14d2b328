"""The rewrite: each matched subgraph -> one DyNetDynamicConv2d node; the pass's entry point and report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FuseError, summarise
from ..fileio import atomic_path, check_output_path
from ..graph import load_onnx
from ..op.spec import OP_DOMAIN, OP_TYPE, Activation, attributes, gs_attributes, op_version, stamp_version
from ..provenance import stamp_producer
from .dynamic_batch import _dim0, make_batch_dynamic
from .graph import _const, _NoMatch, infer_shapes
from .matchers import _feature_form_chain, _Match, _match_feature_form, _match_kernel_form
from .passes import PostFuseReport, check_bank_dtype, post_fuse


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
    has_spatial: bool = False
    folded_filter_scale: bool = False

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
        if self.has_spatial:
            extra.append("spatial")
        if self.folded_filter_scale:
            extra.append("output scale folded into the coefficients")
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
    post: PostFuseReport | None = None  # the passes over the fused graph: epilogue folds, bank, op version

    def summary(self) -> str:
        if self.candidates == 0:
            return "no dynamic convolution found; the graph is unchanged"
        return f"dynamic conv candidates: {self.candidates}, matched: {self.matched}, left: {self.left}; batch: {self.batch}"


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
        graph.nodes.append(
            gs.Node(
                "Reshape",
                name=f"{base}__reshape_NKC",
                inputs=[leaf, gs.Constant(f"{base}__shape_NKC", np.array([-1, match.num_bases, c_c], np.int64))],
                outputs=[mid],
            )
        )
        out = gs.Variable(f"{base}__as_NCK", dtype=np.float32, shape=[batch_dim, c_c, match.num_bases])
        graph.nodes.append(
            gs.Node("Transpose", name=f"{base}__transpose_NCK", attrs={"perm": [0, 2, 1]}, inputs=[mid], outputs=[out])
        )
    elif shape is not None and len(shape) == 3 and list(shape[1:]) == [c_c, match.num_bases]:
        out = leaf
    else:
        out = gs.Variable(f"{base}__as_NCK", dtype=np.float32, shape=[batch_dim, c_c, match.num_bases])
        graph.nodes.append(
            gs.Node(
                "Reshape",
                name=f"{base}__reshape_NCK",
                inputs=[leaf, gs.Constant(f"{base}__shape_NCK", np.array([-1, c_c, match.num_bases], np.int64))],
                outputs=[out],
            )
        )
    cache[key] = out
    return out


def _spatial_for(graph, match: _Match, cache: dict):
    """The ``[N, kH*kW]`` tensor the node reads: the spatial factor reshaped, its values gathered into tap order
    where the probe measured another order."""
    import onnx_graphsurgeon as gs

    taps = int(match.weight.shape[3] * match.weight.shape[4])
    order = match.spatial_order or tuple(range(taps))
    key = ("spatial", id(match.spatial), order)
    if key in cache:
        return cache[key]
    t = match.spatial
    batch_dim = t.shape[0] if t.shape else None
    base = t.name
    out = gs.Variable(f"{base}__as_NT", dtype=np.float32, shape=[batch_dim, taps])
    graph.nodes.append(
        gs.Node(
            "Reshape",
            name=f"{base}__reshape_NT",
            inputs=[t, gs.Constant(f"{base}__shape_NT", np.array([-1, taps], np.int64))],
            outputs=[out],
        )
    )
    if order != tuple(range(taps)):
        flat, out = out, gs.Variable(f"{base}__by_tap", dtype=np.float32, shape=[batch_dim, taps])
        graph.nodes.append(
            gs.Node(
                "Gather",
                name=f"{base}__gather_taps",
                attrs={"axis": 1},
                inputs=[flat, gs.Constant(f"{base}__tap_order", np.array(order, np.int64))],
                outputs=[out],
            )
        )
    cache[key] = out
    return out


def _unit_coefficients(graph, spatial, cache: dict):
    """``[N, 1, 1]`` ones, N taken from the spatial input at run time: the coefficient of a weight that is the
    spatial factor times one kernel (ODConv with one kernel)."""
    import onnx_graphsurgeon as gs

    key = ("unit", id(spatial))
    if key in cache:
        return cache[key]
    base = spatial.name
    shape = gs.Variable(f"{base}__shape", dtype=np.int64, shape=[2])
    n = gs.Variable(f"{base}__n", dtype=np.int64, shape=[1])
    dims = gs.Variable(f"{base}__unit_coeff_shape", dtype=np.int64, shape=[3])
    out = gs.Variable(
        f"{base}__unit_coeff", dtype=np.float32, shape=[spatial.shape[0] if spatial.shape else None, 1, 1]
    )
    graph.nodes += [
        gs.Node("Shape", name=f"{base}__shape_of", inputs=[spatial], outputs=[shape]),
        gs.Node(
            "Gather",
            name=f"{base}__batch_of",
            attrs={"axis": 0},
            inputs=[shape, gs.Constant(f"{base}__zero", np.array([0], np.int64))],
            outputs=[n],
        ),
        gs.Node(
            "Concat",
            name=f"{base}__unit_dims",
            attrs={"axis": 0},
            inputs=[n, gs.Constant(f"{base}__one_one", np.array([1, 1], np.int64))],
            outputs=[dims],
        ),
        # Expand of an initializer (not ConstantOfShape's attribute): an fp16 conversion turns it fp16 with the rest
        gs.Node(
            "Expand",
            name=f"{base}__ones",
            inputs=[gs.Constant(f"{base}__one", np.ones((1, 1, 1), np.float32)), dims],
            outputs=[out],
        ),
    ]
    cache[key] = out
    return out


def _scaled_coefficients(graph, match: _Match, coeff, cache: dict):
    """``[N, C_out, K]``: the coefficients (``[N, C_c, K]``, or None for unit coefficients) times the per-sample,
    per-output-channel scale that followed the conv (``a_f[n, t] * c[n, t|0, k]``)."""
    import onnx_graphsurgeon as gs

    key = ("scaled", id(match.filter), id(coeff))
    if key in cache:
        return cache[key]
    f = match.filter
    base = f.name
    batch_dim = f.shape[0] if f.shape else None
    shape = gs.Constant(f"{base}__shape_NC1", np.array([-1, match.c_out, 1], np.int64))
    col = gs.Variable(f"{base}__as_NC1", dtype=np.float32, shape=[batch_dim, match.c_out, 1])
    graph.nodes.append(gs.Node("Reshape", name=f"{base}__reshape_NC1", inputs=[f, shape], outputs=[col]))
    out = col
    if coeff is not None:
        k = match.num_bases
        out = gs.Variable(f"{base}__times_{coeff.name}", dtype=np.float32, shape=[batch_dim, match.c_out, k])
        graph.nodes.append(gs.Node("Mul", name=f"{base}__scale_{coeff.name}", inputs=[col, coeff], outputs=[out]))
    cache[key] = out
    return out


def _rewrite(graph, match: _Match, name: str, index: int, cache: dict) -> FusedConv:
    import onnx_graphsurgeon as gs

    spatial = _spatial_for(graph, match, cache) if match.spatial is not None else None
    if match.leaf is None:
        assert spatial is not None  # a weight without coefficients is the spatial factor times one kernel
        coeff = None if match.filter is not None else _unit_coefficients(graph, spatial, cache)
    else:
        coeff = _coefficients_for(graph, match, cache)
    if match.filter is not None:
        coeff = _scaled_coefficients(graph, match, coeff, cache)
    inputs = [match.x, coeff, gs.Constant(f"{name}_weight", match.weight)]
    if match.bias_bank is not None:
        inputs.append(gs.Constant(f"{name}_bias_bank", match.bias_bank))
    if match.bias is not None:
        inputs.append(gs.Constant(f"{name}_bias", match.bias))
    if spatial is not None:
        inputs.append(spatial)
    values = attributes(
        stride=match.stride,
        pads=match.pads,
        dilation=match.dilation,
        groups=match.groups,
        activation=match.activation,
        has_bias_bank=match.bias_bank is not None,
        has_bias=match.bias is not None,
        has_spatial=spatial is not None,
    )
    # the node's own version; stamp_version gives every node of the graph the highest any needs
    attrs = gs_attributes(values, op_version(values))
    out = match.output
    out.inputs.clear()  # detach only the subgraph's last node; every other reader keeps its tensors
    graph.nodes.append(gs.Node(OP_TYPE, name=name, domain=OP_DOMAIN, attrs=attrs, inputs=inputs, outputs=[out]))
    k, c_out = match.num_bases, match.c_out
    return FusedConv(
        name=name,
        form=match.form,
        c_in=match.c_in,
        c_out=c_out,
        num_bases=k,
        kernel=(int(match.weight.shape[3]), int(match.weight.shape[4])),
        groups=match.groups,
        stride=match.stride,
        pads=match.pads,
        dilation=match.dilation,
        coeff_mode="expert" if match.layout == "expert" and match.filter is None else "channel",
        has_bias_bank=match.bias_bank is not None,
        has_bias=match.bias is not None,
        activation=Activation(match.activation).name.lower(),
        folded_batchnorm=match.folded_batchnorm,
        has_spatial=spatial is not None,
        folded_filter_scale=match.filter is not None,
    )


def fuse_dynamic_convs(
    model_or_path,
    out_path: str | Path | None = None,
    make_dynamic_batch: bool = True,
    verbose: bool = False,
    fold: bool = True,
    bank_dtype: str = "fp32",
    predictors: bool = True,
):
    """Fuse every recognised dynamic conv of ``model_or_path`` into one ``DyNetDynamicConv2d`` node.

    Then the passes over the fused graph (:mod:`.passes`): with ``fold`` the epilogue folds (a residual ``Add``
    and its activation, a ``GlobalAveragePool`` of the output: op version 2), and a weight bank stored as
    ``bank_dtype`` (``"fp32"``: as it is; ``"fp16"`` / ``"bf16"``: narrowed, op version 2); with ``predictors``
    each coefficient predictor's sigmoid next to its FC and its slices as one Split (exact, any op version).
    Writes ``out_path`` atomically (weights embedded) when given. Returns a :class:`FuseReport`; when
    ``out_path`` is None the fused ``onnx.ModelProto`` is in ``report.model``.
    """
    import onnx
    import onnx_graphsurgeon as gs
    import onnxruntime as ort

    check_bank_dtype(bank_dtype)
    if out_path is not None:
        check_output_path(out_path, FuseError)
    original = load_onnx(model_or_path, FuseError, hint="give the .onnx file written by `dynet-deploy export`")
    ort.set_default_logger_severity(3)  # constant folding and probes run small sessions; keep them quiet
    try:
        proto = infer_shapes(original)
    except Exception as exc:
        raise FuseError(f"shape inference failed on the input graph: {summarise(exc, 300)}") from None
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
        report.details.append(
            "no dynamic convolution found: no Conv with a run-time weight and no feature-fusion pattern"
        )
        if out_path is not None:
            report.path = _write_unchanged(model_or_path, original, out_path)
        report.model = original
        return report

    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    del out.opset_import[:]
    out.opset_import.extend(o for o in opset_imports if o.domain != OP_DOMAIN)
    stamp_version(out)  # the lowest op version the fused nodes need, on every node and the domain import
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
    out, report.post = post_fuse(out, fold=fold, bank_dtype=bank_dtype, predictors=predictors)
    report.details.extend(report.post.details())
    try:
        out = infer_shapes(out)
        onnx.checker.check_model(out, full_check=True)
    except Exception as exc:
        raise FuseError(f"the fused graph fails onnx.checker / shape inference: {str(exc)[:400]}") from None
    if out_path is not None:
        stamp_producer(out)
        with atomic_path(out_path, FuseError) as tmp:
            onnx.save(out, str(tmp))
        report.path = Path(out_path)
    report.model = out
    return report


def _is_initializer(proto, name: str) -> bool:
    return any(t.name == name for t in proto.graph.initializer) or any(
        n.op_type == "Constant" and n.output[0] == name for n in proto.graph.node
    )


def _static_batch(proto) -> int | None:
    batches = {_dim0(i) for i in proto.graph.input if i.type.tensor_type.shape.dim}
    if len(batches) == 1:
        (b,) = batches
        return b if isinstance(b, int) and b > 0 else None
    return None


def _write_unchanged(model_or_path, proto, out_path) -> Path:
    """A graph without dynamic convs, written as it was read (weights embedded), naming this tool its producer."""
    import onnx

    with atomic_path(out_path, FuseError) as tmp:
        stamp_producer(proto)
        onnx.save(proto, str(tmp))
    return Path(out_path)
