"""The passes after fusion: epilogue folds (residual Add + activation, GlobalAveragePool -> mean; op version 2) and
the coefficient-predictor rewrite, on both exporters' graphs, run on onnxruntime with the op library at batch sizes
the export never saw, against PyTorch at the fp32 tolerance (max-abs 1e-4, relative 1e-5). Each fold is refused
where it would not be exact, and the graph then computes the same as before."""

from __future__ import annotations

import collections
import os

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zoo_exports import ATOL, RTOL, compare, exported, fused, parity, randomize_batchnorms, small_model

from dynet_deploy.backends.onnxruntime import OnnxruntimeRunner
from dynet_deploy.export import export_onnx
from dynet_deploy.fuse import fuse_dynamic_convs
from dynet_deploy.models.mobilenetv2 import DyMobileBlock
from dynet_deploy.models.resnet import DyBasicBlock
from dynet_deploy.nn import CoefficientPredictor, DynamicConv2d, DynamicConvBN
from dynet_deploy.op import spec
from dynet_deploy.op.spec import OP_TYPE


@pytest.fixture(scope="module", autouse=True)
def _op_library(ort_op_library):
    return ort_op_library


def _ops(model):
    return [n for n in model.graph.node if n.op_type == OP_TYPE]


def _readers(model):
    out = collections.defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            out[i].append(n)
    return out


def _assert_nothing_left_to_fold(model):
    """No pool of an op output, and no Add that is the sole reader of an op output without activation."""
    readers = _readers(model)
    for node in _ops(model):
        attrs = spec.read_attributes(node)
        y = readers[node.output[0]]
        assert not any(r.op_type in ("GlobalAveragePool", "ReduceMean") for r in y), node.name
        if attrs["activation"] == 0 and not attrs["has_residual"]:
            assert not (len(y) == 1 and y[0].op_type == "Add"), node.name


def _assert_within(rows, what):
    for b, hw, max_abs, rel in rows:
        assert max_abs <= ATOL and rel <= RTOL, f"{what} batch {b} {hw}: max-abs {max_abs:.2e}, relative {rel:.2e}"


# ---- the zoo: Dy-mobile (residual without activation) and Dy-ResNet18 (residual + ReLU), both exporters ---------

ZOO_CASES = [("dy_mobile", "feature"), ("dy_resnet18", "kernel")]


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name,form", ZOO_CASES)
def test_zoo_folds_run_at_new_batches(name, form, exporter):
    """The fused zoo graph has every residual Add (with the block's ReLU) and every predictor's pool of an op output
    folded, is op version 2, and matches PyTorch at batch sizes the export never saw (feature form: exported at 1,
    kernel form: at 2)."""
    path, report = fused(name, form, exporter)
    model = small_model(name)
    blocks = [m for m in model.modules() if isinstance(m, (DyMobileBlock, DyBasicBlock))]
    residual_blocks = [b for b in blocks if getattr(b, "use_res_connect", True)]
    predictors = [m for m in model.modules() if isinstance(m, CoefficientPredictor)]
    post = report.post
    assert post is not None and post.op_version == 2, report.details
    assert post.residuals == len(residual_blocks), report.details
    # every predictor but the first pools an op output (the previous block's, or Dy-ResNet's dyconv1's), and so does
    # Dy-ResNet's classifier (its last block is dynamic; Dy-mobile's last conv is static)
    assert post.means == len(predictors) - 1 + (name == "dy_resnet18"), report.details
    acts = {f.activation for f in post.folds if f.residual is not None}
    assert acts == ({"relu"} if name == "dy_resnet18" else {"none"}), acts
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert {o.version for o in proto.opset_import if o.domain == spec.OP_DOMAIN} == {2}
    assert all(spec.node_version(n) == 2 for n in _ops(proto))
    _assert_nothing_left_to_fold(proto)
    runner = OnnxruntimeRunner(path)
    _assert_within(parity(runner, name, batches=(3, 1), seed=4), f"{name} {form} {exporter} folded")


