"""dynet-deploy: deployment toolchain for dynamic-convolution CNNs (DyNet, CondConv, DY-CNN).

The package imports with only its base dependencies; TensorRT and CUDA are optional and
reported by ``dynet-deploy doctor`` when missing.
"""

__version__ = "0.1.0"
