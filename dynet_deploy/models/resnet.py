"""ResNet18/50 (torchvision's architecture and state-dict keys) and DyNet's Dy-ResNet18/50.

The static models reproduce torchvision's ResNet v1.5 exactly (stride on the 3x3 conv of a bottleneck),
with the same parameter names, so torchvision checkpoints load with ``load_state_dict``.

Dy-ResNet (DyNet, arXiv 2004.10694): every convolution inside a residual block becomes a dynamic conv
with ``g_t = 6`` basis kernels, and the paper "halves the output channels of the dynamic layers of each
block". Choices where the paper is silent, written down here:

* All conv layers in every block are dynamic and at half width, so the residual stream is half width too;
  the stem (7x7 conv, 64 channels) and the projection shortcuts (1x1) stay static. This lands at 577 /
  1127 MFLOPs (conv + linear, ``dynet-deploy zoo``) for Dy-ResNet18 / 50 against the paper's 550 / 1075,
  the same +5 % as the static baselines against the paper's counting.
* Each dynamic layer has its own coefficient predictor fed by that layer's input: GAP, FC to C_in/4,
  ReLU, FC to C_out*6, sigmoid (the paper's ResNet CPM).
* BatchNorm follows each dynamic conv and is folded into its basis kernels for deployment.

OD-ResNet18 (ODConv, Li et al., ICLR 2022, the authors' ``od_resnet18``): every 3x3 conv of the BasicBlocks is an
ODConv layer (:mod:`dynet_deploy.nn.odconv`: reduction 1/16, the inference form without temperature) at the
baseline's widths, followed by its BatchNorm (folded for deployment); the stem, the 1x1 projection shortcuts and
the classifier stay static. ``od_resnet18`` has one kernel per layer (the paper's "1x"), ``od_resnet18_4x`` four.

``width_mult`` scales every channel count (stem included); ``small_input=True`` replaces the 7x7/2 stem
and max-pool with a 3x3/1 stem for 28x28 images.
"""

from __future__ import annotations

from typing import Type

import torch
from torch import nn

from ..nn import CoefficientPredictor, DynamicConv2d, DynamicConvBN, ODConv2d, ODConvBN
from .registry import register_model


def _ch(c: float, mult: float) -> int:
    return max(1, int(round(c * mult)))


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _dyconv(
    cin: int, cout: int, k: int, stride: int, num_bases: int, act: str
) -> tuple[CoefficientPredictor, DynamicConvBN]:
    conv = DynamicConv2d(cin, cout, k, stride, k // 2, num_bases=num_bases)
    cpm = CoefficientPredictor(cin, [cout], num_bases, hidden=max(1, cin // 4))
    return cpm, DynamicConvBN(conv, act)


class DyBasicBlock(nn.Module):
    """BasicBlock with both 3x3 convs dynamic (the caller passes halved widths)."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, num_bases: int = 6
    ) -> None:
        super().__init__()
        self.cpm1, self.dyconv1 = _dyconv(inplanes, planes, 3, stride, num_bases, "relu")
        self.cpm2, self.dyconv2 = _dyconv(planes, planes, 3, 1, num_bases, "none")
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.dyconv1(x, self.cpm1(x)[0])
        out = self.dyconv2(out, self.cpm2(out)[0])
        return self.relu(out + identity)


class DyBottleneck(nn.Module):
    """Bottleneck with its 1x1, 3x3 and 1x1 convs dynamic (the caller passes halved widths)."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, num_bases: int = 6
    ) -> None:
        super().__init__()
        self.cpm1, self.dyconv1 = _dyconv(inplanes, planes, 1, 1, num_bases, "relu")
        self.cpm2, self.dyconv2 = _dyconv(planes, planes, 3, stride, num_bases, "relu")
        self.cpm3, self.dyconv3 = _dyconv(planes, planes * 4, 1, 1, num_bases, "none")
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.dyconv1(x, self.cpm1(x)[0])
        out = self.dyconv2(out, self.cpm2(out)[0])
        out = self.dyconv3(out, self.cpm3(out)[0])
        return self.relu(out + identity)


class ODBasicBlock(nn.Module):
    """BasicBlock with both 3x3 convs ODConv layers (each followed by its BatchNorm), at the baseline's widths."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        kernel_num: int = 1,
        reduction: float = 1 / 16,
    ) -> None:
        super().__init__()
        self.odconv1 = ODConvBN(
            ODConv2d(inplanes, planes, 3, stride, 1, kernel_num=kernel_num, reduction=reduction), "relu"
        )
        self.odconv2 = ODConvBN(ODConv2d(planes, planes, 3, 1, 1, kernel_num=kernel_num, reduction=reduction), "none")
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.odconv2(self.odconv1(x))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet layout; ``block_width`` scales the blocks only (Dy-ResNet uses 0.5)."""

    def __init__(
        self,
        block: Type[nn.Module],
        layers: list[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        block_width: float = 1.0,
        small_input: bool = False,
        replace_stride_with_dilation: tuple[bool, bool, bool] = (False, False, False),
        block_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.block = block
        block_kwargs = block_kwargs or {}
        self.inplanes = _ch(64, width_mult)
        self.dilation = 1
        if small_input:
            self.conv1 = nn.Conv2d(in_chans, self.inplanes, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_chans, self.inplanes, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, 2, 1)
        w = width_mult * block_width
        self.layer1 = self._make_layer(block, _ch(64, w), layers[0], 1, False, block_kwargs)
        self.layer2 = self._make_layer(block, _ch(128, w), layers[1], 2, replace_stride_with_dilation[0], block_kwargs)
        self.layer3 = self._make_layer(block, _ch(256, w), layers[2], 2, replace_stride_with_dilation[1], block_kwargs)
        self.layer4 = self._make_layer(block, _ch(512, w), layers[3], 2, replace_stride_with_dilation[2], block_kwargs)
        self.num_features = self.inplanes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(
        self, block, planes: int, blocks: int, stride: int, dilate: bool, block_kwargs: dict
    ) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            # Dilated ResNet (output stride 8), as torchvision: keep resolution, grow dilation; the
            # layer's first block keeps the previous dilation.
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self.inplanes, planes, stride, downsample, **block_kwargs)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **block_kwargs) for _ in range(1, blocks)]
        if previous_dilation > 1:
            _dilate_3x3(layers[0], previous_dilation)
        if self.dilation > 1:
            _dilate_3x3(nn.Sequential(*layers[1:]), self.dilation)
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.forward_features(x))
        return self.fc(torch.flatten(x, 1))


