"""The three forward paths of DynamicConv2d agree, and BN folding is exact."""

import random

import pytest
import torch
from torch import nn

from dynet_deploy.nn import CoefficientPredictor, DyConv2d, DynamicConv2d, DynamicConvBN, fold_batchnorms


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def random_case(rng: random.Random):
    groups = rng.choice([1, 1, 2, 3, "dw"])
    base = rng.choice([2, 3, 4])
    if groups == "dw":
        c_in = c_out = groups = rng.choice([3, 6, 8])
    else:
        c_in, c_out = groups * base, groups * rng.choice([1, 2, 3])
    k = rng.choice([1, 3, 5])
    kw = rng.choice([k, 1, 3])
    pads = rng.choice(
        [0, k // 2, (k // 2, kw // 2), (rng.randint(0, 2), rng.randint(0, 2), rng.randint(0, 2), rng.randint(0, 2))]
    )
    return (
        dict(
            in_channels=c_in,
            out_channels=c_out,
            kernel_size=(k, kw),
            stride=rng.choice([1, 2, (1, 2)]),
            padding=pads,
            dilation=rng.choice([1, 2]),
            groups=groups,
            num_bases=rng.choice([1, 3, 6]),
            coeff_mode=rng.choice(["channel", "expert"]),
            bias_bank=rng.random() < 0.5,
            bias=rng.random() < 0.5,
        ),
        rng.choice([1, 2, 3, 5]),
        (rng.randint(7, 13), rng.randint(7, 13)),
    )


@pytest.mark.parametrize("seed", range(40))
def test_forward_paths_agree(seed):
    rng = random.Random(seed)
    kw, batch, (h, w) = random_case(rng)
    torch.manual_seed(seed)
    conv = DynamicConv2d(**kw).double()
    x = torch.randn(batch, kw["in_channels"], h, w, dtype=torch.float64)
    rows = conv.coeff_channels
    coeff = torch.rand(batch, rows, kw["num_bases"], dtype=torch.float64)
    outs = {}
    for mode in ("loop", "kernel", "feature"):
        conv.mode = mode
        outs[mode] = conv(x, coeff).float()
    # Cast to fp32 then compare fp32 computations too.
    conv32 = conv.float()
    for mode in ("kernel", "feature"):
        conv32.mode = mode
        y32 = conv32(x.float(), coeff.float())
        assert rel_err(y32, outs["loop"]) <= 1e-5, (mode, kw)
    assert outs["kernel"].shape == outs["loop"].shape == outs["feature"].shape
    assert outs["loop"].shape[-2:] == conv.output_size(h, w)


def test_matches_static_conv_when_coefficients_select_one_basis():
    torch.manual_seed(0)
    conv = DynamicConv2d(4, 6, 3, padding=1, groups=2, num_bases=3, bias_bank=True)
    x = torch.randn(2, 4, 9, 9)
    coeff = torch.zeros(2, 6, 3)
    coeff[:, :, 1] = 1.0
    ref = nn.functional.conv2d(x, conv.weight[1], conv.bias_bank[1], padding=1, groups=2)
    for mode in ("loop", "kernel", "feature"):
        conv.mode = mode
        assert torch.allclose(conv(x, coeff), ref, atol=1e-5)


def test_expert_coefficients_accept_2d_and_broadcast():
    torch.manual_seed(1)
    conv = DynamicConv2d(3, 5, 3, padding=1, num_bases=4, coeff_mode="expert")
    x = torch.randn(3, 3, 8, 8)
    c = torch.softmax(torch.randn(3, 4), -1)
    y2 = conv(x, c)
    y3 = conv(x, c.unsqueeze(1))
    # The channel form with the coefficient repeated over channels computes the same thing.
    conv_c = DynamicConv2d(3, 5, 3, padding=1, num_bases=4)
    conv_c.load_state_dict(conv.state_dict())
    y_c = conv_c(x, c.unsqueeze(1).expand(3, 5, 4))
    assert torch.allclose(y2, y3) and rel_err(y2, y_c) < 1e-6


def test_bad_coefficients_rejected():
    conv = DynamicConv2d(3, 4, 3, num_bases=6)
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="coeff"):
        conv(x, torch.rand(2, 4, 5))
    with pytest.raises(ValueError, match="N, C, H, W"):
        conv(x[0], torch.rand(2, 4, 6))
    with pytest.raises(ValueError):
        DynamicConv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError):
        conv.mode = "fast"


@pytest.mark.parametrize("bias_bank,bias,act", [(False, False, "none"), (True, True, "relu"), (True, False, "relu6")])
def test_bn_fold_is_exact(bias_bank, bias, act):
    torch.manual_seed(2)
    block = DynamicConvBN(DynamicConv2d(6, 8, 3, padding=1, groups=2, num_bases=6, bias_bank=bias_bank, bias=bias), act)
    bn = block.bn
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-1, 1)
    block.eval()
    x = torch.randn(3, 6, 10, 10)
    coeff = torch.rand(3, 8, 6)
    ref = block(x, coeff)
    fold_batchnorms(block)
    assert block.folded and isinstance(block.bn, nn.Identity)
    out = block(x, coeff)
    assert rel_err(out, ref) <= 1e-5
    assert (out - ref).abs().max() <= 1e-5


def test_fold_requires_eval():
    block = DynamicConvBN(DynamicConv2d(2, 2, 1))
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorms(block)


def test_cpm_shapes_and_ranges():
    torch.manual_seed(3)
    cpm = CoefficientPredictor(16, [8, 1, 4], num_bases=6, hidden=4)
    outs = cpm(torch.randn(5, 16, 7, 7))
    assert [tuple(o.shape) for o in outs] == [(5, 8, 6), (5, 1, 6), (5, 4, 6)]
    assert all(((o > 0) & (o < 1)).all() for o in outs)
    soft = CoefficientPredictor(16, [1], num_bases=4, activation="softmax", temperature=30.0)
    (c,) = soft(torch.randn(2, 16, 3, 3))
    assert torch.allclose(c.sum(-1), torch.ones(2, 1))


def test_dyconv2d_end_to_end_modes_agree():
    torch.manual_seed(4)
    layer = DyConv2d(8, 12, 3, stride=2, padding=1, groups=4, cpm_hidden=2, bias_bank=True).eval()
    x = torch.randn(3, 8, 15, 11)
    outs = []
    for mode in ("loop", "kernel", "feature"):
        layer.conv.mode = mode
        outs.append(layer(x))
    assert rel_err(outs[1], outs[0]) <= 1e-5 and rel_err(outs[2], outs[0]) <= 1e-5
