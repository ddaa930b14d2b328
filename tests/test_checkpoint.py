"""Checkpoints: the safetensors + JSON format, plain PyTorch state dicts, and one clear error per bad input."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dynet_deploy.checkpoint import (
    FORMAT_NAME,
    FORMAT_VERSION,
    load_checkpoint,
    read_checkpoint_config,
    read_state_dict,
    save_checkpoint,
)
from dynet_deploy.cli import main as cli_main
from dynet_deploy.errors import CheckpointError
from dynet_deploy.models import create_model

SMALL_DY = dict(num_classes=10, in_chans=1, small_input=True, width_mult=0.25)
SMALL_STATIC = dict(num_classes=10, in_chans=1, small_input=True, width_mult=0.25)


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every float parameter and buffer (BN running stats included) random values, so a round trip
    that dropped any of them would change the output; a fresh model's defaults would hide that."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                values = (
                    torch.rand(t.shape, generator=g) + 0.5
                    if name.endswith("running_var")
                    else torch.randn(t.shape, generator=g) * 0.2
                )
                t.copy_(values)
    return model.eval()


def _small_dy(seed: int = 0) -> torch.nn.Module:
    return _randomise(create_model("dy_resnet18", **SMALL_DY), seed)


def _small_static(seed: int = 0) -> torch.nn.Module:
    return _randomise(create_model("resnet18", **SMALL_STATIC), seed)


def _assert_same_outputs(a: torch.nn.Module, b: torch.nn.Module, in_chans: int, size: int) -> None:
    x = torch.randn(3, in_chans, size, size)  # fresh random input, odd batch
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.abs().max() > 0
    # Same weights, same code, same input: the outputs must be bit-identical (tolerance 0).
    assert torch.equal(ya, yb), f"max-abs diff {(ya - yb).abs().max().item()}"


def _raises(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ----------------------------------------------------------------------------------------------- round trips


def test_round_trip_dy_resnet18_is_exact(tmp_path):
    model = _small_dy()
    out = save_checkpoint(model, tmp_path / "dy.safetensors", metadata={"epoch": 7})
    assert out == tmp_path / "dy.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dy.json", "dy.safetensors"]  # no temp files left

    config = json.loads((tmp_path / "dy.json").read_text())
    assert config["format"] == FORMAT_NAME and config["version"] == FORMAT_VERSION
    assert config["model"] == "dy_resnet18" and config["model_args"] == SMALL_DY
    assert config["metadata"] == {"epoch": 7}
    assert read_checkpoint_config(out) == config

    for path in (out, tmp_path / "dy.json"):  # either file of the pair
        loaded = load_checkpoint(path)
        assert not loaded.training
        assert loaded.zoo_name == "dy_resnet18" and loaded.zoo_kwargs == SMALL_DY
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        _assert_same_outputs(model, loaded, in_chans=1, size=16)


def test_save_path_without_suffix_and_explicit_name(tmp_path):
    model = torch.nn.Sequential()  # not built by create_model: no zoo name recorded
    _raises("pass model_name", save_checkpoint, model, tmp_path / "x.safetensors")
    model = _small_static()
    out = save_checkpoint(model, tmp_path / "plain", model_name="resnet18", model_args=SMALL_STATIC)
    assert out.name == "plain.safetensors" and (tmp_path / "plain.json").is_file()
    _assert_same_outputs(model, load_checkpoint(out), in_chans=1, size=16)


def test_torchvision_style_pt_loads_into_resnet18(tmp_path):
    model = _randomise(create_model("resnet18"), seed=1)
    torch.save(model.state_dict(), tmp_path / "resnet18.pth")
    loaded = load_checkpoint(tmp_path / "resnet18.pth", model_name="resnet18")
    _assert_same_outputs(model, loaded, in_chans=3, size=32)


def test_pt_without_num_batches_tracked_loads(tmp_path):
    # torchvision's older checkpoints predate BatchNorm's counter.
    model = _small_static(2)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pt")
    _assert_same_outputs(model, load_checkpoint(tmp_path / "old.pt", "resnet18", SMALL_STATIC), in_chans=1, size=16)


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_training_checkpoint_and_dataparallel_prefix(tmp_path, caplog, wrapper):
    model = _small_static(3)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 12, wrapper: state, "best_acc": 0.9}, tmp_path / "train.pt")
    with caplog.at_level(logging.WARNING, logger="dynet_deploy.checkpoint"):
        loaded = load_checkpoint(tmp_path / "train.pt", model_name="resnet18", model_args=SMALL_STATIC)
    assert "module." in caplog.text and wrapper in caplog.text
    _assert_same_outputs(model, loaded, in_chans=1, size=16)


def test_pt_with_json_beside_needs_no_model_name(tmp_path):
    model = _small_dy(4)
    save_checkpoint(model, tmp_path / "w.safetensors")
    (tmp_path / "w.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    _assert_same_outputs(model, load_checkpoint(tmp_path / "w.pt"), in_chans=1, size=16)
    _assert_same_outputs(model, load_checkpoint(tmp_path / "w.json"), in_chans=1, size=16)


def test_foreign_safetensors_with_model_name(tmp_path):
    from safetensors.torch import save_file

    model = _small_static(5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "hub.safetensors"))
    _assert_same_outputs(
        model, load_checkpoint(tmp_path / "hub.safetensors", "resnet18", SMALL_STATIC), in_chans=1, size=16
    )


def test_model_args_override_and_strict_false(tmp_path):
    model = _small_static(6)
    state = model.state_dict()
    state["extra.weight"] = torch.randn(3)
    del state["fc.bias"]
    torch.save(state, tmp_path / "partial.pt")
    _raises(
        "1 missing key.*fc.bias.*1 unexpected key.*extra.weight",
        load_checkpoint,
        tmp_path / "partial.pt",
        "resnet18",
        SMALL_STATIC,
    )
    loaded = load_checkpoint(tmp_path / "partial.pt", "resnet18", SMALL_STATIC, strict=False)
    assert torch.equal(loaded.fc.weight, model.fc.weight)


# ----------------------------------------------------------------------------------------------- bad input


def test_unknown_model_name_lists_close_names(tmp_path):
    model = _small_dy()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    msg = _raises("unknown model 'dy_resnet81'", load_checkpoint, tmp_path / "w.pt", model_name="dy_resnet81")
    assert "dy_resnet18" in msg

    save_checkpoint(model, tmp_path / "c.safetensors")
    config = json.loads((tmp_path / "c.json").read_text())
    config["model"] = "dyresnet18"
    (tmp_path / "c.json").write_text(json.dumps(config))
    assert "did you mean dy_resnet18" in _raises(
        "unknown model 'dyresnet18'", load_checkpoint, tmp_path / "c.safetensors"
    )


def test_unknown_model_name_on_save(tmp_path):
    _raises(
        "unknown model 'resnet17'", save_checkpoint, _small_static(), tmp_path / "x.safetensors", model_name="resnet17"
    )
    assert list(tmp_path.iterdir()) == []


def test_missing_keys_listed_with_count(tmp_path):
    model = _small_static()
    state = model.state_dict()
    dropped = [k for k in state if k.startswith("layer4.")]
    assert len(dropped) > 5
    torch.save({k: v for k, v in state.items() if k not in dropped}, tmp_path / "w.pt")
    n_missing = len([k for k in dropped if not k.endswith("num_batches_tracked")])
    msg = _raises(f"{n_missing} missing keys", load_checkpoint, tmp_path / "w.pt", "resnet18", SMALL_STATIC)
    assert f"and {n_missing - 5} more" in msg and "layer4.0.conv1.weight" in msg


def test_unexpected_keys_listed(tmp_path):
    state = _small_static().state_dict()
    state["head.proj.weight"] = torch.randn(4, 4)
    torch.save(state, tmp_path / "w.pt")
    _raises("1 unexpected key \\(head.proj.weight\\)", load_checkpoint, tmp_path / "w.pt", "resnet18", SMALL_STATIC)


def test_misshaped_keys_named_with_shapes(tmp_path):
    save_checkpoint(_small_dy(), tmp_path / "c.safetensors")
    msg = _raises("mis-shaped", load_checkpoint, tmp_path / "c.safetensors", model_args={"num_classes": 7})
    assert "fc.weight: checkpoint [10, " in msg and "vs model [7, " in msg
    # strict=False never lets a wrong shape through
    _raises("mis-shaped", load_checkpoint, tmp_path / "c.safetensors", model_args={"num_classes": 7}, strict=False)


def test_model_name_conflicting_with_config(tmp_path):
    save_checkpoint(_small_dy(), tmp_path / "c.safetensors")
    _raises(
        "is a 'dy_resnet18'.*model_name='resnet18'", load_checkpoint, tmp_path / "c.safetensors", model_name="resnet18"
    )


def test_truncated_safetensors(tmp_path):
    save_checkpoint(_small_dy(), tmp_path / "c.safetensors")
    data = (tmp_path / "c.safetensors").read_bytes()
    (tmp_path / "half.safetensors").write_bytes(data[: len(data) // 2])
    _raises(
        "truncated: its tensors end at byte",
        load_checkpoint,
        tmp_path / "half.safetensors",
        model_name="dy_resnet18",
        model_args=SMALL_DY,
    )
    (tmp_path / "head.safetensors").write_bytes(data[:40])
    _raises("truncated: its safetensors header needs", read_state_dict, tmp_path / "head.safetensors")


def test_truncated_pt(tmp_path):
    torch.save(_small_static().state_dict(), tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) * 2 // 3])
    _raises("truncated or corrupt", load_checkpoint, tmp_path / "cut.pt", "resnet18", SMALL_STATIC)
    # the legacy (non-zip) torch.save format, cut short
    torch.save(_small_static().state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    data = (tmp_path / "legacy.pt").read_bytes()
    (tmp_path / "legacy_cut.pt").write_bytes(data[:300])
    _raises("truncated, corrupt", load_checkpoint, tmp_path / "legacy_cut.pt", "resnet18", SMALL_STATIC)


def test_truncated_config(tmp_path):
    save_checkpoint(_small_dy(), tmp_path / "c.safetensors")
    text = (tmp_path / "c.json").read_text()
    (tmp_path / "c.json").write_text(text[: len(text) // 2])
    _raises("is not valid JSON", load_checkpoint, tmp_path / "c.safetensors")


def _onnx_bytes() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    return helper.make_model(graph).SerializeToString()


@pytest.mark.parametrize(
    "name, content, looks_like",
    [
        ("random.pt", np.random.default_rng(0).bytes(4096), "binary data"),
        ("random.safetensors", np.random.default_rng(1).bytes(4096), "binary data"),
        ("notes.pt", b"epoch 3: loss 0.12\nepoch 4: loss 0.10\n", "a text file"),
        ("model.onnx", None, "an ONNX model"),
        ("model_renamed.pt", None, "an ONNX model"),
        ("empty.pth", b"", "an empty file"),
    ],
)
def test_file_that_is_not_a_checkpoint(tmp_path, name, content, looks_like):
    path = tmp_path / name
    path.write_bytes(_onnx_bytes() if content is None else content)
    msg = _raises("is not a checkpoint", load_checkpoint, path, model_name="resnet18")
    assert looks_like in msg
    # without a model name, the content is still what gets reported
    _raises("is not a checkpoint", load_checkpoint, path)


def test_random_bytes_that_start_like_a_pickle(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(b"\x80\x02" + np.random.default_rng(2).bytes(2048))
    _raises("cannot read .* as a PyTorch state dict", load_checkpoint, path, model_name="resnet18")


class _RunsShellCommand:
    """A pickle payload: unpickling it calls os.system (touching a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class _WritesFile:
    """A pickle payload: unpickling it calls builtins.exec (writing a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


@pytest.mark.parametrize("payload", [_RunsShellCommand, _WritesFile])
def test_payloads_are_live(tmp_path, payload):
    """Control: the payloads really run code when unpickled unsafely, so the refusal test below can fail."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps({"w": payload(marker)}))
    assert marker.exists()


@pytest.mark.parametrize("payload", [_RunsShellCommand, _WritesFile])
@pytest.mark.parametrize("container", ["torch.save", "raw pickle", "legacy torch.save"])
def test_pickle_carrying_code_is_refused(tmp_path, payload, container):
    marker = tmp_path / "marker"
    obj = {"conv1.weight": torch.randn(2, 2), "evil": payload(marker)}
    path = tmp_path / "evil.pt"
    if container == "torch.save":
        torch.save(obj, path)
    elif container == "legacy torch.save":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    expected_global = "exec" if payload is _WritesFile else "system"
    msg = _raises("refused .*would import and call Python code", load_checkpoint, path, model_name="resnet18")
    assert expected_global in msg and "nothing was run" in msg
    _raises("refused", read_state_dict, path)
    assert not marker.exists()


def test_non_tensor_values_in_state_dict(tmp_path):
    state = _small_static().state_dict()
    state["optimizer_lr"] = 0.1
    state["note"] = "best"
    torch.save(state, tmp_path / "mixed.pt")
    msg = _raises("2 entries are not tensors", load_checkpoint, tmp_path / "mixed.pt", "resnet18", SMALL_STATIC)
    assert "optimizer_lr (float)" in msg and "note (str)" in msg

    torch.save({"state_dict": {"a": torch.zeros(1), "b": [1, 2]}}, tmp_path / "nested.pt")
    _raises("1 entry is not a tensor: b \\(list\\)", read_state_dict, tmp_path / "nested.pt")

    torch.save(torch.randn(3), tmp_path / "tensor.pt")
    _raises("holds a Tensor, not a state dict", read_state_dict, tmp_path / "tensor.pt")


def test_missing_config(tmp_path):
    model = _small_dy()
    save_checkpoint(model, tmp_path / "c.safetensors")
    (tmp_path / "c.json").unlink()
    msg = _raises("has no config .*c.json", load_checkpoint, tmp_path / "c.safetensors")
    assert "--model NAME" in msg  # names the flag that exists on the commands that load checkpoints
    _raises("checkpoint config .*c.json.* is missing", read_checkpoint_config, tmp_path / "c.safetensors")
    # naming the model is enough to load the weights alone
    _assert_same_outputs(
        model, load_checkpoint(tmp_path / "c.safetensors", "dy_resnet18", SMALL_DY), in_chans=1, size=16
    )
    # a plain state dict without a name says so too
    torch.save(model.state_dict(), tmp_path / "w.pt")
    _raises("model it belongs to is unknown", load_checkpoint, tmp_path / "w.pt")


def test_missing_weights_beside_config(tmp_path):
    save_checkpoint(_small_dy(), tmp_path / "c.safetensors")
    (tmp_path / "c.safetensors").unlink()
    _raises("weights file .*c.safetensors.* is missing", load_checkpoint, tmp_path / "c.json")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c.update(format="timm-checkpoint"), "has format 'timm-checkpoint'"),
        (lambda c: c.pop("format"), "has format None"),
        (lambda c: c.update(version=2), "version 2, newer than"),
        (lambda c: c.update(version="1"), "has version '1'"),
        (lambda c: c.pop("model"), "no model name"),
        (lambda c: c.update(model_args=["num_classes", 10]), '"model_args" must be an object'),
        (lambda c: c["model_args"].update(num_clases=10), "num_clases"),
        (lambda c: c["model_args"].update(num_classes=7), "mis-shaped"),
        (lambda c: c.update(metadata="x"), '"metadata" must be an object'),
        (lambda c: c.update(weights_sha256="abc"), "weights_sha256"),
    ],
)
def test_bad_config(tmp_path, edit, match):
    save_checkpoint(_small_dy(), tmp_path / "c.safetensors")
    config = json.loads((tmp_path / "c.json").read_text())
    edit(config)
    (tmp_path / "c.json").write_text(json.dumps(config))
    _raises(match, load_checkpoint, tmp_path / "c.safetensors")


