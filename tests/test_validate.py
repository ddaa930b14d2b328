"""validate: Polygraphy comparison against PyTorch, data-set parity, reports, clear failures."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL  # noqa: E402

from dynet_deploy.checkpoint import save_checkpoint
from dynet_deploy.cli import main
from dynet_deploy.export import export_onnx
from dynet_deploy.models import create_model
from dynet_deploy.validate import errors, mean_iou, synthetic_segmentation, validate_dataset, validate_random


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("validate")
    torch.manual_seed(0)
    model = create_model("dy_resnet18", **SMALL).eval()
    ckpt = save_checkpoint(model, d / "m.safetensors")
    export_onnx(model, d / "m.onnx", (1, 1, 28, 28), form="feature")
    return d, model, ckpt


def test_errors_measure_max_abs_and_relative():
    ref = np.array([3.0, 4.0])
    max_abs, rel = errors(ref + np.array([0.0, 0.5]), ref)
    assert max_abs == pytest.approx(0.5) and rel == pytest.approx(0.1)
    assert errors(np.array([np.nan, 1.0]), ref)[0] == float("inf")


def test_random_inputs_pass_and_write_polygraphy_files(small_model, tmp_path):
    d, model, _ = small_model
    rep = validate_random(model, d / "m.onnx", batch_sizes=(1, 4, 3), out_dir=tmp_path)
    assert rep.passed and rep.polygraphy_passed
    assert [c.batch for c in rep.checks] == [1, 4, 3]
    assert all(c.max_abs <= 1e-4 and c.rel <= 1e-5 for c in rep.checks)
    assert (tmp_path / "inputs.json").is_file() and (tmp_path / "reference.json").is_file()
    assert "--load-inputs" in rep.replay_command and "--onnxrt" in rep.replay_command


def test_replay_command_runs_in_polygraphy(small_model, tmp_path):
    d, model, _ = small_model
    rep = validate_random(model, d / "m.onnx", batch_sizes=(2,), out_dir=tmp_path)
    exe = Path(sys.executable).with_name("polygraphy")
    if not exe.exists():
        pytest.skip("polygraphy CLI not on this interpreter's path")
    cmd = rep.replay_command.replace("polygraphy", str(exe), 1)
    res = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "PASSED" in res.stdout + res.stderr


def test_mismatched_checkpoint_fails_with_nonzero_exit(small_model, tmp_path, capsys):
    d, _, _ = small_model
    torch.manual_seed(123)  # same architecture, other weights
    other = create_model("dy_resnet18", **SMALL).eval()
    ckpt = save_checkpoint(other, tmp_path / "other.safetensors")
    rc = main(["validate", str(ckpt), str(d / "m.onnx"), "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1 and "MISMATCH" in out and "FAILED" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] is False and report["random_inputs"]["rel"] > 1e-3


def test_cli_passes_and_reports(small_model, tmp_path, capsys):
    d, _, ckpt = small_model
    rc = main(
        ["validate", str(ckpt), str(d / "m.onnx"), "--out-dir", str(tmp_path), "--dataset", "digits", "--limit", "200"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "polygraphy run" in out and "agreement 100.000%" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and report["dataset"]["samples"] == 200
    assert (tmp_path / "report.txt").read_text().strip().endswith("PASSED")


def test_dataset_parity_counts_real_agreement(small_model):
    d, model, _ = small_model
    from dynet_deploy.data import load_dataset

    x, y = load_dataset("digits", "test", limit=64)
    rep = validate_dataset(model, d / "m.onnx", x.numpy(), y.numpy(), "digits", batch=16)
    assert rep.agreement == 1.0 and rep.passed
    # The top-1 is measured, not assumed: PyTorch's own predictions give the same number.
    with torch.no_grad():
        top1 = float((model(x).argmax(1) == y).float().mean())
    assert rep.reference_metric == pytest.approx(top1)


def test_missing_out_dir_and_absent_tensorrt_are_clear_errors(small_model, tmp_path, capsys):
    d, _, ckpt = small_model
    rc = main(["validate", str(ckpt), str(d / "m.onnx"), "--out-dir", str(tmp_path / "nope")])
    assert rc == 1 and "does not exist" in capsys.readouterr().err
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here; its absence cannot be tested")
    except ImportError:
        pass
    rc = main(["validate", str(ckpt), str(d / "m.onnx"), "--backend", "tensorrt", "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "TensorRT" in err and "Traceback" not in err


def test_od_model_through_export_fuse_validate(tmp_path, capsys):
    """An OD-ResNet18 (ODConv, four kernels) from the CLI: kernel-form export at batch 2 with its checkpoint, fuse
    (every ODConv layer one node with the spatial input), validate at batches the export never saw."""
    onnx_path, fused, ckpt = tmp_path / "od.onnx", tmp_path / "od.plugin.onnx", tmp_path / "od"
    args = json.dumps({"num_classes": 10, "width_mult": 0.25})
    assert (
        main(
            ["export", "--model", "od_resnet18_4x", "--model-args", args, "--input-size", "32", "32"]
            + ["--form", "kernel", "--batch", "2", "-o", str(onnx_path), "--save-checkpoint", str(ckpt)]
        )
        == 0
    )
    assert main(["fuse", str(onnx_path), "-o", str(fused)]) == 0
    assert "matched: 16, left: 0; batch: dynamic" in capsys.readouterr().out
    rc = main(["validate", str(ckpt) + ".safetensors", str(fused), "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "PASSED" in out, out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and [c["batch"] for c in report["random_inputs"]["checks"]] == [1, 4, 3]


def test_mean_iou_and_synthetic_masks():
    images, masks = synthetic_segmentation(3, 32, 40, 5, seed=1)
    assert images.shape == (3, 3, 32, 40) and masks.shape == (3, 32, 40)
    assert len(np.unique(masks)) > 1
    assert mean_iou(masks, masks, 5) == 1.0
    shifted = np.roll(masks, 5, axis=2)
    assert 0.0 < mean_iou(shifted, masks, 5) < 1.0


@pytest.mark.slow
def test_segmentation_miou_parity_on_generated_masks(tmp_path, capsys):
    torch.manual_seed(3)
    model = create_model("dy_fcn_resnet50", num_classes=5, width_mult=0.125).eval()
    ckpt = save_checkpoint(model, tmp_path / "seg.safetensors")
    export_onnx(model, tmp_path / "seg.onnx", (1, 3, 32, 48), form="feature", dynamic_hw=True)
    rc = main(
        [
            "validate",
            str(ckpt),
            str(tmp_path / "seg.onnx"),
            "--out-dir",
            str(tmp_path),
            "--input-size",
            "40",
            "56",
            "--batch-sizes",
            "1",
            "2",
            "--dataset",
            "synthetic-seg",
            "--limit",
            "4",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    report = json.loads((tmp_path / "report.json").read_text())
    ds = report["dataset"]
    assert ds["task"] == "segmentation" and ds["samples"] == 4 * 40 * 56
    assert ds["agreement"] == 1.0 and ds["reference_metric"] == pytest.approx(ds["backend_metric"])
    assert "mIoU" in out
