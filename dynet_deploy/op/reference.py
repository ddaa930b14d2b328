"""The op's math, once: ``y[n,t] = act(conv(x[n], s[n] * sum_k c[n,t|0,k] w[k,t]) + sum_k c[n,t|0,k] bb[k,t] + b[t]
+ r[n,t])`` and ``mean[n,t] = mean(y[n,t])``, the spatial ``s``, residual ``r`` and mean of op version 2 optional.

Written in torch on tensors (:func:`dynamic_conv`, used by :class:`~dynet_deploy.nn.DynamicConv2d`'s kernel path,
the GPU check) with a numpy front (:func:`dynamic_conv_numpy`) taking the ONNX node's
attributes. Kernel fusion of the whole batch, then one batch-as-groups ``conv2d``; the C++ reference in
plugins/dynamic_conv/ is the independent oracle both are tested against.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .spec import OP_TYPE, Activation, check_attributes, conv_arguments


def fused_kernels(coeff: torch.Tensor, weight: torch.Tensor, spatial: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample kernels ``[N, C_out, C_in/groups, kH, kW]`` from coeff ``[N, C_out|1, K]`` and the bank, each tap
    ``(i, j)`` scaled by ``spatial[n, i*kW + j]`` when given (op version 2)."""
    k, c_out = weight.shape[0], weight.shape[1]
    weight = weight.to(coeff.dtype)  # a narrowed bank is widened exactly
    flat = weight.reshape(k, c_out, -1)
    if coeff.shape[1] == 1:  # per-expert coefficients: one GEMM for the whole bank
        fused = (coeff[:, 0] @ flat.reshape(k, -1)).reshape(coeff.shape[0], c_out, -1)
    else:
        fused = torch.einsum("nck,kcj->ncj", coeff, flat)
    fused = fused.reshape(coeff.shape[0], *weight.shape[1:])
    if spatial is not None:
        kh, kw = weight.shape[3], weight.shape[4]
        fused = fused * spatial.reshape(coeff.shape[0], 1, 1, kh, kw)
    return fused


def aggregated_bias(
    coeff: torch.Tensor, bias_bank: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor | None:
    """``sum_k coeff[n,t|0,k] bias_bank[k,t] + bias[t]`` as ``[N, C_out]`` (``[1, C_out]`` for bias alone), or None."""
    out = None
    if bias_bank is not None:
        out = coeff[:, 0] @ bias_bank if coeff.shape[1] == 1 else torch.einsum("nck,kc->nc", coeff, bias_bank)
    if bias is not None:
        out = bias.unsqueeze(0) if out is None else out + bias
    return out


def activate(y: torch.Tensor, activation: int) -> torch.Tensor:
    if activation == Activation.NONE:
        return y
    if activation == Activation.RELU:
        return torch.relu(y)  # propagates NaN, as the kernels must
    if activation == Activation.RELU6:
        return torch.clamp(y, 0.0, 6.0)
    raise ValueError(f"{OP_TYPE}: unknown activation {activation} (0 none, 1 relu, 2 relu6)")


def dynamic_conv(
    x: torch.Tensor,
    coeff: torch.Tensor,
    weight: torch.Tensor,
    bias_bank: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    stride: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilation: Sequence[int] = (1, 1),
    groups: int = 1,
    activation: int = 0,
    spatial: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """The op on torch tensors; ``pads`` = (top, left, bottom, right). Shapes are checked, not assumed.

    ``y`` only; the optional ``mean`` output is :func:`channel_mean` of it."""
    n, c_in = x.shape[0], x.shape[1]
    k, c_out = weight.shape[0], weight.shape[1]
    if x.dim() != 4 or weight.dim() != 5:
        raise ValueError(
            f"{OP_TYPE}: x must be [N, C_in, H, W] and weight [K, C_out, C_in/groups, kH, kW], "
            f"got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    if coeff.dim() != 3 or coeff.shape[0] != n or coeff.shape[2] != k or coeff.shape[1] not in (1, c_out):
        raise ValueError(f"{OP_TYPE}: coeff must be [N={n}, {c_out} or 1, K={k}], got {tuple(coeff.shape)}")
    if c_in != weight.shape[2] * groups:
        raise ValueError(
            f"{OP_TYPE}: x has {c_in} channels, weight expects {weight.shape[2] * groups} (groups={groups})"
        )
    kh, kw = weight.shape[3], weight.shape[4]
    if spatial is not None and tuple(spatial.shape) != (n, kh * kw):
        raise ValueError(f"{OP_TYPE}: spatial must be [N={n}, kH*kW={kh * kw}], got {tuple(spatial.shape)}")
    top, left, bottom, right = pads
    if (top, left) != (bottom, right):
        x = F.pad(x, (left, right, top, bottom))
        pad = (0, 0)
    else:
        pad = (top, left)
    fused = fused_kernels(coeff, weight, spatial).reshape(n * c_out, *weight.shape[2:])
    b = aggregated_bias(coeff, bias_bank, bias)
    if b is not None:
        b = b.expand(n, c_out).reshape(-1)
    y = F.conv2d(
        x.reshape(1, n * c_in, x.shape[2], x.shape[3]), fused, b, tuple(stride), pad, tuple(dilation), groups * n
    )
    y = y.reshape(n, c_out, y.shape[2], y.shape[3])
    if residual is not None:
        if residual.shape != y.shape:
            raise ValueError(f"{OP_TYPE}: residual must be {list(y.shape)} (y's shape), got {list(residual.shape)}")
        y = y + residual
    return activate(y, activation)


def channel_mean(y: torch.Tensor) -> torch.Tensor:
    """The op's ``mean`` output: ``GlobalAveragePool(y)``, ``[N, C_out, 1, 1]``, accumulated in float64."""
    return y.double().mean(dim=(2, 3), keepdim=True).to(y.dtype)


def dynamic_conv_numpy(
    x: np.ndarray,
    coeff: np.ndarray,
    weight: np.ndarray,
    bias_bank: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    spatial: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    **attrs: int,
):
    """The op on float32 numpy arrays with the ONNX node's attributes (``has_*`` may be omitted).

    ``weight`` may be float16 or bfloat16 (``ml_dtypes.bfloat16``, as onnx reads a BFLOAT16 initializer): a
    narrowed bank, widened exactly. Returns ``y``, or ``(y, mean)`` when ``has_mean`` is 1."""
    for name, value in (("bias_bank", bias_bank), ("bias", bias), ("spatial", spatial), ("residual", residual)):
        attrs.setdefault(f"has_{name}", int(value is not None))
        if bool(attrs[f"has_{name}"]) != (value is not None):
            raise ValueError(f"{OP_TYPE}: has_{name}={attrs[f'has_{name}']} but {name} is {type(value).__name__}")
    checked = check_attributes(attrs)
    args = conv_arguments(checked)

    def t(a):
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    with torch.no_grad():
        y = dynamic_conv(
            t(x),
            t(coeff),
            t(np.asarray(weight).astype(np.float32)),
            t(bias_bank),
            t(bias),
            **args,
            spatial=t(spatial),
            residual=t(residual),
        )
        return (y.numpy(), channel_mean(y).numpy()) if checked["has_mean"] else y.numpy()