def test_config_that_is_not_an_object(tmp_path):
    save_checkpoint(_small_dy(), tmp_path / "c.safetensors")
    (tmp_path / "c.json").write_text("[1, 2, 3]")
    _raises("holds a JSON list", load_checkpoint, tmp_path / "c.json")


def test_weights_replaced_behind_the_configs_back(tmp_path):
    save_checkpoint(_small_dy(0), tmp_path / "a.safetensors")
    save_checkpoint(_small_dy(1), tmp_path / "b.safetensors")
    os.replace(tmp_path / "b.safetensors", tmp_path / "a.safetensors")
    _raises("does not match its config", load_checkpoint, tmp_path / "a.safetensors")


def test_missing_file_and_folder(tmp_path):
    _raises("does not exist", load_checkpoint, tmp_path / "nope.safetensors", model_name="resnet18")
    _raises("does not exist", load_checkpoint, tmp_path / "nope.pt")
    _raises("is a directory, not a file", load_checkpoint, tmp_path, model_name="resnet18")


# ----------------------------------------------------------------------------------------------- saving safely


def test_save_errors_write_nothing(tmp_path):
    model = _small_dy()
    _raises("does not exist", save_checkpoint, model, tmp_path / "no" / "such" / "c.safetensors")
    _raises("should end in .safetensors", save_checkpoint, model, tmp_path / "c.pt")
    _raises("JSON-serialisable", save_checkpoint, model, tmp_path / "c.safetensors", metadata={"when": object()})
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_pair(tmp_path, monkeypatch):
    import dynet_deploy.checkpoint as ckpt

    old = _small_dy(0)
    save_checkpoint(old, tmp_path / "c.safetensors")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    # Fail after the new weights are fully written to their temporary file, before anything is renamed.
    def fail(_path):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_sha256", fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_small_dy(1), tmp_path / "c.safetensors")
    monkeypatch.undo()

    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files, old pair intact
    _assert_same_outputs(old, load_checkpoint(tmp_path / "c.safetensors"), in_chans=1, size=16)


