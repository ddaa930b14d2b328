"""ODConv (Li et al., "Omni-Dimensional Dynamic Convolution", ICLR 2022) in its inference form.

One squeeze of the input (global average pool, FC to ``max(C_in * reduction, 16)`` units, BatchNorm, ReLU) feeds
four heads:

* channel attention ``a_c = sigmoid(FC(z))``, ``[N, C_in]``: scales the input channels;
* filter attention ``a_f = sigmoid(FC(z))``, ``[N, C_out]``: scales the output channels (absent for a depthwise
  layer, ``groups == C_in == C_out``);
* spatial attention ``a_s = sigmoid(FC(z))``, ``[N, kH*kW]``: scales each tap of the kernel (absent for 1x1);
* kernel attention ``a_w = softmax(FC(z))``, ``[N, K]``: mixes the ``K`` basis kernels (absent for K = 1).

The layer computes ``y = a_f * conv(a_c * x, a_s (.) sum_k a_w[k] W_k)``. The inner convolution is a
:class:`DynamicConv2d` with per-expert coefficients ``a_w`` (ones for K = 1) and ``a_s`` as its spatial
attention: exactly the ``DyNetDynamicConv2d`` op of version 2, which ``dynet-deploy fuse`` recognises in the
exported kernel form. ``a_c`` and ``a_f`` stay outside the op, as the two Muls they are.

The paper's training divides the logits by a temperature annealed to 1; inference, and this module, use none.
:class:`ODConvBN` folds a following BatchNorm for deployment: its scale into the basis kernels (a per-output-channel
scale commutes with ``a_f`` and ``a_s``), its shift into a bias added after ``a_f``; the squeeze's BatchNorm folds
into its FC.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from .dynamic_conv import ACTIVATIONS, DynamicConv2d, _pair, bn_scale_shift


class ODAttentions(NamedTuple):
    channel: torch.Tensor  # [N, C_in, 1, 1]
    filter: torch.Tensor | None  # [N, C_out, 1, 1]
    spatial: torch.Tensor | None  # [N, kH*kW]
    kernel: torch.Tensor | None  # [N, 1, K]


class ODAttention(nn.Module):
    """ODConv's multi-head attention: squeeze (GAP, FC, BN, ReLU), then the heads the layer has (module docstring)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        groups: int = 1,
        kernel_num: int = 1,
        reduction: float = 1 / 16,
        min_channels: int = 16,
    ) -> None:
        super().__init__()
        kh, kw = _pair(kernel_size)
        hidden = max(int(in_channels * reduction), min_channels)
        self.fc = nn.Linear(in_channels, hidden, bias=False)
        self.bn: nn.Module = nn.BatchNorm1d(hidden)
        self.channel_fc = nn.Linear(hidden, in_channels)
        depthwise = groups == in_channels == out_channels
        self.filter_fc = None if depthwise else nn.Linear(hidden, out_channels)
        self.spatial_fc = None if kh * kw == 1 else nn.Linear(hidden, kh * kw)
        self.kernel_fc = None if kernel_num == 1 else nn.Linear(hidden, kernel_num)
        self.kernel_num = kernel_num
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def folded(self) -> bool:
        return isinstance(self.bn, nn.Identity)

    @torch.no_grad()
    def fold(self) -> None:
        """Fold the squeeze's BatchNorm (eval statistics) into its FC."""
        if self.folded:
            return
        bn = self.bn
        assert isinstance(bn, nn.BatchNorm1d)
        scale, shift = bn_scale_shift(bn)
        folded = nn.Linear(self.fc.in_features, self.fc.out_features, device=scale.device, dtype=scale.dtype)
        folded.weight.copy_(self.fc.weight * scale.reshape(-1, 1))
        folded.bias.copy_(shift)
        self.fc = folded
        self.bn = nn.Identity()

    def forward(self, x: torch.Tensor) -> ODAttentions:
        n = x.shape[0]
        z = torch.relu(self.bn(self.fc(x.mean((2, 3)))))
        channel = torch.sigmoid(self.channel_fc(z)).reshape(n, -1, 1, 1)
        filt = torch.sigmoid(self.filter_fc(z)).reshape(n, -1, 1, 1) if self.filter_fc is not None else None
        spatial = torch.sigmoid(self.spatial_fc(z)) if self.spatial_fc is not None else None
        kernel = torch.softmax(self.kernel_fc(z), dim=1).reshape(n, 1, -1) if self.kernel_fc is not None else None
        return ODAttentions(channel, filt, spatial, kernel)


class ODConv2d(nn.Module):
    """An ODConv layer: :class:`ODAttention` and a :class:`DynamicConv2d` (``conv``) with a spatial attention.

    Args as ``nn.Conv2d`` (square or rectangular kernels, no bias), plus ``kernel_num`` (``K``, the paper's "1x" /
    "4x") and ``reduction`` (the squeeze width, ``1/16`` in the paper). ``bias`` (None until a BatchNorm is folded
    by :class:`ODConvBN`) is added after the filter attention.
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
        kernel_num: int = 1,
        reduction: float = 1 / 16,
        min_channels: int = 16,
    ) -> None:
        super().__init__()
        kh, kw = _pair(kernel_size)
        self.attention = ODAttention(in_channels, out_channels, (kh, kw), groups, kernel_num, reduction, min_channels)
        self.conv = DynamicConv2d(
            in_channels,
            out_channels,
            (kh, kw),
            stride,
            padding,
            dilation,
            groups,
            num_bases=kernel_num,
            coeff_mode="expert",
            spatial=kh * kw > 1,
        )
        with torch.no_grad():
            for k in range(kernel_num):
                nn.init.kaiming_normal_(self.conv.weight[k], mode="fan_out", nonlinearity="relu")
        self.bias: nn.Parameter | None = None

    @property
    def in_channels(self) -> int:
        return self.conv.in_channels

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    @property
    def kernel_num(self) -> int:
        return self.conv.num_bases

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attention(x)
        coeff = a.kernel if a.kernel is not None else x.new_ones(x.shape[0], 1, 1)
        y = self.conv(x * a.channel, coeff, a.spatial)
        if a.filter is not None:
            y = y * a.filter
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return y


class ODConvBN(nn.Module):
    """ODConv2d -> BatchNorm2d -> activation, foldable into the ODConv2d (+ activation)."""

    def __init__(self, odconv: ODConv2d, activation: str = "none") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
        self.odconv = odconv
        self.bn: nn.Module = nn.BatchNorm2d(odconv.out_channels)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.odconv(x))
        if self.activation == "relu":
            y = torch.relu(y)
        elif self.activation == "relu6":
            y = torch.clamp(y, 0.0, 6.0)
        return y

    @property
    def folded(self) -> bool:
        return isinstance(self.bn, nn.Identity)

    @torch.no_grad()
    def fold(self) -> None:
        """``bn(a_f * z + b) = a_f * (s z) + (s b + shift)``: the scale into the kernels, the rest into the bias."""
        self.odconv.attention.fold()
        if self.folded:
            return
        bn = self.bn
        assert isinstance(bn, nn.BatchNorm2d)
        scale, shift = bn_scale_shift(bn)
        conv = self.odconv.conv
        conv.weight.mul_(scale.reshape(1, -1, 1, 1, 1))
        old = self.odconv.bias if self.odconv.bias is not None else torch.zeros_like(scale)
        self.odconv.bias = nn.Parameter((shift + scale * old).to(conv.weight.dtype))
        self.bn = nn.Identity()
