#!/usr/bin/env python3
"""Print the per-model table: export, fuse and onnxruntime against PyTorch for every zoo model.

For each model (small test configuration of tests/zoo_exports.py): the feature-form export (dynamic batch,
dynamic H/W for segmentation) on onnxruntime at batches 1 and 4; then both forms fused (the kernel form exported
at batch 2) on onnxruntime with the native DyNetDynamicConv2d library, at batches 1 and 4 (feature) and 1, 3, 5
(kernel). Models without a feature form (the OD-ResNets: ODConv's spatial attention) get the kernel form's rows
only. Errors are the worst over all cases: max-abs and relative ||out - ref|| / ||ref||.

    .venv/bin/python scripts/zoo_parity.py [MODEL ...] [--exporter dynamo]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from zoo_exports import SEG_SIZE, SEG_SIZE_2, exported, fused, has_feature_form, parity, small_model  # noqa: E402

from dynet_deploy.backends.onnxruntime import OnnxruntimeRunner  # noqa: E402
from dynet_deploy.models import list_models, model_info  # noqa: E402
from dynet_deploy.nn import DynamicConv2d  # noqa: E402


def worst(rows):
    return max(r[2] for r in rows), max(r[3] for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="zoo names (default: all)")
    ap.add_argument("--exporter", default="torchscript", choices=("torchscript", "dynamo"))
    args = ap.parse_args()
    names = args.models or list_models()
    print(
        "| model | dyn convs (PyTorch) | form | candidates | fused | left | batches (H x W) | max-abs | relative | time s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        seg = model_info(name).task == "segmentation"
        sizes = [SEG_SIZE, SEG_SIZE_2] if seg else None
        n_dyn = sum(isinstance(m, DynamicConv2d) for m in small_model(name).modules())
        feature = has_feature_form(name)
        if feature:
            t0 = time.perf_counter()
            path, _ = exported(name, "feature", args.exporter)
            rows = parity(OnnxruntimeRunner(path), name, (1, 4), sizes)
            cases = ", ".join(sorted({f"{b}" for b, *_ in rows})) + (
                " (" + ", ".join(f"{h}x{w}" for h, w in sizes) + ")" if seg else ""
            )
            print(
                f"| {name} | {n_dyn} | feature, portable | - | - | - | {cases} | {worst(rows)[0]:.1e} | {worst(rows)[1]:.1e} | {time.perf_counter() - t0:.1f} |",
                flush=True,
            )
        if not n_dyn:
            continue
        forms = (("feature", (1, 4)),) if feature else ()
        for form, batches in (*forms, ("kernel", (1, 3, 5))):
            t0 = time.perf_counter()
            fpath, rep = fused(name, form, args.exporter)
            rows = parity(OnnxruntimeRunner(fpath), name, batches, sizes if form == "feature" else None, seed=1)
            label = f"{form}, fused" + (" (exported at batch 2)" if form == "kernel" else "")
            cases = ", ".join(str(b) for b in batches) + (
                " (" + ", ".join(f"{h}x{w}" for h, w in sizes) + ")" if seg and form == "feature" else ""
            )
            print(
                f"| {name} | {n_dyn} | {label} | {rep.candidates} | {rep.matched} | {rep.left} | {cases} | {worst(rows)[0]:.1e} | {worst(rows)[1]:.1e} | {time.perf_counter() - t0:.1f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