def test_tied_weights_save(tmp_path):
    model = _small_static()
    model.register_buffer("fc_weight_copy", model.fc.weight.data)  # shares memory with fc.weight
    save_checkpoint(model, tmp_path / "tied.safetensors", model_name="resnet18", model_args=SMALL_STATIC)
    state = read_state_dict(tmp_path / "tied.safetensors")
    assert torch.equal(state["fc_weight_copy"], state["fc.weight"])


# ----------------------------------------------------------------------------------------------- CLI


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli_main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_cli_convert_and_inspect(tmp_path, capsys):
    model = _small_static(7)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "in.pt")
    rc, out, err = _cli(
        capsys,
        "checkpoint",
        "convert",
        str(tmp_path / "in.pt"),
        "--model",
        "resnet18",
        "--model-args",
        json.dumps(SMALL_STATIC),
        "-o",
        str(tmp_path / "out.safetensors"),
    )
    assert rc == 0, err
    assert "module." in err  # the note about the stripped prefix
    assert read_checkpoint_config(tmp_path / "out.json")["metadata"] == {"converted_from": "in.pt"}
    _assert_same_outputs(model, load_checkpoint(tmp_path / "out.safetensors"), in_chans=1, size=16)

    rc, out, err = _cli(capsys, "checkpoint", "inspect", str(tmp_path / "out.safetensors"), "--json")
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["model"] == "resnet18" and summary["loads"] is True
    assert summary["tensors"] == len(model.state_dict())
    assert summary["elements"] == sum(t.numel() for t in model.state_dict().values())

    rc, out, err = _cli(capsys, "checkpoint", "inspect", str(tmp_path / "out.json"))
    assert rc == 0 and "resnet18(" in out and "loads" in out


