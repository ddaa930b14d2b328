"""Every Dy zoo model through export -> fuse -> the native onnxruntime op, fp32 and fp16, at batches 1, 3 and 8.

The fused graph comes from the feature form, or from the kernel form (exported at batch 2) for the models that
have no feature form (the OD-ResNets).

fp16: the fused graph converted with ``dynet_deploy.backends.tensorrt.convert_onnx_to_fp16`` (inputs and outputs stay fp32, the
op runs on fp16 tensors); tolerances as validate's: fp32 relative <= 1e-5, fp16 relative <= 1e-2 (||out - ref|| /
||ref|| against PyTorch's fp32 model; max-abs reported with it).
"""

from __future__ import annotations

import onnx
import pytest
from zoo_exports import KERNEL_ONLY_MODELS, fusable_form, fused, has_feature_form, parity, slow_after_first

from dynet_deploy.backends.onnxruntime import OnnxruntimeRunner
from dynet_deploy.backends.tensorrt import convert_onnx_to_fp16
from dynet_deploy.models import list_models

BATCHES = (1, 3, 8)
REL = {"fp32": 1e-5, "fp16": 1e-2}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize(
    "name",
    slow_after_first([n for n in list_models(dynamic=True) if has_feature_form(n)])
    + slow_after_first(KERNEL_ONLY_MODELS),
)
def test_zoo_model_on_the_native_op_matches_pytorch(name, precision):
    path, report = fused(name, fusable_form(name))
    assert report.matched > 0 and report.left == 0
    model = onnx.load(str(path))
    if precision == "fp16":
        model = convert_onnx_to_fp16(model)
        assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    runner = OnnxruntimeRunner(model, threads=2)
    assert runner.uses_custom_op
    for batch, hw, max_abs, rel in parity(runner, name, BATCHES):
        assert rel <= REL[precision], f"{name} {precision} batch {batch} {hw}: max-abs {max_abs:.2e}, rel {rel:.2e}"
