"""``dynet-deploy deploy RECIPE``: one run of a (shortened) bundled recipe end to end; the folder holds every
artifact and a report that matches the files; a failing check still writes the folder and exits 1; an error leaves
nothing behind."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil

import onnx
import pytest
from triton_serving import shared_folder

from dynet_deploy import __version__
from dynet_deploy.backends.tensorrt import tensorrt_available
from dynet_deploy.bench.timing import busy_machine
from dynet_deploy.cli import main
from dynet_deploy.recipe import bundled_recipe_path, load_recipe

HAVE_TRT, TRT_WHY = tensorrt_available()


def _recipe(tmp_path, **changes):
    """The bundled recipe, shortened for a test (digits, fewer latency runs), with ``changes`` applied."""
    d = json.loads(bundled_recipe_path().read_text())
    d["dataset"] = {"name": "digits", "batch": 64, "agreement": {"fp32": 1.0}}
    d["latency"] = {"batch": 1, "repeats": 3, "warmup": 1, "threads": 2, "baseline": "resnet18_fmnist"}
    d.update(changes)
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(d))
    return path


_STDERR: dict = {}  # what the module's deploy run wrote on stderr, by output folder


@pytest.fixture(scope="module")
def deployed():
    # in a folder a server running as another user can enter (pytest's own are 0700), with the op library copied
    # into the Triton repository
    tmp = shared_folder("dynet-deploy-tests-")
    out = tmp / "out"
    old = os.umask(0o022)
    stderr = io.StringIO()  # not a terminal: no bars, the step lines only
    try:
        with contextlib.redirect_stderr(stderr):
            rc = main(["deploy", str(_recipe(tmp)), "-o", str(out), "--triton", "--copy-op-library", "--limit", "96"])
    finally:
        os.umask(old)
    _STDERR[out] = stderr.getvalue()
    yield rc, out, json.loads((out / "report.json").read_text())
    shutil.rmtree(tmp, ignore_errors=True)


def test_each_step_is_announced_when_it_starts(deployed):
    _, out, report = deployed
    lines = _STDERR[out].splitlines()
    total = len(report["steps"])
    assert total == 8
    previous_end = -1
    for i, step in enumerate(report["steps"], 1):
        starts = [n for n, line in enumerate(lines) if line.startswith(f"[{i}/{total}] ") and line.endswith(" ...")]
        ends = [n for n, line in enumerate(lines) if line.startswith(f"[{i}/{total}] {step['step']}: ")]
        ends = [n for n in ends if re.search(r"\(\d+\.\d s\)$", lines[n])]
        assert len(starts) == 1 and len(ends) == 1, (i, step["step"], lines)
        assert previous_end < starts[0] < ends[0], (i, lines)
        previous_end = ends[0]
    parity = next(n for n, line in enumerate(lines) if line.startswith("[6/8] accuracy parity: PyTorch and"))
    passes = [line.strip() for line in lines[parity : previous_end + 1] if "96 images in batches of" in line]
    graphs = sum("agreement" in p for p in report["parity"])
    assert passes[0].startswith("pytorch reference: 96 images") and len(passes) == 1 + graphs, passes


def test_deploy_writes_every_artifact(deployed):
    rc, out, report = deployed
    assert rc == 0 and report["passed"] is True
    for name in (
        "model.onnx",
        "model.kernel.onnx",
        "model.plugin.onnx",
        "baseline.onnx",
        "recipe.json",
        "report.json",
        "report.txt",
        "validate/model/inputs.json",
        "validate/model.plugin/reference.json",
        "model.plugin.fp16.onnx",  # the recipe lists fp16: run on onnxruntime
        "validate/model.plugin.fp16/reference.json",
    ):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in out.parent.iterdir()) == ["out", "recipe.json"]  # no staging folder left


def test_report_lists_the_files_it_describes(deployed):
    _, out, report = deployed
    listed = {a["path"]: a for a in report["artifacts"]}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"report.json", "report.txt"}
    assert set(listed) == on_disk
    for path, a in listed.items():
        data = (out / path).read_bytes()
        assert a["bytes"] == len(data) and a["sha256"] == hashlib.sha256(data).hexdigest()


def test_report_steps_and_checks(deployed):
    _, out, report = deployed
    steps = {s["step"]: s for s in report["steps"]}
    assert [s["step"] for s in report["steps"]][:4] == ["checkpoint", "export", "fuse", "build"]
    assert "16 dynamic convs -> DyNetDynamicConv2d, 0 left (model has 16)" in steps["fuse"]["detail"]
    if HAVE_TRT:
        assert steps["build"]["status"] in ("done", "skipped")
    else:
        assert steps["build"]["status"] == "skipped" and "TensorRT is not installed" in steps["build"]["detail"]
        assert report["engines"] == {}
    random_rows = [p for p in report["parity"] if "max_abs" in p]
    data_rows = [p for p in report["parity"] if "agreement" in p]
    assert {p["graph"] for p in random_rows} >= {"model.onnx", "model.plugin.onnx", "model.plugin.fp16.onnx"}
    for p in random_rows:
        tol = report["recipe"]["precisions"][p["precision"]]
        assert p["tolerance"] == tol and p["passed"] and p["max_abs"] <= tol["max_abs"] and p["rel"] <= tol["rel"]
        assert str(out) in p["replay"]  # the replay command names the final folder, not the staging one
        assert "$" not in p["replay"] + p["replay_tensorrt"]  # no variable the user would have to define
        if p["backend"] == "onnxruntime" and ".plugin" in p["graph"]:
            assert p["replay"].startswith("dynet-deploy run ")  # runs here: Polygraphy's --onnxrt lacks the op
    fp16 = next(p for p in random_rows if p["graph"] == "model.plugin.fp16.onnx")
    assert fp16["backend"] == "onnxruntime" and fp16["precision"] == "fp16" and fp16["rel"] > 1e-5
    assert {p["graph"] for p in data_rows} >= {"model.onnx", "model.plugin.onnx", "model.plugin.fp16.onnx"}
    for p in data_rows:
        target = {"fp32": 1.0, "fp16": 0.999}[p["precision"]]  # the recipe's fp32 target, validate's fp16 default
        assert p["passed"] and p["agreement"] >= p["target"] == target and "(96)" in p["check"]
    runners = [r["runner"] for r in report["latency"]]
    assert runners[:4] == [
        "dy_resnet18 pytorch",
        "dy_resnet18 onnxruntime portable",
        "dy_resnet18 onnxruntime fused",
        "dy_resnet18 onnxruntime fused fp16",
    ]
    assert "resnet18 onnxruntime" in runners and all(r["runs"] == 3 and r["median_ms"] > 0 for r in report["latency"])
    assert report["recipe"]["profile"] == {"min": 1, "opt": 8, "max": 8}
    load = report["latency_load_average"]
    assert set(load) == {"before", "after", "foreign_cores", "busy"}
    # the busy mark is bench's rule applied to the figures the report gives, and a busy run carries the note
    assert load["busy"] == busy_machine(load["before"], load["after"], load["foreign_cores"]).busy
    assert load["busy"] == any("busy during the latency run" in n for n in report["notes"])
    text = (out / "report.txt").read_text()
    assert "== parity against PyTorch" in text and "== latency, batch 1" in text and "PASSED" in text


def test_triton_repository_configs_parse(deployed):
    pytest.importorskip("tritonclient", reason="tritonclient (the test extra) ships Triton's model_config protobuf")
    from dynet_deploy.triton import parse_config

    _, out, report = deployed
    configs = {p.parent.name: parse_config(p.read_text()) for p in (out / "triton").glob("*/config.pbtxt")}
    assert set(configs) == set(report["triton"]["models"])
    cfg = configs["dy_resnet18_fmnist_onnxruntime"]
    assert cfg.max_batch_size == report["recipe"]["profile"]["max"]
    assert list(cfg.input[0].dims) == [1, 28, 28] and list(cfg.output[0].dims) == [10]
    copy = out / "triton" / "dy_resnet18_fmnist_onnxruntime" / "libdynet_dynamic_conv_ort.so"
    assert list(cfg.model_operations.op_library_filename) == [str(copy.absolute())] == [report["triton"]["op_library"]]
    assert copy.is_file() and report["triton"]["op_library_copied"] is True
    assert list(cfg.dynamic_batching.preferred_batch_size) == []  # Triton's documented defaults
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_CPU
    if not report["engines"]:
        assert "dy_resnet18_fmnist_tensorrt" in report["triton"]["skipped"]
    # the bundled checkpoint's normalisation and classes, in the configs and in the graph the repository serves
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert json.loads(params["dynet_deploy.mean"]) == [0.286] and json.loads(params["dynet_deploy.std"]) == [0.353]
    assert json.loads(params["dynet_deploy.classes"])[:2] == ["T-shirt/top", "Trouser"]
    assert params["dynet_deploy.num_classes"] == "10" and params["dynet_deploy.dataset"] == "fashion-mnist"
    assert params == report["triton"]["parameters"]
    graph = onnx.load(str(out / "triton" / "dy_resnet18_fmnist_onnxruntime" / "1" / "model.onnx"))
    assert {p.key: p.value for p in graph.metadata_props if p.key in params} == params
    assert graph.producer_name == "dynet-deploy" and graph.producer_version == __version__


def test_report_provenance(deployed):
    """The tool, the checkpoint and the deployed graphs with their sha256, the op library with its sha256 and ABI
    version, the runtimes; and every ONNX in the folder names the tool as its producer."""
    import onnxruntime
    import torch

    from dynet_deploy.op.native import ABI_VERSION, ORT_LIBRARY, find_library

    _, out, report = deployed
    prov = report["provenance"]
    assert prov["tool"] == {"name": "dynet-deploy", "version": __version__}
    ckpt = load_recipe(bundled_recipe_path()).checkpoint_path()
    assert prov["checkpoint"]["path"] == str(ckpt.absolute())
    assert prov["checkpoint"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert prov["checkpoint"]["config"]["sha256"] == hashlib.sha256(ckpt.with_suffix(".json").read_bytes()).hexdigest()
    models = {m["path"]: m["sha256"] for m in prov["models"]}
    expected = ["model.onnx", "model.plugin.onnx", *report["engines"].values()]
    assert models == {str((out / n).absolute()): hashlib.sha256((out / n).read_bytes()).hexdigest() for n in expected}
    lib = find_library(ORT_LIBRARY)
    assert prov["op_library"]["path"] == str(lib.resolve()) and prov["op_library"]["abi_version"] == ABI_VERSION
    assert prov["op_library"]["sha256"] == hashlib.sha256(lib.read_bytes()).hexdigest()
    assert prov["versions"]["torch"] == torch.__version__ and prov["versions"]["onnxruntime"] == onnxruntime.__version__
    for path in out.rglob("*.onnx"):
        m = onnx.load(str(path), load_external_data=False)
        assert (m.producer_name, m.producer_version) == ("dynet-deploy", __version__), path


def test_deploy_folder_gets_the_umasks_permissions(deployed):
    _, out, _ = deployed
    for p in [out, *out.rglob("*")]:
        mode = p.stat().st_mode & 0o777
        if p.is_dir():
            assert mode == 0o755, p
        elif p.suffix != ".so":
            assert mode == 0o644, p


def test_deploy_triton_repository_serves_as_written_as_another_user(deployed):
    """The repository deploy wrote, loaded as Triton's onnxruntime backend does by another user (see
    tests/triton_serving.py): a batch of max_batch_size matches the PyTorch model."""
    import numpy as np
    import torch
    from triton_serving import other_user_command, serve_as_written

    from dynet_deploy.checkpoint import load_checkpoint

    prefix, why = other_user_command()
    if prefix is None:
        pytest.skip(f"cannot run the server's side as another user: {why}")
    _, out, report = deployed
    x = np.random.default_rng(4).standard_normal((report["recipe"]["profile"]["max"], 1, 28, 28), dtype=np.float32)
    y = serve_as_written(out / "triton" / "dy_resnet18_fmnist_onnxruntime", x)
    with torch.no_grad():
        ref = load_checkpoint(load_recipe(bundled_recipe_path()).checkpoint_path())(torch.from_numpy(x)).numpy()
    assert y.shape == ref.shape and float(np.abs(y - ref).max()) <= 1e-4


@pytest.mark.slow
def test_failing_check_writes_the_report_and_exits_1(tmp_path, capsys):
    recipe = _recipe(
        tmp_path, precisions={"fp32": {"max_abs": 1e-12, "rel": 1e-12}}, latency={"repeats": 1, "warmup": 0}
    )
    recipe_data = json.loads(recipe.read_text())
    recipe_data.pop("dataset")
    recipe.write_text(json.dumps(recipe_data))
    out = tmp_path / "out"
    assert main(["deploy", str(recipe), "-o", str(out)]) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False
    assert any(not p["passed"] for p in report["parity"])
    assert "FAILED" in (out / "report.txt").read_text()
    # the folder is not empty now: a second run needs --force
    capsys.readouterr()
    assert main(["deploy", str(recipe), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error (deploy): ") and "not empty" in err
    (out / "stale.txt").write_text("from an older run")
    assert main(["deploy", str(recipe), "-o", str(out), "--force"]) == 1  # replaced whole: the check still fails
    assert not (out / "stale.txt").exists() and (out / "report.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "recipe.json"]


def test_force_replaces_only_a_deploy_folder(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("not a deploy")
    assert main(["deploy", str(_recipe(tmp_path)), "-o", str(out), "--force"]) == 1
    assert "was not written by dynet-deploy" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_demo_is_the_bundled_recipe(tmp_path):
    from dynet_deploy.demo import format_summary, run_demo

    res = run_demo(tmp_path / "demo", limit=200)
    assert res.passed and res.recipe.path == bundled_recipe_path()
    text = format_summary(res)
    assert "== parity against PyTorch" in text and "dy_resnet18 onnxruntime fused" in text and "PASSED" in text
    assert (tmp_path / "demo" / "report.json").is_file() and (tmp_path / "demo" / "model.plugin.onnx").is_file()
    assert run_demo(tmp_path / "demo", limit=50).passed  # a second demo replaces the first


def test_unknown_baseline_stops_before_any_work(tmp_path, capsys):
    recipe = _recipe(tmp_path, latency={"baseline": "resnet99_fmnist"})
    assert main(["deploy", str(recipe), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr()
    assert err.err.startswith("error (recipe): ") and "resnet99_fmnist" in err.err and "[1/" not in err.err + err.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.json"]


def test_error_mid_run_leaves_nothing(tmp_path, capsys):
    recipe = _recipe(tmp_path, input_shape=[3, 28, 28])  # the checkpoint's model takes 1 channel
    assert main(["deploy", str(recipe), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("[1/7] checkpoint: loading") and len(err) == 2  # the step began, then the error
    assert err[-1].startswith("error (recipe): ") and "1" in err[-1] and "input_shape" in err[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.json"]


def test_triton_onnx_model_runs_with_the_library_its_config_names(deployed):
    """What Triton's onnxruntime backend does with the repository: register each op_library_filename of the config
    on the session options, load 1/model.onnx, run a batch; the result matches the PyTorch model."""
    pytest.importorskip("tritonclient", reason="tritonclient (the test extra) ships Triton's model_config protobuf")
    import numpy as np
    import onnxruntime as ort
    import torch

    from dynet_deploy.checkpoint import load_checkpoint
    from dynet_deploy.triton import parse_config

    _, out, report = deployed
    folder = out / "triton" / "dy_resnet18_fmnist_onnxruntime"
    cfg = parse_config((folder / "config.pbtxt").read_text())
    so = ort.SessionOptions()
    for lib in cfg.model_operations.op_library_filename:
        so.register_custom_ops_library(lib)  # as written: the backend resolves nothing
    sess = ort.InferenceSession(str(folder / "1" / "model.onnx"), so, providers=["CPUExecutionProvider"])
    batch = cfg.max_batch_size
    x = np.random.default_rng(3).standard_normal((batch, *cfg.input[0].dims), dtype=np.float32)
    (y,) = sess.run([cfg.output[0].name], {cfg.input[0].name: x})
    assert list(y.shape) == [batch, *cfg.output[0].dims]
    with torch.no_grad():
        ref = load_checkpoint(load_recipe(bundled_recipe_path()).checkpoint_path())(torch.from_numpy(x)).numpy()
    rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    assert np.abs(y - ref).max() <= 1e-4 and rel <= 1e-5


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--copy-op-library"], "--copy-op-library does not apply: .* add --triton"),
        (["--instance-kind", "gpu"], "--instance-kind does not apply: .* add --triton"),
        (["--triton", "--gpu-accelerator", "tensorrt"], "runs on GPU instances; add --instance-kind gpu"),
        (["--triton", "--copy-op-library", "--op-library-dir", "/opt/lib"], "give one of them"),
        (["--triton", "--plugin-dir", "trt/lib"], "--plugin-dir 'trt/lib' is relative"),
    ],
)
def test_triton_flags_are_checked_before_any_work(tmp_path, capsys, flags, words):
    import re

    rc = main(["deploy", str(_recipe(tmp_path)), "-o", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error (recipe): ") and re.search(words, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.json"]
