"""Deploy-time forms of the dynamic conv compute the same function as the PyTorch model.

Tolerances (fp32): max-abs <= 1e-4 and ||out - ref|| / ||ref|| <= 1e-5, on fresh random inputs, with BatchNorm
statistics randomised so that folding is exercised.
"""

from __future__ import annotations

import ctypes
import gc

import numpy as np
import onnx
import pytest
import torch

from dynet_deploy.export.deploy_forms import export_deploy_onnx
from dynet_deploy.export.nchwc import NCHWC_DOMAIN, nchwc_block_size, nchwc_dynamic_convs
from dynet_deploy.nn.deploy_forms import MatMulFusionConv2d, SigmoidOnceCoefficientPredictor, to_deploy_form
from dynet_deploy.errors import ExportError
from dynet_deploy.models import create_model
from dynet_deploy.nn import CoefficientPredictor, DyConv2d, DynamicConv2d

ATOL = 1e-4
RTOL = 1e-5
needs_nchwc = pytest.mark.skipif(nchwc_block_size() is None, reason="this onnxruntime build has no NCHWc kernels")


@pytest.fixture(autouse=True, scope="module")
def _return_freed_memory():
    """Exports leave freed heap behind; hand it back to the OS after this module so that resident-set
    measurements in later test modules (test_bench's peak-memory test) start from a settled process."""
    yield
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _errors(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    return float(np.abs(out - ref).max()), float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def _randomise_batchnorms(model: torch.nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)


def _run_onnx(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("coeff_mode,groups,padding,bias_bank,batch", [
    ("channel", 1, 1, False, 1),
    ("channel", 2, (0, 1, 2, 1), True, 3),
    ("expert", 1, (1, 0), True, 2),
    ("expert", 4, 1, False, 1),
])
def test_matmul_fusion_layer_matches_dynamic_conv(coeff_mode, groups, padding, bias_bank, batch):
    gen = torch.Generator().manual_seed(1)
    conv = DynamicConv2d(8, 12, 3, stride=2, padding=padding, groups=groups, num_bases=5, coeff_mode=coeff_mode, bias_bank=bias_bank, bias=True)
    with torch.no_grad():
        conv.bias.copy_(torch.randn(12, generator=gen))
    x = torch.randn(batch, 8, 11, 9, generator=gen)
    coeff = torch.rand(batch, 12 if coeff_mode == "channel" else 1, 5, generator=gen)
    with torch.no_grad():
        ref = conv.forward_loop(x, coeff)
        out = MatMulFusionConv2d(conv)(x, coeff)
    assert out.shape == ref.shape
    mx, rel = _errors(out.numpy(), ref.numpy())
    assert mx <= ATOL and rel <= RTOL, (mx, rel)


def test_to_deploy_form_replaces_every_dynamic_conv_and_keeps_the_source():
    model = create_model("dy_resnet18", width_mult=0.25, num_classes=10, small_input=True).eval()
    deployed = to_deploy_form(model)
    assert not any(isinstance(m, DynamicConv2d) for m in deployed.modules())
    assert sum(isinstance(m, MatMulFusionConv2d) for m in deployed.modules()) == 16
    assert sum(isinstance(m, DynamicConv2d) for m in model.modules()) == 16  # the caller's model is untouched
    assert not any(type(m) is CoefficientPredictor for m in deployed.modules())
    with pytest.raises(ValueError, match="unknown deploy form"):
        to_deploy_form(model, "nope")


TINY_RESNET = dict(width_mult=0.25, num_classes=10, small_input=True)


@pytest.mark.parametrize("form,name,kwargs,size,batch", [
    ("matmul", "dy_resnet18", TINY_RESNET, 32, 1),
    pytest.param("matmul-nchwc", "dy_resnet18", TINY_RESNET, 32, 1, marks=needs_nchwc),
    pytest.param("matmul-nchwc", "dy_resnet50", TINY_RESNET, 32, 1, marks=[needs_nchwc, pytest.mark.slow]),
    pytest.param("matmul-nchwc", "dy_mobile", dict(width_mult=0.5, num_classes=10, small_input=True), 32, 1,
                 marks=[needs_nchwc, pytest.mark.slow]),
    # batch 2: the batch-as-groups conv (group = 2) stays on the plain kernel in the nchwc form
    pytest.param("matmul", "dy_resnet18", TINY_RESNET, 24, 2, marks=pytest.mark.slow),
])
def test_zoo_model_deploy_form_on_onnxruntime_matches_pytorch(tmp_path, form, name, kwargs, size, batch):
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    model = create_model(name, **kwargs).eval()
    _randomise_batchnorms(model, gen)
    path = tmp_path / f"{name}.onnx"
    report = export_deploy_onnx(model, path, (batch, 3, size, size), form)
    x = torch.randn(batch, 3, size, size, generator=gen)
    with torch.no_grad():
        ref = model(x).numpy()
    out = _run_onnx(path, x.numpy())
    mx, rel = _errors(out, ref)
    assert mx <= ATOL and rel <= RTOL, (form, name, mx, rel)
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert "Einsum" not in ops and "MatMul" in ops
    blocked = [n for n in proto.graph.node if n.domain == NCHWC_DOMAIN and n.op_type == "Conv"]
    if form == "matmul-nchwc" and name.startswith("dy_resnet") and batch == 1:
        assert report.form == "matmul-nchwc" and blocked
        # Which convs fit depends on the host's block size (8 with AVX2, 16 with AVX-512): the structure is checked
        # at a fixed block of 8, where every residual Add + Relu moves into its blocked conv (the Sum input).
        matmul_path = tmp_path / f"{name}.matmul.onnx"
        export_deploy_onnx(model, matmul_path, (batch, 3, size, size), "matmul")
        proto8, rewritten = nchwc_dynamic_convs(onnx.load(str(matmul_path)), block=8)
        assert rewritten > 0 and "Add" not in {n.op_type for n in proto8.graph.node}
        # the predictors' ReduceMean of a blocked tensor pools on the blocked layout
        assert any(n.domain == NCHWC_DOMAIN and n.op_type == "GlobalAveragePool" for n in proto.graph.node)
    if form == "matmul-nchwc" and name == "dy_mobile":
        # Its grouped convs do not fit the NCHWc kernel, so the rewrite is not kept (see NCHWC_MIN_SHARE).
        assert report.form == "matmul" and not blocked and any("kept the matmul form" in n for n in report.notes)
    if report.form == "matmul":
        assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)


@needs_nchwc
def test_nchwc_pass_leaves_grouped_and_odd_width_convs_alone(tmp_path):
    block = nchwc_block_size()
    gen = torch.Generator().manual_seed(3)
    for c, groups, expect in [(2 * block, 1, 1), (2 * block, 2, 0), (block + 2, 1, 0)]:
        layer = DyConv2d(c, c, 3, padding=1, groups=groups, num_bases=4, bias=True).eval()
        path = tmp_path / f"c{c}g{groups}.onnx"
        export_deploy_onnx(layer, path, (1, c, 10, 10), "matmul")
        proto, rewritten = nchwc_dynamic_convs(onnx.load(str(path)))
        assert rewritten == expect, (c, groups)
        x = torch.randn(1, c, 10, 10, generator=gen)
        with torch.no_grad():
            ref = layer(x).numpy()
        onnx.save(proto, str(path))
        mx, rel = _errors(_run_onnx(path, x.numpy()), ref)
        assert mx <= ATOL and rel <= RTOL, (c, groups, mx, rel)


def test_unknown_form_is_an_export_error(tmp_path):
    layer = DyConv2d(8, 8, 3, padding=1)
    with pytest.raises(ExportError, match="unknown deploy form"):
        export_deploy_onnx(layer, tmp_path / "x.onnx", (1, 8, 8, 8), "winograd")


@pytest.mark.parametrize("batch", [1, 3])
def test_sigmoid_once_predictor_matches_the_original(batch):
    gen = torch.Generator().manual_seed(5)
    cpm = CoefficientPredictor(16, [12, 12, 8], num_bases=6).eval()
    x = torch.randn(batch, 16, 9, 7, generator=gen)
    with torch.no_grad():
        refs = cpm(x)
        outs = SigmoidOnceCoefficientPredictor(cpm)(x)
    for out, ref, rows in zip(outs, refs, [12, 12, 8]):
        # At batch 1 each layer gets [C, 1, K], the memory of [1, C, K], the shape the fusion MatMul reads.
        assert tuple(out.shape) == ((rows, 1, 6) if batch == 1 else (batch, rows, 6))
        mx, rel = _errors(out.reshape(ref.shape).numpy(), ref.numpy())
        assert mx <= ATOL and rel <= RTOL, (mx, rel)


def test_dy_mobile_predictors_feed_the_fusion_matmuls_directly(tmp_path):
    model = create_model("dy_mobile", width_mult=0.5, num_classes=10, small_input=True).eval()
    path = tmp_path / "dy_mobile.onnx"
    export_deploy_onnx(model, path, (1, 3, 32, 32), "matmul")
    proto = onnx.load(str(path))
    producer = {o: n for n in proto.graph.node for o in n.output}
    matmuls = [n for n in proto.graph.node if n.op_type == "MatMul"]
    predictors = sum(isinstance(m, CoefficientPredictor) for m in model.modules())
    assert len(matmuls) == 3 * predictors
    assert all(producer[n.input[0]].op_type == "Split" for n in matmuls)  # no Reshape per layer
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("ReduceMean") == predictors and ops.count("Flatten") == 1  # the classifier head's
