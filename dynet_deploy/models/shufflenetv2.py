"""ShuffleNetV2 x1.0 / x1.5 (torchvision's architecture and state-dict keys) and DyNet's Dy-shuffle.

The static models reproduce torchvision's ``shufflenet_v2_x1_0`` (2,278,604 parameters at 1000 classes)
and ``shufflenet_v2_x1_5`` exactly, with the same parameter names (``stage2.0.branch1.0.weight``, ...).

Dy-shuffle (DyNet, arXiv 2004.10694): the right branch of every unit becomes dynamic and the channel split
becomes 3:1. Choices where the paper is silent, written down here:

* The 3:1 split is in the basic (stride-1) unit: three quarters of the channels pass through unchanged,
  one quarter goes through the right branch (dynamic 1x1, ReLU -> dynamic depthwise 3x3 -> dynamic 1x1,
  ReLU). Its output is shuffled with 4 groups, so every quarter of the next unit's input mixes both parts.
* The downsampling (stride-2) unit keeps ShuffleNetV2's halves: the left branch (depthwise 3x3/2, 1x1)
  stays static, the right branch is dynamic. Stage widths are rounded to multiples of 4 for other
  ``width_mult`` values.
* One coefficient predictor per unit, fed by the right branch's input: global average pool, one FC,
  sigmoid, feeding the branch's three dynamic layers.
* Stem, ``conv5`` and the classifier stay static. At 224x224 this lands at 92.0 MFLOPs against the
  paper's 88 (ShuffleNetV2 x1.0: 144.9 against 146); x1.5 gives 175.1 against 295.8.
* BatchNorm follows each dynamic conv (DynamicConvBN) and folds into its basis kernels.

``small_input=True`` replaces the stride-2 stem and max-pool by a stride-1 stem for 28x28 images.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..nn import CoefficientPredictor, DynamicConv2d, DynamicConvBN
from .registry import register_model

STAGES_REPEATS = [4, 8, 4]
STAGES_OUT_CHANNELS = {1.0: [24, 116, 232, 464, 1024], 1.5: [24, 176, 352, 704, 1024]}


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)


class InvertedResidual(nn.Module):
    """torchvision's ShuffleNetV2 unit (``branch1`` is empty in the stride-1 unit, as there)."""

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride = stride
        branch = oup // 2
        if stride == 1 and inp != branch * 2:
            raise ValueError(f"a stride-1 unit needs inp == oup (got {inp}, {oup})")
        if stride > 1:
            self.branch1 = nn.Sequential(
                _depthwise(inp, stride),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch, 1, bias=False),
                nn.BatchNorm2d(branch),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
            _depthwise(branch, stride),
            nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class DyRightBranch(nn.Module):
    """Dynamic 1x1 (ReLU) -> dynamic depthwise 3x3 -> dynamic 1x1 (ReLU), one CPM on the branch input."""

    def __init__(self, inp: int, width: int, stride: int, num_bases: int) -> None:
        super().__init__()
        self.cpm = CoefficientPredictor(inp, [width, width, width], num_bases)
        self.dyconv1 = DynamicConvBN(DynamicConv2d(inp, width, 1, num_bases=num_bases), "relu")
        self.dyconv2 = DynamicConvBN(
            DynamicConv2d(width, width, 3, stride, 1, groups=width, num_bases=num_bases), "none"
        )
        self.dyconv3 = DynamicConvBN(DynamicConv2d(width, width, 1, num_bases=num_bases), "relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3 = self.cpm(x)
        return self.dyconv3(self.dyconv2(self.dyconv1(x, c1), c2), c3)


class DyShuffleUnit(nn.Module):
    """Dy-shuffle's unit: 3:1 split at stride 1, halves and a static left branch at stride 2."""

    def __init__(self, inp: int, oup: int, stride: int, num_bases: int = 6) -> None:
        super().__init__()
        self.stride = stride
        if stride == 1:
            if inp != oup or oup % 4:
                raise ValueError(f"a stride-1 Dy-shuffle unit needs inp == oup, a multiple of 4 (got {inp}, {oup})")
            self.right_channels = oup // 4
            self.branch1 = nn.Sequential()
            self.branch2 = DyRightBranch(self.right_channels, self.right_channels, 1, num_bases)
        else:
            branch = oup // 2
            self.right_channels = branch
            self.branch1 = nn.Sequential(
                _depthwise(inp, stride),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch, 1, bias=False),
                nn.BatchNorm2d(branch),
                nn.ReLU(inplace=True),
            )
            self.branch2 = DyRightBranch(inp, branch, stride, num_bases)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            left, right = x.split([x.shape[1] - self.right_channels, self.right_channels], dim=1)
            return channel_shuffle(torch.cat((left, self.branch2(right)), dim=1), 4)
        return channel_shuffle(torch.cat((self.branch1(x), self.branch2(x)), dim=1), 2)


