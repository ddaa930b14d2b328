"""The C++ CPU reference of DyNetDynamicConv2d (through its C ABI, via ctypes) against PyTorch.

Tolerance: relative error ||out - ref|| / ||ref|| <= 1e-5 against PyTorch in float64 (the reference accumulates in
double and rounds once to float32); max-abs error is reported with it. Invalid arguments must come back as error codes.
"""

from __future__ import annotations

import ctypes
import zlib

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynet_deploy.op import native as plugin_lib
from dynet_deploy.op import reference

REL_TOL = 1e-5


@pytest.fixture(scope="session", autouse=True)
def cpu_library():
    plugin_lib.ensure_built()
    return plugin_lib.load_cpu_library()


def torch_reference(x, coeff, weight, bias_bank, bias, stride, pads, dilation, groups, activation):
    """The op's Python reference (dynet_deploy.op.reference) in float64."""

    def t(a):
        return None if a is None else torch.from_numpy(a).double()

    with torch.no_grad():
        return reference.dynamic_conv(
            t(x), t(coeff), t(weight), t(bias_bank), t(bias), stride, pads, dilation, groups, activation
        ).numpy()


def make_case(rng, n, c_in, c_out, h, w, k, kh, kw, groups, per_channel, bank, bias):
    x = rng.standard_normal((n, c_in, h, w), dtype=np.float32)
    coeff = rng.uniform(0.05, 1.0, (n, c_out if per_channel else 1, k)).astype(np.float32)  # sigmoid-like
    weight = rng.standard_normal((k, c_out, c_in // groups, kh, kw), dtype=np.float32) * np.float32(0.3)
    bias_bank = rng.standard_normal((k, c_out), dtype=np.float32) if bank else None
    b = rng.standard_normal((c_out,), dtype=np.float32) if bias else None
    return x, coeff, weight, bias_bank, b


def check(case, stride, pads, dilation, groups, activation):
    x, coeff, weight, bias_bank, bias = case
    out = plugin_lib.cpu_reference_conv(
        x,
        coeff,
        weight,
        bias_bank,
        bias,
        stride=stride,
        pads=pads,
        dilation=dilation,
        groups=groups,
        activation=activation,
    )
    ref = torch_reference(x, coeff, weight, bias_bank, bias, stride, pads, dilation, groups, activation)
    assert out.shape == ref.shape
    max_abs = float(np.abs(out - ref).max())
    rel = float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))
    assert rel <= REL_TOL, f"relative error {rel:.3e} > {REL_TOL} (max-abs {max_abs:.3e})"
    return rel, max_abs


