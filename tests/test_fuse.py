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
import torch.nn.functional as F
from torch import nn
from zoo_exports import (
    ATOL,
    KERNEL_FORM_CI_MODELS,
    KERNEL_ONLY_MODELS,
    RTOL,
    SEG_SIZE,
    SEG_SIZE_2,
    compare,
    exported,
    fused,
    has_feature_form,
    parity,
    randomize_batchnorms,
    slow_after_first,
    small_model,
)

from dynet_deploy.backends.onnxruntime import OnnxruntimeRunner
from dynet_deploy.errors import FuseError, RuntimeBackendError
from dynet_deploy.export import export_onnx
from dynet_deploy.fuse import fuse_dynamic_convs, infer_shapes
from dynet_deploy.models import list_models, model_info
from dynet_deploy.nn import CoefficientPredictor, DynamicConv2d, DynamicConvBN
from dynet_deploy.op import spec
from dynet_deploy.op.spec import OP_DOMAIN, OP_TYPE
from dynet_deploy.tolerance import TOLERANCES, errors

DYNAMIC_MODELS = [n for n in list_models(dynamic=True) if has_feature_form(n)]


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


@pytest.mark.parametrize("name", slow_after_first(KERNEL_FORM_CI_MODELS) + slow_after_first(KERNEL_ONLY_MODELS))
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


# ---- ODConv: the spatial factor (op version 2) -------------------------------------------------------------------


class ODNet(nn.Module):
    """stem -> ODConv 3x3 + BN + ReLU -> ODConv 3x3 stride 2 + BN (+ a 1x1 ODConv with K > 1) -> head.

    Every ODConv has its four attentions (tests/third_party_dynconv.py); the 3x3 ones fuse with the spatial
    attention as the op's ``spatial`` input, the 1x1 one (no spatial attention) as before. ``transposed``: the
    first layer's spatial values come in (j, i) order, which the probe must measure and the rewrite gather back."""

    def __init__(self, kernel_num, groups=1, transposed=False):
        super().__init__()
        ch = 8
        self.stem = nn.Sequential(nn.Conv2d(3, ch, 3, padding=1), nn.BatchNorm2d(ch), nn.ReLU())
        out1 = ch if groups == ch else 2 * ch  # groups == ch: depthwise (no filter attention)
        self.od1 = tp.ODConvFull(
            ch, out1, 3, padding=1, groups=groups, kernel_num=kernel_num, transposed_taps=transposed
        )
        self.bn1 = nn.BatchNorm2d(out1)
        self.od2 = tp.ODConvFull(out1, 16, 3, stride=2, padding=1, groups=2 if groups > 1 else 1, kernel_num=kernel_num)
        self.bn2 = nn.BatchNorm2d(16)
        self.od3 = tp.ODConvFull(16, 16, 1, kernel_num=kernel_num) if kernel_num > 1 else None
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.bn1(self.od1(x)))
        x = self.bn2(self.od2(x))
        if self.od3 is not None:
            x = x + self.od3(x)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


OD_CASES = {
    "K1": dict(kernel_num=1),
    "K4": dict(kernel_num=4),
    "K4_groups": dict(kernel_num=4, groups=2),
    "K3_depthwise_transposed_taps": dict(kernel_num=3, groups=8, transposed=True),
}
OD_EXPORT_BATCH = 2
OD_RUN_BATCHES = (1, 3, 5)  # none of them the export's


def _od_net(case):
    torch.manual_seed(4)
    return randomize_batchnorms(ODNet(**OD_CASES[case]), (8, 3, 12, 12))


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def _spatial_source(model, name):
    """The op type the node's spatial input is computed from, through the rewrite's Reshape / Gather."""
    prod = _producers(model)
    node = prod[name]
    while node.op_type in ("Reshape", "Gather", "Transpose"):
        node = prod[node.input[0]]
    return node.op_type


