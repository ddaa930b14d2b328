"""Dilated FCN (output stride 8) with a ResNet50 or Dy-ResNet50 backbone, for semantic segmentation.

``fcn_resnet50`` reproduces torchvision's ``fcn_resnet50`` (without its auxiliary head unless
``aux_loss=True``) with the same parameter names (``backbone.layer4.2.conv3.weight``,
``classifier.0.weight``, ``classifier.4.bias``): ResNet50 with layer3 and layer4 dilated (2 and 4) instead
of strided, an FCN head (3x3 conv to 512, BN, ReLU, dropout 0.1, 1x1 conv to the classes) and bilinear
upsampling to the input size, so any height and width work.

``dy_fcn_resnet50`` (DyNet, arXiv 2004.10694, "Dilated FCN" on Cityscapes, 310.8 -> 95.6 GFLOPs). The
paper gives no architecture detail; choices, written down here:

* The backbone is Dy-ResNet50 (half-width dynamic blocks, see :mod:`.resnet`), dilated the same way;
  its output has 1024 channels, not 2048.
* The head's 3x3 conv is dynamic too (1024 -> 512, its own two-FC coefficient predictor like the backbone's
  layers, BN folded): at output stride 8 the head is a quarter of the baseline's cost, so a static head
  alone would keep the Dy model far above the paper's figure. The final 1x1 classifier conv stays static.

The paper's figures hold for 19 Cityscapes classes; ``input_size`` in the registry is the size at which
this architecture's baseline costs the paper's 310.8 GMACs (see the zoo table notes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import CoefficientPredictor, DynamicConv2d, DynamicConvBN
from .registry import register_model
from .resnet import ResNet, dy_resnet50, resnet50

# The input at which this Dilated FCN-ResNet50 costs the paper's 310.8 GMACs: 768 x 768 (a common Cityscapes
# crop) gives 311.3 G; 512 x 1024 gives 276.7 G, 769 x 769 gives 317.7 G.
PAPER_SEG_INPUT = (768, 768)


class FCNHead(nn.Sequential):
    """torchvision's FCNHead: 3x3 conv to in/4 channels, BN, ReLU, dropout, 1x1 conv to the classes."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1) -> None:
        inter = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(inter, num_classes, 1),
        )


class DyFCNHead(nn.Module):
    """FCNHead with a dynamic 3x3 conv (own CPM, BN folded); the 1x1 classifier stays static."""

    def __init__(
        self, in_channels: int, inter_channels: int, num_classes: int, dropout: float = 0.1, num_bases: int = 6
    ) -> None:
        super().__init__()
        self.cpm = CoefficientPredictor(in_channels, [inter_channels], num_bases, hidden=max(1, in_channels // 4))
        self.dyconv = DynamicConvBN(DynamicConv2d(in_channels, inter_channels, 3, 1, 1, num_bases=num_bases), "relu")
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.dyconv(x, self.cpm(x)[0])))


class FCN(nn.Module):
    """Backbone features at output stride 8 -> head -> bilinear upsampling to the input size.

    Returns the logits tensor ``[N, classes, H, W]`` (not torchvision's dict), so the model exports as a
    plain single-output graph. With ``aux_loss=True`` an auxiliary FCN head on layer3 exists (its keys
    match torchvision's ``aux_classifier``) but only runs in training mode, where forward returns
    ``(out, aux)``.
    """

    def __init__(self, backbone: ResNet, classifier: nn.Module, aux_classifier: nn.Module | None = None) -> None:
        super().__init__()
        # torchvision's IntermediateLayerGetter drops the classification tail; so do we (same keys).
        del backbone.avgpool
        del backbone.fc
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        b = self.backbone
        f = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        f3 = b.layer3(b.layer2(b.layer1(f)))
        out = F.interpolate(self.classifier(b.layer4(f3)), size=size, mode="bilinear", align_corners=False)
        if self.aux_classifier is not None and self.training:
            aux = F.interpolate(self.aux_classifier(f3), size=size, mode="bilinear", align_corners=False)
            return out, aux
        return out


def _fcn(
    dynamic: bool, num_classes: int = 19, in_chans: int = 3, aux_loss: bool = False, num_bases: int = 6, **kwargs
) -> FCN:
    kwargs.setdefault("replace_stride_with_dilation", (False, True, True))
    if dynamic:
        backbone = dy_resnet50(in_chans=in_chans, num_bases=num_bases, **kwargs)
    else:
        backbone = resnet50(in_chans=in_chans, **kwargs)
    feats = backbone.num_features
    layer3_channels = feats // 2
    if dynamic:
        # The head keeps the baseline's 512 inner channels (2048 // 4) on the half-width features.
        head: nn.Module = DyFCNHead(feats, 512, num_classes, num_bases=num_bases)
    else:
        head = FCNHead(feats, num_classes)
    aux = FCNHead(layer3_channels, num_classes) if aux_loss else None
    return FCN(backbone, head, aux)


@register_model("fcn_resnet50", task="segmentation", paper_mflops=310_800, input_size=PAPER_SEG_INPUT)
def fcn_resnet50(**kwargs) -> FCN:
    return _fcn(False, **kwargs)


@register_model(
    "dy_fcn_resnet50",
    task="segmentation",
    dynamic=True,
    baseline="fcn_resnet50",
    paper_mflops=95_600,
    input_size=PAPER_SEG_INPUT,
)
def dy_fcn_resnet50(**kwargs) -> FCN:
    return _fcn(True, **kwargs)
