"""Folding an eval-mode BatchNorm into the dynamic conv before it.

BN is affine per output channel: ``bn(z)[t] = s[t] * z[t] + (beta[t] - s[t] * mean[t])`` with
``s = gamma / sqrt(var + eps)``. A dynamic conv is linear in its basis kernels, so scaling every basis
kernel ``w[k, t]`` (and bias-bank entry) of channel ``t`` by ``s[t]`` scales the output channel, and the
shift becomes the static bias. The fold is exact for any coefficients.
"""

from __future__ import annotations

import torch
from torch import nn

from .dynamic_conv import ACTIVATIONS, DynamicConv2d, bn_scale_shift
from .odconv import ODAttention, ODConvBN


@torch.no_grad()
def fold_bn_into_dynamic_conv(conv: DynamicConv2d, bn: nn.BatchNorm2d) -> DynamicConv2d:
    """Fold ``bn`` (eval statistics) into ``conv`` in place and return ``conv``."""
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm has {bn.num_features} channels, the conv {conv.out_channels}")
    scale, shift = bn_scale_shift(bn)
    conv.weight.mul_(scale.reshape(1, -1, 1, 1, 1))
    if conv.bias_bank is not None:
        conv.bias_bank.mul_(scale.reshape(1, -1))
    old_bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    new_bias = shift + scale * old_bias
    conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
    return conv


class DynamicConvBN(nn.Module):
    """DynamicConv2d -> BatchNorm2d -> activation, foldable into a single DynamicConv2d (+ activation)."""

    def __init__(self, conv: DynamicConv2d, activation: str = "none") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
        self.conv = conv
        self.bn: nn.Module = nn.BatchNorm2d(conv.out_channels)
        self.activation = activation

    def forward(self, x: torch.Tensor, coeff: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x, coeff))
        if self.activation == "relu":
            y = torch.relu(y)
        elif self.activation == "relu6":
            y = torch.clamp(y, 0.0, 6.0)
        return y

    @property
    def folded(self) -> bool:
        return isinstance(self.bn, nn.Identity)

    def fold(self) -> None:
        if not self.folded:
            fold_bn_into_dynamic_conv(self.conv, self.bn)  # type: ignore[arg-type]
            self.bn = nn.Identity()


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """Fold every DynamicConvBN's BatchNorm into its dynamic conv, and every ODConv layer's (its attention's
    squeeze, and an ODConvBN's BatchNorm); the model must be in eval mode."""
    if model.training:
        raise ValueError("fold_batchnorms needs an eval-mode model (call model.eval() first)")
    for m in list(model.modules()):
        if isinstance(m, (DynamicConvBN, ODConvBN, ODAttention)):
            m.fold()
    return model
