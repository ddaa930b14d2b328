"""The benchmark: what to time (pairs and backends), the graphs each backend runs, opening them through
:mod:`dynet_deploy.backends` (whose bench variants name the columns), and the measured loop."""

from __future__ import annotations

import copy
import gc
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..backends import BenchVariant, bench_variants, get_backend
from ..errors import BenchError, DynetDeployError
from ..progress import get_logger
from .roofline import MachinePeaks, measure_peaks, roofline_ms
from .timing import SEED, BusyVerdict, ForeignLoad, PeakMemory, interleaved_latency, latency_stats, machine_info

log = get_logger(__name__)

# The PyTorch model (the reference, eager) and every registered backend's variants.
TORCH = "torch"
BACKENDS = (TORCH, *bench_variants())


# The default table: DyNet's three CPU pairs at 224x224, the fused graph (native op) and the fastest standard-op
# form on onnxruntime, batch 1 and 8, 2 threads then 1.
DEFAULT_MODELS = ("mobilenet_v2", "dy_mobile", "resnet18", "dy_resnet18", "resnet50", "dy_resnet50")


DEFAULT_BACKENDS = ("onnxruntime-fused", "onnxruntime")


DEFAULT_BATCH_SIZES = (1, 8)


DEFAULT_THREADS = 2


DEFAULT_THREAD_COUNTS = (2, 1)


DEFAULT_REPEATS = 20


DEFAULT_WARMUP = 5


DEFAULT_OUT_DIR = "build/bench"


# The two measures. "interleaved": both models of a pair in this process, alternating rounds, idle workers not
# spinning (the ratio least moved by a shared machine). "process": each model alone in its own process with
# onnxruntime's defaults (workers spinning, its default thread count unless threads are given), processes alternating
# static, Dy, static, Dy, ...: what a deployment runs. The process measure is opt-in: it starts 2 x processes
# processes per pair, backend, batch and thread count, and roughly doubles the run.
MEASURES = ("interleaved", "process")


DEFAULT_MEASURES = ("interleaved",)


MIN_PROCESSES = 3  # the process measure's median is over at least this many processes per model


DEFAULT_PROCESSES = 3


@dataclass
class UserModel:
    """A model of the user's: a checkpoint (``--checkpoint``, any zoo architecture) or an ONNX file (``--onnx``).

    ``label`` names it in the table. A checkpoint runs on every backend like a zoo model (and a Dy checkpoint is
    paired with its static baseline built with the same arguments); an ONNX file runs as it is on the onnxruntime
    backends (portable or fused graph alike) and, built into an engine, on TensorRT.
    """

    label: str
    checkpoint: str | None = None
    onnx: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchConfig:
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    batch_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_BATCH_SIZES))
    threads: list[int] = field(default_factory=lambda: list(DEFAULT_THREAD_COUNTS))  # each count is a pass of its own
    backends: list[str] = field(default_factory=lambda: list(DEFAULT_BACKENDS))
    input_size: tuple[int, int] = (224, 224)
    repeats: int = DEFAULT_REPEATS
    warmup: int = DEFAULT_WARMUP
    dy_form: str = "auto"
    ort_spinning: bool = False
    model_kwargs: dict[str, dict] = field(default_factory=dict)
    keep_onnx_dir: str | None = None
    user_models: dict[str, UserModel] = field(default_factory=dict)  # by label; the labels are also in models
    measures: list[str] = field(default_factory=lambda: list(DEFAULT_MEASURES))
    processes: int = DEFAULT_PROCESSES  # per model, for the process measure
    # thread counts of the process measure, one pass each; None: onnxruntime's default
    process_threads: list[int | None] = field(default_factory=lambda: [None])
    # the fuse pass's options for the fused graph (dynet_deploy.fuse.fuse_dynamic_convs)
    fold: bool = True
    bank_dtype: str = "fp32"

    def validate(self) -> None:
        from ..export.deploy_forms import DY_FORMS
        from ..models import model_info

        if not self.models:
            raise BenchError("no models to benchmark")
        for name in self.models:
            if name not in self.user_models:
                model_info(name)  # ModelError with suggestions for unknown names
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown or not self.backends:
            raise BenchError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise BenchError(f"batch sizes must be positive integers, got {self.batch_sizes}")
        if isinstance(self.threads, int):
            self.threads = [self.threads]
        if not self.threads or min(self.threads) < 1:
            raise BenchError(f"thread counts must be >= 1, got {self.threads}")
        if len(self.input_size) != 2 or min(self.input_size) < 8:
            raise BenchError(f"input size must be H W (each >= 8), got {self.input_size}")
        if self.repeats < 1 or self.warmup < 0:
            raise BenchError(f"repeats must be >= 1 and warmup >= 0, got {self.repeats} and {self.warmup}")
        if self.dy_form not in ("auto", *DY_FORMS):
            raise BenchError(f"unknown --dy-form {self.dy_form!r}; choose auto or one of {', '.join(DY_FORMS)}")
        from ..op.spec import BANK_DTYPES

        if self.bank_dtype not in BANK_DTYPES:
            raise BenchError(f"unknown bank dtype {self.bank_dtype!r}; choose from {', '.join(BANK_DTYPES)}")
        unknown = [m for m in self.measures if m not in MEASURES]
        if unknown or not self.measures:
            raise BenchError(f"unknown measure(s) {unknown}; choose from {', '.join(MEASURES)}")
        if "process" in self.measures:
            if self.processes < MIN_PROCESSES:
                raise BenchError(
                    f"the process measure takes the median over at least {MIN_PROCESSES} processes per model, "
                    f"got --processes {self.processes}"
                )
            if not self.process_threads or any(t is not None and t < 1 for t in self.process_threads):
                raise BenchError(f"process-measure thread counts must be >= 1, got {self.process_threads}")


