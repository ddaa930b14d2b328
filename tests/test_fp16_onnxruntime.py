"""fp16 on onnxruntime: ``fuse --precision fp16`` (fp32 or fp16 I/O), run on the op library's fp16 kernel, judged by
``validate`` at the fp16 tolerance and agreement target whatever the graph's input dtype."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import SMALL  # noqa: E402

from dynet_deploy.backends.onnxruntime import OnnxruntimeRunner
from dynet_deploy.backends.torch_reference import TorchRunner
from dynet_deploy.checkpoint import save_checkpoint
from dynet_deploy.cli import main
from dynet_deploy.export import export_onnx
from dynet_deploy.precision import graph_precision, tensor_elem_types


@pytest.fixture(scope="module")
def fp16_graphs(tmp_path_factory, ort_op_library):
    d = tmp_path_factory.mktemp("fp16")
    torch.manual_seed(0)
    from dynet_deploy.models import create_model

    model = create_model("dy_resnet18", **SMALL).eval()
    ckpt = save_checkpoint(model, d / "m.safetensors", metadata={"dataset": "digits", "input_size": [28, 28]})
    export_onnx(model, d / "m.onnx", (1, 1, 28, 28), form="feature")
    assert main(["fuse", str(d / "m.onnx"), "-o", str(d / "m.fp16.onnx"), "--precision", "fp16", "-q"]) == 0
    args = ["fuse", str(d / "m.onnx"), "-o", str(d / "m.fp16io.onnx"), "--precision", "fp16", "--io-dtype", "fp16"]
    assert main([*args, "-q", "--verify"]) == 0
    return d, model, ckpt


def test_fuse_fp16_keeps_fp32_io_and_feeds_the_op_fp16(fp16_graphs):
    d, model, _ = fp16_graphs
    g = onnx.load(str(d / "m.fp16.onnx"))
    ops = [n for n in g.graph.node if n.op_type == "DyNetDynamicConv2d"]
    assert ops
    types = tensor_elem_types(g)
    assert all(types[name] == onnx.TensorProto.FLOAT16 for n in ops for name in n.input if name)
    assert g.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert g.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph_precision(g) == "fp16" and graph_precision(onnx.load(str(d / "m.onnx"))) == "fp32"
    g16 = onnx.load(str(d / "m.fp16io.onnx"))
    assert g16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert g16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16

    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    ref = TorchRunner(model, ["input"], ["output"]).run({"input": x})["output"]
    runner = OnnxruntimeRunner(d / "m.fp16.onnx", threads=1)
    assert runner.uses_custom_op
    out = runner.run({"input": x})["output"]
    out16 = OnnxruntimeRunner(d / "m.fp16io.onnx", threads=1).run({"input": x.astype(np.float16)})["output"]
    assert out.dtype == np.float32 and out16.dtype == np.float16
    for got in (out, out16.astype(np.float32)):
        diff = np.abs(got.astype(np.float64) - ref)
        rel = np.linalg.norm(diff) / np.linalg.norm(ref)
        # fp16 rounding is visible (not an fp32 graph in disguise) and within the fp16 tolerance
        assert 1e-6 < rel <= 1e-2 and diff.max() <= 5e-2


def test_io_dtype_needs_fp16(fp16_graphs, tmp_path, capsys):
    d, _, _ = fp16_graphs
    assert main(["fuse", str(d / "m.onnx"), "-o", str(tmp_path / "x.onnx"), "--io-dtype", "fp16"]) == 1
    err = capsys.readouterr().err
    assert "--io-dtype does not apply" in err and "--precision fp16" in err
    assert not (tmp_path / "x.onnx").exists()
    # converting an fp16 graph again is refused, nothing written
    assert main(["fuse", str(d / "m.fp16.onnx"), "-o", str(tmp_path / "y.onnx"), "--precision", "fp16"]) == 1
    assert "fp16 already" in capsys.readouterr().err and not (tmp_path / "y.onnx").exists()


@pytest.mark.parametrize("graph", ["m.fp16.onnx", "m.fp16io.onnx"])
def test_validate_judges_an_fp16_graph_at_fp16_tolerance(fp16_graphs, tmp_path, capsys, graph):
    d, _, ckpt = fp16_graphs
    rc = main(["validate", str(ckpt), str(d / graph), "--out-dir", str(tmp_path), "--dataset", "digits"])
    out = capsys.readouterr().out
    assert rc == 0, out
    report = json.loads((tmp_path / "report.json").read_text())
    rnd, ds = report["random_inputs"], report["dataset"]
    assert rnd["precision"] == "fp16" and rnd["tolerance"] == {"max_abs": 5e-2, "rel": 1e-2}
    assert rnd["rel"] > 1e-5  # it would fail at fp32's tolerance
    assert ds["precision"] == "fp16" and ds["target_agreement"] == 0.999 and ds["agreement"] >= 0.999
    # asked for fp32's tolerance, the same graph fails
    assert main(["validate", str(ckpt), str(d / graph), "--out-dir", str(tmp_path), "--precision", "fp32"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_fuse_fp16_converts_an_already_fused_graph(fp16_graphs, tmp_path, capsys):
    d, _, _ = fp16_graphs
    assert main(["fuse", str(d / "m.onnx"), "-o", str(tmp_path / "m.plugin.onnx"), "-q"]) == 0
    capsys.readouterr()
    rc = main(["fuse", str(tmp_path / "m.plugin.onnx"), "-o", str(tmp_path / "m16.onnx"), "--precision", "fp16"])
    out = capsys.readouterr().out
    assert rc == 0 and "already fused" in out and "converted as it is" in out
    assert graph_precision(onnx.load(str(tmp_path / "m16.onnx"))) == "fp16"
