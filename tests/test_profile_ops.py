"""scripts/profile_ops.py: a fused graph's per-op profile counts every DyNetDynamicConv2d node of the graph."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynet_deploy.export import export_onnx
from dynet_deploy.fuse import fuse_dynamic_convs
from dynet_deploy.models import create_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "profile_ops.py"


@pytest.mark.slow
def test_profile_counts_the_fused_nodes_and_shares_add_up(tmp_path):
    torch.manual_seed(0)
    model = create_model("dy_resnet18", width_mult=0.25, num_classes=10, small_input=True).eval()
    portable = tmp_path / "m.onnx"
    export_onnx(model, portable, (1, 3, 32, 32), form="feature", dynamic_batch=True)
    report = fuse_dynamic_convs(portable, tmp_path / "m.plugin.onnx")
    fused_nodes = len(report.fused)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "m.plugin.onnx"), "--batch", "2", "--threads", "1", "--runs", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rows = dict(
        (m.group(1), (float(m.group(2)), float(m.group(3)), int(m.group(4))))
        for m in re.finditer(r"^  (\w+)\s+([\d.]+)\s+([\d.]+)%\s+(\d+)$", proc.stdout, re.M)
    )
    assert rows["DyNetDynamicConv2d"][2] == fused_nodes > 0
    assert sum(share for _, share, _ in rows.values()) == pytest.approx(100.0, abs=0.5)
    assert all(ms >= 0 for ms, _, _ in rows.values())
