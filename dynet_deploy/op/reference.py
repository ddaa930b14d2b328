"""The op's math, once: ``y[n,t] = act(conv(x[n], sum_k c[n,t|0,k] w[k,t]) + sum_k c[n,t|0,k] bb[k,t] + b[t])``.

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


def fused_kernels(coeff: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-sample kernels ``[N, C_out, C_in/groups, kH, kW]`` from coeff ``[N, C_out|1, K]`` and the bank."""
    k, c_out = weight.shape[0], weight.shape[1]
    flat = weight.reshape(k, c_out, -1)
    if coeff.shape[1] == 1:  # per-expert coefficients: one GEMM for the whole bank
        fused = (coeff[:, 0] @ flat.reshape(k, -1)).reshape(coeff.shape[0], c_out, -1)
    else:
        fused = torch.einsum("nck,kcj->ncj", coeff, flat)
    return fused.reshape(coeff.shape[0], *weight.shape[1:])


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
) -> torch.Tensor:
    """The op on torch tensors; ``pads`` = (top, left, bottom, right). Shapes are checked, not assumed."""
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
    top, left, bottom, right = pads
    if (top, left) != (bottom, right):
        x = F.pad(x, (left, right, top, bottom))
        pad = (0, 0)
    else:
        pad = (top, left)
    fused = fused_kernels(coeff, weight).reshape(n * c_out, *weight.shape[2:])
    b = aggregated_bias(coeff, bias_bank, bias)
    if b is not None:
        b = b.expand(n, c_out).reshape(-1)
    y = F.conv2d(
        x.reshape(1, n * c_in, x.shape[2], x.shape[3]), fused, b, tuple(stride), pad, tuple(dilation), groups * n
    )
    return activate(y.reshape(n, c_out, y.shape[2], y.shape[3]), activation)


def dynamic_conv_numpy(
    x: np.ndarray,
    coeff: np.ndarray,
    weight: np.ndarray,
    bias_bank: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    **attrs: int,
) -> np.ndarray:
    """The op on float32 numpy arrays with the ONNX node's attributes (``has_*`` may be omitted)."""
    attrs.setdefault("has_bias_bank", int(bias_bank is not None))
    attrs.setdefault("has_bias", int(bias is not None))
    args = conv_arguments(check_attributes(attrs))

    def t(a):
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    with torch.no_grad():
        return dynamic_conv(t(x), t(coeff), t(weight), t(bias_bank), t(bias), **args).numpy()
