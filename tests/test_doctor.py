"""``dynet-deploy doctor`` reports what is present and what each missing piece disables."""

from __future__ import annotations

import json

from dynet_deploy import cli
from dynet_deploy.op import native as plugin_lib


def test_doctor_reports_every_piece(capsys):
    code = cli.main(["doctor"])
    out = capsys.readouterr().out
    assert code == 0  # base dependencies are installed in the test environment
    for name in (
        "torch",
        "onnxruntime providers",
        "CUDA GPU",
        "nvcc",
        "CPU reference library",
        "CUDA kernel library",
        "TensorRT plugin library",
        "TensorRT (python)",
    ):
        assert name in out
    cpu = plugin_lib.cpu_library_path()
    if cpu is not None:
        assert str(cpu) in out
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "What the missing pieces disable" in out
        assert "dynet-deploy build" in out  # what missing TensorRT disables


def test_doctor_json(capsys):
    assert cli.main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    by_name = {c["name"]: c for c in report}
    assert by_name["torch"]["ok"] and by_name["torch"]["required"]
    assert set(report[0]) == {"name", "ok", "detail", "disables", "required"}
    trt = by_name["TensorRT (python)"]
    assert trt["disables"]
    if not trt["ok"]:
        assert "import tensorrt failed" in trt["detail"]


def test_doctor_finds_libraries_through_the_env_var(tmp_path, monkeypatch, capsys):
    fake_dir = tmp_path / "plugins"
    fake_dir.mkdir()
    monkeypatch.setenv(plugin_lib.ENV_PLUGIN_DIR, str(fake_dir))
    assert plugin_lib.search_dirs()[0] == fake_dir
    (fake_dir / plugin_lib.TRT_LIBRARY).write_bytes(b"")  # presence only: the doctor reports paths, loads nothing
    cli.main(["doctor"])
    out = capsys.readouterr().out
    assert str(fake_dir / plugin_lib.TRT_LIBRARY) in out
