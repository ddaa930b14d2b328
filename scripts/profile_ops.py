"""Where a whole graph's time goes on onnxruntime CPU: its per-node profile, summed per op type.

    python scripts/profile_ops.py GRAPH.onnx [GRAPH.onnx ...] [--batch 1] [--threads 2] [--runs 20]

Each graph runs ``--runs`` times after a warm-up with onnxruntime's profiler on (fused graphs on the native
``DyNetDynamicConv2d`` library); the node events of the timed runs are summed per op type and divided by the runs:
milliseconds per run, the share of the nodes' total, and the number of nodes. `dynet-deploy bench --keep-onnx DIR`
keeps the graphs it times. Node times are what onnxruntime's profiler records inside each kernel; the run's own
overhead (input copies, scheduling) is the difference to the wall time, printed as "between nodes".
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from dynet_deploy.backends.onnxruntime import uses_dynamic_conv_op
from dynet_deploy.bench.timing import ForeignLoad
from dynet_deploy.graph import load_onnx
from dynet_deploy.op import onnxruntime_lib


class ProfileError(Exception):
    pass


def profile(path: Path, batch: int, threads: int, runs: int) -> tuple[dict[str, list[float]], float, ForeignLoad]:
    proto = load_onnx(path, ProfileError)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    if uses_dynamic_conv_op(proto):
        onnxruntime_lib.register(so)
    with tempfile.TemporaryDirectory(prefix="dynet-profile-") as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "profile")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        shape = [batch if not isinstance(d, int) or i == 0 else d for i, d in enumerate(inp.shape)]
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        for _ in range(3):
            sess.run(None, {inp.name: x})
        t_mark = time.perf_counter()
        load = ForeignLoad().start()
        for _ in range(runs):
            sess.run(None, {inp.name: x})
        load.stop()
        wall_ms = (time.perf_counter() - t_mark) * 1e3 / runs
        events = json.loads(Path(sess.end_profiling()).read_text())
    # The last `runs` model_run events bound the timed runs; node events inside them are summed per op type.
    run_events = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    timed = run_events[-runs:]
    start = timed[0]["ts"]
    per_op: dict[str, list[float]] = collections.defaultdict(list)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < start:
            continue
        per_op[e.get("args", {}).get("op_name", "?")].append(e["dur"] / 1e3)
    return per_op, wall_ms, load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graphs", nargs="+", type=Path)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    print(f"load before: {os.getloadavg()}")
    for path in args.graphs:
        per_op, wall_ms, load = profile(path, args.batch, args.threads, args.runs)
        total = sum(sum(v) for v in per_op.values()) / args.runs
        verdict = load.verdict()
        busy = f" (busy: {verdict.reason})" if verdict.busy else ""
        print(f"\n{path.name}, batch {args.batch}, {args.threads} thread(s): {wall_ms:.2f} ms per run{busy}")
        print(f"  {'op type':28s} {'ms/run':>8s} {'share':>6s} {'nodes':>6s}")
        for op, times in sorted(per_op.items(), key=lambda kv: -sum(kv[1])):
            ms = sum(times) / args.runs
            print(f"  {op:28s} {ms:8.3f} {100 * ms / total:5.1f}% {len(times) // args.runs:6d}")
        print(f"  {'between nodes':28s} {max(0.0, wall_ms - total):8.3f}")
    print(f"\nload after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
