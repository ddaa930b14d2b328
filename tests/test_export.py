"""Export: every zoo model to standard-op ONNX; onnxruntime CPU reproduces PyTorch (fp32).

Tolerances (issue 3): max-abs <= 1e-4 and relative ||out - ref|| / ||ref|| <= 1e-5, on fresh random inputs,
at batch 1 and 4 for the dynamic-batch feature form (two H/W for segmentation), at the export batch for the kernel
form (two models here; scripts/zoo_parity.py runs every model in both forms).
"""

from __future__ import annotations

import onnx
import pytest
import torch
from zoo_exports import (
    ATOL,
    KERNEL_EXPORT_BATCH,
    KERNEL_FORM_CI_MODELS,
    KERNEL_ONLY_MODELS,
    RTOL,
    SEG_SIZE,
    SEG_SIZE_2,
    exported,
    has_feature_form,
    parity,
    slow_after_first,
    small_model,
)

from dynet_deploy.backends.onnxruntime import OnnxruntimeRunner
from dynet_deploy.errors import ExportError
from dynet_deploy.export import META_FORM, export_forms, export_onnx, get_metadata
from dynet_deploy.models import create_model, list_models, model_info
from dynet_deploy.nn import DyConv2d

ALL_MODELS = [n for n in list_models() if has_feature_form(n)]  # the OD-ResNets have the kernel form only


def _assert_within(rows, what):
    for b, hw, max_abs, rel in rows:
        assert max_abs <= ATOL and rel <= RTOL, f"{what} batch {b} {hw}: max-abs {max_abs:.2e}, relative {rel:.2e}"


def _standard_ops_only(path):
    model = onnx.load(str(path))
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node), "BatchNorm left unfolded"
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("name", slow_after_first(ALL_MODELS))
def test_zoo_feature_form_dynamic_batch_matches_pytorch(name):
    path, report = exported(name, "feature")
    model = _standard_ops_only(path)
    assert report.dynamic_batch
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value, "batch should be symbolic"
    runner = OnnxruntimeRunner(path)
    seg = model_info(name).task == "segmentation"
    rows = parity(runner, name, batches=(1, 4), sizes=[SEG_SIZE, SEG_SIZE_2] if seg else None)
    _assert_within(rows, name)


@pytest.mark.parametrize("name", slow_after_first(KERNEL_FORM_CI_MODELS) + slow_after_first(KERNEL_ONLY_MODELS))
def test_zoo_kernel_form_static_batch_matches_pytorch(name):
    path, report = exported(name, "kernel")
    model = _standard_ops_only(path)
    assert not report.dynamic_batch
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == KERNEL_EXPORT_BATCH
    # The batch-as-groups Conv (group = batch * groups) is what makes the batch fixed.
    assert any(
        n.op_type == "Conv" and n.input[1] not in {i.name for i in model.graph.initializer} for n in model.graph.node
    )
    rows = parity(OnnxruntimeRunner(path), name, batches=(KERNEL_EXPORT_BATCH,))
    _assert_within(rows, name)


def test_zoo_export_forms_are_what_the_model_exports_in():
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name)
        assert export_forms(model) == model_info(name).export_forms, name


def test_odconv_model_refuses_the_feature_form_naming_the_kernel_form(tmp_path):
    with pytest.raises(ExportError, match="spatial attention .*--form kernel"):
        export_onnx(small_model("od_resnet18"), tmp_path / "od.onnx", (1, 3, 32, 32), form="feature")
    assert list(tmp_path.iterdir()) == []


def test_static_conv_batchnorm_is_folded():
    path, report = exported("resnet18", "feature")
    model = onnx.load(str(path))
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)


def test_metadata_records_form(tmp_path):
    path, _ = exported("dy_resnet18", "kernel")
    meta = get_metadata(onnx.load(str(path)))
    assert meta[META_FORM] == "kernel"
    assert meta["dynet_deploy.model"] == "dy_resnet18"


def test_kernel_form_refuses_dynamic_batch(tmp_path):
    m = DyConv2d(4, 8, 3, padding=1).eval()
    with pytest.raises(ExportError, match="cannot have a dynamic batch"):
        export_onnx(m, tmp_path / "m.onnx", (2, 4, 8, 8), form="kernel", dynamic_batch=True)
    assert list(tmp_path.iterdir()) == []


def test_export_to_missing_folder_fails_cleanly(tmp_path):
    m = DyConv2d(4, 8, 3, padding=1).eval()
    with pytest.raises(ExportError, match="does not exist"):
        export_onnx(m, tmp_path / "no" / "such" / "m.onnx", (1, 4, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_failed_export_leaves_nothing(tmp_path):
    class Bad(DyConv2d):
        def forward(self, x):
            raise RuntimeError("boom in forward")

    with pytest.raises(ExportError):
        export_onnx(Bad(4, 8, 3).eval(), tmp_path / "m.onnx", (1, 4, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    m = DyConv2d(4, 8, 3, padding=1).eval()
    with pytest.raises(ExportError, match="opset"):
        export_onnx(m, tmp_path / "m.onnx", (1, 4, 8, 8), opset=13)
    with pytest.raises(ExportError, match="form"):
        export_onnx(m, tmp_path / "m.onnx", (1, 4, 8, 8), form="loop")
    with pytest.raises(ExportError, match="input_shape"):
        export_onnx(m, tmp_path / "m.onnx", (4, 8, 8))


# ---- the command line --------------------------------------------------------------------------------------------

SMALL_ARGS = '{"num_classes": 10, "width_mult": 0.25}'


def test_cli_export_random_model(tmp_path, capsys):
    from dynet_deploy.cli import main

    out = tmp_path / "m.onnx"
    code = main(
        [
            "export",
            "--model",
            "dy_resnet18",
            "--model-args",
            SMALL_ARGS,
            "--input-size",
            "32",
            "32",
            "--batch",
            "2",
            "-o",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0 and out.exists()
    assert "RANDOM weights" in text and "check output at batch 2" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_cli_export_checkpoint_and_mismatch(tmp_path, capsys):
    from dynet_deploy.checkpoint import save_checkpoint
    from dynet_deploy.cli import main
    from dynet_deploy.models import create_model

    model = create_model("dy_resnet18", num_classes=10, width_mult=0.25)
    ckpt = save_checkpoint(model, tmp_path / "dy18.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    assert (
        main(
            ["export", str(ckpt), "--form", "kernel", "--static", "--input-size", "32", "32", "-o", str(out / "k.onnx")]
        )
        == 0
    )
    assert "RANDOM" not in capsys.readouterr().out
    # the checkpoint does not fit a model with 5 classes
    code = main(
        [
            "export",
            str(ckpt),
            "--model-args",
            '{"num_classes": 5}',
            "--input-size",
            "32",
            "32",
            "-o",
            str(out / "bad.onnx"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "error (checkpoint)" in err and "fc" in err
    # not a checkpoint at all
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    assert main(["export", str(junk), "--model", "dy_resnet18", "-o", str(out / "junk.onnx")]) == 1
    assert "error (checkpoint)" in capsys.readouterr().err
    # an output folder that does not exist
    assert (
        main(["export", "--model", "dy_resnet18", "--model-args", SMALL_ARGS, "-o", str(tmp_path / "nope" / "m.onnx")])
        == 1
    )
    assert "does not exist" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["k.onnx"]
