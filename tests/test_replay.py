"""The replay loop on CPU: `run --load-outputs` compares with saved outputs (Polygraphy's JSON, validate's
reference.json, run's .npz) and exits 1 on a mismatch; `run --save-outputs x.json` writes what Polygraphy reads;
validate prints a replay command that runs on this machine, the TensorRT one only where TensorRT is present."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL  # noqa: E402

from dynet_deploy.backends.tensorrt import tensorrt_available
from dynet_deploy.checkpoint import save_checkpoint
from dynet_deploy.cli import main
from dynet_deploy.export import export_onnx
from dynet_deploy.fuse import fuse_dynamic_convs
from dynet_deploy.models import create_model
from dynet_deploy.validate import validate_random

HAVE_TRT, TRT_WHY = tensorrt_available()
POLYGRAPHY = Path(sys.executable).with_name("polygraphy")


@pytest.fixture(scope="module")
def checked(tmp_path_factory, ort_op_library):
    """The small model's portable and fused graphs, and validate's files for the fused one."""
    d = tmp_path_factory.mktemp("replay")
    torch.manual_seed(0)
    model = create_model("dy_resnet18", **SMALL).eval()
    ckpt = save_checkpoint(model, d / "m.safetensors", metadata={"input_size": [28, 28]})
    export_onnx(model, d / "m.onnx", (1, 1, 28, 28), form="feature")
    fuse_dynamic_convs(d / "m.onnx", d / "m.plugin.onnx")
    (d / "v").mkdir()
    rep = validate_random(model, d / "m.plugin.onnx", batch_sizes=(1, 3), out_dir=d / "v")
    assert rep.passed
    return d, ckpt, rep


def _run(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().out


def test_fused_graph_replay_runs_here_and_passes(checked, capsys):
    d, _, rep = checked
    cmd = rep.replay_command
    assert cmd.startswith("dynet-deploy run ") and "$" not in cmd and "--trt" not in cmd
    assert "--load-outputs" in cmd and "--atol 0.0001 --rtol 1e-05" in cmd  # validate's fp32 bounds
    if HAVE_TRT:
        assert " --trt --plugins " in rep.replay_tensorrt and "$" not in rep.replay_tensorrt
    else:
        assert rep.replay_tensorrt == "", TRT_WHY
    argv = shlex.split(cmd)
    rc, out = _run([*argv[1:], "--repeats", "1", "--warmup", "0"], capsys)
    assert rc == 0, out
    table = out[out.index("reference ") :].splitlines()
    assert [line.split()[:3] for line in table[1:3]] == [["pytorch", "0", "output"], ["pytorch", "1", "output"]]
    assert all(line.endswith("ok") for line in table[1:3]) and out.rstrip().endswith("PASSED")


def test_load_outputs_mismatch_exits_1_with_the_errors(checked, tmp_path, capsys):
    from polygraphy.comparator import RunResults

    d, _, _ = checked
    ref = RunResults.load(str(d / "v" / "reference.json"))
    it = ref[0][1][1]  # runner 'pytorch', iteration 1 (batch 3)
    it["output"] = it["output"] + np.float32(1e-3)
    ref.save(str(tmp_path / "bad.json"))
    base = ["run", str(d / "m.plugin.onnx"), "--inputs", str(d / "v" / "inputs.json"), "--repeats", "1"]
    rc, out = _run([*base, "--load-outputs", str(tmp_path / "bad.json")], capsys)
    assert rc == 1, out
    rows = [line.split() for line in out.splitlines() if line.startswith("pytorch ")]
    assert rows[0][-1] == "ok" and rows[1][-1] == "MISMATCH"
    assert 0.99e-3 <= float(rows[1][-3]) <= 1.01e-3  # max-abs: the offset put in
    assert "FAILED: the outputs do not match bad.json" in out
    rc, out = _run([*base, "--load-outputs", str(tmp_path / "bad.json"), "--atol", "2e-3", "--rtol", "0.1"], capsys)
    assert rc == 0 and "tolerance max-abs <= 0.002, rel <= 0.1" in out


def test_save_outputs_json_is_read_by_polygraphy_and_back(checked, tmp_path, capsys):
    if not POLYGRAPHY.exists():
        pytest.skip("polygraphy CLI not on this interpreter's path")
    d, _, _ = checked
    inputs = str(d / "v" / "inputs.json")
    rc, out = _run(["run", str(d / "m.onnx"), "--inputs", inputs, "--save-outputs", str(tmp_path / "y.json")], capsys)
    assert rc == 0 and "Polygraphy's RunResults: 2 iteration(s)" in out
    cmd = [str(POLYGRAPHY), "run", str(d / "m.onnx"), "--onnxrt", "--load-inputs", inputs]
    res = subprocess.run(
        [*cmd, "--load-outputs", str(tmp_path / "y.json"), "--atol", "1e-5", "--rtol", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0 and "PASSED" in res.stdout + res.stderr, res.stdout[-2000:] + res.stderr[-2000:]
    # and the other way: Polygraphy's saved outputs compared by `run`, on the fused graph
    res = subprocess.run([*cmd, "--save-outputs", str(tmp_path / "p.json")], capture_output=True, timeout=300)
    assert res.returncode == 0
    rc, out = _run(
        ["run", str(d / "m.plugin.onnx"), "--inputs", inputs, "--load-outputs", str(tmp_path / "p.json")], capsys
    )
    assert rc == 0 and out.rstrip().endswith("PASSED") and "onnxrt-runner" in out


def test_load_outputs_npz_and_bad_input(checked, tmp_path, capsys):
    d, _, _ = checked
    base = ["run", str(d / "m.plugin.onnx"), "--inputs", str(d / "v" / "inputs.json"), "--repeats", "1"]
    assert main([*base, "--save-outputs", str(tmp_path / "y.npz")]) == 0
    rc, out = _run([*base, "--load-outputs", str(tmp_path / "y.npz"), "--atol", "0", "--rtol", "0"], capsys)
    assert rc == 0 and out.count(" ok") == 2
    # one feed against two saved iterations: refused, naming both counts
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 28, 28), np.float32))
    one = ["run", str(d / "m.plugin.onnx"), "--inputs", str(tmp_path / "x.npy")]
    assert main([*one, "--load-outputs", str(d / "v" / "reference.json")]) == 1
    err = capsys.readouterr().err
    assert "holds 2 iterations, --inputs gives 1 feed" in err
    assert main([*one, "--atol", "1e-3"]) == 1
    assert "--atol does not apply" in capsys.readouterr().err
    assert main([*one, "--load-outputs", str(d / "v" / "inputs.json")]) == 1  # inputs, not outputs
    assert "is not Polygraphy's outputs JSON" in capsys.readouterr().err


def test_validate_prints_no_undefined_variable(checked, tmp_path, capsys):
    d, ckpt, _ = checked
    rc, out = _run(["validate", str(ckpt), str(d / "m.plugin.onnx"), "--out-dir", str(tmp_path)], capsys)
    assert rc == 0
    replay = out[out.index("replay by hand:") :].splitlines()[1].strip()
    assert replay.startswith("dynet-deploy run ") and "$" not in out
    if not HAVE_TRT:
        assert "--trt" not in out and "TensorRT" not in out[out.index("replay by hand:") :]
