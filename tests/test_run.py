"""`dynet-deploy run` on files of inputs, and the defaults export and validate take from a checkpoint's metadata."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import SMALL  # noqa: E402

from dynet_deploy.backends.torch_reference import TorchRunner
from dynet_deploy.checkpoint import save_checkpoint
from dynet_deploy.cli import main
from dynet_deploy.export import export_onnx
from dynet_deploy.fuse import fuse_dynamic_convs
from dynet_deploy.models import create_model


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, ort_op_library):
    d = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = create_model("dy_resnet18", **SMALL).eval()
    save_checkpoint(model, d / "m.safetensors", metadata={"dataset": "digits", "input_size": [28, 28], "in_chans": 1})
    export_onnx(model, d / "m.onnx", (1, 1, 28, 28), form="feature")
    fuse_dynamic_convs(d / "m.onnx", d / "m.plugin.onnx")
    return d, model


def _needs_native_op(graph: str) -> None:
    from dynet_deploy.op import onnxruntime_lib

    if graph.endswith(".plugin.onnx") and onnxruntime_lib.library_path() is None:
        pytest.skip(
            f"{onnxruntime_lib.ORT_LIBRARY} not built (run 'make plugins'): fused graphs need it on onnxruntime"
        )


def _reference(model, x):
    return TorchRunner(model, ["input"], ["output"]).run({"input": x})["output"]


@pytest.mark.parametrize("graph", ["m.onnx", "m.plugin.onnx"])
def test_run_npy_saves_outputs_matching_pytorch(graphs, tmp_path, capsys, graph):
    d, model = graphs
    _needs_native_op(graph)
    x = np.random.default_rng().standard_normal((3, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    rc = main(
        [
            "run",
            str(d / graph),
            "--inputs",
            str(tmp_path / "x.npy"),
            "--save-outputs",
            str(tmp_path / "y.npz"),
            "--repeats",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "output output: [3, 10] float32" in out and "latency median" in out
    with np.load(tmp_path / "y.npz") as saved:
        got = saved["output"]
    ref = _reference(model, x)
    diff = np.abs(got - ref)
    assert diff.max() <= 1e-4 and np.linalg.norm(diff) / np.linalg.norm(ref) <= 1e-5  # fp32 tolerance, as validate's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "y.npz"]  # no temporary left


def test_run_polygraphy_json_runs_every_feed(graphs, tmp_path, capsys):
    from polygraphy.json import save_json

    d, model = graphs
    _needs_native_op("m.plugin.onnx")
    rng = np.random.default_rng()
    feeds = [{"input": rng.standard_normal((b, 1, 28, 28)).astype(np.float32)} for b in (1, 2)]
    save_json(feeds, str(tmp_path / "inputs.json"))
    rc = main(
        [
            "run",
            str(d / "m.plugin.onnx"),
            "--inputs",
            str(tmp_path / "inputs.json"),
            "--save-outputs",
            str(tmp_path / "y.npz"),
            "--repeats",
            "1",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    with np.load(tmp_path / "y.npz") as saved:
        assert sorted(saved.files) == ["output.0", "output.1"]
        for i, feed in enumerate(feeds):
            assert np.abs(saved[f"output.{i}"] - _reference(model, feed["input"])).max() <= 1e-4


def test_run_npz_named_inputs(graphs, tmp_path, capsys):
    d, _ = graphs
    np.savez(tmp_path / "x.npz", input=np.random.default_rng().standard_normal((2, 1, 28, 28)).astype(np.float32))
    assert main(["run", str(d / "m.onnx"), "--inputs", str(tmp_path / "x.npz"), "--repeats", "1"]) == 0
    assert "output output: [2, 10]" in capsys.readouterr().out


def test_run_tensorrt_absent_is_a_clear_error(graphs, tmp_path, capsys):
    pytest.importorskip("numpy")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here; this checks the message where it is absent")
    except ImportError:
        pass
    d, _ = graphs
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 28, 28), np.float32) + 0.5)
    rc = main(["run", str(d / "m.plugin.onnx"), "--inputs", str(tmp_path / "x.npy"), "--backend", "tensorrt"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error (dependency): TensorRT is not installed") and err.count("\n") == 1


def _input_shape(path):
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def test_export_takes_input_size_from_the_checkpoint(graphs, tmp_path, capsys):
    d, _ = graphs
    assert main(["export", str(d / "m.safetensors"), "-o", str(tmp_path / "e.onnx")]) == 0
    out = capsys.readouterr().out
    assert "input size 28x28 from the checkpoint's metadata" in out
    assert _input_shape(tmp_path / "e.onnx")[1:] == [1, 28, 28]
    assert main(["export", str(d / "m.safetensors"), "--input-size", "32", "40", "-o", str(tmp_path / "f.onnx")]) == 0
    assert _input_shape(tmp_path / "f.onnx")[1:] == [1, 32, 40]
    assert (tmp_path / "e.onnx").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_validate_fixed_batch_graph_runs_its_batch(graphs, tmp_path, capsys):
    d, model = graphs
    export_onnx(model, tmp_path / "fixed.onnx", (2, 1, 28, 28), form="kernel", dynamic_batch=False)
    rc = main(
        ["validate", str(d / "m.safetensors"), str(tmp_path / "fixed.onnx"), "--out-dir", str(tmp_path), "--json"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert json.loads(out[: out.rindex("}") + 1])["random_inputs"]["batch_sizes"] == [2]


@pytest.mark.slow
def test_bench_takes_a_checkpoint_and_an_onnx_file(graphs, tmp_path, capsys):
    """Not a speed claim: one round, to check what is timed and how rows are labelled and paired."""
    d, _ = graphs
    rc = main(
        [
            "bench",
            "--checkpoint",
            str(d / "m.safetensors"),
            "--onnx",
            str(d / "m.onnx"),
            "--backends",
            "torch",
            "onnxruntime",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--out-dir",
            str(tmp_path / "b"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = json.loads((tmp_path / "b" / "bench.json").read_text())
    got = {(r["model"], r["backend"]) for r in rows["results"]}
    # The Dy checkpoint is paired with resnet18 built with its arguments; the ONNX file has no PyTorch model.
    assert got == {
        ("m", "torch"),
        ("resnet18", "torch"),
        ("m", "onnxruntime"),
        ("resnet18", "onnxruntime"),
        ("m#2", "onnxruntime"),
    }
    assert rows["config"]["input_size"] == [28, 28]  # from the checkpoint's metadata
    by = {(r["model"], r["backend"]): r for r in rows["results"]}
    assert by[("m#2", "onnxruntime")]["mflops"] is None and by[("m", "torch")]["mflops"] > 0
    assert by[("m", "torch")]["baseline"] == "resnet18" and by[("m", "torch")]["speedup_vs_baseline"] > 0
    assert any(s["models"] == "m#2" and s["backend"] == "torch" for s in rows["skipped"])
