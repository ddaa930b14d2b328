#!/usr/bin/env bash
# The CPU benchmark study behind docs/bench.md, in one go (about 20-30 minutes on 2 cores):
#   1. the headline table (what `make bench` runs): the three DyNet pairs, 224x224, the fused graph and the deploy
#      form on onnxruntime CPU, batch 1 and 8, 2 threads then 1 (the graphs kept in build/bench/graphs);
#   2. both measures (interleaved, and each model alone in its own process with onnxruntime's defaults), batch 1,
#      2 threads;
#   3. the portable (feature-form) graph and PyTorch eager, batch 1, 2 threads;
#   4. the export forms of the dynamic conv compared on onnxruntime (Dy-ResNet18 vs ResNet18, 2 threads);
#   5. the per-op profile of the fused graphs at batch 1, 2 threads.
# Results land in build/bench*/ (bench.txt, bench.json, bench.png). Pass extra arguments for step 1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
DD=${DYNET_DEPLOY:-.venv/bin/dynet-deploy}

uptime || true
"$DD" bench --out-dir build/bench --keep-onnx build/bench/graphs "$@"
"$DD" bench --threads 2 --batch-sizes 1 --measures interleaved process --out-dir build/bench-measures
"$DD" bench --threads 2 --batch-sizes 1 --backends onnxruntime-portable torch --out-dir build/bench-portable
for form in feature kernel matmul matmul-nchwc; do
  "$DD" bench --models dy_resnet18 dy_mobile --backends onnxruntime --dy-form "$form" --threads 2 --batch-sizes 1 \
    --out-dir "build/bench-form-$form"
done
"${PYTHON:-.venv/bin/python}" scripts/profile_ops.py build/bench/graphs/*.fused.onnx build/bench/graphs/*.portable.onnx
uptime || true
