"""Provenance: every ONNX the tool writes names the tool and its version as its producer; validate's report.json
names the tool, the checkpoint and the graph with their sha256, the op library with its sha256 and C ABI version, and
the runtimes; ``export --save-checkpoint`` keeps a random-weight model's weights so its graph can be validated, and
replaces an existing checkpoint only with --force. (deploy's and train's reports: tests/test_deploy.py,
tests/test_train.py.)"""

from __future__ import annotations

import hashlib
import json

import onnx
import pytest
from onnx import TensorProto, helper

from dynet_deploy import __version__
from dynet_deploy.cli import main
from dynet_deploy.op.native import ABI_VERSION, ORT_LIBRARY, find_library

SMALL = '{"width_mult": 0.125, "num_classes": 10, "in_chans": 1, "small_input": true}'


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _producer(path) -> tuple[str, str]:
    m = onnx.load(str(path), load_external_data=False)
    return m.producer_name, m.producer_version


def _export(tmp_path, *extra) -> int:
    args = ["export", "--model", "dy_resnet18", "--model-args", SMALL, "--input-size", "28", "28"]
    return main([*args, "-o", str(tmp_path / "m.onnx"), *extra])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prov")
    assert _export(tmp, "--save-checkpoint", str(tmp / "ck.safetensors")) == 0
    assert main(["fuse", str(tmp / "m.onnx"), "-o", str(tmp / "m.plugin.onnx")]) == 0
    return tmp


def test_exported_and_fused_graphs_name_the_tool(exported):
    for name in ("m.onnx", "m.plugin.onnx"):
        assert _producer(exported / name) == ("dynet-deploy", __version__), name


def test_a_random_weight_export_validates_against_its_saved_checkpoint(exported, capsys):
    ck = exported / "ck.safetensors"
    assert ck.is_file() and (exported / "ck.json").is_file()
    config = json.loads((exported / "ck.json").read_text())
    assert config["model"] == "dy_resnet18" and config["metadata"]["input_size"] == [28, 28]
    out = exported / "v"
    out.mkdir()
    assert main(["validate", str(ck), str(exported / "m.plugin.onnx"), "--out-dir", str(out)]) == 0
    prov = json.loads((out / "report.json").read_text())["provenance"]
    assert prov["tool"] == {"name": "dynet-deploy", "version": __version__}
    assert prov["checkpoint"]["path"] == str(ck.absolute()) and prov["checkpoint"]["sha256"] == _sha(ck)
    assert prov["checkpoint"]["config"]["sha256"] == _sha(exported / "ck.json")
    assert prov["models"] == [
        {"path": str((exported / "m.plugin.onnx").absolute()), "sha256": _sha(exported / "m.plugin.onnx")}
    ]
    lib = find_library(ORT_LIBRARY)
    if lib is None:
        assert prov["op_library"]["path"] is None and "make plugins" in prov["op_library"]["error"]
    else:
        assert prov["op_library"] == {"path": str(lib.resolve()), "sha256": _sha(lib), "abi_version": ABI_VERSION}
    import onnxruntime
    import torch

    assert prov["versions"]["torch"] == torch.__version__
    assert prov["versions"]["onnxruntime"] == onnxruntime.__version__


def test_save_checkpoint_replaces_only_with_force(exported, tmp_path, capsys):
    ck = exported / "ck.safetensors"
    before = _sha(ck)
    assert _export(tmp_path, "--save-checkpoint", str(ck)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error (export): --save-checkpoint:") and "--force" in err and "already exist" in err
    assert _sha(ck) == before and not (tmp_path / "m.onnx").exists()  # refused before any export
    assert _export(tmp_path, "--save-checkpoint", str(tmp_path / "ck2.safetensors")) == 0
    first = _sha(tmp_path / "ck2.safetensors")
    assert _export(tmp_path, "--save-checkpoint", str(tmp_path / "ck2.safetensors"), "--force") == 0
    assert _sha(tmp_path / "ck2.safetensors") != first  # fresh random weights replaced the old ones


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--force"], "--force does not apply"),
        (["--save-checkpoint", "x.pt"], "should end in .safetensors"),
    ],
)
def test_save_checkpoint_flags_are_checked(tmp_path, capsys, extra, words):
    assert _export(tmp_path, *extra) == 1
    assert words in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_save_checkpoint_is_for_random_weights_only(exported, tmp_path, capsys):
    rc = main(
        [
            "export",
            str(exported / "ck.safetensors"),
            "-o",
            str(tmp_path / "m.onnx"),
            "--save-checkpoint",
            str(tmp_path / "c"),
        ]
    )
    assert rc == 1 and "saves randomly initialised weights" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_fuse_without_dynamic_convs_names_the_tool(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [1], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, producer_name="someone-else", producer_version="9")
    onnx.save(model, str(tmp_path / "plain.onnx"))
    assert main(["fuse", str(tmp_path / "plain.onnx"), "-o", str(tmp_path / "plain.fused.onnx")]) == 0
    assert _producer(tmp_path / "plain.fused.onnx") == ("dynet-deploy", __version__)


def test_the_fp16_graph_for_tensorrt_names_the_tool(exported, tmp_path):
    from dynet_deploy.backends.tensorrt.builder import convert_onnx_to_fp16

    fused = onnx.load(str(exported / "m.plugin.onnx"))
    fused.producer_name, fused.producer_version = "someone-else", "9"  # the converter keeps what it is given
    convert_onnx_to_fp16(fused, tmp_path / "m.fp16.onnx")
    assert _producer(tmp_path / "m.fp16.onnx") == ("dynet-deploy", __version__)
