"""The C ABI the CUDA kernels and the TensorRT plugin share, checked on the CPU (no GPU, no TensorRT library).

What the plugin decides through the ABI is tested here through the same functions: the attribute table and its
field getter (the plugin's field names and serialised values), the shape checks of configurePlugin (the profile's
max must fit the op's 2^31-1 element limit), the timing-cache key, 64-bit workspace arithmetic, the plan API of the
CUDA library (including the cuDNN tactic's presence in the build), NaN through ReLU in the reference, and the
exported / undefined symbols of both TensorRT libraries.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dynet_deploy.op import native as plugin_lib
from dynet_deploy.op.native import DynetConvParams

P = ctypes.POINTER(DynetConvParams)
LIMIT = 2**31 - 1
ALGO_CUDNN = 3
PLUGIN_DIR = plugin_lib.REPO_ROOT / "plugins" / "dynamic_conv"


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    c = ctypes
    lib.dynet_conv_params_init.argtypes = [P]
    lib.dynet_conv_validate.argtypes = [P, c.c_char_p, c.c_size_t]
    lib.dynet_conv_validate.restype = c.c_int32
    lib.dynet_conv_attribute_count.restype = c.c_int32
    lib.dynet_conv_params_attribute_data.argtypes = [P, c.c_int32]
    lib.dynet_conv_params_attribute_data.restype = c.POINTER(c.c_int32)
    lib.dynet_conv_params_set_attribute.argtypes = [P, c.c_char_p, c.c_int64, c.c_char_p, c.c_size_t]
    lib.dynet_conv_params_set_attribute.restype = c.c_int32
    lib.dynet_conv_params_set_shapes.argtypes = [
        P,
        c.c_int32,
        c.POINTER(c.c_int32),
        c.POINTER(c.c_int64),
        c.c_int32,
        c.c_char_p,
        c.c_size_t,
    ]
    lib.dynet_conv_params_set_shapes.restype = c.c_int32
    lib.dynet_conv_attributes_key.argtypes = [P, c.c_char_p, c.c_size_t]
    lib.dynet_conv_attributes_key.restype = c.c_int32
    return lib


class AttributeInfo(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("default_value", ctypes.c_int32),
        ("min_value", ctypes.c_int32),
        ("max_value", ctypes.c_int32),
        ("since_version", ctypes.c_int32),
    ]


@pytest.fixture(scope="module")
def cpu():
    plugin_lib.ensure_built()
    lib = _declare(ctypes.CDLL(str(plugin_lib.cpu_library_path())))
    lib.dynet_conv_attribute.argtypes = [ctypes.c_int32]
    lib.dynet_conv_attribute.restype = ctypes.POINTER(AttributeInfo)
    return lib


def attribute_names(lib) -> list[str]:
    return [lib.dynet_conv_attribute(i).contents.name.decode() for i in range(lib.dynet_conv_attribute_count())]


def params(lib, **attrs) -> DynetConvParams:
    p = DynetConvParams()
    lib.dynet_conv_params_init(ctypes.byref(p))
    for name, value in attrs.items():
        assert lib.dynet_conv_params_set_attribute(ctypes.byref(p), name.encode(), value, None, 0) == plugin_lib.OK
    return p


def set_shapes(lib, p, shapes, allow_unknown=False):
    ranks = (ctypes.c_int32 * len(shapes))(*[len(s) for s in shapes])
    flat = [d for s in shapes for d in s]
    dims = (ctypes.c_int64 * max(len(flat), 1))(*flat)
    msg = ctypes.create_string_buffer(256)
    status = lib.dynet_conv_params_set_shapes(
        ctypes.byref(p), len(shapes), ranks, dims, int(allow_unknown), msg, len(msg)
    )
    return status, msg.value.decode()


def validate(lib, p):
    msg = ctypes.create_string_buffer(256)
    return lib.dynet_conv_validate(ctypes.byref(p), msg, len(msg)), msg.value.decode()


# ---- attribute table: the plugin's fields come from here -----------------------------------------------------


def test_attribute_data_points_at_the_named_field(cpu):
    names = attribute_names(cpu)
    assert len(names) == 15
    assert [cpu.dynet_conv_attribute(i).contents.since_version for i in range(15)] == [1] * 12 + [2] * 3
    p = params(cpu)
    for i, name in enumerate(names):
        setattr(p, name, 100 + i)  # the ctypes struct's field of the same name
    for i, name in enumerate(names):
        ptr = cpu.dynet_conv_params_attribute_data(ctypes.byref(p), i)
        assert ptr[0] == 100 + i, name
        offset = ctypes.cast(ptr, ctypes.c_void_p).value - ctypes.addressof(p)
        assert offset == getattr(DynetConvParams, name).offset, name
    assert not cpu.dynet_conv_params_attribute_data(ctypes.byref(p), 15)
    assert not cpu.dynet_conv_params_attribute_data(ctypes.byref(p), -1)
    assert not cpu.dynet_conv_params_attribute_data(None, 0)


def test_plugin_sources_do_not_respell_the_attribute_names(cpu):
    # RULES: every C/C++ caller takes names from the C ABI's table. A quoted attribute name in the plugin would be
    # a second table that can drift.
    names = attribute_names(cpu)
    for path in sorted(PLUGIN_DIR.glob("dynetDynamicConvPlugin*")):
        text = path.read_text()
        for name in names:
            assert f'"{name}"' not in text, f"{path.name} spells attribute {name!r} itself"
    plugin = (PLUGIN_DIR / "dynetDynamicConvPlugin.cpp").read_text()
    for call in (
        "dynet_conv_attribute(",
        "dynet_conv_params_attribute_data(",
        "dynet_conv_params_set_attribute(",
        "dynet_conv_validate_attributes(",
        "dynet_conv_params_set_shapes(",
        "dynet_conv_validate(",
    ):
        assert call in plugin, f"the plugin does not call {call}...)"


# ---- configurePlugin's shape checks ----------------------------------------------------------------


def dense_shapes(n, c_in, h, w, c_out, k=4, kh=3, kw=3, c_c=None, groups=1):
    return [[n, c_in, h, w], [n, c_out if c_c is None else c_c, k], [k, c_out, c_in // groups, kh, kw]]


def test_set_shapes_fills_params_and_checks_consistency(cpu):
    p = params(cpu, pad_top=1, pad_left=1, pad_bottom=1, pad_right=1)
    status, msg = set_shapes(cpu, p, dense_shapes(2, 16, 9, 7, 32))
    assert status == plugin_lib.OK, msg
    assert (p.n, p.c_in, p.h, p.w, p.c_out, p.k, p.coeff_channels, p.kh, p.kw) == (2, 16, 9, 7, 32, 4, 32, 3, 3)
    assert validate(cpu, p)[0] == plugin_lib.OK
    bad = {
        "groups": (dict(groups=3), dense_shapes(2, 16, 9, 9, 32), "groups=3"),
        "coeff K": ({}, [[2, 16, 9, 9], [2, 32, 5], [4, 32, 16, 3, 3]], "K=5"),
        "coeff rows": ({}, dense_shapes(2, 16, 9, 9, 32, c_c=7), "C_out=32 or 1"),
        "batch": ({}, [[2, 16, 9, 9], [3, 32, 4], [4, 32, 16, 3, 3]], "batch"),
        "rank": ({}, [[2, 16, 9], [2, 32, 4], [4, 32, 16, 3, 3]], "4-D"),
        "inputs": (dict(has_bias=1), dense_shapes(2, 16, 9, 9, 32), "expected 4 inputs"),
        "bias": (dict(has_bias=1), dense_shapes(2, 16, 9, 9, 32) + [[31]], "bias must be [C_out]"),
        "bank": (dict(has_bias_bank=1), dense_shapes(2, 16, 9, 9, 32) + [[4, 31]], "bias_bank must be [K, C_out]"),
        "too big": ({}, dense_shapes(2, 16, 2**31, 9, 32), "[1, 2^31-1]"),
        # a grouped layer whose node lost its groups attribute: the message names the groups the shapes call for
        "groups absent": ({}, dense_shapes(2, 16, 9, 9, 32, groups=4), "needs groups=4 (the node's groups is 1, the"),
        "groups wrong": (
            dict(groups=2),
            dense_shapes(2, 16, 9, 9, 32, groups=4),
            "needs groups=4 (the node's groups is 2)",
        ),
    }
    for case, (attrs, shapes, text) in bad.items():
        status, msg = set_shapes(cpu, params(cpu, **attrs), shapes)
        assert status == plugin_lib.ERR_INVALID_ARGUMENT, case
        assert text in msg, (case, msg)


def test_set_shapes_with_unknown_dims_checks_what_is_known(cpu):
    # TensorRT's build-time dims: -1 for the dynamic batch and spatial size.
    p = params(cpu, has_bias=1)
    status, msg = set_shapes(cpu, p, dense_shapes(-1, 16, -1, -1, 32) + [[32]], allow_unknown=True)
    assert status == plugin_lib.OK, msg
    assert (p.n, p.h, p.w, p.c_in, p.c_out) == (-1, -1, -1, 16, 32)
    status, msg = set_shapes(cpu, params(cpu, groups=3), dense_shapes(-1, 16, -1, -1, 32), allow_unknown=True)
    assert status == plugin_lib.ERR_INVALID_ARGUMENT and "groups=3" in msg
    # Without allow_unknown, -1 is a bad dim.
    status, msg = set_shapes(cpu, params(cpu), dense_shapes(-1, 16, 9, 9, 32))
    assert status == plugin_lib.ERR_INVALID_ARGUMENT


def test_set_shapes_checks_spatial_and_residual(cpu):
    # Op version 2's inputs follow bias_bank and bias: spatial [N, kH*kW], residual [N, C_out, H_out, W_out].
    attrs = dict(has_bias=1, has_spatial=1, has_residual=1, stride_h=2, pad_top=1, pad_bottom=0, pad_left=1)
    good = dense_shapes(2, 16, 9, 7, 32, kh=3, kw=2) + [[32], [2, 6], [2, 32, 4, 7]]  # H_out 4, W_out 7 - 2 + 1 + 1
    p = params(cpu, **attrs)
    status, msg = set_shapes(cpu, p, good)
    assert status == plugin_lib.OK, msg
    assert validate(cpu, p)[0] == plugin_lib.OK
    bad = {
        "count": (good[:-1], "expected 6 inputs (x, coeff, weight, bias, spatial, residual), got 5"),
        "spatial rank": (good[:4] + [[2, 3, 2], good[5]], "input 4 must be 2-D spatial [N, kH*kW], got rank 3"),
        "spatial taps": (good[:4] + [[2, 9], good[5]], "spatial must be [N, kH*kW] = [2, 6], got [2, 9]"),
        "spatial batch": (good[:4] + [[1, 6], good[5]], "spatial must be [N, kH*kW] = [2, 6], got [1, 6]"),
        "residual rank": (good[:5] + [[2, 32, 28]], "input 5 must be 4-D residual [N, C_out, H_out, W_out]"),
        "residual H_out": (
            good[:5] + [[2, 32, 5, 7]],
            "residual must be [N, C_out, H_out, W_out] = [2, 32, 4, 7] (y's shape), got [2, 32, 5, 7]",
        ),
        "residual W_out": (good[:5] + [[2, 32, 4, 6]], "= [2, 32, 4, 7] (y's shape), got [2, 32, 4, 6]"),
        "residual C_out": (good[:5] + [[2, 16, 4, 7]], "got [2, 16, 4, 7]"),
        "residual batch": (good[:5] + [[3, 32, 4, 7]], "got [3, 32, 4, 7]"),
    }
    for case, (shapes, text) in bad.items():
        status, msg = set_shapes(cpu, params(cpu, **attrs), shapes)
        assert status == plugin_lib.ERR_INVALID_ARGUMENT, case
        assert text in msg, (case, msg)
    # A version-1 node's five inputs are unchanged; a version-2 flag adds its input.
    assert set_shapes(cpu, params(cpu, has_mean=1), dense_shapes(2, 16, 9, 7, 32))[0] == plugin_lib.OK
    status, msg = set_shapes(cpu, params(cpu, has_spatial=1), dense_shapes(2, 16, 9, 7, 32))
    assert status == plugin_lib.ERR_INVALID_ARGUMENT and "expected 4 inputs (x, coeff, weight, spatial)" in msg


def test_set_shapes_with_unknown_dims_checks_what_is_known_of_spatial_and_residual(cpu):
    attrs = dict(has_spatial=1, has_residual=1, pad_top=1, pad_bottom=1, pad_left=1, pad_right=1)
    shapes = dense_shapes(-1, 16, -1, -1, 32) + [[-1, 9], [-1, 32, -1, -1]]
    p = params(cpu, **attrs)
    status, msg = set_shapes(cpu, p, shapes, allow_unknown=True)
    assert status == plugin_lib.OK, msg
    assert (p.n, p.h, p.w) == (-1, -1, -1)
    # What is known is still checked: the taps, C_out, and H_out once H is known.
    for bad, text in (
        ([[-1, 8], [-1, 32, -1, -1]], "spatial must be [N, kH*kW] = [-1, 9], got [-1, 8]"),
        ([[-1, 9], [-1, 31, -1, -1]], "got [-1, 31, -1, -1]"),
    ):
        status, msg = set_shapes(cpu, params(cpu, **attrs), shapes[:3] + bad, allow_unknown=True)
        assert status == plugin_lib.ERR_INVALID_ARGUMENT and text in msg, msg
    known_h = dense_shapes(-1, 16, 10, -1, 32) + [[-1, 9], [-1, 32, 11, -1]]
    status, msg = set_shapes(cpu, params(cpu, **attrs), known_h, allow_unknown=True)
    assert status == plugin_lib.ERR_INVALID_ARGUMENT and "= [-1, 32, 10, -1] (y's shape), got [-1, 32, 11, -1]" in msg


def test_weight_dtype_is_validated_with_the_attributes(cpu):
    cpu.dynet_conv_validate_attributes.argtypes = [P, ctypes.c_char_p, ctypes.c_size_t]
    cpu.dynet_conv_validate_attributes.restype = ctypes.c_int32
    msg = ctypes.create_string_buffer(256)
    for dtype in (plugin_lib.FLOAT32, plugin_lib.FLOAT16, plugin_lib.BFLOAT16):
        p = params(cpu)
        p.weight_dtype = dtype
        assert cpu.dynet_conv_validate_attributes(ctypes.byref(p), msg, len(msg)) == plugin_lib.OK
    p.weight_dtype = 3
    assert cpu.dynet_conv_validate_attributes(ctypes.byref(p), msg, len(msg)) == plugin_lib.ERR_INVALID_ARGUMENT
    assert msg.value.decode().startswith("weight_dtype = 3: must be")


def test_profile_max_beyond_the_element_limit_is_refused(cpu):
    # What configurePlugin does with the profile's max: set_shapes, then validate. A profile that lets y reach
    # 2^31 elements must fail the build instead of producing an engine whose large-shape enqueues all fail.
    c_out, h, w = 64, 256, 256  # y = N * 64 * 256 * 256 = N * 2^22
    n_ok = LIMIT // (c_out * h * w)  # 511
    for n, ok in ((n_ok, True), (n_ok + 1, False)):
        p = params(cpu, pad_top=1, pad_left=1, pad_bottom=1, pad_right=1)
        assert set_shapes(cpu, p, dense_shapes(n, 8, h, w, c_out, groups=1))[0] == plugin_lib.OK
        status, msg = validate(cpu, p)
        if ok:
            assert status == plugin_lib.OK, msg
        else:
            assert status == plugin_lib.ERR_INVALID_ARGUMENT
            assert msg.startswith("y of this call has") and "2^31-1" in msg and "profile" in msg, msg


H = 2**30
LIMIT_CASES = {
    # tensor: (attributes, shapes with that tensor at exactly 2^31-1 elements, shapes with it just beyond)
    "x": ({}, dense_shapes(1, 1, LIMIT, 1, 1, k=1, kh=1, kw=1), dense_shapes(2, 1, H, 1, 1, k=1, kh=1, kw=1)),
    "weight": (
        {},
        dense_shapes(1, 1, 1, 1, LIMIT, k=1, kh=1, kw=1, c_c=1),
        dense_shapes(1, 1, 1, 1, H, k=2, kh=1, kw=1, c_c=1),
    ),
    "fused kernels": (
        {},
        dense_shapes(1, 1, 1, 1, LIMIT, k=1, kh=1, kw=1, c_c=1),
        dense_shapes(1, 2, 1, 1, H, k=1, kh=1, kw=1, c_c=1, groups=1),
    ),
    "coeff": ({}, dense_shapes(1, 1, 1, 1, 1, k=LIMIT, kh=1, kw=1), dense_shapes(2, 1, 1, 1, 1, k=H, kh=1, kw=1)),
}


@pytest.mark.parametrize("tensor", sorted(LIMIT_CASES))
def test_every_tensor_is_held_to_the_element_limit(cpu, tensor):
    attrs, ok_shapes, bad_shapes = LIMIT_CASES[tensor]
    p = params(cpu, **attrs)
    assert set_shapes(cpu, p, ok_shapes)[0] == plugin_lib.OK
    status, msg = validate(cpu, p)
    assert status == plugin_lib.OK, msg
    q = params(cpu, **attrs)
    assert set_shapes(cpu, q, bad_shapes)[0] == plugin_lib.OK
    status, msg = validate(cpu, q)
    assert status == plugin_lib.ERR_INVALID_ARGUMENT
    assert re.search(r"has \d+ elements; the limit is 2\^31-1", msg), msg


def test_output_is_held_to_the_element_limit(cpu):
    # y grows with the padding of a 1x1 input: y = C_out * (1 + pad_bottom) with C_out = 2 (the padded height,
    # 1 + pad_bottom, stays within its own limit of 2^31-1).
    for pad, ok in ((2**30 - 2, True), (2**30 - 1, False)):
        p = params(cpu, pad_bottom=pad)
        assert set_shapes(cpu, p, dense_shapes(1, 1, 1, 1, 2, k=1, kh=1, kw=1))[0] == plugin_lib.OK
        status, msg = validate(cpu, p)
        assert (status == plugin_lib.OK) is ok, msg
        if not ok:
            assert status == plugin_lib.ERR_INVALID_ARGUMENT
            assert msg.startswith("y of this call has 2147483648 elements"), msg
    # A padded height beyond 2^31-1 is the padded-extent limit's refusal, whatever y would be.
    for pad, ok in ((LIMIT - 1, True), (LIMIT, False)):
        p = params(cpu, pad_bottom=pad)
        assert set_shapes(cpu, p, dense_shapes(1, 1, 1, 1, 1, k=1, kh=1, kw=1))[0] == plugin_lib.OK
        status, msg = validate(cpu, p)
        assert (status == plugin_lib.OK) is ok, msg
        if not ok:
            assert status == plugin_lib.ERR_LIMIT and "padded height of 2147483648" in msg, msg


def test_validation_products_saturate_instead_of_wrapping(cpu):
    # 2^16 ^ 4 = 2^64 wraps to 0 in int64 arithmetic; the validator must still see "too large".
    p = params(cpu, stride_h=65536, stride_w=65536)
    assert set_shapes(cpu, p, dense_shapes(65536, 65536, 65536, 65536, 1, k=1, kh=1, kw=1))[0] == plugin_lib.OK
    status, msg = validate(cpu, p)
    assert status == plugin_lib.ERR_INVALID_ARGUMENT and "x of this call" in msg, msg


# ---- timing-cache key ------------------------------------------------------------------------------


def key(lib, p) -> str:
    n = lib.dynet_conv_attributes_key(ctypes.byref(p), None, 0)
    buf = ctypes.create_string_buffer(n + 1)
    assert lib.dynet_conv_attributes_key(ctypes.byref(p), buf, len(buf)) == n
    return buf.value.decode()


def test_attributes_key_is_equal_for_equal_attributes_and_differs_otherwise(cpu):
    a, b = params(cpu, groups=2, activation=1), params(cpu, groups=2, activation=1)
    a.n, b.n = 1, 32  # shapes are not part of the key (TensorRT prefixes the I/O shapes itself)
    assert key(cpu, a) == key(cpu, b)
    names = attribute_names(cpu)
    # A version-1 param set keeps the text it had before op version 2 (TensorRT timing caches stay valid).
    assert key(cpu, a) == (
        "stride_h=1;stride_w=1;pad_top=0;pad_left=0;pad_bottom=0;pad_right=0;dilation_h=1;dilation_w=1;groups=2;"
        "activation=1;has_bias_bank=0;has_bias=0;"
    )
    v2 = params(cpu, groups=2, activation=1, has_residual=1)
    assert key(cpu, v2) == "".join(f"{name}={getattr(v2, name)};" for name in names)
    narrowed = params(cpu, groups=2, activation=1)
    narrowed.weight_dtype = plugin_lib.FLOAT16
    assert key(cpu, narrowed) == key(cpu, a) + "has_spatial=0;has_residual=0;has_mean=0;"
    seen = {key(cpu, a)}
    for name in names:
        c = params(cpu, groups=2, activation=1)
        setattr(c, name, getattr(c, name) + 1)
        seen.add(key(cpu, c))
    assert len(seen) == 1 + len(names)  # every attribute changes the key
    # Truncation is snprintf-like: the full length is returned, the buffer stays NUL-terminated.
    small = ctypes.create_string_buffer(8)
    assert cpu.dynet_conv_attributes_key(ctypes.byref(a), small, 8) == len(key(cpu, a))
    assert small.value.decode() == key(cpu, a)[:7]
    assert cpu.dynet_conv_attributes_key(None, None, 0) == -1


def test_plugin_timing_cache_id_is_built_from_the_key():
    plugin = (PLUGIN_DIR / "dynetDynamicConvPlugin.cpp").read_text()
    body = plugin[plugin.index("DyNetDynamicConv2dPlugin::getTimingCacheID") :]
    body = body[: body.index("\n}\n")]
    assert "dynet_conv_attributes_key(&mAttrs" in body and "return mTimingCacheId.c_str()" in body


# ---- NaN through the activations -------------------------------------------------------------------


@pytest.mark.parametrize("activation", [1, 2])
def test_reference_relu_propagates_nan_like_pytorch(cpu, activation):
    from dynet_deploy.op.reference import dynamic_conv_numpy

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    x[0, 0, 1, 1] = np.nan
    coeff = rng.random((1, 3, 2)).astype(np.float32)
    weight = rng.standard_normal((2, 3, 2, 1, 1)).astype(np.float32)
    # The C entry point itself: the Python binding refuses non-finite inputs before they get here.
    p = params(cpu, activation=activation)
    assert set_shapes(cpu, p, [list(x.shape), list(coeff.shape), list(weight.shape)])[0] == plugin_lib.OK
    y = np.zeros((1, 3, 4, 4), np.float32)
    fp = ctypes.POINTER(ctypes.c_float)
    f = cpu.dynet_conv_cpu_f32
    f.argtypes = [P, fp, fp, fp, fp, fp, fp]
    f.restype = ctypes.c_int32

    def ptr(a):
        return a.ctypes.data_as(fp)

    assert f(ctypes.byref(p), ptr(x), ptr(coeff), ptr(weight), None, None, ptr(y)) == plugin_lib.OK
    ref = dynamic_conv_numpy(x, coeff, weight, activation=activation)  # PyTorch's relu / clamp
    assert np.isnan(ref[0, :, 1, 1]).all()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    np.testing.assert_allclose(np.nan_to_num(y), np.nan_to_num(ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", [0, 1, 2])
def test_reference_keeps_a_nan_residual_through_the_activation(cpu, activation):
    # Op version 2: the residual is added before the activation, so its NaN reaches y (relu(NaN) = NaN) and the
    # channel's mean; an inf residual is clamped like any pre-activation value.
    from dynet_deploy.op.reference import channel_mean, dynamic_conv

    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    coeff = rng.random((2, 4, 2)).astype(np.float32)
    weight = rng.standard_normal((2, 4, 3, 3, 3)).astype(np.float32)
    residual = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    residual[0, 1, 2, 0] = np.nan
    residual[1, 2, 0, 0] = -np.inf
    residual[1, 3, 1, 1] = np.inf
    p = params(cpu, activation=activation, has_residual=1, has_mean=1)
    assert set_shapes(cpu, p, [list(x.shape), list(coeff.shape), list(weight.shape), list(residual.shape)])[0] == 0
    y = np.full((2, 4, 3, 3), 7.0, np.float32)
    mean = np.zeros((2, 4, 1, 1), np.float32)
    arrays = dict(x=x, coeff=coeff, weight=weight, residual=residual, y=y, mean=mean)
    t = plugin_lib.DynetConvTensors(**{k: a.ctypes.data for k, a in arrays.items()})
    lib = plugin_lib.load_cpu_library()
    assert lib.dynet_conv_cpu(ctypes.byref(p), ctypes.byref(t)) == plugin_lib.OK
    with torch_no_grad():
        ref = dynamic_conv(*(tensor(a) for a in (x, coeff, weight)), residual=tensor(residual), activation=activation)
        ref_mean = channel_mean(ref).numpy()
    ref = ref.numpy()
    assert np.isnan(y[0, 1, 2, 0]) and np.isnan(mean[0, 1, 0, 0])
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(ref))
    np.testing.assert_allclose(np.where(np.isfinite(y), y, 0), np.where(np.isfinite(ref), ref, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.isnan(mean), np.isnan(ref_mean))
    np.testing.assert_array_equal(np.isinf(mean), np.isinf(ref_mean))
    finite = np.isfinite(ref_mean)
    np.testing.assert_allclose(mean[finite], ref_mean[finite], rtol=1e-5, atol=1e-6)


def tensor(a):
    import torch

    return torch.from_numpy(a).double()


def torch_no_grad():
    import torch

    return torch.no_grad()


def test_cuda_activation_has_no_nan_dropping_fmax():
    # fmaxf(NaN, 0) is 0; the CUDA epilogue must compare instead (the kernels themselves run in gpu_check).
    src = (PLUGIN_DIR / "dynetDynamicConvKernel.cu").read_text()
    act = src[src.index("__device__ __forceinline__ float activate(") :]
    act = act[: act.index("\n}\n")]
    assert "fmax" not in act and "fmin" not in act
    assert "v < 0.F ? 0.F" in act


# ---- the CUDA library: workspace arithmetic and plans, host-side only ----------------------------------------

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found: the CUDA kernels are not built")


@pytest.fixture(scope="module")
def cuda():
    plugin_lib.ensure_built()
    path = plugin_lib.cuda_library_path()
    if path is None:
        pytest.skip("libdynet_dynamic_conv_cuda.so was not built (no nvcc)")
    lib = _declare(plugin_lib.load_cuda_library())  # the binding declares the stateless and the plan API
    return lib


def align(b: int) -> int:
    return (b + 255) // 256 * 256


@needs_nvcc
def test_workspace_arithmetic_is_64_bit_at_the_element_limit(cuda):
    # Fused kernels of exactly 2^31-1 elements: 8 GiB in fp32, far beyond 32-bit byte counts.
    p = params(cuda)
    assert set_shapes(cuda, p, dense_shapes(1, 1, 1, 1, LIMIT, k=1, kh=1, kw=1, c_c=1))[0] == plugin_lib.OK
    for dtype, size in ((plugin_lib.FLOAT32, 4), (plugin_lib.FLOAT16, 2)):
        fused = align(LIMIT * size)
        assert cuda.dynet_conv_cuda_workspace_size(ctypes.byref(p), dtype, plugin_lib.ALGO_TWO_STEP) == fused
        assert cuda.dynet_conv_cuda_workspace_size(ctypes.byref(p), dtype, ALGO_CUDNN) == fused + align(LIMIT * size)
        assert cuda.dynet_conv_cuda_workspace_size(ctypes.byref(p), dtype, plugin_lib.ALGO_ONE_KERNEL) == 0
        # The cuBLAS tactics (the layer is pointwise: 1x1, stride 1, no pads): fused kernels + biases + scratch;
        # im2col adds the columns of one chunk (N = 1 sample of C_in*kH*kW*H_out*W_out = 1 element).
        scratch = plugin_lib.CUBLAS_SCRATCH_BYTES
        gemm = cuda.dynet_conv_cuda_workspace_size(ctypes.byref(p), dtype, plugin_lib.ALGO_CUBLAS_GEMM)
        assert gemm == fused + align(LIMIT * size) + scratch
        im2col = cuda.dynet_conv_cuda_workspace_size(ctypes.byref(p), dtype, plugin_lib.ALGO_CUBLAS_IM2COL)
        assert im2col == fused + align(LIMIT * size) + scratch + align(size)
    unknown = plugin_lib.ALGO_LAST + 1
    assert cuda.dynet_conv_cuda_workspace_size(ctypes.byref(p), plugin_lib.FLOAT32, unknown) == 0
    p.n = 2  # one element more than the limit: invalid, so no size
    assert cuda.dynet_conv_cuda_workspace_size(ctypes.byref(p), plugin_lib.FLOAT32, plugin_lib.ALGO_TWO_STEP) == 0


def make_plan(cuda, p, dtype, algo, limit=0):
    plan = ctypes.c_void_p()
    msg = ctypes.create_string_buffer(256)
    status = cuda.dynet_conv_cuda_plan_create(ctypes.byref(p), dtype, algo, limit, ctypes.byref(plan), msg, len(msg))
    return status, plan, msg.value.decode()


@needs_nvcc
def test_plans_of_the_kernel_algorithms_are_host_only(cuda):
    p = params(cuda, pad_top=1, pad_left=1, pad_bottom=1, pad_right=1)
    assert set_shapes(cuda, p, dense_shapes(3, 64, 14, 14, 128))[0] == plugin_lib.OK
    ws = cuda.dynet_conv_cuda_workspace_size(ctypes.byref(p), plugin_lib.FLOAT16, plugin_lib.ALGO_TWO_STEP)
    assert ws == align(3 * 128 * 64 * 9 * 2)
    status, plan, msg = make_plan(cuda, p, plugin_lib.FLOAT16, plugin_lib.ALGO_AUTO)
    assert status == plugin_lib.OK, msg
    try:
        assert cuda.dynet_conv_cuda_plan_algo(plan) == plugin_lib.ALGO_TWO_STEP  # AUTO resolved on the GEMM path
        assert cuda.dynet_conv_cuda_plan_workspace_size(plan) == ws
        host = np.zeros(1 << 16, np.uint8)
        a = host.ctypes.data
        # The workspace check guards the plan too: the size passed is the caller's grant, not the plan's own.
        assert cuda.dynet_conv_cuda_plan_run(plan, a, a, a, None, None, a, a, ws - 1, None) == plugin_lib.ERR_WORKSPACE
        assert (
            cuda.dynet_conv_cuda_plan_run(plan, None, a, a, None, None, a, a, ws, None) == plugin_lib.ERR_NULL_POINTER
        )
    finally:
        cuda.dynet_conv_cuda_plan_destroy(plan)
    # A grant smaller than the algorithm needs is refused when the plan is made (onShapeChange), not in enqueue.
    status, plan, msg = make_plan(cuda, p, plugin_lib.FLOAT16, plugin_lib.ALGO_TWO_STEP, limit=ws - 1)
    assert status == plugin_lib.ERR_WORKSPACE and not plan.value and "workspace limit" in msg
    status, plan, msg = make_plan(cuda, p, plugin_lib.FLOAT16, plugin_lib.ALGO_ONE_KERNEL, limit=1)
    assert status == plugin_lib.OK and cuda.dynet_conv_cuda_plan_workspace_size(plan) == 0
    cuda.dynet_conv_cuda_plan_destroy(plan)
    cuda.dynet_conv_cuda_plan_destroy(None)  # no-op


@needs_nvcc
def test_cudnn_algorithm_needs_a_plan(cuda):
    p = params(cuda)
    assert set_shapes(cuda, p, dense_shapes(2, 16, 8, 8, 32))[0] == plugin_lib.OK
    host = np.zeros(1 << 16, np.uint8)
    a = host.ctypes.data
    assert (
        cuda.dynet_conv_cuda(ctypes.byref(p), 0, ALGO_CUDNN, a, a, a, None, None, a, a, host.size, None)
        == plugin_lib.ERR_UNSUPPORTED
    )
    # Asymmetric pads cannot be expressed in cuDNN: the plan says so, whatever the build.
    q = params(cuda, pad_bottom=1)
    assert set_shapes(cuda, q, dense_shapes(2, 16, 8, 8, 32))[0] == plugin_lib.OK
    status, plan, msg = make_plan(cuda, q, plugin_lib.FLOAT16, ALGO_CUDNN)
    assert status == plugin_lib.ERR_UNSUPPORTED and not plan.value
    assert "asymmetric" in msg, msg


def im2col_expected(n, c_in, kh, kw, h_out, w_out, c_out, groups_c_in, size):
    """The workspace formula of the cuBLAS im2col tactic (dynetDynamicConv.h), computed independently."""
    fused = align(n * c_out * groups_c_in * kh * kw * size)
    biases = align(n * c_out * size)
    one = c_in * kh * kw * h_out * w_out * size
    samples = n if n * one <= plugin_lib.IM2COL_CHUNK_BYTES else max(1, plugin_lib.IM2COL_CHUNK_BYTES // one)
    return fused + biases + plugin_lib.CUBLAS_SCRATCH_BYTES + align(samples * one), samples


@needs_nvcc
@pytest.mark.parametrize("dtype,size", [(plugin_lib.FLOAT32, 4), (plugin_lib.FLOAT16, 2)])
def test_cublas_workspace_formulas(cuda, dtype, size):
    # Pointwise (1x1, stride 1, no pads, grouped): the GEMM tactic; the im2col tactic runs it too.
    p = params(cuda, groups=4)
    assert set_shapes(cuda, p, dense_shapes(5, 64, 7, 9, 32, kh=1, kw=1, groups=4))[0] == plugin_lib.OK
    fused, biases = align(5 * 32 * 16 * size), align(5 * 32 * size)
    gemm = cuda.dynet_conv_cuda_workspace_size(ctypes.byref(p), dtype, plugin_lib.ALGO_CUBLAS_GEMM)
    assert gemm == fused + biases + plugin_lib.CUBLAS_SCRATCH_BYTES
    expected, samples = im2col_expected(5, 64, 1, 1, 7, 9, 32, 16, size)
    assert samples == 5
    assert cuda.dynet_conv_cuda_workspace_size(ctypes.byref(p), dtype, plugin_lib.ALGO_CUBLAS_IM2COL) == expected
    # 3x3 with stride 2 and pads: no GEMM tactic (0), im2col with H_out = W_out = 28.
    q = params(cuda, stride_h=2, stride_w=2, pad_top=1, pad_left=1, pad_bottom=1, pad_right=1)
    assert set_shapes(cuda, q, dense_shapes(8, 64, 56, 56, 128))[0] == plugin_lib.OK
    assert cuda.dynet_conv_cuda_workspace_size(ctypes.byref(q), dtype, plugin_lib.ALGO_CUBLAS_GEMM) == 0
    expected, samples = im2col_expected(8, 64, 3, 3, 28, 28, 128, 64, size)
    assert samples == 8
    assert cuda.dynet_conv_cuda_workspace_size(ctypes.byref(q), dtype, plugin_lib.ALGO_CUBLAS_IM2COL) == expected
    # Columns of the batch beyond 256 MiB: chunks of floor(256 MiB / one sample's columns) samples.
    big = params(cuda, pad_top=1, pad_left=1, pad_bottom=1, pad_right=1)
    assert set_shapes(cuda, big, dense_shapes(64, 256, 56, 56, 64))[0] == plugin_lib.OK
    expected, samples = im2col_expected(64, 256, 3, 3, 56, 56, 64, 256, size)
    assert 1 <= samples < 64
    assert cuda.dynet_conv_cuda_workspace_size(ctypes.byref(big), dtype, plugin_lib.ALGO_CUBLAS_IM2COL) == expected


@needs_nvcc
def test_cublas_algorithms_need_a_plan_made_in_a_prepared_context(cuda):
    p = params(cuda, pad_top=1, pad_left=1, pad_bottom=1, pad_right=1)
    assert set_shapes(cuda, p, dense_shapes(2, 16, 8, 8, 32))[0] == plugin_lib.OK
    host = np.zeros(1 << 16, np.uint8)
    a = host.ctypes.data
    for algo in (plugin_lib.ALGO_CUBLAS_GEMM, plugin_lib.ALGO_CUBLAS_IM2COL):
        status = cuda.dynet_conv_cuda(ctypes.byref(p), 0, algo, a, a, a, None, None, a, a, host.size, None)
        assert status == plugin_lib.ERR_UNSUPPORTED  # needs a plan, whatever the workspace
    # The GEMM tactic refuses a layer that is not pointwise before touching any library or device.
    status, plan, msg = make_plan(cuda, p, plugin_lib.FLOAT16, plugin_lib.ALGO_CUBLAS_GEMM)
    assert status == plugin_lib.ERR_UNSUPPORTED and not plan.value and "pointwise" in msg, msg
    status, plan, msg = make_plan(cuda, p, plugin_lib.FLOAT16, plugin_lib.ALGO_LAST + 1)
    assert status == plugin_lib.ERR_INVALID_ARGUMENT and not plan.value, msg
    # A context: plans made in it never make a handle; one without the handle the algorithm needs is refused.
    ctx = ctypes.c_void_p()
    assert cuda.dynet_conv_cuda_context_create(ctypes.byref(ctx)) == plugin_lib.OK
    try:
        assert cuda.dynet_conv_cuda_context_ready(ctx, plugin_lib.ALGO_TWO_STEP) == 1
        for algo in (plugin_lib.ALGO_CUDNN, plugin_lib.ALGO_CUBLAS_IM2COL):
            assert cuda.dynet_conv_cuda_context_ready(ctx, algo) == 0
            plan = ctypes.c_void_p()
            msg = ctypes.create_string_buffer(256)
            status = cuda.dynet_conv_cuda_plan_create_in(
                ctx, ctypes.byref(p), plugin_lib.FLOAT16, algo, 0, ctypes.byref(plan), msg, len(msg)
            )
            assert status == plugin_lib.ERR_INVALID_ARGUMENT and not plan.value
            assert "dynet_conv_cuda_context_prepare" in msg.value.decode()
        plan = ctypes.c_void_p()
        status = cuda.dynet_conv_cuda_plan_create_in(
            ctx, ctypes.byref(p), plugin_lib.FLOAT16, plugin_lib.ALGO_TWO_STEP, 0, ctypes.byref(plan), None, 0
        )
        assert status == plugin_lib.OK
        ws = cuda.dynet_conv_cuda_workspace_size(ctypes.byref(p), plugin_lib.FLOAT16, plugin_lib.ALGO_TWO_STEP)
        assert cuda.dynet_conv_cuda_plan_workspace_size(plan) == ws
        cuda.dynet_conv_cuda_plan_destroy(plan)
    finally:
        cuda.dynet_conv_cuda_context_destroy(ctx)


def _headers_found_by_cmake(variable: str) -> bool:
    cache = plugin_lib.REPO_ROOT / "build" / "CMakeCache.txt"
    if not cache.is_file():
        return False
    m = re.search(rf"^{variable}:PATH=(.*)$", cache.read_text(), re.MULTILINE)
    return bool(m) and not m.group(1).endswith("NOTFOUND")


def _cudnn_found_by_cmake() -> bool:
    return _headers_found_by_cmake("CUDNN_INCLUDE_DIR")


@needs_nvcc
def test_cublas_tactics_are_compiled_and_loaded_at_run_time_when_headers_are_found(cuda):
    if not _headers_found_by_cmake("CUBLAS_INCLUDE_DIR"):
        pytest.skip("CMake found no cuBLAS headers for build/ (pip install -e '.[cudnn]', or set CUBLAS_ROOT)")
    assert cuda.dynet_conv_cuda_has_cublas() == 1
    path = plugin_lib.cuda_library_path()
    needed = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True).stdout
    assert "libcublas" not in needed  # loaded by soname at run time, never linked
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(path)], capture_output=True, text=True).stdout
    assert "cublasGemmStridedBatchedEx" not in undefined
    assert b"libcublas.so.13" in path.read_bytes()  # the soname the loader opens


@needs_nvcc
def test_cudnn_tactic_is_compiled_and_loaded_at_run_time_when_cudnn_is_found(cuda):
    if not _cudnn_found_by_cmake():
        import importlib.util
        import sys

        # The project's install brings cuDNN where nvcc is (make setup: the `cudnn` extra into .venv, which CMake
        # searches); with it installed there, CMake must find it, or CI would silently lose the tensor-core tactic.
        in_repo_venv = (plugin_lib.REPO_ROOT / ".venv") in Path(sys.executable).parents
        has_pkg = (
            importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.cudnn") is not None
        )
        assert not (in_repo_venv and has_pkg), "nvidia-cudnn is installed in .venv but CMake did not find it"
        pytest.skip("CMake found no cuDNN for build/ (pip install -e '.[cudnn]', or set CUDNN_ROOT)")
    assert cuda.dynet_conv_cuda_has_cudnn() == 1
    path = plugin_lib.cuda_library_path()
    needed = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True).stdout
    assert "libcudnn" not in needed  # loaded by soname at run time, never linked
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(path)], capture_output=True, text=True).stdout
    assert "cudnnConvolutionBiasActivationForward" not in undefined
    assert b"libcudnn.so.9" in path.read_bytes()  # the soname the loader opens
    assert b"cudnnConvolutionBiasActivationForward" in path.read_bytes()  # resolved by name through dlsym


# ---- the two TensorRT libraries' symbols (defects 6 and 8) ---------------------------------------------------


def _trt_dirs() -> list[Path]:
    """Where CMake put the TensorRT libraries of build/: linked (libnvinfer found) or link-check (headers only)."""
    build = plugin_lib.REPO_ROOT / "build"
    return [d for d in (build, build / "trt_link_check") if (d / plugin_lib.TRT_LIBRARY).is_file()]


def _symbols(path: Path, *flags: str) -> list[str]:
    out = subprocess.run(["nm", "-D", *flags, str(path)], capture_output=True, text=True, check=True).stdout
    return [line.split()[-1] for line in out.splitlines() if line.strip()]


def _trt_headers_configured() -> bool:
    cache = plugin_lib.REPO_ROOT / "build" / "CMakeCache.txt"
    if not cache.is_file():
        return False
    m = re.search(r"^TensorRT_INCLUDE_DIR:PATH=(.*)$", cache.read_text(), re.MULTILINE)
    return bool(m) and not m.group(1).endswith("NOTFOUND")


@pytest.fixture(scope="module")
def trt_dir():
    plugin_lib.ensure_built()
    dirs = _trt_dirs()
    if not dirs:
        if _trt_headers_configured() and shutil.which("nvcc"):
            pytest.fail("CMake found the TensorRT headers and nvcc but built no TensorRT plugin library")
        pytest.skip("build/ was configured without TensorRT headers (-DTensorRT_ROOT=...): no plugin library to check")
    return dirs[0]


def test_static_library_registers_statically_and_exports_nothing(trt_dir):
    lib = trt_dir / plugin_lib.TRT_LIBRARY
    exported = [s for s in _symbols(lib, "--defined-only") if not s.startswith("_")]
    assert exported == [], exported  # no getCreators (never both mechanisms), no dynet_* C ABI
    undefined = _symbols(lib, "--undefined-only")
    assert "getPluginRegistry" in undefined  # REGISTER_TENSORRT_PLUGIN's static initializer


def test_dynamic_library_exports_only_the_loadlibrary_entry_points(trt_dir):
    lib = trt_dir / "libdynet_dynamic_conv_trt_dynamic.so"
    assert lib.is_file()
    exported = sorted(s for s in _symbols(lib, "--defined-only") if not s.startswith("_"))
    assert exported == ["getCreators", "setLoggerFinder"]
    # It never touches the registry itself (no static registration, no withdrawal from inside loadLibrary).
    assert "getPluginRegistry" not in _symbols(lib, "--undefined-only")


def test_trt_libraries_leave_only_libnvinfer_symbols_unresolved(trt_dir):
    # Unversioned undefined symbols are the ones no linked library provides: in the link-check build, exactly
    # libnvinfer's; nothing of the C ABI or cudart may be left to bind to another library's copy.
    for name, allowed in (
        (plugin_lib.TRT_LIBRARY, {"getPluginRegistry", "getLogger"}),
        ("libdynet_dynamic_conv_trt_dynamic.so", set()),  # logs through setLoggerFinder: no libnvinfer symbol
    ):
        out = subprocess.run(
            ["nm", "-D", "--undefined-only", str(trt_dir / name)], capture_output=True, text=True, check=True
        ).stdout
        strong = {line.split()[-1] for line in out.splitlines() if line.split()[0] == "U" and "@" not in line}
        if trt_dir.name == "trt_link_check":
            assert strong == allowed, (name, strong)
        else:
            assert not any(s.startswith(("dynet_", "cuda")) for s in strong), (name, strong)


def test_plugin_build_and_runtime_logic_on_the_host(trt_dir):
    """The real plugin source run on the host (tests/native/dynetDynamicConvPluginHostTest.cpp): creator fields,
    configurePlugin's profile-max check and workspace grant, serialisation round trip, tactics, timing-cache ID,
    onShapeChange planning within the grant, setTactic re-planning."""
    exe = plugin_lib.REPO_ROOT / "build" / "trt_link_check" / "dynet_dynamic_conv_trt_host_test"
    if not exe.is_file():
        pytest.skip("the host test is built only with TensorRT headers and no libnvinfer (headers-only configure)")
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120, check=False)
    lines = proc.stdout.splitlines()
    failed = [line for line in lines if line.startswith("FAIL")]
    assert proc.returncode == 0 and not failed, proc.stdout + proc.stderr
    passed = [line for line in lines if line.startswith("PASS ")]
    assert len(passed) >= 25, proc.stdout
    for name in (
        "configurePlugin refuses a profile max beyond the element limit",
        "serialised workspace grant equals getWorkspaceSize",
        "the grant survives serialisation",
        "equal attributes give equal timing-cache IDs",
        "different attributes give different timing-cache IDs",
    ):
        assert f"PASS {name}" in lines, name