@dataclass
class BenchRow:
    model: str
    backend: str
    batch: int
    graph: str
    latency: dict[str, float]  # process measure: median_ms is the median of the process medians, the rest pooled
    throughput_ips: float
    peak_rss_mb: float
    rss_delta_mb: float
    mflops: float | None  # None for a given ONNX file: no PyTorch model to count
    mflops_with_overhead: float | None
    threads: int | None = DEFAULT_THREADS  # None: onnxruntime's default (process measure without --threads)
    measure: str = "interleaved"  # MEASURES
    param_mb: float = 0.0
    roofline_ms: float | None = None  # least time per batch on this machine (bench.roofline); None for torch
    vs_roofline: float | None = None  # median / roofline
    load_before: float | None = None  # 1-minute load average before and after this pair's timing
    load_after: float | None = None
    foreign_cores: float | None = None  # cores other processes used meanwhile (timing.ForeignLoad)
    busy: bool = False  # timing.busy_machine's verdict on this measure: not a result
    busy_reason: str = ""
    baseline: str | None = None
    speedup_vs_baseline: float | None = None
    flops_ratio_vs_baseline: float | None = None
    # process measure: one entry per process, in launch order within the pair (index), with its timed samples
    processes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class BenchResult:
    machine: dict[str, Any]
    config: dict[str, Any]
    rows: list[BenchRow]
    skipped: list[dict[str, str]]
    memory_method: str
    peaks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return any(r.busy for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "peaks": self.peaks,
            "busy": self.busy,
            "config": self.config,
            "memory_method": self.memory_method,
            "results": [asdict(r) for r in self.rows],
            "skipped": self.skipped,
        }


class BackendUnavailable(Exception):
    """This backend cannot run here (absent component); the reason is printed and the run goes on."""


def _zoo_entry(name: str, user_models: dict[str, UserModel] | None = None):
    """The zoo entry behind ``name`` (a checkpoint's architecture for a user checkpoint), None for an ONNX file."""
    from ..models import model_info

    user = (user_models or {}).get(name)
    if user is None:
        return model_info(name)
    if user.checkpoint is None:
        return None
    from ..checkpoint import read_checkpoint_config

    try:
        return model_info(read_checkpoint_config(user.checkpoint)["model"])
    except DynetDeployError:
        return None  # a state dict without config: no pairing, its model comes from --model-args' "model"


def plan_units(models: Sequence[str], user_models: dict[str, UserModel] | None = None) -> list[list[str]]:
    """Group models into timing units: ``[dy, baseline]`` pairs (baseline added if missing), then singles."""
    units: list[list[str]] = []
    placed: set[str] = set()
    for name in models:
        info = _zoo_entry(name, user_models)
        if info is not None and info.dynamic and info.baseline:
            if name in placed:
                continue
            units.append([name, info.baseline])
            placed.update((name, info.baseline))
    for name in models:
        if name not in placed:
            units.append([name])
            placed.add(name)
    return units