def test_zoo_no_fold_keeps_op_version_1():
    src, _ = exported("dy_resnet18", "kernel")
    report = fuse_dynamic_convs(src, None, fold=False)
    assert report.post.op_version == 1 and not report.post.folds
    assert all(spec.node_version(n) == 1 for n in _ops(report.model))
    assert sum(n.op_type == "Add" for n in report.model.graph.node) == 8


# ---- single blocks: each fold, and each refusal -----------------------------------------------------------------


class Tail(nn.Module):
    """Predictor -> dynamic conv (BN, ``act``) -> ``tail(x, y)``: what follows the conv decides what folds."""

    def __init__(self, tail: str, act: str = "none", c: int = 8):
        super().__init__()
        conv = DynamicConv2d(c, c, 3, padding=1, num_bases=4)
        self.cpm = CoefficientPredictor(c, [c], 4)
        self.block = DynamicConvBN(conv, act)
        self.tail = tail

    def forward(self, x):
        y = self.block(x, self.cpm(x)[0])
        t = self.tail
        if t == "add_relu":
            return torch.relu(y + x)
        if t == "add_relu6":
            return F.relu6(x + y)
        if t == "add_clip":
            return torch.clamp(y + x, 0.0, 6.0)
        if t == "add_relu_pool":  # the folded output pooled (mean) and read again (kept)
            z = torch.relu(y + x)
            return z * F.adaptive_avg_pool2d(z, 1)
        if t == "reduce_mean":  # ReduceMean over (2, 3) with keepdim: folded; without keepdim or over (1, 2, 3): not
            return (
                y * y.mean(dim=(2, 3), keepdim=True)
                + y.mean(dim=(2, 3))[:, :, None, None]
                + y.mean(dim=(1, 2, 3), keepdim=True)
            )
        if t == "y_two_readers":  # y read by the Add and by the Mul: y must exist before the residual
            return (y + x) * y
        if t == "sum_two_readers":  # the sum read by the ReLU and by the Mul: the Add folds, the ReLU stays
            s = y + x
            return torch.relu(s) + s * 0.5
        if t == "own_activation":  # act(y) + x is not act(y + x)
            return y + x
        if t == "broadcast":  # y + [N, C, 1, 1]: broadcasting, not a residual of y's shape
            return y + x.amax(dim=(2, 3), keepdim=True)
        raise ValueError(t)


