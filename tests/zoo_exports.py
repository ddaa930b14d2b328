"""Shared by the export/fuse tests and scripts/zoo_parity.py: small zoo models, exported once per process.

Models are built at reduced width (``width_mult=0.25`` where the builder takes it) with random BatchNorm
statistics, so the folds are exercised; inputs are small (32x32 classification, 32x48 and 40x56 segmentation).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import torch

from dynet_deploy.errors import ModelError
from dynet_deploy.export import export_onnx
from dynet_deploy.fuse import fuse_dynamic_convs
from dynet_deploy.models import create_model, list_models, model_info

CLS_SIZE = (32, 32)
SEG_SIZE = (32, 48)  # the dilated FCNs have output stride 8: 4x6 features
SEG_SIZE_2 = (40, 56)  # a second H/W for the dynamic-H/W segmentation graphs
KERNEL_EXPORT_BATCH = 2
# The kernel (batch-as-groups) form in CI for two models (CPU budget; the segmentation upsampling case has
# its own small test in test_fuse.py); scripts/zoo_parity.py runs every model in both forms.
KERNEL_FORM_CI_MODELS = ["dy_resnet18", "dy_mobilenet_v3_small"]
# Zoo models whose dynamic convs export in the kernel form only (ODConv's spatial attention: the OD-ResNets).
KERNEL_ONLY_MODELS = [n for n in list_models(dynamic=True) if "feature" not in model_info(n).export_forms]
ATOL = 1e-4
RTOL = 1e-5

_TMP = Path(tempfile.mkdtemp(prefix="dynet-zoo-tests-"))


def randomize_batchnorms(model: torch.nn.Module, input_shape, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics: calibrated on a random batch (as after training, so the
    activations stay O(1) through deep nets), a variance floor, and a random affine part."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batch
        m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    model.train()
    with torch.no_grad():
        model(torch.randn(*input_shape, generator=g))
    # A variance floor: channels that are nearly constant on 16 random images would otherwise be divided by
    # ~sqrt(eps) and amplify fp32 rounding far beyond what a trained network does.
    for m in bns:
        m.running_var.add_(0.5)
    return model.eval()


@functools.lru_cache(maxsize=None)
def small_model(name: str) -> torch.nn.Module:
    info = model_info(name)
    base = {"num_classes": 10 if info.task == "classification" else 5}
    torch.manual_seed(0)
    try:
        model = create_model(name, **base, width_mult=0.25)
    except ModelError:
        model = create_model(name, **base)
    h, w = input_size(name)
    return randomize_batchnorms(model, (16, 3, h, w))


def input_size(name: str) -> tuple[int, int]:
    return SEG_SIZE if model_info(name).task == "segmentation" else CLS_SIZE


@functools.lru_cache(maxsize=None)
def exported(name: str, form: str, exporter: str = "torchscript"):
    """(path, ExportReport): feature form with a dynamic batch (and H/W for segmentation); kernel form at batch 2."""
    seg = model_info(name).task == "segmentation"
    h, w = input_size(name)
    path = _TMP / f"{name}.{form}.{exporter}.onnx"
    if form == "feature":
        report = export_onnx(small_model(name), path, (1, 3, h, w), form="feature", dynamic_hw=seg, exporter=exporter)
    else:
        report = export_onnx(
            small_model(name),
            path,
            (KERNEL_EXPORT_BATCH, 3, h, w),
            form="kernel",
            dynamic_batch=False,
            exporter=exporter,
        )
    return path, report


@functools.lru_cache(maxsize=None)
def fused(name: str, form: str, exporter: str = "torchscript"):
    """(path, FuseReport) of the fused export."""
    src, _ = exported(name, form, exporter)
    out = src.with_suffix(".plugin.onnx")
    return out, fuse_dynamic_convs(src, out)


def has_feature_form(name: str) -> bool:
    return "feature" in model_info(name).export_forms


def fusable_form(name: str) -> str:
    """The form a Dy model's fused graph is made from here: the feature form where it has one, else the kernel form."""
    return "feature" if has_feature_form(name) else "kernel"


def compare(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max-abs, relative = ||out - ref|| / ||ref||)."""
    diff = out.astype(np.float64) - ref.astype(np.float64)
    return float(np.abs(diff).max()), float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-30))


def parity(runner, name: str, batches, sizes=None, seed: int = 0) -> list[tuple[int, tuple[int, int], float, float]]:
    """Run ``runner`` and PyTorch on fresh random inputs; returns (batch, (H, W), max-abs, relative) per case."""
    model = small_model(name)
    rng = np.random.default_rng(seed)
    rows = []
    for hw in sizes or [input_size(name)]:
        for b in batches:
            x = rng.standard_normal((b, 3, *hw)).astype(np.float32)
            with torch.no_grad():
                ref = model(torch.from_numpy(x)).numpy()
            out = runner.run({runner.input_names[0]: x})[runner.output_names[0]]
            assert out.shape == ref.shape, (out.shape, ref.shape)
            rows.append((b, tuple(hw), *compare(out, ref)))
    return rows


def slow_after_first(names):
    """Parametrize values with every one after the first marked ``slow``: the fast subset keeps one model per test."""
    import pytest

    return [n if i == 0 else pytest.param(n, marks=pytest.mark.slow) for i, n in enumerate(names)]