class _Artefacts:
    """Builds each torch model once (seeded), each graph once per (model, graph kind, batch)."""

    def __init__(self, cfg: BenchConfig, workdir: Path) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self._models: dict[str, Any] = {}
        self._graphs: dict[tuple[str, str, int], Path] = {}
        self._flops: dict[str, Any] = {}
        self._forms: dict[tuple[str, str, int], str] = {}

    def model(self, name: str):
        import torch

        from ..models import create_model

        if name not in self._models:
            user = self.cfg.user_models.get(name)
            if user is not None and user.onnx is not None:
                raise BackendUnavailable(f"{name} is an ONNX file; it has no PyTorch model to run")
            if user is not None:
                from ..checkpoint import load_checkpoint

                assert user.checkpoint is not None
                self._models[name] = load_checkpoint(user.checkpoint, model_args=user.model_args or None).eval()
            else:
                torch.manual_seed(SEED)
                self._models[name] = create_model(name, **self.cfg.model_kwargs.get(name, {})).eval()
        return self._models[name]

    def param_bytes(self, name: str) -> int:
        """Bytes of parameters and buffers: what a batch must read at least once."""
        user = self.cfg.user_models.get(name)
        if user is not None and user.onnx is not None:
            from onnx import numpy_helper

            from ..graph import load_onnx

            proto = load_onnx(user.onnx, BenchError)
            return sum(numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)
        m = self.model(name)
        return sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))

    def flops(self, name: str):
        """The model's FLOPs report, or None for an ONNX file (no PyTorch model to count)."""
        from ..flops import count_flops

        user = self.cfg.user_models.get(name)
        if user is not None and user.onnx is not None:
            return None
        if name not in self._flops:
            self._flops[name] = count_flops(self.model(name), (1, self.in_chans(name), *self.cfg.input_size))
        return self._flops[name]

    def in_chans(self, name: str | None) -> int:
        """Input channels: a user graph's input says, a checkpoint's arguments say, else 3."""
        user = self.cfg.user_models.get(name) if name else None
        if user is not None and user.onnx is not None:
            from ..validate import read_graph_input

            c = read_graph_input(user.onnx).shape[1]
            return c if isinstance(c, int) and c > 0 else 3
        kwargs = (
            getattr(self.model(name), "zoo_kwargs", {})
            if user is not None and name
            else self.cfg.model_kwargs.get(name or "", {})
        )
        return int(kwargs.get("in_chans", 3))

    def input_shape(self, batch: int, name: str | None = None) -> tuple[int, int, int, int]:
        return (batch, self.in_chans(name), *self.cfg.input_size)

    def graph(self, name: str, kind: str, batch: int) -> tuple[Path, str]:
        """``kind``: "deploy" (fastest CPU form), "portable" (feature form, dynamic batch; the kernel form at ``batch``
        for a model that has no feature form), "fused"."""
        from ..export.deploy_forms import best_dy_form, export_deploy_onnx
        from ..export.exporter import export_forms, export_onnx

        user = self.cfg.user_models.get(name)
        if user is not None and user.onnx is not None:
            return Path(user.onnx), f"the given graph {Path(user.onnx).name}"
        dynamic = art_is_dynamic(name, self.cfg)
        if dynamic and kind == "portable" and "feature" not in export_forms(self.model(name)):
            # ODConv's layers have the kernel form only: a fixed batch, one graph per batch (fuse makes it dynamic)
            key = (name, "portable", batch)
            if key not in self._graphs:
                path = self.workdir / f"{name}.kernel.b{batch}.onnx"
                export_onnx(self.model(name), path, self.input_shape(batch, name), form="kernel", dynamic_batch=False)
                self._graphs[key] = path
            return self._graphs[key], f"standard export (kernel form, batch {batch})"
        if not dynamic or kind == "portable":
            key = (name, "portable", 0)
            if key not in self._graphs:
                path = self.workdir / f"{name}.portable.onnx"
                export_onnx(
                    self.model(name),
                    path,
                    self.input_shape(max(self.cfg.batch_sizes), name),
                    form="feature",
                    dynamic_batch=True,
                )
                self._graphs[key] = path
            return self._graphs[key], "standard export" + (" (feature form, dynamic batch)" if dynamic else "")
        if kind == "deploy":
            form = best_dy_form() if self.cfg.dy_form == "auto" else self.cfg.dy_form
            key = (name, form, batch)
            if key not in self._graphs:
                path = self.workdir / f"{name}.{form}.b{batch}.onnx"
                report = export_deploy_onnx(self.model(name), path, self.input_shape(batch, name), form)
                self._graphs[key] = path
                self._forms[key] = report.form
            return self._graphs[key], f"deploy form {self._forms[key]!r}"
        if kind == "fused":
            key = (name, "fused", 0)
            if key not in self._graphs:
                try:
                    from ..fuse import fuse_dynamic_convs
                except ImportError as exc:
                    raise BackendUnavailable(f"the fuse pass is not available ({exc})") from None
                portable, _ = self.graph(name, "portable", batch)
                path = self.workdir / f"{name}.fused.onnx"
                fuse_dynamic_convs(portable, path, fold=self.cfg.fold, bank_dtype=self.cfg.bank_dtype)
                self._graphs[key] = path
            options = [] if self.cfg.fold else ["epilogues not folded"]
            if self.cfg.bank_dtype != "fp32":
                options.append(f"{self.cfg.bank_dtype} bank")
            return self._graphs[key], "DyNetDynamicConv2d graph" + (f" ({', '.join(options)})" if options else "")
        raise BenchError(f"unknown graph kind {kind!r}")


