"""Dynamic convolution: DyNet's per-channel form and the CondConv / DY-CNN per-expert form.

DyNet (arXiv 2004.10694) gives every output channel ``t`` its own ``K`` basis kernels ``w[k, t]`` and
predicts per-sample coefficients ``eta[n, t, k]``; the sample's kernel is ``sum_k eta[n,t,k] w[k,t]``.
CondConv / DY-CNN are the special case where one coefficient per basis kernel is shared by all output
channels (``coeff`` of shape ``[N, 1, K]`` or ``[N, K]``). A layer built with ``spatial=True`` also takes a
per-sample spatial attention ``[N, kH*kW]`` scaling each tap of the fused kernel (ODConv's ``a_s``, op version 2;
see :mod:`dynet_deploy.nn.odconv`).

The coefficients come from outside the layer (see :mod:`dynet_deploy.nn.cpm`), because one coefficient
prediction module may feed several dynamic layers of a block.

Three forward paths compute the same function:

``"feature"``  feature-map fusion, the paper's training form: one convolution with ``K * C_out``
               outputs, then the coefficient-weighted sum. ``K`` times the conv FLOPs, standard ops only,
               any batch size: this is the portable ONNX export form. A layer with a spatial attention has
               no feature form (a tap-wise scale of the kernel is not a sum of whole-kernel outputs).
``"kernel"``   kernel fusion then a per-sample convolution, the inference form: the fused kernels of the
               whole batch are computed first, then one grouped conv with the batch folded into the
               channels (the "batch-as-groups" trick). About one ordinary conv of FLOPs.
``"loop"``     the oracle: a plain Python loop over samples, one ``conv2d`` per sample.
``"native"``   the op's native kernels through the PyTorch custom op ``torch.ops.dynet.dynamic_conv2d``
               (:mod:`dynet_deploy.op.torch_op`: the fast CPU kernel, the CUDA tactics); inference only.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..op import reference
from ..op.spec import ACTIVATIONS  # noqa: F401  (re-exported: the activation names layers accept)

FORWARD_MODES = ("feature", "kernel", "loop", "native")


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(i) for i in v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v}")
    return v  # type: ignore[return-value]


def _pads(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    """Normalise padding to (top, left, bottom, right)."""
    if isinstance(padding, int):
        return (padding,) * 4
    p = tuple(int(i) for i in padding)
    if len(p) == 2:
        return (p[0], p[1], p[0], p[1])
    if len(p) == 4:
        return p  # type: ignore[return-value]
    raise ValueError(f"padding must be an int, (ph, pw) or (top, left, bottom, right); got {padding}")


class DynamicConv2d(nn.Module):
    """A convolution whose kernel is a per-sample combination of ``num_bases`` basis kernels.

    Args:
        in_channels, out_channels, kernel_size, stride, dilation, groups: as ``nn.Conv2d``.
        padding: int, (ph, pw), or asymmetric (top, left, bottom, right).
        num_bases: ``K``, the number of basis kernels (DyNet's ``g_t``; 6 in every paper model).
        coeff_mode: ``"channel"`` (DyNet: coefficients ``[N, C_out, K]``) or ``"expert"``
            (CondConv / DY-CNN: ``[N, K]`` or ``[N, 1, K]``, shared by all output channels).
        bias_bank: a ``[K, C_out]`` bias aggregated with the same coefficients (CondConv's routed bias).
        bias: a static ``[C_out]`` bias added as is (appears when a BatchNorm is folded in).
        mode: the forward path, one of ``"feature"``, ``"kernel"``, ``"loop"``, ``"native"``.
        spatial: the layer takes a spatial attention ``[N, kH*kW]`` (tap ``(i, j)`` at ``i*kW + j``) with every call.

    ``weight`` has shape ``[K, C_out, C_in/groups, kH, kW]``, the layout of the ``DyNetDynamicConv2d`` op.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        num_bases: int = 6,
        coeff_mode: str = "channel",
        bias_bank: bool = False,
        bias: bool = False,
        mode: str = "kernel",
        spatial: bool = False,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels {in_channels} and out_channels {out_channels} must be divisible by groups {groups}"
            )
        if coeff_mode not in ("channel", "expert"):
            raise ValueError(f"coeff_mode must be 'channel' or 'expert', got {coeff_mode!r}")
        if num_bases < 1:
            raise ValueError("num_bases must be >= 1")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.pads = _pads(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.num_bases = num_bases
        self.coeff_mode = coeff_mode
        self.spatial = bool(spatial)
        self.mode = mode
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(torch.empty(num_bases, out_channels, in_channels // groups, kh, kw))
        self.bias_bank = nn.Parameter(torch.zeros(num_bases, out_channels)) if bias_bank else None
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.reset_parameters()

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in FORWARD_MODES:
            raise ValueError(f"mode must be one of {FORWARD_MODES}, got {value!r}")
        if self.spatial and value in ("feature", "native"):
            raise ValueError(
                f"a DynamicConv2d with a spatial attention has no {value!r} path (the feature form cannot scale the "
                "kernel's taps; the native path runs op version 1): use 'kernel' or 'loop'"
            )
        self._mode = value

    @property
    def coeff_channels(self) -> int:
        return self.out_channels if self.coeff_mode == "channel" else 1

    @property
    def symmetric_padding(self) -> tuple[int, int] | None:
        t, l, b, r = self.pads
        return (t, l) if (t, l) == (b, r) else None

    def reset_parameters(self) -> None:
        for k in range(self.num_bases):
            nn.init.kaiming_uniform_(self.weight[k], a=math.sqrt(5))
        fan_in = self.weight[0, 0].numel()
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        if self.bias_bank is not None:
            nn.init.uniform_(self.bias_bank, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"pads={self.pads}, dilation={self.dilation}, groups={self.groups}, num_bases={self.num_bases}, "
            f"coeff_mode={self.coeff_mode}, mode={self.mode}"
        )
        if self.bias_bank is not None:
            s += ", bias_bank=True"
        if self.bias is not None:
            s += ", bias=True"
        if self.spatial:
            s += ", spatial=True"
        return s

    # -- helpers ---------------------------------------------------------------------------------
    def _check_coeff(self, x: torch.Tensor, coeff: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"DynamicConv2d expects x of shape [N, C, H, W], got {tuple(x.shape)}")
        if coeff.dim() == 2:
            coeff = coeff.unsqueeze(1)
        if coeff.dim() != 3 or coeff.shape[-1] != self.num_bases or coeff.shape[1] not in (1, self.out_channels):
            raise ValueError(
                f"coeff must be [N, {self.out_channels} or 1, {self.num_bases}] (or [N, {self.num_bases}]), "
                f"got {tuple(coeff.shape)}"
            )
        if self.coeff_mode == "expert" and coeff.shape[1] != 1:
            raise ValueError(f"per-expert coefficients must be [N, 1, K] or [N, K], got {tuple(coeff.shape)}")
        return coeff

    def _check_spatial(self, x: torch.Tensor, spatial: torch.Tensor | None) -> torch.Tensor | None:
        if not self.spatial:
            if spatial is not None:
                raise ValueError("this DynamicConv2d was built without a spatial attention (spatial=False)")
            return None
        taps = self.kernel_size[0] * self.kernel_size[1]
        if spatial is None:
            raise ValueError(f"this DynamicConv2d takes a spatial attention [N, {taps}] with every call")
        spatial = spatial.reshape(spatial.shape[0], -1)
        if spatial.shape[1] != taps or spatial.shape[0] != x.shape[0]:
            raise ValueError(f"spatial must be [N={x.shape[0]}, kH*kW={taps}], got {tuple(spatial.shape)}")
        return spatial

    def _pad_input(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        sym = self.symmetric_padding
        if sym is not None:
            return x, sym
        t, l, b, r = self.pads
        return F.pad(x, (l, r, t, b)), (0, 0)

    def aggregated_bias(self, coeff: torch.Tensor) -> torch.Tensor | None:
        """``sum_k coeff[n,t,k] bias_bank[k,t] + bias[t]`` as ``[N, C_out]``, or None."""
        return reference.aggregated_bias(coeff, self.bias_bank, self.bias)

    def fused_kernels(self, coeff: torch.Tensor, spatial: torch.Tensor | None = None) -> torch.Tensor:
        """The per-sample kernels ``[N, C_out, C_in/groups, kH, kW]`` (kernel fusion, taps scaled by ``spatial``)."""
        return reference.fused_kernels(coeff, self.weight, spatial)

    # -- forward paths -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, coeff: torch.Tensor, spatial: torch.Tensor | None = None) -> torch.Tensor:
        coeff = self._check_coeff(x, coeff)
        spatial = self._check_spatial(x, spatial)
        if self.mode == "feature":
            return self.forward_feature(x, coeff)
        if self.mode == "kernel":
            return self.forward_kernel(x, coeff, spatial)
        if self.mode == "native":
            return self.forward_native(x, coeff)
        return self.forward_loop(x, coeff, spatial)

    def forward_feature(self, x: torch.Tensor, coeff: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        k, c_out = self.num_bases, self.out_channels
        x, pad = self._pad_input(x)
        # Order the K*C_out outputs as (t, k) so that output t*K+k lands in t's group.
        w = self.weight.transpose(0, 1).reshape(c_out * k, *self.weight.shape[2:])
        y = F.conv2d(x, w, None, self.stride, pad, self.dilation, self.groups)
        y = y.reshape(n, c_out, k, y.shape[-2], y.shape[-1])
        y = (y * coeff.unsqueeze(-1).unsqueeze(-1)).sum(dim=2)
        b = self.aggregated_bias(coeff)
        if b is not None:
            y = y + b.reshape(b.shape[0], c_out, 1, 1)
        return y

    def forward_kernel(self, x: torch.Tensor, coeff: torch.Tensor, spatial: torch.Tensor | None = None) -> torch.Tensor:
        # The op's own math (kernel fusion, then one batch-as-groups conv): this path is what gets deployed.
        return reference.dynamic_conv(
            x,
            coeff,
            self.weight,
            self.bias_bank,
            self.bias,
            self.stride,
            self.pads,
            self.dilation,
            self.groups,
            spatial=spatial,
        )

    def forward_native(self, x: torch.Tensor, coeff: torch.Tensor) -> torch.Tensor:
        from ..op import torch_op  # registers torch.ops.dynet.dynamic_conv2d; the library loads on the first call

        attrs = torch_op.op_arguments(self.stride, self.pads, self.dilation, self.groups)
        return torch.ops.dynet.dynamic_conv2d(x, coeff, self.weight, self.bias_bank, self.bias, *attrs)

    def forward_loop(self, x: torch.Tensor, coeff: torch.Tensor, spatial: torch.Tensor | None = None) -> torch.Tensor:
        x, pad = self._pad_input(x)
        fused = self.fused_kernels(coeff, spatial)
        b = self.aggregated_bias(coeff)
        outs = []
        for i in range(x.shape[0]):
            bi = None if b is None else b[min(i, b.shape[0] - 1)]
            outs.append(F.conv2d(x[i : i + 1], fused[i], bi, self.stride, pad, self.dilation, self.groups))
        return torch.cat(outs, 0)

    # -- bookkeeping for FLOPs ---------------------------------------------------------------------
    def output_size(self, h: int, w: int) -> tuple[int, int]:
        t, l, b, r = self.pads
        kh, kw = self.kernel_size
        dh, dw = self.dilation
        sh, sw = self.stride
        return ((h + t + b - dh * (kh - 1) - 1) // sh + 1, (w + l + r - dw * (kw - 1) - 1) // sw + 1)


def set_dynamic_conv_mode(module: nn.Module, mode: str) -> nn.Module:
    """Switch every DynamicConv2d inside ``module`` to the forward path ``mode``."""
    if mode not in FORWARD_MODES:
        raise ValueError(f"mode must be one of {FORWARD_MODES}, got {mode!r}")
    layers = [m for m in module.modules() if isinstance(m, DynamicConv2d)]
    if mode in ("feature", "native") and any(m.spatial for m in layers):
        raise ValueError(
            f"the module has dynamic convs with a spatial attention (ODConv), which have no {mode!r} path: "
            "use 'kernel' (or 'loop')"
        )
    for m in layers:
        m.mode = mode
    return module


def bn_scale_shift(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm as ``scale * z + shift`` per channel (``scale = gamma / sqrt(var + eps)``,
    ``shift = beta - scale * mean``), for folding it into the layer before it."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics cannot be folded")
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    scale = gamma / torch.sqrt(bn.running_var + bn.eps)
    return scale, beta - scale * bn.running_mean
