"""The two matchers: the kernel form (batch-as-groups Conv with a run-time weight) and the feature form
(K*C_out-output Conv, Mul with the coefficients, ReduceSum); what follows the conv (bias, BN, activation) is folded.

A kernel-form weight may depend on a second run-time tensor of kH*kW values per sample, or on such a tensor alone:
ODConv's spatial attention, which the op (version 2) takes as its ``spatial`` input. Which tensor plays which part is
measured (:mod:`.probe`), not read from names or op patterns. A Mul of the conv's output by a run-time
``[B, C_out, 1, 1]`` tensor (ODConv's filter attention) is folded into per-channel coefficients when the conv has no
bias of its own (``a_f[t] * sum_k c[k] W_k`` is exact; a bias before the Mul would be scaled per sample too), so that
the BatchNorm shift and activation after it fold as well; a Mul by a constant scalar or per-channel constant there
(ODConv's depthwise layers multiply by 1.0) folds into the bank."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .graph import (
    RESHAPE_LIKE,
    _const,
    _int_shape,
    _ints,
    _is_memory_preserving_transpose,
    _NoMatch,
    _pad_spatial,
    _producer,
    _relu_kind,
    _sole_reader,
    _walk_back,
)
from .probe import _is_channel_vector, _measure_aggregation, _per_sample_bias, per_sample_size


@dataclass
class _Match:
    form: str
    x: Any
    leaf: Any  # the coefficient tensor; None: the weight depends on the spatial factor alone (K = 1, coefficient 1)
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
    spatial: Any = None  # the spatial factor's tensor (kH*kW values per sample), or None
    spatial_order: tuple[int, ...] | None = None  # the op's spatial[n, t] is the tensor's value order[t] of sample n
    filter: Any = None  # a [B, C_out, 1, 1] run-time scale of the output folded into the coefficients, or None


def _readings(leaves, batch: int, taps: int) -> list[tuple[Any, Any]]:
    """The (coefficients, spatial factor) roles the weight's run-time tensors may play, the cheapest first.

    One tensor: a spatial factor alone when it has kH*kW values per sample (ODConv with one kernel), else (or when
    that is not what the probe measures) coefficients. Two: one of them a spatial factor of kH*kW values per sample
    and the other the coefficients (ODConv). The probe decides which reading, if any, is the op's map.
    """
    if len(leaves) == 1:
        (t,) = leaves
        return ([(None, t)] if taps > 1 and per_sample_size(t, batch) == taps else []) + [(t, None)]
    if len(leaves) == 2 and taps > 1:
        a, b = leaves
        found = [(c, s) for c, s in ((a, b), (b, a)) if per_sample_size(s, batch) == taps]
        if found:
            return found
    names = ", ".join(repr(lf.name) for lf in leaves[:3])
    raise _NoMatch(
        f"the weight depends on {len(leaves)} run-time tensors ({names}), not one coefficient tensor "
        f"(and at most one spatial factor of kH*kW = {taps} values per sample)"
    )


def _output_scale(graph, y, c_out: int, batch: int) -> tuple[Any, np.ndarray | None, Any]:
    """``(run-time scale, constant scale [C_out], the Mul's output)`` when ``y``'s only reader multiplies it by a
    run-time ``[B, C_out, 1, 1]`` tensor (ODConv's filter attention) or by a constant scalar / per-channel
    ``[1|, C_out, 1, 1]`` value; else ``(None, None, y)``. Being ``y``'s only reader, the Mul's other operand
    cannot be computed from ``y``."""
    reader = _sole_reader(y, graph)
    if reader is None or reader.op != "Mul" or len(reader.inputs) != 2:
        return None, None, y
    other = reader.inputs[1] if reader.inputs[0] is y else reader.inputs[0]
    value = _const(other)
    if value is not None:
        v = np.asarray(value, np.float64)
        if v.size == 1 and v.ndim <= 4:
            return None, np.full(c_out, float(v.ravel()[0])), reader.outputs[0]
        if v.shape in ((c_out, 1, 1), (1, c_out, 1, 1)):
            return None, v.reshape(c_out), reader.outputs[0]
        return None, None, y
    if _int_shape(other) != [batch, c_out, 1, 1]:
        return None, None, y
    return other, None, reader.outputs[0]


def _conv_geometry(conv, extra_pads) -> tuple[tuple[int, int], tuple[int, int, int, int], tuple[int, int]]:
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad not in ("NOTSET", ""):
        raise _NoMatch(f"Conv auto_pad={auto_pad} (explicit pads only)")
    s = _ints(conv.attrs.get("strides"), 2, 1)
    d = _ints(conv.attrs.get("dilations"), 2, 1)
    p = _ints(conv.attrs.get("pads"), 4, 0)
    if len(s) != 2 or len(d) != 2 or len(p) != 4:
        raise _NoMatch("not a 2D Conv")
    pads = (p[0] + extra_pads[0], p[1] + extra_pads[1], p[2] + extra_pads[2], p[3] + extra_pads[3])
    return (s[0], s[1]), pads, (d[0], d[1])


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
            params = [p for p in (_const(i) for i in reader.inputs[1:5]) if p is not None]
            if len(params) != 4 or params[0].shape != (c_out,):
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
    if (
        x_shape is None
        or len(x_shape) != 4
        or t_shape is None
        or t_shape[1] != x_shape[0] * x_shape[1]
        or t_shape[2:] != x_shape[2:]
    ):
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
        if (
            reader is None
            or reader.op not in ("Reshape", "Squeeze", "Unsqueeze")
            or _int_shape(reader.outputs[0]) != target
        ):
            break
        y = reader.outputs[0]
    # the coefficients (and a spatial factor): the run-time tensors the weight depends on
    _, leaves = _walk_back([w_t])
    readings = _readings(leaves, b, kh * kw)
    reasons = []
    for leaf, spatial in readings:
        try:
            return _measure_kernel_form(
                graph, conv, opset_imports, x, leaf, spatial, b, c_in, c_out, g, w_shape, stride, pads, dil, y
            )
        except _NoMatch as exc:
            if len(readings) == 1:
                raise
            role = "coefficients" if spatial is None else "spatial factor" if leaf is None else "coefficients + spatial"
            reasons.append(f"as {role}: {exc}")
    raise _NoMatch("; ".join(reasons))


def _measure_kernel_form(
    graph, conv, opset_imports, x, leaf, spatial, b, c_in, c_out, g, w_shape, stride, pads, dil, y
) -> _Match:
    """The kernel form's aggregation measured for one reading of its run-time tensors (see :func:`_readings`)."""
    w_t = conv.inputs[1]
    kh, kw = w_shape[2], w_shape[3]
    bias_ts = []
    if len(conv.inputs) > 2 and conv.inputs[2].name:
        cb = conv.inputs[2]
        if _const(cb) is None:
            _, bl = _walk_back([cb])
            if len(bl) != 1 or leaf is None or bl[0] is not leaf:
                raise _NoMatch("the Conv bias depends on another run-time tensor than the coefficients")
        bias_ts.append(cb)
    filt, const_scale = None, None
    if not bias_ts:  # no bias before the output's scale: fold it (after a run-time one, no run-time bias)
        filt, const_scale, y = _output_scale(graph, y, c_out, b)
    final, post_bias, bn, act = _post_ops(graph, y, c_out, b, leaf if filt is None else None)
    bias_ts += post_bias
    dyn_bias = [t_ for t_ in bias_ts if _const(t_) is None]
    const_bias = [t_ for t_ in bias_ts if _const(t_) is not None]
    j = w_shape[1] * kh * kw
    agg = _measure_aggregation(
        graph, leaf, w_t, dyn_bias, b, c_out, j, ("tk", "kt", "expert"), opset_imports, spatial=spatial, taps=kh * kw
    )
    layout, k, bank, bias_bank, bias = agg.layout, agg.num_bases, agg.bank, agg.bias_bank, agg.bias
    assert bank is not None  # measured with the weight
    for cb in const_bias:
        value = _const(cb)
        assert value is not None  # const_bias holds the constant terms only
        v = _per_sample_bias(value, b, c_out)
        if np.abs(v - v[:1]).max() > 0:
            raise _NoMatch("a constant bias differs between samples")
        bias = v[0] if bias is None else bias + v[0]
    weight = bank.reshape(k, c_out, w_shape[1], kh, kw)
    if const_scale is not None:  # every bias term comes after the Mul: the scale is the kernels' alone
        weight = weight * const_scale.reshape(1, c_out, 1, 1, 1)
    match = _finish_match(
        "kernel", x, leaf, layout, k, c_in, c_out, weight, bias_bank, bias, g, stride, pads, dil, final, bn, act
    )
    match.spatial, match.spatial_order, match.filter = spatial, agg.spatial_order, filt
    return match


def _finish_match(
    form, x, leaf, layout, k, c_in, c_out, weight, bias_bank, bias, groups, stride, pads, dil, final, bn, act
) -> _Match:
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
        form=form,
        x=x,
        leaf=leaf,
        layout=layout,
        num_bases=k,
        c_in=c_in,
        c_out=c_out,
        weight=weight.astype(np.float32),
        bias_bank=None if bias_bank is None else np.asarray(bias_bank, np.float32),
        bias=None if bias is None else np.asarray(bias, np.float32),
        groups=groups,
        stride=stride,
        pads=pads,
        dilation=dil,
        output=final,
        activation=act,
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
    if (
        x_shape is not None
        and len(x_shape) == 4
        and isinstance(x_shape[1], (int, np.integer))
        and int(x_shape[1]) != c_in
    ):
        raise _NoMatch(
            f"feature form: weight {list(w.shape)} with {group} groups does not fit {x_shape[1]} input channels"
        )
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
    batch = int(r_shape[0]) if isinstance(r_shape[0], (int, np.integer)) else None
    final, bias_ts, bn, act = _post_ops(graph, y, c_out, batch, leaf)
    dyn_bias = [t for t in bias_ts if _const(t) is None]
    bias_bank, bias = None, None
    if dyn_bias:
        probe_batch = int(batch) if batch else 2
        agg = _measure_aggregation(graph, leaf, None, dyn_bias, probe_batch, c_out, 0, (layout,), opset_imports)
        bias_bank, bias = agg.bias_bank, agg.bias
    for cb in bias_ts:
        v = _const(cb)
        if v is not None:
            v = np.asarray(v, np.float64).reshape(-1, c_out)
            if v.shape[0] != 1:
                raise _NoMatch("feature form: a constant bias differs between samples")
            bias = v[0] if bias is None else bias + v[0]
    if bias_bank0 is not None:
        bias_bank = bias_bank0 if bias_bank is None else bias_bank + bias_bank0
    return _finish_match(
        "feature", x, leaf, layout, k, c_in, c_out, bank, bias_bank, bias, group, stride, pads, dil, final, bn, act
    )
