#!/usr/bin/env bash
# The CPU benchmark study behind docs/bench.md, in one go (about 15-25 minutes on 2 cores):
#   1. the headline table (what `make bench` runs): the three DyNet pairs, batch 1, 2 threads, 224x224,
#      PyTorch eager and onnxruntime CPU;
#   2. the same on onnxruntime with 1 thread;
#   3. the export forms of the dynamic conv compared on onnxruntime (Dy-ResNet18 vs ResNet18, 2 threads).
# Results land in build/bench*/ (bench.txt, bench.json, bench.png). Pass extra arguments for step 1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
DD=${DYNET_DEPLOY:-.venv/bin/dynet-deploy}

uptime || true
"$DD" bench --out-dir build/bench "$@"
"$DD" bench --threads 1 --backends onnxruntime --out-dir build/bench-1thread
for form in feature kernel matmul matmul-nchwc; do
  "$DD" bench --models dy_resnet18 dy_mobile --backends onnxruntime --dy-form "$form" --repeats 20 --out-dir "build/bench-form-$form"
done
uptime || true
