"""Export: a PyTorch model -> ONNX with standard ops only (:mod:`.exporter`: the portable feature form or the
batch-as-groups kernel form), and the faster deploy-time forms for onnxruntime CPU (:mod:`.deploy_forms`,
:mod:`.nchwc`)."""

from .deploy_forms import DY_FORMS, best_dy_form, export_deploy_onnx
from .exporter import (
    DEFAULT_EXPORTER,
    DEFAULT_FORM,
    EXPORT_FORMS,
    EXPORTERS,
    INPUT_NAME,
    META_BATCH,
    META_EXPORTER,
    META_FORM,
    META_MODEL,
    META_MODEL_ARGS,
    MIN_OPSET,
    ExportReport,
    count_dynamic_convs,
    export_onnx,
    fold_conv_batchnorms,
    get_metadata,
    prepare_for_export,
    set_metadata,
)

__all__ = [
    "DEFAULT_EXPORTER",
    "DEFAULT_FORM",
    "DY_FORMS",
    "EXPORTERS",
    "EXPORT_FORMS",
    "INPUT_NAME",
    "META_BATCH",
    "META_EXPORTER",
    "META_FORM",
    "META_MODEL",
    "META_MODEL_ARGS",
    "MIN_OPSET",
    "ExportReport",
    "best_dy_form",
    "count_dynamic_convs",
    "export_deploy_onnx",
    "export_onnx",
    "fold_conv_batchnorms",
    "get_metadata",
    "prepare_for_export",
    "set_metadata",
]