@dataclass
class _Runner:
    run: Callable[[], Any]
    graph: str
    close: Callable[[], None] = lambda: None


def _input(shape: Sequence[int]) -> np.ndarray:
    return np.random.default_rng(SEED).standard_normal(shape, dtype=np.float32)


def _open_torch(art: _Artefacts, name: str, batch: int, cfg: BenchConfig, threads: int) -> _Runner:
    import torch

    from ..export.exporter import prepare_for_export

    torch.set_num_threads(threads)
    # A copy made here, inside the measured phase, so that +MB counts the model's parameters as it does an
    # onnxruntime session's weights.
    if art_is_dynamic(name, cfg):
        model = prepare_for_export(art.model(name), "kernel")  # a copy, BN folded, kernel fusion: the inference path
        graph = "eager, kernel fusion, BN folded"
    else:
        model = copy.deepcopy(art.model(name))
        graph = "eager"
    x = torch.from_numpy(_input(art.input_shape(batch, name)))

    def run() -> Any:
        with torch.inference_mode():
            return model(x)

    return _Runner(run, graph)


def art_is_dynamic(name: str, cfg: BenchConfig | None = None) -> bool:
    info = _zoo_entry(name, cfg.user_models if cfg else None)
    return bool(info is not None and info.dynamic)


def check_backend(backend: str) -> None:
    """Raise :class:`BackendUnavailable` (with the reason) when ``backend`` cannot run on this machine."""
    if backend == TORCH:
        return
    variant = bench_variants()[backend]
    available = get_backend(variant.backend).availability(variant)
    if not available:
        raise BackendUnavailable(available.detail)


def _graph_kind(name: str, backend: str, cfg: BenchConfig | None = None) -> str | None:
    if backend == TORCH:
        return None
    user = cfg.user_models.get(name) if cfg else None
    if user is not None and user.onnx is not None:
        return "given"  # the file itself, whatever the backend
    if not art_is_dynamic(name, cfg):
        return "portable"  # a static model has one graph on every onnxruntime backend and TensorRT
    return bench_variants()[backend].graph_kind


def _artifact_path(art: _Artefacts, graph: Path, variant: BenchVariant, batch: int) -> Path:
    if get_backend(variant.backend).artifact_is_graph:
        return graph
    return art.workdir / f"{graph.stem}.b{batch}.{variant.backend}"


def prepare(art: _Artefacts, name: str, backend: str, batch: int) -> None:
    """Export (and fuse, build) what ``backend`` needs, before the memory of the run is measured."""
    if backend == TORCH:
        art.model(name)  # an ONNX file is skipped here, with the reason
    art.flops(name)
    kind = _graph_kind(name, backend, art.cfg)
    try:
        if kind is None:
            return
        graph, _ = art.graph(name, kind, batch)
        variant = bench_variants()[backend]
        artifact = _artifact_path(art, graph, variant, batch)
        if artifact != graph and not artifact.exists():
            get_backend(variant.backend).prepare(graph, artifact, batch=(batch, batch, batch))
    except DynetDeployError as exc:
        if backend != TORCH and bench_variants()[backend].graph_kind == "fused":
            raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from None
        raise