def _tail_graph(tmp_path, tail, act="none", exporter="torchscript", seed=0, dynamic_hw=False):
    torch.manual_seed(seed)
    model = randomize_batchnorms(Tail(tail, act), (8, 8, 9, 11))
    src = tmp_path / f"{tail}.{exporter}.onnx"
    export_onnx(model, src, (2, 8, 9, 11), form="feature", dynamic_batch=True, dynamic_hw=dynamic_hw, exporter=exporter)
    report = fuse_dynamic_convs(src, tmp_path / f"{tail}.{exporter}.plugin.onnx")
    assert (report.matched, report.left) == (1, 0), report.details
    proto = onnx.load(str(tmp_path / f"{tail}.{exporter}.plugin.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    (node,) = _ops(proto)
    return model, report, proto, node


def _tail_parity(model, path, batches=(3, 1), hw=(9, 11)):
    runner = OnnxruntimeRunner(path)
    rng = np.random.default_rng(5)
    for b in batches:
        x = rng.standard_normal((b, 8, *hw)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        max_abs, rel = compare(runner.run({runner.input_names[0]: x})[runner.output_names[0]], ref)
        assert max_abs <= ATOL and rel <= RTOL, (b, max_abs, rel)


FOLDS = {  # tail: (activation folded, mean outputs)
    "add_relu": ("relu", 0),
    "add_relu6": ("relu6", 0),
    "add_clip": ("relu6", 0),
    "add_relu_pool": ("relu", 1),
}


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("tail", list(FOLDS))
def test_residual_and_activation_fold(tail, exporter, tmp_path):
    model, report, proto, node = _tail_graph(tmp_path, tail, exporter=exporter)
    act, mean = FOLDS[tail]
    attrs = spec.read_attributes(node)
    assert attrs["has_residual"] == 1 and attrs["activation"] == spec.ACTIVATIONS[act], report.details
    assert attrs["has_mean"] == mean and len(node.output) == 1 + mean
    assert node.input[-1] == proto.graph.input[0].name  # the residual is the block input
    kinds = collections.Counter(n.op_type for n in proto.graph.node)
    # only the predictor's pool of the block input is left
    assert kinds["Relu"] + kinds["Clip"] == 0 and kinds["GlobalAveragePool"] + kinds["ReduceMean"] == 1
    assert any("folded residual Add" in line for line in report.details)
    _tail_parity(model, tmp_path / f"{tail}.{exporter}.plugin.onnx")


@pytest.mark.parametrize("tail,folded", [("add_relu", True), ("broadcast", False)])
def test_residual_fold_with_dynamic_h_w(tail, folded, tmp_path):
    """Height and width dynamic: ONNX's inference names the conv output's dims anew, onnxruntime's symbolic shapes
    prove them equal to the residual's (the dilated FCNs' blocks); a broadcast is still refused."""
    model, report, proto, node = _tail_graph(tmp_path, tail, dynamic_hw=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[2].dim_param  # H is symbolic
    assert spec.read_attributes(node)["has_residual"] == int(folded), report.details
    for hw in ((9, 11), (12, 7)):
        _tail_parity(model, tmp_path / f"{tail}.torchscript.plugin.onnx", batches=(3,), hw=hw)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_reduce_mean_folds_only_over_h_w_with_keepdims(exporter, tmp_path):
    model, report, proto, node = _tail_graph(tmp_path, "reduce_mean", exporter=exporter)
    attrs = spec.read_attributes(node)
    assert attrs["has_mean"] == 1 and attrs["has_residual"] == 0
    readers = _readers(proto)
    left = [r for r in readers[node.output[0]] if r.op_type == "ReduceMean"]
    assert len(left) == 2  # keepdim=False and the mean over (1, 2, 3) stay
    assert readers[node.output[1]], "the mean output is read"
    _tail_parity(model, tmp_path / f"reduce_mean.{exporter}.plugin.onnx")


REFUSED = {  # tail, conv activation: (the refusal reason in the report, or "" when the Add is not even a candidate)
    "y_two_readers": ("none", ""),
    "own_activation": ("relu", "own activation (relu)"),
    "broadcast": ("none", "shapes not provably equal"),
}


@pytest.mark.parametrize("tail", list(REFUSED))
def test_residual_fold_refused_where_not_exact(tail, tmp_path):
    act, reason = REFUSED[tail]
    model, report, proto, node = _tail_graph(tmp_path, tail, act)
    attrs = spec.read_attributes(node)
    assert attrs["has_residual"] == 0 and attrs["activation"] == spec.ACTIVATIONS[act]
    assert any(n.op_type == "Add" and node.output[0] in n.input for n in proto.graph.node)
    if reason:
        assert any(reason in line for line in report.details), report.details
    _tail_parity(model, tmp_path / f"{tail}.torchscript.plugin.onnx")


def test_activation_kept_when_the_sum_has_another_reader(tmp_path):
    model, report, proto, node = _tail_graph(tmp_path, "sum_two_readers")
    attrs = spec.read_attributes(node)
    assert attrs["has_residual"] == 1 and attrs["activation"] == 0
    readers = _readers(proto)[node.output[0]]
    assert sorted(r.op_type for r in readers) == ["Mul", "Relu"]
    _tail_parity(model, tmp_path / "sum_two_readers.torchscript.plugin.onnx")


# ---- coefficient predictors --------------------------------------------------------------------------------------


def _optimized_kinds(path, tmp_path) -> collections.Counter:
    """Op types of the graph onnxruntime runs (level all), with the op library registered."""
    import onnxruntime as ort

    from dynet_deploy.op import onnxruntime_lib

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.log_severity_level = 3
    onnxruntime_lib.register(so)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    out = onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False)
    kinds = collections.Counter(n.op_type for n in out.graph.node)
    kinds["FusedGemm+Sigmoid"] = sum(
        n.op_type == "FusedGemm" and any(a.name == "activation" and a.s == b"Sigmoid" for a in n.attribute)
        for n in out.graph.node
    )
    return kinds


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_predictors_in_fewer_nodes_that_onnxruntime_fuses(exporter, tmp_path):
    """Dy-mobile: each predictor's slices -> one Split, its sigmoid next to the FC, which onnxruntime then fuses."""
    path, report = fused("dy_mobile", "feature", exporter)
    predictors = [m for m in small_model("dy_mobile").modules() if isinstance(m, CoefficientPredictor)]
    proto = onnx.load(str(path))
    kinds = collections.Counter(n.op_type for n in proto.graph.node)
    assert len(report.post.predictors) == len(predictors), report.details
    assert kinds["Slice"] == 0 and kinds["Split"] == len(predictors) and kinds["Sigmoid"] == len(predictors)
    optimized = _optimized_kinds(path, tmp_path)
    assert optimized["FusedGemm+Sigmoid"] == len(predictors) and optimized["Sigmoid"] == 0, optimized
    unrewritten = fuse_dynamic_convs(exported("dy_mobile", "feature", exporter)[0], None, predictors=False)
    assert len(proto.graph.node) < len(unrewritten.model.graph.node) - 5 * len(predictors)


class SoftmaxAndShared(nn.Module):
    """A DY-CNN predictor (softmax over the bases: not element-wise) and a sigmoid predictor whose FC output has a
    second reader: neither is rewritten."""

    def __init__(self):
        super().__init__()
        self.conv1 = DynamicConv2d(4, 6, 3, padding=1, num_bases=3, coeff_mode="expert")
        self.cpm1 = CoefficientPredictor(4, [1], 3, activation="softmax")
        self.conv2 = DynamicConv2d(6, 6, 1, num_bases=3)
        self.fc = nn.Linear(6, 6 * 3)

    def forward(self, x):
        y = torch.relu(self.conv1(x, self.cpm1(x)[0]))
        z = self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))
        out = self.conv2(y, torch.sigmoid(z.reshape(-1, 6, 3)))
        return out + z.sum(dim=1)[:, None, None, None]


def test_predictors_left_where_not_exact(tmp_path):
    torch.manual_seed(0)
    model = SoftmaxAndShared().eval()
    export_onnx(model, tmp_path / "m.onnx", (2, 4, 9, 11), form="feature", dynamic_batch=True)
    report = fuse_dynamic_convs(tmp_path / "m.onnx", tmp_path / "m.plugin.onnx")
    assert (report.matched, report.left) == (2, 0), report.details
    assert not report.post.predictors
    kinds = collections.Counter(n.op_type for n in report.model.graph.node)
    assert kinds["Softmax"] == 1 and kinds["Sigmoid"] == 1 and kinds["Split"] == 0
    runner = OnnxruntimeRunner(tmp_path / "m.plugin.onnx")
    x = np.random.default_rng(3).standard_normal((3, 4, 9, 11)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    max_abs, rel = compare(runner.run({"input": x})["output"], ref)
    assert max_abs <= ATOL and rel <= RTOL, (max_abs, rel)


def test_cli_reports_the_folds(tmp_path, capsys):
    from dynet_deploy.cli import main

    src, _ = exported("dy_resnet18", "kernel")
    assert main(["fuse", str(src), "-o", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "epilogue folds: 8 residual Adds (8 with relu), 16 GlobalAveragePools -> mean" in out, out
    assert "op version 2" in out and "coefficient predictors: 16 rewritten" in out
    assert main(["fuse", str(src), "-o", str(tmp_path / "v1.onnx"), "--no-fold"]) == 0
    out = capsys.readouterr().out
    assert "epilogue folds" not in out and "op version 1" in out
    assert os.path.getsize(tmp_path / "v1.onnx") > 0