@pytest.mark.parametrize(
    "case,exporter",
    [(c, "torchscript") for c in OD_CASES]
    + [pytest.param(c, "dynamo", marks=pytest.mark.slow) for c in ("K1", "K4_groups")],
)
def test_odconv_fuses_with_its_spatial_attention(case, exporter, tmp_path, ort_op_library):
    """Every ODConv layer -> one node; the kxk ones read the spatial attention through ``spatial`` (op version 2)
    and match PyTorch at fp32 tolerance at batches the fixed-batch export never saw."""
    model = _od_net(case)
    src = tmp_path / "od.onnx"
    export_onnx(model, src, (OD_EXPORT_BATCH, 3, 12, 12), form="kernel", dynamic_batch=False, exporter=exporter)
    report = fuse_dynamic_convs(src, tmp_path / "od.plugin.onnx")
    layers = [m for m in model.modules() if isinstance(m, tp.ODConvFull)]
    assert (report.candidates, report.matched, report.left) == (len(layers), len(layers), 0), report.details
    assert report.batch.startswith("dynamic"), report.batch
    fused_model = _check_fused_graph(tmp_path / "od.plugin.onnx", len(layers))
    assert [o.version for o in fused_model.opset_import if o.domain == OP_DOMAIN] == [2]
    nodes = _fused_nodes(fused_model)
    inits = {t.name: t for t in fused_model.graph.initializer}
    for node, layer, info in zip(nodes, layers, report.fused):
        attrs = spec.read_attributes(node)
        weight = inits[node.input[2]]
        assert list(weight.dims) == list(layer.weight.shape)  # K bases, not K * kH*kW tap-masked ones
        assert info.num_bases == layer.kernel_num and info.has_spatial == (layer.k > 1)
        assert attrs["has_spatial"] == int(layer.k > 1) and spec.node_version(node) == 2
        # the filter attention a_f folded into per-channel coefficients (exact: no bias before it), so the
        # BatchNorm after it folds too (the 1x1 layer's output feeds the residual Add: nothing to fold there)
        assert info.folded_filter_scale == (layer.filter_head is not None)
        rows = layer.out_ch if layer.filter_head is not None else 1
        assert _shape_of(fused_model, node.input[1])[1:] == [rows, layer.kernel_num]
        if layer is not model.od3:
            assert attrs["has_bias"] == 1 and info.folded_batchnorm
        if layer.k > 1:
            spatial = node.input[spec.input_names(attrs).index("spatial")]
            assert _spatial_source(fused_model, spatial) == "Sigmoid"
            shape = _shape_of(fused_model, spatial)
            assert shape[1:] == [layer.k * layer.k] and isinstance(shape[0], str), shape
    assert spec.read_attributes(nodes[0])["activation"] == 1  # od1 -> BN -> ReLU: all in the node
    if OD_CASES[case].get("transposed"):
        assert any(n.op_type == "Gather" and n.output[0] in nodes[0].input for n in fused_model.graph.node)
    runner = OnnxruntimeRunner(tmp_path / "od.plugin.onnx")
    assert runner.uses_custom_op
    tol = TOLERANCES["fp32"]
    rng = np.random.default_rng(6)
    for b in OD_RUN_BATCHES:
        x = rng.standard_normal((b, 3, 12, 12)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        max_abs, rel = errors(runner.run({"input": x})["output"], ref)
        assert tol.allows(max_abs, rel), f"{case} {exporter} batch {b}: max-abs {max_abs:.2e}, relative {rel:.2e}"


def _shape_of(model, name):
    inferred = infer_shapes(model)
    (vi,) = [v for v in inferred.graph.value_info if v.name == name]
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


class ScaledOutput(nn.Module):
    """CondConv, its output times a scale (a per-channel constant, or a run-time per-sample one computed from the
    block input), then BN and ReLU."""

    def __init__(self, runtime: bool, bias: bool):
        super().__init__()
        self.conv = tp.CondConvStyle(8, 8, 3, padding=1, bias=bias)
        self.runtime = runtime
        self.head = nn.Linear(8, 8)
        self.register_buffer("scale", torch.linspace(0.5, 2.0, 8).reshape(1, 8, 1, 1))
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        scale = torch.sigmoid(self.head(x.mean((2, 3)))).view(x.shape[0], 8, 1, 1) if self.runtime else self.scale
        return torch.relu(self.bn(self.conv(x) * scale))


@pytest.mark.parametrize("runtime,bias", [(False, False), (True, False), (True, True)])
def test_output_scales_fold_only_where_exact(runtime, bias, tmp_path):
    """A scale after the conv folds into the node (a constant into the bank, a run-time one into per-channel
    coefficients), and the BN and ReLU after it too; a run-time scale after a bias does not (it would scale the
    bias per sample): the Mul, BN and ReLU stay outside."""
    torch.manual_seed(5)
    model = randomize_batchnorms(ScaledOutput(runtime, bias), (8, 8, 10, 12))
    src = tmp_path / "s.onnx"
    export_onnx(model, src, (2, 8, 10, 12), form="kernel", dynamic_batch=False)
    report = fuse_dynamic_convs(src, tmp_path / "s.plugin.onnx")
    assert (report.matched, report.left) == (1, 0), report.details
    (info,) = report.fused
    folds = not (runtime and bias)
    assert info.folded_filter_scale == (runtime and not bias)
    assert info.folded_batchnorm == folds and (info.activation == "relu") == folds, report.details
    fused_model = _check_fused_graph(tmp_path / "s.plugin.onnx", 1)
    (node,) = _fused_nodes(fused_model)
    assert any(n.op_type == "Mul" and node.output[0] in n.input for n in fused_model.graph.node) == (runtime and bias)
    runner = OnnxruntimeRunner(tmp_path / "s.plugin.onnx")
    for b in (1, 3):
        x = np.random.default_rng(b).standard_normal((b, 8, 10, 12)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        max_abs, rel = errors(runner.run({"input": x})["output"], ref)
        assert TOLERANCES["fp32"].allows(max_abs, rel), (b, max_abs, rel)


class SpatialTwice(nn.Module):
    """A weight that depends on kH*kW values per sample, but not one value per tap: each value scales two taps."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 9)
        self.bank = nn.Parameter(torch.randn(8, 4, 3, 3) * 0.2)

    def forward(self, x):
        b, c, h, w = x.shape
        s = torch.sigmoid(self.head(x.mean((2, 3))))
        s = s.view(b, 1, 1, 3, 3) * s.view(b, 1, 1, 3, 3).transpose(-1, -2)  # not linear in s either
        weight = (s * self.bank.unsqueeze(0)).reshape(b * 8, 4, 3, 3)
        out = nn.functional.conv2d(x.reshape(1, b * c, h, w), weight, None, 1, 1, 1, b)
        return out.view(b, 8, h, w)


def test_a_weight_that_is_no_spatial_factor_is_left_and_reported(tmp_path):
    torch.manual_seed(0)
    src = tmp_path / "s.onnx"
    export_onnx(SpatialTwice().eval(), src, (2, 4, 9, 9), form="kernel", dynamic_batch=False)
    report = fuse_dynamic_convs(src, tmp_path / "s.plugin.onnx")
    assert (report.candidates, report.matched, report.left) == (1, 0, 1)
    assert "as spatial factor" in report.details[0] and "as coefficients" in report.details[0], report.details


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