def open_runner(art: _Artefacts, name: str, backend: str, batch: int, cfg: BenchConfig, threads: int) -> _Runner:
    """The backend's runner over the prepared artifact, bound to one seeded input. onnxruntime sessions run with
    one inter-op thread, optimisation level "all" and the worker-spinning policy: interleaved sessions each keep their
    own pool, and the idle pool's spinning workers compete with the running one for the cores."""
    from ..errors import RuntimeBackendError

    if backend == TORCH:
        return _open_torch(art, name, batch, cfg, threads)
    variant = bench_variants()[backend]
    impl = get_backend(variant.backend)
    kind = _graph_kind(name, backend, cfg)
    assert kind is not None
    path, graph = art.graph(name, kind, batch)
    artifact = _artifact_path(art, path, variant, batch)
    options = variant.runner_options()
    if impl.artifact_is_graph:
        options.update(threads=threads, spinning=cfg.ort_spinning)
    try:
        runner = impl.open_runner(artifact, **options)
        call = runner.bound_run({runner.input_names[0]: _input(art.input_shape(batch, name))})
    except RuntimeBackendError as exc:
        raise BenchError(f"{path.name}: {exc}") from None
    if impl.artifact_is_graph:
        if impl.uses_plugin(runner):
            graph += ", native DyNetDynamicConv2d library"
        graph += ", worker spinning " + ("on" if cfg.ort_spinning else "off")
    else:
        graph += f", {impl.describe(runner)} fp32 (timing includes host<->device copies)"
    return _Runner(call, graph)


def run_bench(cfg: BenchConfig) -> BenchResult:
    """Benchmark every unit (pair or single) on every backend and batch size of ``cfg``, with each measure asked for:
    the interleaved passes (one per thread count), then the process passes (one per process-measure thread count)."""
    cfg.validate()
    machine = machine_info()
    memory = PeakMemory()
    rows: list[BenchRow] = []
    skipped: list[dict[str, str]] = []
    units = plan_units(cfg.models, cfg.user_models)
    interleaved = "interleaved" in cfg.measures
    process_threads = cfg.process_threads if "process" in cfg.measures else []
    with tempfile.TemporaryDirectory(prefix="dynet-bench-") as tmp:
        workdir = Path(cfg.keep_onnx_dir) if cfg.keep_onnx_dir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        art = _Artefacts(cfg, workdir)
        peaks: dict[int, MachinePeaks] = {}
        if any(b != TORCH for b in cfg.backends):
            counts = (cfg.threads if interleaved else []) + [t for t in process_threads if t is not None]
            for threads in dict.fromkeys(counts):
                log.info(
                    f"measuring this machine's bandwidth and multiply-add peak with onnxruntime, {threads} thread(s)"
                )
                peaks[threads] = measure_peaks(threads)
        for threads in cfg.threads if interleaved else []:
            for unit in units:
                for backend in cfg.backends:
                    for batch in cfg.batch_sizes:
                        rows += _time_unit(art, cfg, unit, backend, batch, threads, peaks.get(threads), memory, skipped)
        for pthreads in process_threads:
            for unit in units:
                for backend in cfg.backends:
                    for batch in cfg.batch_sizes:
                        peak = None if pthreads is None else peaks.get(pthreads)
                        rows += _time_unit_processes(art, cfg, unit, backend, batch, pthreads, peak, skipped)
    machine["load_average_end"] = machine_info()["load_average"]
    config = asdict(cfg)
    config["input_size"] = list(cfg.input_size)
    return BenchResult(machine, config, rows, skipped, memory.method, [p.to_dict() for p in peaks.values()])


def _skip(skipped: list[dict[str, str]], backend: str, unit: list[str], batch: int, measure: str, reason: str):
    log.info(f"skip {backend} for {', '.join(unit)} (batch {batch}, {measure} measure): {reason}")
    skipped.append(
        {"backend": backend, "models": ", ".join(unit), "batch": str(batch), "measure": measure, "reason": reason}
    )