def test_cli_bad_input_exits_1_without_traceback(tmp_path, capsys):
    marker = tmp_path / "marker"
    torch.save({"w": _RunsShellCommand(marker)}, tmp_path / "evil.pt")
    (tmp_path / "text.pt").write_text("not weights\n")
    torch.save(_small_static().state_dict(), tmp_path / "w.pt")
    cases = [
        (["inspect", str(tmp_path / "missing.safetensors")], "does not exist"),
        (["inspect", str(tmp_path / "evil.pt"), "--model", "resnet18"], "refused"),
        (["inspect", str(tmp_path / "text.pt"), "--model", "resnet18"], "is not a checkpoint"),
        (["inspect", str(tmp_path / "w.pt")], "model it belongs to is unknown"),
        (
            ["convert", str(tmp_path / "w.pt"), "--model", "resnet81", "-o", str(tmp_path / "o.safetensors")],
            "unknown model",
        ),
        (
            ["convert", str(tmp_path / "w.pt"), "--model", "resnet18", "-o", str(tmp_path / "o.safetensors")],
            "mis-shaped",
        ),
        (
            [
                "convert",
                str(tmp_path / "w.pt"),
                "--model",
                "resnet18",
                "--model-args",
                "{num_classes: 10}",
                "-o",
                str(tmp_path / "o.safetensors"),
            ],
            "not valid JSON",
        ),
    ]
    for argv, match in cases:
        rc, out, err = _cli(capsys, "checkpoint", *argv)
        assert rc == 1, argv
        assert err.startswith("error (checkpoint): ") and match in err, err
        assert "Traceback" not in err
    assert not marker.exists()
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "o.json").exists()