def _dilate_3x3(module: nn.Module, dilation: int) -> None:
    """Give every 3x3 conv (static or dynamic) in ``module`` the dilation and the padding that keeps size."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            m.dilation, m.padding = (dilation, dilation), (dilation, dilation)
        elif isinstance(m, DynamicConv2d) and m.kernel_size == (3, 3):
            m.dilation, m.pads = (dilation, dilation), (dilation,) * 4


def _resnet(block, layers, dynamic: bool, num_bases: int = 6, **kwargs) -> ResNet:
    if dynamic:
        kwargs.setdefault("block_width", 0.5)
        kwargs["block_kwargs"] = {"num_bases": num_bases}
    return ResNet(block, layers, **kwargs)


@register_model("resnet18", paper_mflops=1730)
def resnet18(**kwargs) -> ResNet:
    return _resnet(BasicBlock, [2, 2, 2, 2], False, **kwargs)


@register_model("resnet50", paper_mflops=3890)
def resnet50(**kwargs) -> ResNet:
    return _resnet(Bottleneck, [3, 4, 6, 3], False, **kwargs)


@register_model("dy_resnet18", dynamic=True, baseline="resnet18", paper_mflops=550)
def dy_resnet18(**kwargs) -> ResNet:
    return _resnet(DyBasicBlock, [2, 2, 2, 2], True, **kwargs)


@register_model("dy_resnet50", dynamic=True, baseline="resnet50", paper_mflops=1075)
def dy_resnet50(**kwargs) -> ResNet:
    return _resnet(DyBottleneck, [3, 4, 6, 3], True, **kwargs)


# ODConv's figures: Li et al., ICLR 2022, ResNet18 on ImageNet at 224x224 (as the authors list them in OSVAI/ODConv): ResNet18 11.69 M params and
# 1.814 G MACs; ODConv (1x) 11.94 M and 1.838 G; ODConv (4x) 44.90 M and 1.916 G (MACs with the attention and the
# kernel aggregation).
ODCONV_PAPER_RESNET18_MFLOPS = 1814


@register_model(
    "od_resnet18",
    dynamic=True,
    baseline="resnet18",
    paper_mflops=1838,
    paper_params_m=11.94,
    paper_counts_overhead=True,
    paper_baseline_mflops=ODCONV_PAPER_RESNET18_MFLOPS,
    export_forms=("kernel",),
)
def od_resnet18(kernel_num: int = 1, reduction: float = 1 / 16, **kwargs) -> ResNet:
    return ResNet(ODBasicBlock, [2, 2, 2, 2], block_kwargs={"kernel_num": kernel_num, "reduction": reduction}, **kwargs)


register_model(
    "od_resnet18_4x",
    dynamic=True,
    baseline="resnet18",
    paper_mflops=1916,
    paper_params_m=44.90,
    paper_counts_overhead=True,
    paper_baseline_mflops=ODCONV_PAPER_RESNET18_MFLOPS,
    export_forms=("kernel",),
    kernel_num=4,
)(od_resnet18)
