"""The model zoo: static baselines with torchvision's layouts and their DyNet versions."""

from . import fcn, mobilenetv2, mobilenetv3, resnet, shufflenetv2  # noqa: F401  (registers models)
from .registry import ModelInfo, create_model, list_models, model_info, register_model

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register_model"]
