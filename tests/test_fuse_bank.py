"""A reduced-precision weight bank: ``fuse --bank-dtype fp16|bf16`` on the bundled Dy-ResNet18 (Fashion-MNIST), run
on onnxruntime with the op library, judged by ``validate`` at the bank's own tolerance and agreement target; refused
for fp16 graphs and TensorRT."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from dynet_deploy.backends.onnxruntime import OnnxruntimeRunner
from dynet_deploy.checkpoint import load_checkpoint
from dynet_deploy.cli import main
from dynet_deploy.errors import BuildError, FuseError
from dynet_deploy.export import export_onnx
from dynet_deploy.fuse.bank import graph_bank_dtype, narrow_bank
from dynet_deploy.op import spec
from dynet_deploy.precision import convert_to_fp16, graph_precision
from dynet_deploy.resources import ASSETS_DIR
from dynet_deploy.tolerance import TOLERANCES, errors

CKPT = ASSETS_DIR / "dy_resnet18_fmnist.safetensors"
NARROW = {"fp16": (TensorProto.FLOAT16, np.float16), "bf16": (TensorProto.BFLOAT16, ml_dtypes.bfloat16)}


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, ort_op_library):
    d = tmp_path_factory.mktemp("bank")
    model = load_checkpoint(str(CKPT)).eval()
    export_onnx(model, d / "m.onnx", (1, 1, 28, 28), form="feature")
    assert main(["fuse", str(d / "m.onnx"), "-o", str(d / "fp32.onnx"), "-q"]) == 0
    for bank in NARROW:
        args = ["fuse", str(d / "m.onnx"), "-o", str(d / f"{bank}.onnx"), "--bank-dtype", bank, "-q", "--verify"]
        assert main(args) == 0
    return d, model


def _ops(proto):
    return [n for n in proto.graph.node if n.op_type == spec.OP_TYPE]


def _rounded(proto, bank):
    """The fp32 graph with every op weight rounded to ``bank`` and widened back: the op's defined result."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    inits = {t.name: t for t in out.graph.initializer}
    for node in _ops(out):
        t = inits[node.input[2]]
        w = numpy_helper.to_array(t).astype(NARROW[bank][1]).astype(np.float32)
        t.CopyFrom(numpy_helper.from_array(w, t.name))
    return out


@pytest.mark.parametrize("bank", list(NARROW))
def test_bank_is_stored_narrowed_as_op_version_2(graphs, bank):
    d, _ = graphs
    proto = onnx.load(str(d / f"{bank}.onnx"))
    inits = {t.name: t for t in proto.graph.initializer}
    weights = {n.input[2] for n in _ops(proto)}
    assert weights and all(inits[w].data_type == NARROW[bank][0] for w in weights)
    narrow = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
    assert not [name for name, t in inits.items() if name not in weights and t.data_type in narrow]
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert all(spec.node_version(n) == 2 for n in _ops(proto))
    assert graph_bank_dtype(proto) == bank and graph_precision(proto) == f"{bank}-bank"
    assert (d / f"{bank}.onnx").stat().st_size < 0.6 * (d / "fp32.onnx").stat().st_size


@pytest.mark.parametrize("bank", list(NARROW))
def test_narrowed_graph_computes_the_op_on_the_rounded_bank(graphs, bank):
    """Against the fp32 graph with its bank rounded in place: fp32 agreement (the kernel widens exactly); against
    the fp32 graph itself: a visible difference, within the bank's tolerance."""
    d, _ = graphs
    x = np.random.default_rng(2).standard_normal((3, 1, 28, 28)).astype(np.float32)
    out = OnnxruntimeRunner(d / f"{bank}.onnx").run({"input": x})["output"]
    fp32 = onnx.load(str(d / "fp32.onnx"))
    rounded = OnnxruntimeRunner(_rounded(fp32, bank)).run({"input": x})["output"]
    exact = OnnxruntimeRunner(fp32).run({"input": x})["output"]
    assert TOLERANCES["fp32"].allows(*errors(out, rounded))
    max_abs, rel = errors(out, exact)
    assert rel > 1e-6 and TOLERANCES[f"{bank}-bank"].allows(max_abs, rel), (max_abs, rel)


