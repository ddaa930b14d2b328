"""The DyNetDynamicConv2d onnxruntime-extensions Python op, alone, against DynamicConv2d (loop form).

Tolerances: max-abs <= 1e-4 and relative ||out - ref|| / ||ref|| <= 1e-5 (fp32), fresh random inputs per case.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from dynet_deploy.errors import RuntimeBackendError
from dynet_deploy.nn import DynamicConv2d
from dynet_deploy.op.onnxruntime_python import register
from dynet_deploy.op.spec import ATTRIBUTE_NAMES as INT_ATTRIBUTES
from dynet_deploy.op import spec
from dynet_deploy.op.spec import OP_DOMAIN
from dynet_deploy.runtimes.onnxruntime_runtime import OnnxruntimeRunner

ATOL, RTOL = 1e-4, 1e-5


def single_node_model(conv: DynamicConv2d, activation: int = 0, h=None, w=None, dtype=TensorProto.FLOAT):
    """A graph with one DyNetDynamicConv2d node: inputs x and coeff (dynamic N, H, W), weights as initializers."""
    c_c = conv.coeff_channels
    inputs = ["x", "coeff", "weight"]
    inits = [numpy_helper.from_array(conv.weight.detach().numpy(), "weight")]
    if conv.bias_bank is not None:
        inputs.append("bias_bank")
        inits.append(numpy_helper.from_array(conv.bias_bank.detach().numpy(), "bias_bank"))
    if conv.bias is not None:
        inputs.append("bias")
        inits.append(numpy_helper.from_array(conv.bias.detach().numpy(), "bias"))
    node = spec.make_node(inputs, ["y"], name="dynconv", **spec.attributes(
        stride=conv.stride, pads=conv.pads, dilation=conv.dilation, groups=conv.groups, activation=activation,
        has_bias_bank=conv.bias_bank is not None, has_bias=conv.bias is not None))
    graph = helper.make_graph(
        [node], "one_dynamic_conv",
        [helper.make_tensor_value_info("x", dtype, ["N", conv.in_channels, h or "H", w or "W"]),
         helper.make_tensor_value_info("coeff", dtype, ["N", c_c, conv.num_bases])],
        [helper.make_tensor_value_info("y", dtype, ["N", conv.out_channels, None, None])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(OP_DOMAIN, 1)])
    onnx.checker.check_model(model, full_check=True)
    return model


CASES = [
    dict(),
    dict(coeff_mode="expert"),
    dict(bias_bank=True),
    dict(bias=True),
    dict(coeff_mode="expert", bias_bank=True, bias=True),
    dict(groups=2, stride=2),
    dict(groups=8, padding=1),  # depthwise (in = out = 8)
    dict(padding=(0, 1, 2, 1), dilation=2),
    dict(kernel_size=(1, 3), stride=(1, 2), padding=(0, 1), num_bases=2),
    dict(kernel_size=1, num_bases=1, bias=True),
]
ACTS = {0: lambda y: y, 1: torch.relu, 2: lambda y: torch.clamp(y, 0, 6)}


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("activation", [0, 1, 2])
def test_op_matches_dynamic_conv2d(case, activation):
    kw = dict(CASES[case])
    kw.setdefault("kernel_size", 3)
    torch.manual_seed(case * 3 + activation)
    conv = DynamicConv2d(8, 8, mode="loop", **kw)
    with torch.no_grad():
        if conv.bias is not None:
            conv.bias.uniform_(-0.5, 0.5)
    runner = OnnxruntimeRunner(single_node_model(conv, activation))
    rng = np.random.default_rng(case)
    for n, (h, w) in [(1, (9, 11)), (3, (7, 7)), (4, (12, 5))]:
        x = rng.standard_normal((n, 8, h, w)).astype(np.float32)
        coeff = rng.uniform(0, 1, (n, conv.coeff_channels, conv.num_bases)).astype(np.float32)
        with torch.no_grad():
            ref = ACTS[activation](conv(torch.from_numpy(x), torch.from_numpy(coeff))).numpy()
        out = runner.run({"x": x, "coeff": coeff})["y"]
        assert out.shape == ref.shape
        diff = out.astype(np.float64) - ref
        max_abs, rel = np.abs(diff).max(), np.linalg.norm(diff) / np.linalg.norm(ref)
        assert max_abs <= ATOL and rel <= RTOL, (CASES[case], activation, n, max_abs, rel)


def test_register_is_idempotent():
    assert register() == register()


def test_node_inputs_keep_the_contract_on_disk(tmp_path):
    """The runner pads optional inputs in memory only: the file keeps 3/4/5 positional inputs."""
    conv = DynamicConv2d(4, 4, 3, padding=1, bias=True)
    model = single_node_model(conv)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    runner = OnnxruntimeRunner(path)
    assert runner.uses_custom_op
    x = np.random.default_rng(0).standard_normal((2, 4, 6, 6)).astype(np.float32)
    runner.run({"x": x, "coeff": np.full((2, 4, 6), 0.5, np.float32)})
    assert list(onnx.load(str(path)).graph.node[0].input) == ["x", "coeff", "weight", "bias"]


def test_wrong_inputs_are_clear_errors():
    conv = DynamicConv2d(4, 6, 3, padding=1)
    runner = OnnxruntimeRunner(single_node_model(conv))
    x = np.ones((2, 4, 6, 6), np.float32)
    c = np.ones((2, 6, 6), np.float32)
    with pytest.raises(RuntimeBackendError, match="rank 3"):
        runner.run({"x": x[0], "coeff": c})
    with pytest.raises(RuntimeBackendError, match="channels 5"):
        runner.run({"x": np.ones((2, 5, 6, 6), np.float32), "coeff": c})
    with pytest.raises(RuntimeBackendError, match="coeff"):
        runner.run({"x": x, "coeff": np.ones((3, 6, 6), np.float32)})  # batch differs from x: the op says so


def test_float16_graph_is_refused_clearly():
    conv = DynamicConv2d(4, 4, 3, padding=1)
    model = single_node_model(conv, dtype=TensorProto.FLOAT16)
    with pytest.raises(RuntimeBackendError, match="float32"):
        OnnxruntimeRunner(model)


def test_wrong_domain_is_refused():
    conv = DynamicConv2d(4, 4, 3, padding=1)
    model = single_node_model(conv)
    model.graph.node[0].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(RuntimeBackendError, match="trt.plugins"):
        OnnxruntimeRunner(model)


def test_attribute_names_are_the_contract():
    assert INT_ATTRIBUTES == (
        "stride_h", "stride_w", "pad_top", "pad_left", "pad_bottom", "pad_right",
        "dilation_h", "dilation_w", "groups", "activation", "has_bias_bank", "has_bias",
    )


def test_bad_call_inside_the_op_gives_nan_not_a_crash():
    """A shape error only the op can see (K differs from the weight's) must not abort the process."""
    conv = DynamicConv2d(4, 4, 3, padding=1, num_bases=3)
    model = single_node_model(conv)
    coeff_dims = model.graph.input[1].type.tensor_type.shape.dim
    coeff_dims[2].Clear()
    coeff_dims[2].dim_param = "K"
    runner = OnnxruntimeRunner(model)
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 5)).astype(np.float32)
    out = runner.run({"x": x, "coeff": np.ones((2, 4, 5), np.float32)})["y"]
    assert out.shape == (2, 4, 5, 5) and np.isnan(out).all()
