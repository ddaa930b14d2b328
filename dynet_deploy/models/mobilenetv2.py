"""MobileNetV2 (torchvision's architecture and state-dict keys) and DyNet's Dy-mobile.

The static model reproduces torchvision's ``mobilenet_v2`` exactly (3,504,872 parameters at 1000
classes), with the same parameter names (``features.1.conv.0.0.weight``, ``classifier.1.weight``, ...).

Dy-mobile (DyNet, arXiv 2004.10694): the paper drops the expansion of the inverted residual block, makes
all three convs dynamic and turns the depthwise conv into a group conv with ``groups = C/6`` (six channels
per group); one coefficient predictor per block feeds all its dynamic layers. Choices where the paper is
silent, written down here:

* The block's inner width is the block's input width rounded to the nearest multiple of 6 (so that
  ``groups = C/6`` divides it): 32 -> 30, 16 -> 18, 64 -> 66, 160 -> 162. Every block, the first
  (expansion-free in MobileNetV2 too) included, has the same three convs: dynamic 1x1 (ReLU6), dynamic
  3x3 group conv (ReLU6, the block's stride), dynamic 1x1 (linear). The residual connection is
  MobileNetV2's (stride 1 and equal widths).
* The coefficient predictor sees the block's input: global average pool, one FC, sigmoid.
* The stem (3x3/2, 32 channels), the last 1x1 conv to 1280 channels and the classifier stay static.
  This lands at 128.8 MFLOPs at 224x224 against the paper's 129 (MobileNetV2: 300.8 against 298).
* BatchNorm follows each dynamic conv (DynamicConvBN) and folds into its basis kernels.

``width_mult`` scales channels as torchvision does (multiples of 8); ``small_input=True`` makes the stem
stride 1 for 28x28 images.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn import CoefficientPredictor, DynamicConv2d, DynamicConvBN
from .registry import register_model

# (expansion t, output channels c, repeats n, first stride s), the MobileNetV2 paper's table 2.
INVERTED_RESIDUAL_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to a multiple of ``divisor``, never below 90 % of it (the MobileNet rule)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> activation, keyed ``0`` / ``1`` / ``2`` like torchvision's Conv2dNormActivation."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] | None = nn.ReLU6,
        dilation: int = 1,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=bn_eps, momentum=bn_momentum),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(inp, hidden, 1))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class DyMobileBlock(nn.Module):
    """Dy-mobile's block: dynamic 1x1 -> dynamic 3x3 group conv (C/6 groups) -> dynamic 1x1, one CPM."""

    def __init__(self, inp: int, oup: int, stride: int, group_width: int = 6, num_bases: int = 6) -> None:
        super().__init__()
        mid = max(group_width, int(inp / group_width + 0.5) * group_width)
        self.use_res_connect = stride == 1 and inp == oup
        self.cpm = CoefficientPredictor(inp, [mid, mid, oup], num_bases)
        self.dyconv1 = DynamicConvBN(DynamicConv2d(inp, mid, 1, num_bases=num_bases), "relu6")
        self.dyconv2 = DynamicConvBN(
            DynamicConv2d(mid, mid, 3, stride, 1, groups=mid // group_width, num_bases=num_bases), "relu6"
        )
        self.dyconv3 = DynamicConvBN(DynamicConv2d(mid, oup, 1, num_bases=num_bases), "none")
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3 = self.cpm(x)
        out = self.dyconv3(self.dyconv2(self.dyconv1(x, c1), c2), c3)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 layout; ``dynamic=True`` swaps every inverted residual for Dy-mobile's block."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        small_input: bool = False,
        dynamic: bool = False,
        num_bases: int = 6,
    ) -> None:
        super().__init__()
        input_channel = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNAct(in_chans, input_channel, 3, 1 if small_input else 2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            output_channel = make_divisible(c * width_mult)
            for i in range(n):
                stride = s if i == 0 else 1
                if dynamic:
                    features.append(DyMobileBlock(input_channel, output_channel, stride, num_bases=num_bases))
                else:
                    features.append(InvertedResidual(input_channel, output_channel, stride, t))
                input_channel = output_channel
        features.append(ConvBNAct(input_channel, self.last_channel, 1))
        self.features = nn.Sequential(*features)
        self.num_features = self.last_channel
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))
        init_static_layers(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def init_static_layers(model: nn.Module) -> None:
    """torchvision's MobileNet initialisation; coefficient predictors keep their own (PyTorch's default)."""
    cpm_layers = {id(m) for cpm in model.modules() if isinstance(cpm, CoefficientPredictor) for m in cpm.modules()}
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and id(m) not in cpm_layers:
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


@register_model("mobilenet_v2", paper_mflops=298)
def mobilenet_v2(**kwargs) -> MobileNetV2:
    return MobileNetV2(**kwargs)


@register_model("dy_mobile", dynamic=True, baseline="mobilenet_v2", paper_mflops=129)
def dy_mobile(**kwargs) -> MobileNetV2:
    return MobileNetV2(dynamic=True, **kwargs)
