"""The fuse pass: every dynamic conv -> one DyNetDynamicConv2d node; the fused graph on onnxruntime CPU.

Every Dy zoo model in the feature form; the kernel form for two (all in scripts/zoo_parity.py), plus a small
segmentation-style graph whose upsampling bakes in the batch.

Tolerances as for export: max-abs <= 1e-4 and relative ||out - ref|| / ||ref|| <= 1e-5 against PyTorch (fp32),
on fresh random inputs, including batch sizes the fixed-batch export could not take.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import third_party_dynconv as tp
import torch
from torch import nn
from zoo_exports import (
    ATOL,
    KERNEL_FORM_CI_MODELS,
    RTOL,
    SEG_SIZE,
    SEG_SIZE_2,
    compare,
    exported,
    fused,
    parity,
    randomize_batchnorms,
    slow_after_first,
    small_model,
)

from dynet_deploy.backends.onnxruntime import OnnxruntimeRunner
from dynet_deploy.errors import FuseError, RuntimeBackendError
from dynet_deploy.export import export_onnx
from dynet_deploy.fuse import fuse_dynamic_convs
from dynet_deploy.models import list_models, model_info
from dynet_deploy.nn import CoefficientPredictor, DynamicConv2d, DynamicConvBN
from dynet_deploy.op import spec
from dynet_deploy.op.spec import OP_DOMAIN, OP_TYPE

DYNAMIC_MODELS = list_models(dynamic=True)


def _assert_within(rows, what):
    for b, hw, max_abs, rel in rows:
        assert max_abs <= ATOL and rel <= RTOL, f"{what} batch {b} {hw}: max-abs {max_abs:.2e}, relative {rel:.2e}"


def _fused_nodes(model):
    return [n for n in model.graph.node if n.op_type == OP_TYPE]


def _check_fused_graph(path, expected_nodes):
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    nodes = _fused_nodes(model)
    assert len(nodes) == expected_nodes
    (version,) = [o.version for o in model.opset_import if o.domain == OP_DOMAIN]
    for n in nodes:
        assert n.domain == OP_DOMAIN and spec.node_version(n) == version
        names = {a.name for a in n.attribute}
        assert names <= set(spec.ATTRIBUTE_NAMES) | {"plugin_version", "plugin_namespace"}
        assert {a.name for a in spec.ATTRIBUTES if a.since_version == 1} <= names
        attrs = spec.read_attributes(n)
        assert list(n.input) and len(n.input) == len(spec.input_names(attrs))
        assert len(n.output) == len(spec.output_names(attrs))
    assert not any(
        n.op_type == "Conv" and n.input[1] not in {i.name for i in model.graph.initializer} for n in model.graph.node
    )
    return model


# ---- the zoo ------------------------------------------------------------------------------------------------


def _dynamic_conv_count(name):
    return sum(isinstance(m, DynamicConv2d) for m in small_model(name).modules())


@pytest.mark.parametrize("name", slow_after_first(DYNAMIC_MODELS))
def test_zoo_feature_form_fused(name):
    path, report = fused(name, "feature")
    n = _dynamic_conv_count(name)
    assert (report.candidates, report.matched, report.left) == (n, n, 0), report.details
    _check_fused_graph(path, n)
    seg = model_info(name).task == "segmentation"
    rows = parity(OnnxruntimeRunner(path), name, batches=(1, 4), sizes=[SEG_SIZE, SEG_SIZE_2] if seg else None, seed=1)
    _assert_within(rows, f"{name} fused feature form")


@pytest.mark.parametrize("name", slow_after_first(KERNEL_FORM_CI_MODELS))
def test_zoo_kernel_form_fused_takes_any_batch(name):
    """Exported at batch 2 (batch-as-groups), fused, then run at batches the export could not take."""
    path, report = fused(name, "kernel")
    n = _dynamic_conv_count(name)
    assert (report.candidates, report.matched, report.left) == (n, n, 0), report.details
    assert report.batch.startswith("dynamic")
    model = _check_fused_graph(path, n)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    rows = parity(OnnxruntimeRunner(path), name, batches=(1, 3, 5), seed=2)
    _assert_within(rows, f"{name} fused kernel form")


class DynamicConvUpsample(nn.Module):
    """Dynamic conv at stride 2, then bilinear upsampling to the input size (the FCN pattern): exported at a
    fixed batch, the Resize's constant ``sizes`` carries the batch, which the pass must make dynamic."""

    def __init__(self):
        super().__init__()
        self.cpm = CoefficientPredictor(3, [6], 4, hidden=4)
        self.conv = DynamicConv2d(3, 6, 3, stride=2, padding=1, num_bases=4)

    def forward(self, x):
        y = torch.relu(self.conv(x, self.cpm(x)[0]))
        return nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def test_kernel_form_with_upsampling_gets_a_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model = DynamicConvUpsample().eval()
    export_onnx(model, tmp_path / "up.onnx", (2, 3, 12, 16), form="kernel", dynamic_batch=False)
    assert any(n.op_type == "Resize" for n in onnx.load(str(tmp_path / "up.onnx")).graph.node)
    report = fuse_dynamic_convs(tmp_path / "up.onnx", tmp_path / "up.plugin.onnx")
    assert (report.matched, report.left) == (1, 0) and report.batch.startswith("dynamic"), report.batch
    runner = OnnxruntimeRunner(tmp_path / "up.plugin.onnx")
    rng = np.random.default_rng(0)
    for b in (1, 3):
        x = rng.standard_normal((b, 3, 12, 16)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        max_abs, rel = compare(runner.run({"input": x})["output"], ref)
        assert max_abs <= ATOL and rel <= RTOL, (b, max_abs, rel)


def test_static_model_is_copied_unchanged(tmp_path, capsys):
    src, _ = exported("resnet18", "feature")
    out = tmp_path / "r18.plugin.onnx"
    report = fuse_dynamic_convs(src, out)
    assert (report.candidates, report.matched, report.left) == (0, 0, 0)
    assert "no dynamic convolution" in report.summary()
    assert out.read_bytes() == src.read_bytes()


# ---- single layers: every attribute, both forms, both exporters ----------------------------------------------


class OneLayer(nn.Module):
    """CPM -> dynamic conv -> BN -> activation, plus a residual reader of the block input when shapes allow."""

    def __init__(self, cin, cout, k, activation="none", residual=False, two_readers=False, **conv_kw):
        super().__init__()
        conv = DynamicConv2d(cin, cout, k, **conv_kw)
        self.cpm = CoefficientPredictor(cin, [conv.coeff_channels], conv.num_bases, hidden=4)
        self.block = DynamicConvBN(conv, activation)
        self.residual = residual
        self.two_readers = two_readers

    def forward(self, x):
        y = self.block(x, self.cpm(x)[0])
        if self.residual:
            y = y + x
        if self.two_readers:  # the conv output is read twice: no activation may be folded into the node
            y = torch.relu(y) + y * 0.5
        return y


LAYER_CASES = {
    "plain": dict(cin=8, cout=16, k=3, padding=1),
    "expert_bias_bank_bias": dict(cin=8, cout=16, k=3, padding=1, coeff_mode="expert", bias_bank=True, bias=True),
    "depthwise_stride2": dict(cin=12, cout=12, k=3, padding=1, stride=2, groups=12, activation="relu6"),
    "grouped_dilated": dict(cin=8, cout=12, k=3, padding=2, dilation=2, groups=4, activation="relu"),
    "asymmetric_pads": dict(cin=6, cout=8, k=(3, 2), padding=(0, 1, 2, 0), bias_bank=True),
    "stride_dilation_rect": dict(cin=4, cout=6, k=(1, 3), stride=(2, 1), dilation=(1, 2), padding=(0, 2), num_bases=3),
    "residual": dict(cin=8, cout=8, k=3, padding=1, residual=True, activation="relu"),
    "two_readers": dict(cin=8, cout=8, k=1, activation="none", two_readers=True, coeff_mode="expert", bias=True),
}


def _one_layer(case, seed=0):
    torch.manual_seed(seed)
    kw = dict(LAYER_CASES[case])
    model = OneLayer(kw.pop("cin"), kw.pop("cout"), kw.pop("k"), **kw)
    randomize_batchnorms(model, (8, model.block.conv.in_channels, 11, 13))
    return model


def _layer_parity(model, runner, batches, hw=(11, 13)):
    rng = np.random.default_rng(7)
    rows = []
    for b in batches:
        x = rng.standard_normal((b, model.block.conv.in_channels, *hw)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        rows.append((b, hw, *compare(runner.run({"input": x})["output"], ref)))
    return rows


@pytest.mark.parametrize("case", list(LAYER_CASES))
@pytest.mark.parametrize("form", ["feature", "kernel"])
def test_single_layer_torchscript(case, form, tmp_path):
    model = _one_layer(case)
    src = tmp_path / "m.onnx"
    export_onnx(model, src, (2, model.block.conv.in_channels, 11, 13), form=form, dynamic_batch=form == "feature")
    report = fuse_dynamic_convs(src, tmp_path / "m.plugin.onnx")
    assert (report.matched, report.left) == (1, 0), report.details
    fused_model = _check_fused_graph(tmp_path / "m.plugin.onnx", 1)
    node = _fused_nodes(fused_model)[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    conv = model.block.conv
    assert (attrs["pad_top"], attrs["pad_left"], attrs["pad_bottom"], attrs["pad_right"]) == conv.pads
    assert (attrs["stride_h"], attrs["stride_w"]) == conv.stride
    assert (attrs["dilation_h"], attrs["dilation_w"]) == conv.dilation
    assert attrs["groups"] == conv.groups
    # two_readers: the Relu after the conv is not folded, because the conv output has a second reader
    assert attrs["activation"] == {"none": 0, "relu": 1, "relu6": 2}[model.block.activation]
    assert attrs["has_bias"] == 1  # the folded BatchNorm's shift
    assert attrs["has_bias_bank"] == int(conv.bias_bank is not None)
    weight = {t.name: t for t in fused_model.graph.initializer}[node.input[2]]
    assert list(weight.dims) == list(conv.weight.shape)
    _assert_within(_layer_parity(model, OnnxruntimeRunner(tmp_path / "m.plugin.onnx"), (1, 3, 4)), case)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["expert_bias_bank_bias", "grouped_dilated", "asymmetric_pads"])
@pytest.mark.parametrize("form", ["feature", "kernel"])
def test_single_layer_dynamo(case, form, tmp_path):
    model = _one_layer(case, seed=1)
    src = tmp_path / "m.onnx"
    export_onnx(
        model,
        src,
        (2, model.block.conv.in_channels, 11, 13),
        form=form,
        dynamic_batch=form == "feature",
        exporter="dynamo",
    )
    report = fuse_dynamic_convs(src, tmp_path / "m.plugin.onnx")
    assert (report.matched, report.left) == (1, 0), report.details
    _check_fused_graph(tmp_path / "m.plugin.onnx", 1)
    _assert_within(_layer_parity(model, OnnxruntimeRunner(tmp_path / "m.plugin.onnx"), (1, 3)), f"{case} dynamo")


def test_dynamo_external_data_is_read(tmp_path):
    """A model saved with its weights as external data (as the dynamo exporter writes it) fuses the same."""
    model = _one_layer("plain")
    src = tmp_path / "m.onnx"
    export_onnx(model, src, (2, 8, 11, 13), form="kernel", dynamic_batch=False)
    proto = onnx.load(str(src))
    ext = tmp_path / "ext.onnx"
    onnx.save(
        proto,
        str(ext),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    assert (tmp_path / "ext.onnx.data").exists()
    report = fuse_dynamic_convs(ext, tmp_path / "ext.plugin.onnx")
    assert report.matched == 1
    _assert_within(_layer_parity(model, OnnxruntimeRunner(tmp_path / "ext.plugin.onnx"), (1, 3)), "external data")


# ---- third-party batch-as-groups modules -----------------------------------------------------------------------

THIRD_PARTY = [
    ("condconv", {}),
    ("condconv", {"groups": 2}),
    ("condconv", {"same_pad": True}),
    ("dycnn", {}),
    ("dycnn", {"groups": 8}),
    ("odconv", {}),
    ("odconv", {"groups": 4}),
]


def _third_party(style, kw):
    torch.manual_seed(3)
    if kw.get("same_pad"):
        # timm's dynamic "same" padding for an even kernel: a Pad node after the reshape, asymmetric
        model = nn.Sequential(tp.CondConvStyle(8, 8, 4, same_pad=True), nn.ReLU())
        return model.eval(), (8, 10, 12)
    return randomize_batchnorms(tp.ThirdPartyNet(style, **kw), (8, 3, 16, 16)), (3, 16, 16)


THIRD_PARTY_CASES = [(s, kw, "torchscript") for s, kw in THIRD_PARTY] + [
    (s, {}, "dynamo") for s in ("condconv", "dycnn", "odconv")
]


@pytest.mark.parametrize(
    "style,kw,exporter",
    [
        pytest.param(
            s,
            kw,
            e,
            marks=[pytest.mark.slow] if e == "dynamo" else [],
            id=f"{s}-{'-'.join(f'{k}{v}' for k, v in kw.items()) or 'default'}-{e}",
        )
        for s, kw, e in THIRD_PARTY_CASES
    ],
)
def test_third_party_batch_as_groups(style, kw, exporter, tmp_path):
    model, chw = _third_party(style, kw)
    src = tmp_path / "tp.onnx"
    export_onnx(model, src, (2, *chw), form="kernel", dynamic_batch=False, exporter=exporter)
    report = fuse_dynamic_convs(src, tmp_path / "tp.plugin.onnx")
    expected = sum(isinstance(m, (tp.CondConvStyle, tp.DyCNNStyle, tp.ODConvStyle)) for m in model.modules())
    assert (report.candidates, report.matched, report.left) == (expected, expected, 0), report.details
    assert report.batch.startswith("dynamic")
    fused_model = _check_fused_graph(tmp_path / "tp.plugin.onnx", expected)
    if not kw.get("same_pad"):
        attrs = [spec.read_attributes(n) for n in _fused_nodes(fused_model)]
        # relu folded; the residual Add and the ReLU after it folded (op version 2); clamp(0, 6) folded; each output
        # is pooled by the next conv's routing (the last by the head): the node's mean
        assert [a["activation"] for a in attrs] == [1, 1, 2]
        assert [a["has_residual"] for a in attrs] == [0, 1, 0] and [a["has_mean"] for a in attrs] == [1, 1, 1]
    else:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in _fused_nodes(fused_model)[0].attribute}
        assert (attrs["pad_top"], attrs["pad_left"], attrs["pad_bottom"], attrs["pad_right"]) == (1, 1, 2, 2)
    runner = OnnxruntimeRunner(tmp_path / "tp.plugin.onnx")
    rng = np.random.default_rng(5)
    for b in (1, 3, 5):
        x = rng.standard_normal((b, *chw)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        max_abs, rel = compare(runner.run({"input": x})["output"], ref)
        assert max_abs <= ATOL and rel <= RTOL, (b, max_abs, rel)


# ---- what is left alone -----------------------------------------------------------------------------------------


class NotLinearInCoefficients(nn.Module):
    """A run-time weight that is not a coefficient-weighted sum of fixed bases (squared coefficients)."""

    def __init__(self):
        super().__init__()
        self.route = nn.Linear(4, 3)
        self.bank = nn.Parameter(torch.randn(3, 8 * 4 * 9) * 0.2)

    def forward(self, x):
        b, c, h, w = x.shape
        r = torch.sigmoid(self.route(x.mean((2, 3))))
        weight = torch.matmul(r * r, self.bank).view(b * 8, 4, 3, 3)
        out = nn.functional.conv2d(x.reshape(1, b * c, h, w), weight, None, 1, 1, 1, b)
        return out.view(b, 8, h, w)


def test_unmatchable_subgraph_is_left_and_reported(tmp_path):
    torch.manual_seed(0)
    model = NotLinearInCoefficients().eval()
    src = tmp_path / "odd.onnx"
    export_onnx(model, src, (2, 4, 9, 9), form="kernel", dynamic_batch=False)
    report = fuse_dynamic_convs(src, tmp_path / "odd.plugin.onnx")
    assert (report.candidates, report.matched, report.left) == (1, 0, 1)
    assert "left" in report.details[0] and "not a coefficient-weighted sum" in report.details[0]
    assert report.batch.startswith("static 2")
    runner = OnnxruntimeRunner(tmp_path / "odd.plugin.onnx")
    x = np.random.default_rng(0).standard_normal((2, 4, 9, 9)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    max_abs, rel = compare(runner.run({"input": x})["output"], ref)
    assert max_abs <= ATOL and rel <= RTOL
    with pytest.raises(RuntimeBackendError, match="batch 3"):
        runner.run({"input": np.ones((3, 4, 9, 9), np.float32)})


# ---- bad input ----------------------------------------------------------------------------------------------


def test_not_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\x01\x02" * 10)
    out = tmp_path / "out.onnx"
    with pytest.raises(FuseError, match="not an ONNX model"):
        fuse_dynamic_convs(bad, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_missing_input_and_output_folder(tmp_path):
    with pytest.raises(FuseError, match="does not exist"):
        fuse_dynamic_convs(tmp_path / "nope.onnx", tmp_path / "out.onnx")
    src, _ = exported("dy_resnet18", "kernel")
    with pytest.raises(FuseError, match="does not exist"):
        fuse_dynamic_convs(src, tmp_path / "missing" / "out.onnx")
    assert list(tmp_path.iterdir()) == []


def test_wrong_rank_and_channels_at_inference():
    path, _ = fused("dy_resnet18", "kernel")
    runner = OnnxruntimeRunner(path)
    with pytest.raises(RuntimeBackendError, match="rank 3"):
        runner.run({"input": np.ones((3, 32, 32), np.float32)})
    with pytest.raises(RuntimeBackendError, match="channels 4"):
        runner.run({"input": np.ones((1, 4, 32, 32), np.float32)})
    with pytest.raises(RuntimeBackendError, match="float64"):
        runner.run({"input": np.ones((1, 3, 32, 32), np.float64)})
    with pytest.raises(RuntimeBackendError, match="missing input"):
        runner.run({"x": np.ones((1, 3, 32, 32), np.float32)})


def test_cli_fuse(tmp_path, capsys):
    from dynet_deploy.cli import main

    src, _ = exported("dy_resnet18", "kernel")
    out = tmp_path / "m.plugin.onnx"
    assert main(["fuse", str(src), "-o", str(out), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "matched: 16, left: 0" in text and "verify output" in text
    bad = tmp_path / "bad.onnx"
    bad.write_text("not onnx")
    assert main(["fuse", str(bad), "-o", str(tmp_path / "x.onnx")]) == 1
    assert "not an ONNX model" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
    static, _ = exported("resnet18", "feature")
    assert main(["fuse", str(static), "-o", str(tmp_path / "copy.onnx")]) == 0
    assert "no dynamic convolution found" in capsys.readouterr().out
