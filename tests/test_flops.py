"""The FLOPs counter on modules small enough to count by hand, and on a zoo model (meta vs real)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynet_deploy.flops import count_flops, count_params
from dynet_deploy.models import create_model
from dynet_deploy.nn import DyConv2d, ODConv2d


def test_single_conv_by_hand():
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True)
    rep = count_flops(conv, (2, 3, 10, 12))
    # Output 5 x 6; each output element takes C_in * kH * kW = 27 multiply-adds; 2 samples, 8 channels.
    assert rep.conv_linear_macs == 2 * 8 * 5 * 6 * 27
    assert rep.dynamic_overhead_macs == 0
    assert rep.params == 8 * 3 * 9 + 8
    assert [l.kind for l in rep.per_layer] == ["conv"]
    assert rep.per_layer[0].output_shape == (2, 8, 5, 6)


def test_grouped_dilated_conv_and_linear_by_hand():
    model = nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2, bias=False),  # 9 x 7 -> 9 x 7
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    )
    rep = count_flops(model, (3, 4, 9, 7))
    conv = 3 * 6 * 9 * 7 * (4 // 2) * 9
    linear = 3 * 6 * 5
    assert rep.conv_linear_macs == conv + linear
    assert [l.macs for l in rep.per_layer] == [conv, linear]
    assert rep.params == 6 * 2 * 9 + 6 * 5 + 5


@pytest.mark.parametrize("kernels", [1, 3])
def test_odconv_by_hand(kernels):
    """ODConv: one conv at width C_out; fusion K multiply-adds plus the spatial multiply per fused kernel value;
    the attention's FCs as coefficient prediction (its element-wise channel and filter scales are not counted)."""
    layer = ODConv2d(32, 12, 3, padding=1, groups=2, kernel_num=kernels)  # squeeze: max(32 / 16, 16) = 16
    rep = count_flops(layer, (2, 32, 7, 5))
    j = (32 // 2) * 9
    assert rep.conv_linear_macs == 2 * 12 * 7 * 5 * j
    assert rep.fusion_macs == 2 * (kernels * 12 * j + 12 * j)
    heads = 32 + 12 + 9 + (kernels if kernels > 1 else 0)  # channel, filter, spatial (, kernel)
    assert rep.cpm_macs == 2 * (32 * 16 + 16 * heads)
    assert {l.kind for l in rep.per_layer} == {"dynamic_conv", "cpm_linear"}


@pytest.mark.parametrize("cpm_hidden", [None, 2])
def test_dynamic_conv_by_hand(cpm_hidden):
    # K = 3 bases, C_in 4 -> C_out 6, 3x3, 2 groups, bias bank; input 2 x 4 x 7 x 5, padding 1 keeps 7 x 5.
    layer = DyConv2d(4, 6, 3, padding=1, groups=2, num_bases=3, bias_bank=True, cpm_hidden=cpm_hidden)
    rep = count_flops(layer, (2, 4, 7, 5))
    conv = 2 * 6 * 7 * 5 * 2 * 9  # one conv at width C_out per sample
    fusion = 2 * (3 * 6 * 2 * 9 + 3 * 6)  # per sample: K*C_out*C_in/g*kH*kW, plus the bias bank K*C_out
    cpm = 2 * 4 * 18 if cpm_hidden is None else 2 * (4 * 2 + 2 * 18)  # FC(s) to C_out*K = 18 outputs
    assert rep.conv_linear_macs == conv
    assert rep.fusion_macs == fusion
    assert rep.cpm_macs == cpm
    assert rep.dynamic_overhead_macs == fusion + cpm
    assert rep.total_macs == conv + fusion + cpm
    assert {l.kind for l in rep.per_layer} == {"dynamic_conv", "cpm_linear"}
    assert (
        rep.params
        == count_params(layer)
        == 3 * 6 * 2 * 9 + 3 * 6 + (4 * 18 + 18 if cpm_hidden is None else 4 * 2 + 2 + 2 * 18 + 18)
    )


def test_meta_device_counts_like_a_real_run_and_mode_is_restored():
    torch.manual_seed(0)
    real = create_model("dy_shufflenet_v2_x1_0", num_classes=10)
    with torch.device("meta"):
        meta = create_model("dy_shufflenet_v2_x1_0", num_classes=10)
    real.train()
    a = count_flops(real, (2, 3, 64, 48))
    b = count_flops(meta, (2, 3, 64, 48))
    assert real.training, "count_flops must restore training mode"
    assert (a.conv_linear_macs, a.cpm_macs, a.fusion_macs, a.params) == (
        b.conv_linear_macs,
        b.cpm_macs,
        b.fusion_macs,
        b.params,
    )
    # Batch scales every count linearly (the kernel fusion is per sample).
    c = count_flops(meta, (1, 3, 64, 48))
    assert (2 * c.conv_linear_macs, 2 * c.cpm_macs, 2 * c.fusion_macs) == (
        a.conv_linear_macs,
        a.cpm_macs,
        a.fusion_macs,
    )


def test_conv_cost_scales_with_pixels_and_overhead_does_not():
    with torch.device("meta"):
        model = create_model("dy_resnet18", num_classes=10)
    small = count_flops(model, (1, 3, 64, 64))
    big = count_flops(model, (1, 3, 128, 128))
    fc = 512 // 2 * 10
    assert big.conv_linear_macs - fc == 4 * (small.conv_linear_macs - fc)
    assert big.dynamic_overhead_macs == small.dynamic_overhead_macs


def test_bad_input_size_raises():
    with pytest.raises(ValueError, match="input_size"):
        count_flops(nn.Conv2d(3, 3, 1), (3, 224, 224))