def _row(
    art: _Artefacts,
    name: str,
    backend: str,
    batch: int,
    threads: int | None,
    peaks: MachinePeaks | None,
    graph: str,
    stats: dict[str, float],
    mem: tuple[float, float],
    load: ForeignLoad,
    verdict: BusyVerdict,
    measure: str,
) -> BenchRow:
    fl = art.flops(name)  # None for a given ONNX file
    pbytes = art.param_bytes(name)
    roof = None if peaks is None or backend == TORCH or fl is None else roofline_ms(pbytes, fl.total_macs, batch, peaks)
    return BenchRow(
        model=name,
        backend=backend,
        batch=batch,
        graph=graph,
        latency=stats,
        throughput_ips=batch / (stats["median_ms"] / 1e3),
        peak_rss_mb=mem[0],
        rss_delta_mb=mem[1],
        mflops=None if fl is None else fl.conv_linear_macs / 1e6,
        mflops_with_overhead=None if fl is None else fl.total_macs / 1e6,
        threads=threads,
        measure=measure,
        param_mb=pbytes / 1e6,
        roofline_ms=roof,
        vs_roofline=None if roof is None else stats["median_ms"] / roof,
        load_before=load.load_before,
        load_after=load.load_after,
        foreign_cores=load.foreign_cores,
        busy=verdict.busy,
        busy_reason=verdict.reason,
    )


def _pair_rows(unit: list[str], unit_rows: dict[str, BenchRow]) -> list[BenchRow]:
    """The unit's rows, baseline first; a Dy row gets its speedup = baseline median / Dy median of this measure."""
    if len(unit) == 2:
        dy, base = unit
        r = unit_rows[dy]
        r.baseline = base
        r.speedup_vs_baseline = unit_rows[base].latency["median_ms"] / r.latency["median_ms"]
        base_mflops = unit_rows[base].mflops
        r.flops_ratio_vs_baseline = None if base_mflops is None or not r.mflops else base_mflops / r.mflops
        return [unit_rows[base], r]
    return [unit_rows[unit[0]]]


def _time_unit(
    art: _Artefacts,
    cfg: BenchConfig,
    unit: list[str],
    backend: str,
    batch: int,
    threads: int,
    peaks: MachinePeaks | None,
    memory: PeakMemory,
    skipped: list[dict[str, str]],
) -> list[BenchRow]:
    """One pair (or single model) on one backend, batch and thread count: open, warm up, time interleaved."""
    runners: dict[str, _Runner] = {}
    mem: dict[str, tuple[float, float]] = {}
    try:
        check_backend(backend)
        for name in unit:
            prepare(art, name, backend, batch)
        for name in unit:
            memory.reset()
            before = memory.current_mb()
            runner = open_runner(art, name, backend, batch, cfg, threads)
            for _ in range(max(1, cfg.warmup)):
                runner.run()
            peak = memory.peak_mb()
            runners[name] = runner
            mem[name] = (peak, peak - before)
    except BackendUnavailable as exc:
        _skip(skipped, backend, unit, batch, "interleaved", str(exc))
        runners.clear()
        gc.collect()
        return []
    log.info(
        f"timing {' vs '.join(unit)} on {backend}, batch {batch}, {threads} thread(s): {cfg.repeats} interleaved rounds"
    )
    load = ForeignLoad().start()
    samples = interleaved_latency({n: r.run for n, r in runners.items()}, cfg.repeats, cfg.warmup)
    verdict = load.stop().verdict()
    if verdict.busy:
        log.info(f"  busy machine: {verdict.reason}; these rows are marked")
    unit_rows = {
        name: _row(
            art,
            name,
            backend,
            batch,
            threads,
            peaks,
            runners[name].graph,
            latency_stats(samples[name]),
            mem[name],
            load,
            verdict,
            "interleaved",
        )
        for name in unit
    }
    runners.clear()
    gc.collect()
    return _pair_rows(unit, unit_rows)


def process_stats(processes: Sequence[Sequence[float]]) -> dict[str, float]:
    """The process measure's statistics of one model, in milliseconds, from each process's timed runs (seconds):
    ``median_ms`` is the median of the process medians; p90, mean, min, max and std are over all runs pooled; ``n``
    counts the runs and ``processes`` the processes."""
    if not processes or any(len(p) == 0 for p in processes):
        raise BenchError("the process measure needs timed runs from every process")
    stats = latency_stats([t for p in processes for t in p])
    stats["median_ms"] = float(np.median([np.median(np.asarray(p, dtype=np.float64) * 1e3) for p in processes]))
    stats["processes"] = len(processes)
    return stats


def process_order(unit: Sequence[str], processes: int) -> list[str]:
    """Launch order of the process measure: the static baseline first, then alternating (static, Dy, static, ...)."""
    return list(unit[::-1]) * processes


