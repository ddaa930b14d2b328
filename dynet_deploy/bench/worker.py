"""One model alone in this process, the way a deployment runs it: the bench's process measure.

``python -m dynet_deploy.bench.worker GRAPH --shape N C H W --warmup W --runs R [--threads T] [--variant NAME]``
opens GRAPH with onnxruntime's defaults (idle intra-op workers spinning, its default thread count unless
``--threads``; the native op library registered for a fused graph), runs it ``W`` times untimed on the bench's seeded
input, then times ``R`` runs, and prints one JSON line: ``{"pid", "threads", "spinning", "uses_plugin",
"peak_rss_mb", "rss_delta_mb", "samples_s"}``; ``threads`` and ``spinning`` are what the session was made with, read
back from it (None: onnxruntime's default) (memory as the interleaved measure takes it: the peak while loading and warming up,
and that less the RSS before loading). Errors go to stderr with
exit status 1. :func:`dynet_deploy.bench.run.process_measure` starts it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dynet_deploy.bench.worker")
    p.add_argument("graph")
    p.add_argument("--shape", nargs="+", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--runs", type=int, required=True)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: onnxruntime's)")
    p.add_argument("--variant", default="onnxruntime-fused", help="the bench column whose runner options apply")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or min(args.shape) < 1:
        print(f"error: runs must be >= 1, warmup >= 0, shape positive; got {args}", file=sys.stderr)
        return 1

    import numpy as np

    from ..backends import bench_variants, get_backend
    from ..backends.onnxruntime.runner import OnnxruntimeRunner
    from ..errors import DynetDeployError
    from .timing import SEED, PeakMemory

    variant = bench_variants().get(args.variant)
    if variant is None or variant.backend != "onnxruntime":
        print(f"error: the process measure runs onnxruntime variants only, not {args.variant!r}", file=sys.stderr)
        return 1
    options = variant.runner_options()
    if args.threads is not None:
        options["threads"] = args.threads
    memory = PeakMemory()
    memory.reset()
    before = memory.current_mb()
    try:  # no spinning entry: onnxruntime's default (workers spin)
        runner = get_backend(variant.backend).open_runner(args.graph, **options)
        x = np.random.default_rng(SEED).standard_normal(args.shape, dtype=np.float32)
        call = runner.bound_run({runner.input_names[0]: x})
    except DynetDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for _ in range(args.warmup):
        call()
    peak = memory.peak_mb()
    samples = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    if not isinstance(runner, OnnxruntimeRunner):
        print(f"error: {args.variant!r} did not open an onnxruntime session", file=sys.stderr)
        return 1
    made_with = runner.session.get_session_options()
    try:
        spinning: str | None = made_with.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # no entry: onnxruntime's default
        spinning = None
    result = {
        "pid": os.getpid(),
        "threads": made_with.intra_op_num_threads or None,
        "spinning": spinning,
        "uses_plugin": bool(get_backend(variant.backend).uses_plugin(runner)),
        "peak_rss_mb": peak,
        "rss_delta_mb": peak - before,
        "samples_s": samples,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
