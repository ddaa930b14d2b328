"""The op's single Python spec (dynet_deploy.op.spec) against the C ABI's attribute table, and its node helpers."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import torch

from dynet_deploy.op import native, reference, spec


@pytest.fixture(scope="module")
def cpu_library():
    native.ensure_built()
    return native.load_cpu_library()


def test_c_abi_attribute_table_equals_python_spec(cpu_library):
    table = native.attribute_table(cpu_library)
    python = [(a.name, a.default, a.min, a.max, a.since_version) for a in spec.ATTRIBUTES]
    assert len(table) == 15 and [row[4] for row in table] == [1] * 12 + [2] * 3
    assert [row[0] for row in table] == [row[0] for row in python]  # names, in order
    for c_row, py_row in zip(table, python):
        assert c_row == py_row, f"attribute {py_row[0]}: C ABI {c_row} != Python spec {py_row}"


def test_ctypes_params_mirror_carries_the_spec_attributes():
    names = [f[0] for f in native.DynetConvParams._fields_]
    assert names[len(native.SHAPE_FIELDS) : -1] == list(spec.ATTRIBUTE_NAMES)
    assert names[-1] == "weight_dtype"


def test_ctypes_params_mirror_has_the_c_struct_size(cpu_library):
    # The last field's offset as the library sees it: dynet_conv_params_attribute_data of has_mean, plus 4 bytes.
    last = cpu_library.dynet_conv_params_attribute_data
    last.restype = native.ctypes.c_void_p
    last.argtypes = [native.ctypes.POINTER(native.DynetConvParams), native.ctypes.c_int32]
    p = native.DynetConvParams()
    offset = last(p, len(spec.ATTRIBUTES) - 1) - native.ctypes.addressof(p)
    assert offset == native.DynetConvParams.has_mean.offset
    assert native.ctypes.sizeof(native.DynetConvParams) == native.DynetConvParams.weight_dtype.offset + 4


def test_params_init_takes_the_table_defaults(cpu_library):
    p = native.DynetConvParams()
    p.weight_dtype = 7
    cpu_library.dynet_conv_params_init(p)
    assert {n: getattr(p, n) for n in spec.ATTRIBUTE_NAMES} == spec.DEFAULTS
    assert p.weight_dtype == native.FLOAT32


@pytest.mark.parametrize(
    "attrs, bank",
    [({}, "fp32"), ({"has_spatial": 1}, "fp32"), ({"has_residual": 1}, "fp32"), ({"has_mean": 1}, "fp32")]
    + [({}, "fp16"), ({}, "bf16"), ({"groups": 2, "has_bias": 1, "activation": 2}, "fp32")],
)
def test_op_version_is_the_same_on_both_sides(cpu_library, attrs, bank):
    dtype = {"fp32": native.FLOAT32, "fp16": native.FLOAT16, "bf16": native.BFLOAT16}[bank]
    p = native.make_params((1, 4, 5, 5), (1, 4, 2), (2, 4, 2, 3, 3), groups=2, weight_dtype=dtype)
    for name, value in attrs.items():
        setattr(p, name, value)
    assert cpu_library.dynet_conv_op_version(p) == spec.op_version(attrs, bank)
    assert cpu_library.dynet_conv_op_version(None) == -1


@pytest.mark.parametrize("dtype", [-1, 3])
def test_weight_dtype_out_of_range_is_refused(cpu_library, dtype):
    p = native.make_params((1, 4, 5, 5), (1, 4, 2), (2, 4, 2, 3, 3), groups=2, weight_dtype=dtype)
    buf = native.ctypes.create_string_buffer(256)
    assert cpu_library.dynet_conv_validate(p, buf, len(buf)) == native.ERR_INVALID_ARGUMENT
    assert buf.value.decode() == f"weight_dtype = {dtype}: must be 0 (float32), 1 (float16) or 2 (bfloat16)"


@pytest.mark.parametrize(
    "name, value",
    [("stride_h", 0), ("groups", -1), ("activation", 3), ("has_bias", 2), ("pad_right", -1), ("dilation_w", 0)]
    + [("has_spatial", 2), ("has_residual", -1), ("has_mean", 2)],
)
def test_out_of_range_attribute_is_refused_by_both_sides(cpu_library, name, value):
    with pytest.raises(
        ValueError, match=re.escape(f"attribute '{name}' = {value}: {spec.attribute(name).range_text()}")
    ):
        spec.check_attributes({name: value})
    p = native.make_params((1, 4, 5, 5), (1, 4, 2), (2, 4, 4, 3, 3))
    setattr(p, name, value)
    buf = native.ctypes.create_string_buffer(256)
    assert cpu_library.dynet_conv_validate(p, buf, len(buf)) == native.ERR_INVALID_ARGUMENT
    assert buf.value.decode() == f"attribute '{name}' = {value}: {spec.attribute(name).range_text()}"


def test_unknown_and_non_int_attributes_are_refused():
    with pytest.raises(ValueError, match="unknown attribute"):
        spec.check_attributes({"stride": 2})
    with pytest.raises(ValueError, match="must be an int"):
        spec.check_attributes({"groups": 1.5})
    with pytest.raises(ValueError, match="must be an int"):
        spec.check_attributes({"has_bias": True})
    assert spec.check_attributes({"groups": np.int64(2)})["groups"] == 2


def test_make_node_and_read_attributes_round_trip():
    attrs = spec.attributes(
        stride=(2, 1), pads=(1, 0, 2, 1), dilation=(1, 2), groups=2, activation="relu6", has_bias=True
    )
    node = spec.make_node(["x", "c", "w", "b"], ["y"], name="n0", **attrs)
    assert node.op_type == spec.OP_TYPE and node.domain == spec.OP_DOMAIN
    names = {a.name for a in node.attribute}
    v1_names = {a.name for a in spec.ATTRIBUTES if a.since_version == 1}
    assert names == v1_names | set(spec.PLUGIN_STRING_ATTRIBUTES)  # a version-1 node: no version-2 attribute
    assert spec.read_attributes(node) == attrs
    assert spec.conv_arguments(attrs)["pads"] == (1, 0, 2, 1)
    with pytest.raises(ValueError, match="got 3 inputs"):
        spec.make_node(["x", "c", "w"], ["y"], **attrs)
    extra = onnx.helper.make_node(spec.OP_TYPE, ["x", "c", "w"], ["y"], domain=spec.OP_DOMAIN, bogus=1)
    with pytest.raises(ValueError, match="unknown attribute"):
        spec.read_attributes(extra)


def test_reference_numpy_front_matches_torch_layer_kernel_path():
    from dynet_deploy.nn import DynamicConv2d

    torch.manual_seed(0)
    conv = DynamicConv2d(
        6, 8, 3, stride=2, padding=(1, 0, 2, 1), dilation=1, groups=2, num_bases=3, bias=True, bias_bank=True
    ).eval()
    x = torch.randn(3, 6, 9, 8)
    coeff = torch.rand(3, 8, 3)
    with torch.no_grad():
        conv.mode = "loop"
        want = conv(x, coeff).numpy()
    got = reference.dynamic_conv_numpy(
        x.numpy(),
        coeff.numpy(),
        conv.weight.detach().numpy(),
        conv.bias_bank.detach().numpy(),
        conv.bias.detach().numpy(),
        stride_h=2,
        stride_w=2,
        pad_top=1,
        pad_left=0,
        pad_bottom=2,
        pad_right=1,
        groups=2,
    )
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel <= 1e-5, rel


def test_relu_propagates_nan_like_pytorch():
    y = reference.activate(torch.tensor([float("nan"), -1.0, 7.0]), spec.Activation.RELU)
    assert torch.isnan(y[0]) and y[1] == 0 and y[2] == 7
