"""Dynamic convolution building blocks: the layer, its coefficient predictor, ODConv's layer, BN folding."""

from .cpm import CoefficientPredictor, DyConv2d
from .dynamic_conv import ACTIVATIONS, FORWARD_MODES, DynamicConv2d, set_dynamic_conv_mode
from .fold import DynamicConvBN, fold_batchnorms, fold_bn_into_dynamic_conv
from .odconv import ODAttention, ODConv2d, ODConvBN

__all__ = [
    "ACTIVATIONS",
    "FORWARD_MODES",
    "CoefficientPredictor",
    "DyConv2d",
    "DynamicConv2d",
    "DynamicConvBN",
    "ODAttention",
    "ODConv2d",
    "ODConvBN",
    "fold_batchnorms",
    "fold_bn_into_dynamic_conv",
    "set_dynamic_conv_mode",
]
