"""MobileNetV3-Large/Small (torchvision's architecture and state-dict keys) and DyNet's Dy-MobileNetV3.

The static models reproduce torchvision's ``mobilenet_v3_large`` (5,483,032 parameters at 1000 classes) and
``mobilenet_v3_small`` (2,542,856) exactly, with the same parameter names (``features.4.block.2.fc1.weight``,
``classifier.3.weight``, ...). Their paper figures (219 / 56 MFLOPs) are the MobileNetV3 paper's.

Dy-MobileNetV3 (DyNet, arXiv 2004.10694) keeps the baseline's cost and gains accuracy (+1.9 / +2.9 top-1);
the paper gives no further detail. Choices, written down here:

* Same widths, kernels, strides, squeeze-excitation and activations as the baseline; every conv inside a
  bottleneck (the 1x1 expansion when present, the depthwise conv, the 1x1 projection) becomes dynamic
  (``g_t = 6``, the depthwise one stays depthwise). Conv+linear FLOPs therefore equal the baseline's; the
  coefficient prediction and kernel fusion are the only extra cost (the overhead column of the zoo table).
* One coefficient predictor per bottleneck, fed by the bottleneck's input: global average pool, one FC,
  sigmoid, feeding its dynamic layers. The squeeze-excitation stays as in the baseline.
* The stem, the last 1x1 conv and the classifier stay static.
* BatchNorm (eps 1e-3 as the baseline) follows each dynamic conv and folds into its basis kernels; the
  Hardswish after it stays a separate module (the fused op's activation is ``none`` there).

``small_input=True`` makes the stem stride 1 for 28x28 images.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..nn import CoefficientPredictor, DynamicConv2d, DynamicConvBN
from .mobilenetv2 import ConvBNAct, init_static_layers, make_divisible
from .registry import register_model

_BN_EPS, _BN_MOMENTUM = 1e-3, 0.01


@dataclass(frozen=True)
class BneckConfig:
    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    use_hs: bool
    stride: int


def _configs(arch: str, width_mult: float) -> tuple[list[BneckConfig], int]:
    def c(i, k, e, o, se, act, s):
        adj = partial(make_divisible, divisor=8)
        return BneckConfig(adj(i * width_mult), k, adj(e * width_mult), adj(o * width_mult), se, act == "HS", s)

    if arch == "large":
        cfg = [
            c(16, 3, 16, 16, False, "RE", 1),
            c(16, 3, 64, 24, False, "RE", 2),
            c(24, 3, 72, 24, False, "RE", 1),
            c(24, 5, 72, 40, True, "RE", 2),
            c(40, 5, 120, 40, True, "RE", 1),
            c(40, 5, 120, 40, True, "RE", 1),
            c(40, 3, 240, 80, False, "HS", 2),
            c(80, 3, 200, 80, False, "HS", 1),
            c(80, 3, 184, 80, False, "HS", 1),
            c(80, 3, 184, 80, False, "HS", 1),
            c(80, 3, 480, 112, True, "HS", 1),
            c(112, 3, 672, 112, True, "HS", 1),
            c(112, 5, 672, 160, True, "HS", 2),
            c(160, 5, 960, 160, True, "HS", 1),
            c(160, 5, 960, 160, True, "HS", 1),
        ]
        last_channel = make_divisible(1280 * width_mult)
    elif arch == "small":
        cfg = [
            c(16, 3, 16, 16, True, "RE", 2),
            c(16, 3, 72, 24, False, "RE", 2),
            c(24, 3, 88, 24, False, "RE", 1),
            c(24, 5, 96, 40, True, "HS", 2),
            c(40, 5, 240, 40, True, "HS", 1),
            c(40, 5, 240, 40, True, "HS", 1),
            c(40, 5, 120, 48, True, "HS", 1),
            c(48, 5, 144, 48, True, "HS", 1),
            c(48, 5, 288, 96, True, "HS", 2),
            c(96, 5, 576, 96, True, "HS", 1),
            c(96, 5, 576, 96, True, "HS", 1),
        ]
        last_channel = make_divisible(1024 * width_mult)
    else:
        raise ValueError(f"arch must be 'large' or 'small', got {arch!r}")
    return cfg, last_channel


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation with MobileNetV3's Hardsigmoid gate (keys ``fc1``, ``fc2``)."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


def _se_channels(expanded: int) -> int:
    return make_divisible(expanded // 4, 8)


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV3 bottleneck: ``block`` = [expand], depthwise, [SE], project."""

    def __init__(self, cnf: BneckConfig) -> None:
        super().__init__()
        act = nn.Hardswish if cnf.use_hs else nn.ReLU
        cba = partial(ConvBNAct, bn_eps=_BN_EPS, bn_momentum=_BN_MOMENTUM)
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        layers: list[nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(cba(cnf.input_channels, cnf.expanded_channels, 1, activation=act))
        layers.append(
            cba(
                cnf.expanded_channels,
                cnf.expanded_channels,
                cnf.kernel,
                cnf.stride,
                groups=cnf.expanded_channels,
                activation=act,
            )
        )
        if cnf.use_se:
            layers.append(SqueezeExcitation(cnf.expanded_channels, _se_channels(cnf.expanded_channels)))
        layers.append(cba(cnf.expanded_channels, cnf.out_channels, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cnf.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_res_connect else out


def _dyconv_bn(cin: int, cout: int, k: int, stride: int, groups: int, num_bases: int) -> DynamicConvBN:
    layer = DynamicConvBN(DynamicConv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, num_bases=num_bases), "none")
    layer.bn = nn.BatchNorm2d(cout, eps=_BN_EPS, momentum=_BN_MOMENTUM)
    return layer


class DyInvertedResidual(nn.Module):
    """The bottleneck with its expansion, depthwise and projection convs dynamic, one CPM on its input."""

    def __init__(self, cnf: BneckConfig, num_bases: int = 6) -> None:
        super().__init__()
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        exp = cnf.expanded_channels
        self.has_expand = exp != cnf.input_channels
        targets = ([exp] if self.has_expand else []) + [exp, cnf.out_channels]
        self.cpm = CoefficientPredictor(cnf.input_channels, targets, num_bases)
        self.expand = _dyconv_bn(cnf.input_channels, exp, 1, 1, 1, num_bases) if self.has_expand else None
        self.depthwise = _dyconv_bn(exp, exp, cnf.kernel, cnf.stride, exp, num_bases)
        self.act = nn.Hardswish() if cnf.use_hs else nn.ReLU()
        self.se = SqueezeExcitation(exp, _se_channels(exp)) if cnf.use_se else nn.Identity()
        self.project = _dyconv_bn(exp, cnf.out_channels, 1, 1, 1, num_bases)
        self.out_channels = cnf.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coeffs = self.cpm(x)
        out = x
        if self.expand is not None:
            out = self.act(self.expand(out, coeffs.pop(0)))
        out = self.se(self.act(self.depthwise(out, coeffs[0])))
        out = self.project(out, coeffs[1])
        return x + out if self.use_res_connect else out


class MobileNetV3(nn.Module):
    def __init__(
        self,
        arch: str = "large",
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        small_input: bool = False,
        dynamic: bool = False,
        num_bases: int = 6,
    ) -> None:
        super().__init__()
        configs, last_channel = _configs(arch, width_mult)
        cba = partial(ConvBNAct, bn_eps=_BN_EPS, bn_momentum=_BN_MOMENTUM)
        first = configs[0].input_channels
        layers: list[nn.Module] = [cba(in_chans, first, 3, 1 if small_input else 2, activation=nn.Hardswish)]
        for cnf in configs:
            layers.append(DyInvertedResidual(cnf, num_bases) if dynamic else InvertedResidual(cnf))
        lastconv_in = configs[-1].out_channels
        lastconv_out = 6 * lastconv_in
        layers.append(cba(lastconv_in, lastconv_out, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = lastconv_out
        self.classifier = nn.Sequential(
            nn.Linear(lastconv_out, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        init_static_layers(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model("mobilenet_v3_large", paper_mflops=219, notes="paper figure: MobileNetV3 paper (Howard et al. 2019)")
def mobilenet_v3_large(**kwargs) -> MobileNetV3:
    return MobileNetV3("large", **kwargs)


@register_model("mobilenet_v3_small", paper_mflops=56, notes="paper figure: MobileNetV3 paper (Howard et al. 2019)")
def mobilenet_v3_small(**kwargs) -> MobileNetV3:
    return MobileNetV3("small", **kwargs)


@register_model(
    "dy_mobilenet_v3_large",
    dynamic=True,
    baseline="mobilenet_v3_large",
    paper_mflops=219,
    notes="DyNet keeps the baseline's cost (+1.9 top-1); figure = baseline's",
)
def dy_mobilenet_v3_large(**kwargs) -> MobileNetV3:
    return MobileNetV3("large", dynamic=True, **kwargs)


@register_model(
    "dy_mobilenet_v3_small",
    dynamic=True,
    baseline="mobilenet_v3_small",
    paper_mflops=56,
    notes="DyNet keeps the baseline's cost (+2.9 top-1); figure = baseline's",
)
def dy_mobilenet_v3_small(**kwargs) -> MobileNetV3:
    return MobileNetV3("small", dynamic=True, **kwargs)
