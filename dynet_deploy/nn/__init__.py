"""Dynamic convolution building blocks: the layer, its coefficient predictor, BN folding."""

from .cpm import CoefficientPredictor, DyConv2d
from .dynamic_conv import ACTIVATIONS, FORWARD_MODES, DynamicConv2d, set_dynamic_conv_mode
from .fold import DynamicConvBN, fold_batchnorms, fold_bn_into_dynamic_conv

__all__ = [
    "ACTIVATIONS",
    "FORWARD_MODES",
    "CoefficientPredictor",
    "DyConv2d",
    "DynamicConv2d",
    "DynamicConvBN",
    "fold_batchnorms",
    "fold_bn_into_dynamic_conv",
    "set_dynamic_conv_mode",
]