@pytest.mark.parametrize("bank", list(NARROW))
def test_validate_judges_the_bank_at_its_tolerance(graphs, bank, tmp_path, capsys):
    d, _ = graphs
    rc = main(
        ["validate", str(CKPT), str(d / f"{bank}.onnx"), "--out-dir", str(tmp_path), "--dataset", "auto"]
        + ["--limit", "2000"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    report = json.loads((tmp_path / "report.json").read_text())
    rnd, ds = report["random_inputs"], report["dataset"]
    tol = TOLERANCES[f"{bank}-bank"]
    assert rnd["precision"] == f"{bank}-bank" and rnd["tolerance"] == {"max_abs": tol.max_abs, "rel": tol.rel}
    assert ds["precision"] == f"{bank}-bank" and ds["target_agreement"] == 0.999 and ds["agreement"] >= 0.999
    if bank == "bf16":  # at fp32's tolerance the bf16 bank fails: the tolerance is the bank's, not fp32's
        args = ["validate", str(CKPT), str(d / f"{bank}.onnx"), "--out-dir", str(tmp_path), "--precision", "fp32"]
        assert main(args) == 1
        assert "MISMATCH" in capsys.readouterr().out


def test_bank_refused_for_fp16_graphs_and_tensorrt(graphs, tmp_path, capsys):
    d, _ = graphs
    args = ["fuse", str(d / "m.onnx"), "-o", str(tmp_path / "x.onnx"), "--bank-dtype", "fp16", "--precision", "fp16"]
    assert main(args) == 1
    assert "an fp16 graph stores its bank in fp16 already" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
    narrowed = onnx.load(str(d / "bf16.onnx"))
    with pytest.raises(FuseError, match="fp16 anyway"):
        convert_to_fp16(narrowed, error=FuseError)
    from dynet_deploy.backends.tensorrt.builder import Profile, build_engine

    with pytest.raises(BuildError, match="only the onnxruntime CPU op library runs"):
        build_engine(d / "bf16.onnx", tmp_path / "e.engine", profile=Profile())
    assert not (tmp_path / "e.engine").exists()
    # an already narrowed bank is not narrowed again
    assert main(["fuse", str(d / "fp16.onnx"), "-o", str(tmp_path / "y.onnx"), "--bank-dtype", "bf16"]) == 1
    assert "narrowed already" in capsys.readouterr().err


def test_an_already_fused_graph_gets_its_bank_narrowed(graphs, tmp_path, capsys):
    d, _ = graphs
    rc = main(["fuse", str(d / "fp32.onnx"), "-o", str(tmp_path / "n.onnx"), "--bank-dtype", "fp16", "--verify"])
    out = capsys.readouterr().out
    assert rc == 0 and "already fused" in out and "narrowed to fp16" in out and "verify output" in out, out
    assert graph_precision(onnx.load(str(tmp_path / "n.onnx"))) == "fp16-bank"


def test_weights_beyond_fp16_range_are_refused(graphs):
    d, _ = graphs
    proto = onnx.load(str(d / "fp32.onnx"))
    node = _ops(proto)[0]
    init = next(t for t in proto.graph.initializer if t.name == node.input[2])
    w = numpy_helper.to_array(init).copy()
    w.flat[0] = 1e5
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    with pytest.raises(FuseError, match="beyond fp16's range"):
        narrow_bank(onnx.ModelProto.FromString(proto.SerializeToString()), "fp16")
    narrowed, count = narrow_bank(proto, "bf16")  # bfloat16 has float32's range
    assert count == len(_ops(proto)) and graph_bank_dtype(narrowed) == "bf16"