def test_cli_entry_point_truncated_file(tmp_path):
    """The installed entry point, in a fresh process: exit 1, one error line, no traceback."""
    save_checkpoint(_small_dy(), tmp_path / "c.safetensors")
    data = (tmp_path / "c.safetensors").read_bytes()
    (tmp_path / "c.safetensors").write_bytes(data[: len(data) - 100])
    proc = subprocess.run(
        [sys.executable, "-m", "dynet_deploy.cli", "checkpoint", "inspect", str(tmp_path / "c.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error (checkpoint): ") and "truncated" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_convert_carries_metadata_and_adds_to_it(tmp_path, capsys):
    model = _small_dy(3)
    meta = {"dataset": "digits", "input_size": [28, 28], "normalisation": {"mean": 0.3, "std": 0.3}, "test_top1": 0.9}
    save_checkpoint(model, tmp_path / "src.safetensors", metadata=meta)
    rc, out, err = _cli(
        capsys,
        "checkpoint",
        "convert",
        str(tmp_path / "src.safetensors"),
        "-o",
        str(tmp_path / "dst.safetensors"),
        "--metadata",
        '{"note": "converted for serving", "test_top1": 0.91}',
    )
    assert rc == 0, err
    got = read_checkpoint_config(tmp_path / "dst.json")["metadata"]
    assert got == {**meta, "converted_from": "src.safetensors", "note": "converted for serving", "test_top1": 0.91}
    _assert_same_outputs(model, load_checkpoint(tmp_path / "dst.safetensors"), in_chans=1, size=16)


def test_cli_inspect_reports_non_finite_weights(tmp_path, capsys):
    model = _small_dy(4)
    with torch.no_grad():
        params = list(model.parameters())
        params[0].view(-1)[:3] = float("nan")
        params[1].view(-1)[0] = float("inf")
    save_checkpoint(model, tmp_path / "bad.safetensors")
    rc, out, err = _cli(capsys, "checkpoint", "inspect", str(tmp_path / "bad.safetensors"))
    assert rc == 1
    assert "finite      NO: 4 NaN/Inf values in 2 tensors" in out
    assert err.startswith("error (checkpoint): ") and "holds NaN/Inf: 4 of" in err and err.count("\n") == 1
    rc, out, err = _cli(capsys, "checkpoint", "inspect", "--json", str(tmp_path / "bad.safetensors"))
    assert rc == 1 and json.loads(out)["non_finite"] == {
        "tensors": 2,
        "values": 4,
        "names": sorted(
            k for k, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()
        ),
    }
    save_checkpoint(_small_dy(5), tmp_path / "good.safetensors")
    rc, out, err = _cli(capsys, "checkpoint", "inspect", str(tmp_path / "good.safetensors"))
    assert rc == 0 and "finite      yes" in out


def test_atomic_checkpoint_files_follow_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        save_checkpoint(_small_dy(), tmp_path / "c.safetensors")
    finally:
        os.umask(old)
    for name in ("c.safetensors", "c.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o664, name