class ShuffleNetV2(nn.Module):
    # the stages, set by name in __init__
    stage2: nn.Sequential
    stage3: nn.Sequential
    stage4: nn.Sequential

    def __init__(
        self,
        stages_out_channels: list[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        dynamic: bool = False,
        num_bases: int = 6,
    ) -> None:
        super().__init__()
        if len(stages_out_channels) != 5:
            raise ValueError("stages_out_channels needs 5 entries (stem, three stages, conv5)")
        c = stages_out_channels[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_chans, c, 3, 1 if small_input else 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
        )
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, 2, 1)
        inp = c
        for name, repeats, oup in zip(["stage2", "stage3", "stage4"], STAGES_REPEATS, stages_out_channels[1:4]):
            units: Sequence[nn.Module]
            if dynamic:
                units = [DyShuffleUnit(inp, oup, 2, num_bases)] + [
                    DyShuffleUnit(oup, oup, 1, num_bases) for _ in range(repeats - 1)
                ]
            else:
                units = [InvertedResidual(inp, oup, 2)] + [InvertedResidual(oup, oup, 1) for _ in range(repeats - 1)]
            setattr(self, name, nn.Sequential(*units))
            inp = oup
        last = stages_out_channels[-1]
        self.conv5 = nn.Sequential(nn.Conv2d(inp, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU(inplace=True))
        self.num_features = last
        self.fc = nn.Linear(last, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        return self.conv5(self.stage4(self.stage3(self.stage2(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).mean([2, 3]))


def _stage_channels(width_mult: float, dynamic: bool) -> list[int]:
    if width_mult in STAGES_OUT_CHANNELS:
        return list(STAGES_OUT_CHANNELS[width_mult])
    # Other widths: scale x1.0's stages, keep them even (torchvision's halves) or multiples of 4 (3:1 split).
    step = 4 if dynamic else 2
    base = STAGES_OUT_CHANNELS[1.0]
    return [base[0]] + [max(step, int(round(c * width_mult / step)) * step) for c in base[1:4]] + [base[4]]


def _shufflenet(width_mult: float, dynamic: bool, **kwargs) -> ShuffleNetV2:
    return ShuffleNetV2(_stage_channels(width_mult, dynamic), dynamic=dynamic, **kwargs)


@register_model("shufflenet_v2_x1_0", paper_mflops=146)
def shufflenet_v2_x1_0(width_mult: float = 1.0, **kwargs) -> ShuffleNetV2:
    return _shufflenet(width_mult, False, **kwargs)


@register_model("shufflenet_v2_x1_5", paper_mflops=299, notes="paper figure: ShuffleNetV2 paper (Ma et al. 2018)")
def shufflenet_v2_x1_5(width_mult: float = 1.5, **kwargs) -> ShuffleNetV2:
    return _shufflenet(width_mult, False, **kwargs)


@register_model("dy_shufflenet_v2_x1_0", dynamic=True, baseline="shufflenet_v2_x1_0", paper_mflops=88)
def dy_shufflenet_v2_x1_0(width_mult: float = 1.0, **kwargs) -> ShuffleNetV2:
    return _shufflenet(width_mult, True, **kwargs)


@register_model(
    "dy_shufflenet_v2_x1_5",
    dynamic=True,
    baseline="shufflenet_v2_x1_5",
    paper_mflops=None,
    notes="no paper FLOPs figure at 1.5x",
)
def dy_shufflenet_v2_x1_5(width_mult: float = 1.5, **kwargs) -> ShuffleNetV2:
    return _shufflenet(width_mult, True, **kwargs)