# name: (n, c_in, c_out, h, w, k, kh, kw, groups, per_channel, bank, bias, stride, pads, dilation, activation)
CASES = {
    "dense3x3_batch1": (1, 8, 12, 9, 11, 6, 3, 3, 1, True, False, False, (1, 1), (1, 1, 1, 1), (1, 1), 0),
    "odd_batch_relu": (3, 6, 10, 8, 8, 4, 3, 3, 1, True, True, True, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "groups_relu6": (5, 12, 18, 10, 7, 6, 3, 3, 3, True, True, False, (1, 1), (1, 1, 1, 1), (1, 1), 2),
    "depthwise_stride2": (3, 16, 16, 13, 12, 6, 3, 3, 16, True, False, True, (2, 2), (1, 1, 1, 1), (1, 1), 0),
    "depthwise_mult2": (2, 8, 16, 9, 9, 3, 5, 5, 8, False, False, False, (1, 1), (2, 2, 2, 2), (1, 1), 1),
    "dilated": (2, 6, 8, 15, 14, 5, 3, 3, 1, True, False, False, (1, 1), (2, 2, 2, 2), (2, 2), 0),
    "asymmetric_pads": (3, 5, 7, 10, 9, 2, 3, 2, 1, True, True, True, (1, 2), (0, 1, 2, 0), (1, 1), 0),
    "stride_dilation_mixed": (1, 4, 6, 17, 16, 6, 3, 3, 2, True, False, False, (2, 1), (1, 0, 3, 2), (2, 3), 2),
    "pointwise": (7, 16, 24, 6, 5, 6, 1, 1, 1, True, True, False, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "pointwise_grouped_per_expert": (3, 12, 12, 5, 5, 6, 1, 1, 4, False, True, True, (1, 1), (0, 0, 0, 0), (1, 1), 0),
    "per_expert_7x7_stride2": (2, 3, 8, 21, 19, 4, 7, 7, 1, False, False, True, (2, 2), (3, 3, 3, 3), (1, 1), 1),
    "dymobile_group_c_over_6": (3, 24, 24, 9, 9, 6, 3, 3, 4, True, False, False, (1, 1), (1, 1, 1, 1), (1, 1), 2),
    "k1_single_expert": (1, 4, 4, 4, 4, 1, 3, 3, 1, False, False, False, (1, 1), (1, 1, 1, 1), (1, 1), 0),
    "kernel_equals_input": (2, 3, 5, 3, 3, 6, 3, 3, 1, True, False, True, (1, 1), (0, 0, 0, 0), (1, 1), 0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_pytorch(name):
    (n, c_in, c_out, h, w, k, kh, kw, groups, per_channel, bank, bias, stride, pads, dilation, act) = CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    case = make_case(rng, n, c_in, c_out, h, w, k, kh, kw, groups, per_channel, bank, bias)
    rel, max_abs = check(case, stride, pads, dilation, groups, act)
    print(f"{name}: rel {rel:.2e} max-abs {max_abs:.2e} (tolerance rel {REL_TOL})")


@st.composite
def random_layer(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3, 4]))
    depthwise = draw(st.booleans()) and groups > 1
    cin_g = 1 if depthwise else draw(st.integers(1, 4))
    c_in = groups * cin_g
    c_out = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([1, 2, 3]))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = tuple(draw(st.integers(0, 3)) for _ in range(4))
    h = draw(st.integers(max(1, (kh - 1) * dh + 1 - pads[0] - pads[2]), 12))
    w = draw(st.integers(max(1, (kw - 1) * dw + 1 - pads[1] - pads[3]), 12))
    return dict(
        n=draw(st.sampled_from([1, 2, 3, 5])),
        c_in=c_in,
        c_out=c_out,
        h=h,
        w=w,
        k=draw(st.integers(1, 6)),
        kh=kh,
        kw=kw,
        groups=groups,
        per_channel=draw(st.booleans()),
        bank=draw(st.booleans()),
        bias=draw(st.booleans()),
        stride=(sh, sw),
        pads=pads,
        dilation=(dh, dw),
        activation=draw(st.integers(0, 2)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_layer())
def test_random_shapes_match_pytorch(layer):
    rng = np.random.default_rng(layer["seed"])
    case = make_case(
        rng,
        layer["n"],
        layer["c_in"],
        layer["c_out"],
        layer["h"],
        layer["w"],
        layer["k"],
        layer["kh"],
        layer["kw"],
        layer["groups"],
        layer["per_channel"],
        layer["bank"],
        layer["bias"],
    )
    check(case, layer["stride"], layer["pads"], layer["dilation"], layer["groups"], layer["activation"])


# ---- op version 2: spatial, residual, mean, a narrowed bank (dynet_conv_cpu) ---------------------------------------

BANK_DTYPES = {"fp32": np.float32, "fp16": np.float16, "bf16": ml_dtypes.bfloat16}


def v2_reference(x, coeff, weight, bias_bank, bias, spatial, residual, stride, pads, dilation, groups, activation):
    """The Python reference in float64 on the widened bank: y and GlobalAveragePool(y)."""

    def t(a):
        return None if a is None else torch.from_numpy(np.asarray(a, np.float32)).double()

    with torch.no_grad():
        y = reference.dynamic_conv(
            t(x),
            t(coeff),
            t(np.asarray(weight).astype(np.float32)),
            t(bias_bank),
            t(bias),
            stride,
            pads,
            dilation,
            groups,
            activation,
            spatial=t(spatial),
            residual=t(residual),
        )
        return y.numpy(), reference.channel_mean(y).numpy()


def check_v2(layer, bank_dtype, use_spatial, use_residual, use_mean):
    rng = np.random.default_rng(layer["seed"])
    x, coeff, weight, bias_bank, bias = make_case(
        rng,
        *(layer[k] for k in ("n", "c_in", "c_out", "h", "w", "k", "kh", "kw", "groups", "per_channel", "bank", "bias")),
    )
    weight = weight.astype(BANK_DTYPES[bank_dtype])
    spatial = rng.uniform(0.0, 1.0, (layer["n"], layer["kh"] * layer["kw"])).astype(np.float32) if use_spatial else None
    conv = dict(
        stride=layer["stride"],
        pads=layer["pads"],
        dilation=layer["dilation"],
        groups=layer["groups"],
        activation=layer["activation"],
    )
    params = plugin_lib.make_params(x.shape, coeff.shape, weight.shape, **{k: v for k, v in conv.items()})
    h_out, w_out = plugin_lib.output_hw(params)
    residual = (
        rng.standard_normal((layer["n"], layer["c_out"], h_out, w_out)).astype(np.float32) if use_residual else None
    )
    out = plugin_lib.cpu_reference_conv(
        x, coeff, weight, bias_bank, bias, **conv, spatial=spatial, residual=residual, mean=use_mean
    )
    y, mean = out if use_mean else (out, None)
    ref_y, ref_mean = v2_reference(x, coeff, weight, bias_bank, bias, spatial, residual, **conv)
    rel = float(np.linalg.norm(y - ref_y) / max(np.linalg.norm(ref_y), 1e-30))
    assert rel <= REL_TOL, f"{layer}: y relative error {rel:.3e} > {REL_TOL}"
    if use_mean:
        assert mean.shape == (layer["n"], layer["c_out"], 1, 1)
        # From the stored y in double: equal to numpy's float64 mean of y up to the final rounding.
        np.testing.assert_allclose(mean, y.astype(np.float64).mean(axis=(2, 3), keepdims=True), rtol=1e-6, atol=1e-7)
        scale = max(float(np.abs(ref_mean).max()), 1.0)
        assert float(np.abs(mean - ref_mean).max()) <= REL_TOL * scale, (layer, np.abs(mean - ref_mean).max())
    return rel


# name: (n, c_in, c_out, h, w, k, kh, kw, groups, per_channel, bank, bias, stride, pads, dilation, activation)
V2_CASES = {
    "resnet_block_relu": ((2, 16, 16, 9, 9, 4, 3, 3, 1, True, False, True, (1, 1), (1, 1, 1, 1), (1, 1), 1), "fp32"),
    "per_expert_stride2_fp16": (
        (3, 8, 12, 11, 10, 3, 3, 3, 1, False, True, False, (2, 2), (1, 1, 1, 1), (1, 1), 2),
        "fp16",
    ),
    "groups_bf16": ((2, 12, 18, 8, 7, 6, 3, 3, 3, True, True, True, (1, 1), (1, 0, 2, 1), (1, 1), 1), "bf16"),
    "depthwise_stride2_bf16": (
        (2, 16, 16, 13, 12, 4, 3, 3, 16, True, False, True, (2, 2), (1, 1, 1, 1), (1, 1), 2),
        "bf16",
    ),
    "pointwise_per_expert_fp16": (
        (4, 16, 24, 6, 5, 4, 1, 1, 2, False, True, True, (1, 1), (0, 0, 0, 0), (1, 1), 0),
        "fp16",
    ),
    "dilated_5x3": ((1, 6, 8, 15, 14, 5, 5, 3, 1, True, False, False, (1, 2), (2, 1, 2, 1), (2, 1), 0), "fp32"),
}


@pytest.mark.parametrize("flags", ["spatial", "residual", "mean", "all"])
@pytest.mark.parametrize("name", sorted(V2_CASES))
def test_version_2_matches_the_python_reference(name, flags):
    shape, bank_dtype = V2_CASES[name]
    keys = ("n", "c_in", "c_out", "h", "w", "k", "kh", "kw", "groups", "per_channel", "bank", "bias")
    keys += ("stride", "pads", "dilation", "activation")
    layer = dict(zip(keys, shape), seed=zlib.crc32(f"{name}/{flags}".encode()))
    use = {f: flags in (f, "all") for f in ("spatial", "residual", "mean")}
    rel = check_v2(layer, bank_dtype, use["spatial"], use["residual"], use["mean"])
    print(f"{name} {flags} ({bank_dtype} bank): rel {rel:.2e}")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    random_layer(),
    st.sampled_from(sorted(BANK_DTYPES)),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_random_version_2_layers_match_the_python_reference(layer, bank_dtype, use_spatial, use_residual, use_mean):
    check_v2(layer, bank_dtype, use_spatial, use_residual, use_mean)


def test_narrowed_bank_is_widened_exactly():
    # Bank values exact in fp16 / bf16 (small integers times powers of two, subnormal fp16 included), one expert with
    # coefficient 1 and a 1x1 kernel over a one-hot input: y reproduces each bank value bit for bit.
    values = np.array([0.0, -0.0, 1.0, -2.5, 0.09375, 2.0**-24, -(2.0**-20), 65504.0], np.float32)
    x = np.zeros((len(values), len(values), 1, 1), np.float32)
    x[np.arange(len(values)), np.arange(len(values))] = 1.0
    coeff = np.ones((len(values), 1, 1), np.float32)
    weight = np.diag(values).reshape(1, len(values), len(values), 1, 1)
    for dtype in (np.float16, ml_dtypes.bfloat16):
        bank = weight.astype(dtype)
        y = plugin_lib.cpu_reference_conv(x, coeff, bank, spatial=np.ones((len(values), 1), np.float32))
        want = np.diag(bank.astype(np.float32).reshape(len(values), len(values)))
        np.testing.assert_array_equal(np.diagonal(y[:, :, 0, 0]), want)


def test_version_1_params_agree_between_both_entry_points(cpu_library):
    rng = np.random.default_rng(3)
    x, coeff, weight, bias_bank, bias = make_case(rng, 2, 6, 8, 7, 7, 3, 3, 3, 2, True, True, True)
    params = plugin_lib.make_params(x.shape, coeff.shape, weight.shape, has_bias_bank=True, has_bias=True, groups=2)
    y32 = plugin_lib.cpu_reference_conv(x, coeff, weight, bias_bank, bias, groups=2)
    y = np.empty_like(y32)
    arrays = dict(x=x, coeff=coeff, weight=weight, bias_bank=bias_bank, bias=bias, y=y)
    tensors = plugin_lib.DynetConvTensors(**{k: a.ctypes.data for k, a in arrays.items()})
    assert cpu_library.dynet_conv_cpu(ctypes.byref(params), ctypes.byref(tensors)) == plugin_lib.OK
    np.testing.assert_allclose(y, y32, rtol=1e-6, atol=1e-6)  # only the fused kernels' rounding to fp32 differs


def test_cpu_f32_refuses_version_2_and_cpu_checks_its_pointers(cpu_library):
    params = valid_params()
    x = np.ones((2, 4, 6, 6), np.float32)
    coeff = np.ones((2, 8, 3), np.float32)
    weight = np.ones((3, 8, 2, 3, 3), np.float32)
    y = np.empty((2, 8, 6, 6), np.float32)
    residual = np.ones_like(y)
    fp = ctypes.POINTER(ctypes.c_float)
    p = [a.ctypes.data_as(fp) for a in (x, coeff, weight, y)]
    for flag in ("has_spatial", "has_residual", "has_mean", "weight_dtype"):
        v2 = valid_params()
        setattr(v2, flag, 1)
        assert cpu_library.dynet_conv_cpu_f32(ctypes.byref(v2), p[0], p[1], p[2], None, None, p[3]) == (
            plugin_lib.ERR_UNSUPPORTED
        ), flag

    def call(prm, **ptrs):
        arrays = dict(x=x, coeff=coeff, weight=weight, y=y)
        t = plugin_lib.DynetConvTensors(**{k: a.ctypes.data for k, a in arrays.items()})
        for k, v in ptrs.items():
            setattr(t, k, v)
        return cpu_library.dynet_conv_cpu(ctypes.byref(prm), ctypes.byref(t))

    assert call(params) == plugin_lib.OK
    assert call(params, x=None) == plugin_lib.ERR_NULL_POINTER
    assert call(params, y=None) == plugin_lib.ERR_NULL_POINTER
    params.has_residual = 1
    assert call(params) == plugin_lib.ERR_NULL_POINTER  # promised a residual, passed none
    assert call(params, residual=residual.ctypes.data) == plugin_lib.OK
    params.has_residual = 0
    assert call(params, residual=residual.ctypes.data) == plugin_lib.ERR_INVALID_ARGUMENT  # one it did not promise
    params.has_mean = 1
    assert call(params) == plugin_lib.ERR_NULL_POINTER
    assert cpu_library.dynet_conv_cpu(ctypes.byref(params), None) == plugin_lib.ERR_NULL_POINTER
    assert cpu_library.dynet_conv_cpu(None, None) == plugin_lib.ERR_NULL_POINTER
    params.has_mean = 0
    params.weight_dtype = 3
    assert call(params) == plugin_lib.ERR_INVALID_ARGUMENT


def test_python_wrapper_checks_version_2_shapes():
    x = np.ones((2, 4, 5, 5), np.float32)
    coeff, weight = np.ones((2, 6, 2), np.float32), np.ones((2, 6, 4, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"spatial must be \[N, kH\*kW\] = \[2, 9\], got \[2, 3, 3\]"):
        plugin_lib.cpu_reference_conv(x, coeff, weight, spatial=np.ones((2, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"residual must be \[N, C_out, H_out, W_out\] = \[2, 6, 3, 3\]"):
        plugin_lib.cpu_reference_conv(x, coeff, weight, residual=np.ones((2, 6, 5, 5), np.float32))


# ---- malformed arguments: error codes with reasons, never a crash ----------------------------------------------


def valid_params():
    return plugin_lib.make_params((2, 4, 6, 6), (2, 8, 3), (3, 8, 2, 3, 3), groups=2, pads=(1, 1, 1, 1))


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("groups", 0, "attribute 'groups' = 0: must be >= 1"),
        ("groups", 3, "must divide C_in"),
        ("stride_h", 0, "stride"),
        ("dilation_w", -1, "dilation"),
        ("pad_left", -2, "attribute 'pad_left' = -2: must be >= 0"),
        ("activation", 3, "attribute 'activation' = 3: must be in [0, 2]"),
        ("activation", -1, "attribute 'activation' = -1: must be in [0, 2]"),
        ("coeff_channels", 3, "coeff must be"),
        ("has_bias", 2, "has_bias"),
        ("n", 0, "x must be"),
        ("k", 0, "weight must be"),
        ("kh", 9, "empty output"),
        ("c_in", 2**30, "limit is 2^31-1"),
    ],
)
def test_validate_rejects_with_reason(cpu_library, field, value, reason):
    params = valid_params()
    setattr(params, field, value)
    buf = ctypes.create_string_buffer(256)
    status = cpu_library.dynet_conv_validate(ctypes.byref(params), buf, len(buf))
    assert status == plugin_lib.ERR_INVALID_ARGUMENT
    assert reason in buf.value.decode()


def test_validate_accepts_and_tiny_message_buffer_is_safe(cpu_library):
    params = valid_params()
    assert cpu_library.dynet_conv_validate(ctypes.byref(params), None, 0) == plugin_lib.OK
    params.groups = 0
    small = ctypes.create_string_buffer(4)
    assert cpu_library.dynet_conv_validate(ctypes.byref(params), small, 4) == plugin_lib.ERR_INVALID_ARGUMENT
    assert len(small.value) <= 3  # truncated and terminated, nothing written past the buffer
    assert cpu_library.dynet_conv_validate(None, None, 0) == plugin_lib.ERR_NULL_POINTER


def test_null_pointers_are_errors(cpu_library):
    params = valid_params()
    fp = ctypes.POINTER(ctypes.c_float)
    x = np.ones((2, 4, 6, 6), np.float32)
    coeff = np.ones((2, 8, 3), np.float32)
    weight = np.ones((3, 8, 2, 3, 3), np.float32)
    y = np.empty((2, 8, 6, 6), np.float32)
    p = [a.ctypes.data_as(fp) for a in (x, coeff, weight, y)]
    call = cpu_library.dynet_conv_cpu_f32
    assert call(ctypes.byref(params), p[0], p[1], p[2], None, None, p[3]) == plugin_lib.OK
    assert call(ctypes.byref(params), None, p[1], p[2], None, None, p[3]) == plugin_lib.ERR_NULL_POINTER
    assert call(ctypes.byref(params), p[0], p[1], p[2], None, None, None) == plugin_lib.ERR_NULL_POINTER
    params.has_bias_bank = 1  # promised a bias bank, passed none
    assert call(ctypes.byref(params), p[0], p[1], p[2], None, None, p[3]) == plugin_lib.ERR_NULL_POINTER
    assert call(None, p[0], p[1], p[2], None, None, p[3]) == plugin_lib.ERR_NULL_POINTER


def test_python_wrapper_raises_clear_errors():
    x = np.ones((1, 4, 5, 5), np.float32)
    weight = np.ones((2, 6, 2, 3, 3), np.float32)
    with pytest.raises(plugin_lib.DynamicConvCallError, match="groups=3 must divide"):
        plugin_lib.cpu_reference_conv(x, np.ones((1, 6, 2), np.float32), np.ones((2, 6, 1, 3, 3), np.float32), groups=3)
    with pytest.raises(ValueError, match="does not match"):
        plugin_lib.cpu_reference_conv(x, np.ones((1, 6, 3), np.float32), weight, groups=2)
    with pytest.raises(ValueError, match="bias must be"):
        plugin_lib.cpu_reference_conv(x, np.ones((1, 6, 2), np.float32), weight, bias=np.ones(5, np.float32), groups=2)
    with pytest.raises(ValueError, match="NaN"):
        plugin_lib.cpu_reference_conv(x * np.nan, np.ones((1, 6, 2), np.float32), weight, groups=2)