def _worker_env() -> dict[str, str]:
    """The environment of a worker process: this one's, with the folder holding this package on the import path
    when it is a checkout (an installed package is found in site-packages as it is), so the worker runs this code."""
    import site

    env = dict(os.environ)
    root = Path(__file__).resolve().parents[2]
    installed = {Path(d).resolve() for d in (*site.getsitepackages(), site.getusersitepackages())}
    if root not in installed:
        env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_worker(graph: Path, shape: Sequence[int], backend: str, threads: int | None, warmup: int, runs: int) -> dict:
    """One process of the process measure (:mod:`.worker`): its pid, thread count and timed runs (seconds)."""
    cmd = [sys.executable, "-m", "dynet_deploy.bench.worker", str(graph), "--shape", *map(str, shape)]
    cmd += ["--warmup", str(warmup), "--runs", str(runs), "--variant", backend]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env())
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise BenchError(f"the process measure's worker on {graph.name} exited {proc.returncode}: {tail}")
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        out = None
    if not isinstance(out, dict) or not isinstance(out.get("samples_s"), list) or len(out["samples_s"]) != runs:
        raise BenchError(f"the process measure's worker on {graph.name} printed no result: {proc.stdout[-200:]!r}")
    return out


def _time_unit_processes(
    art: _Artefacts,
    cfg: BenchConfig,
    unit: list[str],
    backend: str,
    batch: int,
    threads: int | None,
    peaks: MachinePeaks | None,
    skipped: list[dict[str, str]],
) -> list[BenchRow]:
    """The process measure of one pair (or single model): each model alone in a fresh process with onnxruntime's
    defaults, processes alternating static, Dy, ..., ``cfg.processes`` per model."""
    if backend == TORCH or bench_variants()[backend].backend != "onnxruntime":
        _skip(skipped, backend, unit, batch, "process", "the process measure runs onnxruntime graphs only")
        return []
    graphs: dict[str, tuple[Path, str]] = {}
    try:
        check_backend(backend)
        for name in unit:
            prepare(art, name, backend, batch)
            kind = _graph_kind(name, backend, cfg)
            assert kind is not None
            graphs[name] = art.graph(name, kind, batch)
    except BackendUnavailable as exc:
        _skip(skipped, backend, unit, batch, "process", str(exc))
        return []
    what = "onnxruntime's default threads" if threads is None else f"{threads} thread(s)"
    log.info(
        f"timing {' vs '.join(unit)} on {backend}, batch {batch}, {what}: {cfg.processes} processes each, "
        f"{cfg.repeats} runs per process"
    )
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in unit}
    load = ForeignLoad().start()
    for index, name in enumerate(process_order(unit, cfg.processes)):
        out = run_worker(graphs[name][0], art.input_shape(batch, name), backend, threads, cfg.warmup, cfg.repeats)
        samples_ms = [t * 1e3 for t in out["samples_s"]]
        runs[name].append(
            {
                "index": index,
                "pid": out["pid"],
                "threads": out["threads"],  # as the worker's session was made (None: onnxruntime's default)
                "spinning": out["spinning"],
                "median_ms": float(np.median(samples_ms)),
                "peak_rss_mb": out["peak_rss_mb"],
                "rss_delta_mb": out["rss_delta_mb"],
                "uses_plugin": out["uses_plugin"],
                "samples_ms": samples_ms,
            }
        )
    verdict = load.stop().verdict()
    if verdict.busy:
        log.info(f"  busy machine: {verdict.reason}; these rows are marked")
    unit_rows = {}
    for name in unit:
        graph = graphs[name][1]
        if runs[name][0]["uses_plugin"]:
            graph += ", native DyNetDynamicConv2d library"
        graph += (
            f", alone in its own process ({cfg.warmup} warm-up + {cfg.repeats} timed runs), onnxruntime defaults "
            f"(worker spinning on, {'its default' if threads is None else threads} threads)"
        )
        stats = process_stats([[t / 1e3 for t in r["samples_ms"]] for r in runs[name]])
        mem = (
            float(np.median([r["peak_rss_mb"] for r in runs[name]])),
            float(np.median([r["rss_delta_mb"] for r in runs[name]])),
        )
        row = _row(art, name, backend, batch, threads, peaks, graph, stats, mem, load, verdict, "process")
        row.processes = runs[name]
        unit_rows[name] = row
    return _pair_rows(unit, unit_rows)
