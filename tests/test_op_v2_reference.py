"""Op version 2 in the Python spec and reference: spatial, residual, mean and a narrowed bank.

The reference is checked against a per-sample loop written independently of it (einsum + conv2d per sample).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dynet_deploy.op import spec
from dynet_deploy.op.reference import dynamic_conv_numpy


def _loop(x, coeff, weight, spatial, residual, stride, pad, groups, activation):
    out = []
    kh, kw = weight.shape[3], weight.shape[4]
    for n in range(x.shape[0]):
        c = coeff[n] if coeff.shape[1] > 1 else np.repeat(coeff[n], weight.shape[1], axis=0)
        k = np.einsum("tk,ktcij->tcij", c.astype(np.float64), weight.astype(np.float64))
        if spatial is not None:
            k = k * spatial[n].astype(np.float64).reshape(1, 1, kh, kw)
        y = F.conv2d(torch.tensor(x[n : n + 1], dtype=torch.float64), torch.tensor(k), None, stride, pad, 1, groups)
        y = y[0].numpy()
        if residual is not None:
            y = y + residual[n]
        out.append(y)
    y = np.stack(out)
    if activation == 1:
        y = np.maximum(y, 0)
    elif activation == 2:
        y = np.clip(y, 0, 6)
    return y


@pytest.mark.parametrize("per_expert", [False, True])
@pytest.mark.parametrize("stride,groups,activation", [(1, 1, 1), (2, 2, 0), (1, 4, 2)])
def test_spatial_residual_mean_match_a_per_sample_loop(per_expert, stride, groups, activation):
    rng = np.random.default_rng(stride * 10 + groups + activation)
    n, c_in, c_out, k, h = 3, 8, 8, 4, 9
    x = rng.standard_normal((n, c_in, h, h)).astype(np.float32)
    coeff = rng.random((n, 1 if per_expert else c_out, k)).astype(np.float32)
    weight = rng.standard_normal((k, c_out, c_in // groups, 3, 3)).astype(np.float32)
    spatial = rng.random((n, 9)).astype(np.float32)
    h_out = (h + 2 - 3) // stride + 1
    residual = rng.standard_normal((n, c_out, h_out, h_out)).astype(np.float32)
    attrs = dict(stride_h=stride, stride_w=stride, pad_top=1, pad_left=1, pad_bottom=1, pad_right=1)
    y, mean = dynamic_conv_numpy(
        x, coeff, weight, spatial=spatial, residual=residual, groups=groups, activation=activation, has_mean=1, **attrs
    )
    want = _loop(x, coeff, weight, spatial, residual, stride, 1, groups, activation)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert mean.shape == (n, c_out, 1, 1)
    np.testing.assert_allclose(mean, want.mean(axis=(2, 3), keepdims=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_a_narrowed_bank_is_the_op_on_the_widened_bank(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    coeff = rng.random((2, 6, 3)).astype(np.float32)
    bank = rng.standard_normal((3, 6, 4, 3, 3)).astype(np.float32)
    narrow = bank.astype(dtype)
    y = dynamic_conv_numpy(x, coeff, narrow)
    np.testing.assert_array_equal(y, dynamic_conv_numpy(x, coeff, narrow.astype(np.float32)))
    assert not np.array_equal(y, dynamic_conv_numpy(x, coeff, bank))  # the bank really was narrowed


def test_nan_in_the_residual_reaches_its_output_through_relu():
    x = np.ones((1, 2, 4, 4), np.float32)
    coeff = np.ones((1, 2, 1), np.float32)
    weight = np.ones((1, 2, 2, 1, 1), np.float32)
    residual = np.zeros((1, 2, 4, 4), np.float32)
    residual[0, 1, 2, 3] = np.nan
    y = dynamic_conv_numpy(x, coeff, weight, residual=residual, activation=1)
    assert np.isnan(y[0, 1, 2, 3]) and np.isnan(y).sum() == 1


def test_shapes_of_the_new_inputs_are_checked():
    x = np.ones((2, 2, 4, 4), np.float32)
    coeff = np.ones((2, 2, 1), np.float32)
    weight = np.ones((1, 2, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="spatial must be"):
        dynamic_conv_numpy(x, coeff, weight, spatial=np.ones((2, 3, 3), np.float32))
    with pytest.raises(ValueError, match="residual must be"):
        dynamic_conv_numpy(x, coeff, weight, residual=np.ones((2, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="has_spatial=1 but spatial is NoneType"):
        dynamic_conv_numpy(x, coeff, weight, has_spatial=1)


def test_the_lowest_version_is_chosen_and_version_1_nodes_carry_no_version_2_attribute():
    assert spec.op_version(spec.attributes()) == 1
    assert spec.op_version(spec.attributes(), bank_dtype="bf16") == 2
    for flag in spec.VERSION_2_ATTRIBUTES:
        assert spec.op_version({flag: 1}) == 2
    v1 = spec.make_node(["x", "c", "w"], ["y"])
    names = {a.name for a in v1.attribute}
    assert not names & set(spec.VERSION_2_ATTRIBUTES)
    assert spec.node_version(v1) == 1
    v2 = spec.make_node(["x", "c", "w", "s", "r"], ["y", "m"], version=2, has_spatial=1, has_residual=1, has_mean=1)
    assert spec.node_version(v2) == 2 and spec.read_attributes(v2)["has_mean"] == 1
    with pytest.raises(ValueError, match="need op version 2"):
        spec.make_node(["x", "c", "w", "s"], ["y"], has_spatial=1)
    with pytest.raises(ValueError, match="takes inputs"):
        spec.make_node(["x", "c", "w"], ["y"], version=2, has_mean=1)
    assert spec.input_names({"has_bias": 1, "has_residual": 1}) == ["x", "coeff", "weight", "bias", "residual"]
