"""Latency, throughput and peak memory of zoo models per backend and batch size, next to their FLOPs.

What differs from timing each model on its own:

* **Pairs, interleaved.** A Dy model is always timed together with its static baseline (added when only the
  Dy model is asked for), on the same backend and batch, in alternating rounds (``dy, base, base, dy, ...``),
  so a machine that slows down half-way slows both. The speedup is ``median(base) / median(dy)``.
* **One graph per backend, the fastest we know for it.** ``onnxruntime`` runs a Dy model in its deploy form
  (:mod:`dynet_deploy.export.deploy_forms`, ``--dy-form``); ``onnxruntime-portable`` runs the standard export
  (feature form, dynamic batch), ``onnxruntime-fused`` the ``DyNetDynamicConv2d`` graph of
  :func:`dynet_deploy.fuse.fuse_dynamic_convs`, ``onnxruntime-cuda`` the portable graph on the CUDA provider,
  ``tensorrt`` an fp32 engine of the fused graph. A static model has one graph, the standard export, on every
  onnxruntime backend. Backends that are absent (no CUDA provider, no TensorRT) are skipped with the reason.
* **Two measures** (``--measures``). ``interleaved`` (the default) is the above, in one process. ``process`` is
  what a deployment runs: each model alone in a fresh process (:mod:`.worker`) with onnxruntime's defaults (idle
  workers spinning, its default thread count unless ``--threads`` is given), processes alternating static, Dy,
  static, Dy, ... (``--processes``, at least 3 per model), each warming up then timing ``--repeats`` runs; a model's
  median is the median of its process medians, and the speedup their ratio. Opt-in: it about doubles the run.
* **One busy-machine rule** (:func:`.timing.busy_machine`, also used by ``deploy``): every measure records the load
  average before and after and the cores other processes used meanwhile, and its rows are marked busy when those
  exceeded an eighth of the usable cores.
* **onnxruntime's idle workers do not spin** in the interleaved measure (``session.intra_op.allow_spinning = 0``, ``--ort-spinning`` turns
  it back on): two interleaved sessions each own a thread pool, and the idle one's spinning workers would take
  cores from the running one.
* **Peak memory per model and backend, in one process.** Linux lets a process reset its resident-set high-water
  mark (``/proc/self/clear_refs``); before loading each model the mark is reset, and after its session is
  created and warmed up ``VmHWM`` is read. ``rss_delta_mb`` = that peak minus the RSS before loading: the
  memory this backend needed for this model. Where the reset is not available the peak is the
  process-lifetime high-water mark (``getrusage``) and the JSON says so.

Results are data (:class:`BenchResult`, JSON); the table and the PNG chart are views of it (:mod:`.report`).
Modules: :mod:`.timing` (interleaved rounds, statistics, memory, the busy-machine rule), :mod:`.run` (what runs
where, the loops of both measures), :mod:`.worker` (one process of the process measure), :mod:`.report`.
"""

from .report import format_table, plot_png, write_json, write_outputs
from .run import (
    BACKENDS,
    DEFAULT_BACKENDS,
    DEFAULT_BATCH_SIZES,
    DEFAULT_MEASURES,
    DEFAULT_MODELS,
    DEFAULT_OUT_DIR,
    DEFAULT_PROCESSES,
    DEFAULT_REPEATS,
    DEFAULT_THREAD_COUNTS,
    DEFAULT_THREADS,
    DEFAULT_WARMUP,
    MEASURES,
    MIN_PROCESSES,
    BackendUnavailable,
    BenchConfig,
    BenchResult,
    BenchRow,
    check_backend,
    plan_units,
    process_order,
    process_stats,
    run_bench,
)
from .timing import BusyVerdict, PeakMemory, busy_machine, interleaved_latency, latency_stats, machine_info

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKENDS",
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_MEASURES",
    "DEFAULT_MODELS",
    "DEFAULT_OUT_DIR",
    "DEFAULT_PROCESSES",
    "DEFAULT_REPEATS",
    "DEFAULT_THREAD_COUNTS",
    "DEFAULT_THREADS",
    "DEFAULT_WARMUP",
    "BackendUnavailable",
    "BenchConfig",
    "BenchResult",
    "BenchRow",
    "BusyVerdict",
    "MEASURES",
    "MIN_PROCESSES",
    "PeakMemory",
    "busy_machine",
    "check_backend",
    "format_table",
    "interleaved_latency",
    "latency_stats",
    "machine_info",
    "plan_units",
    "plot_png",
    "process_order",
    "process_stats",
    "run_bench",
    "write_json",
    "write_outputs",
]
