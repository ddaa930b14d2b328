"""Latency, throughput and peak memory of zoo models per backend and batch size, next to their FLOPs.

What differs from timing each model on its own:

* **Pairs, interleaved.** A Dy model is always timed together with its static baseline (added when only the
  Dy model is asked for), on the same backend and batch, in alternating rounds (``dy, base, base, dy, ...``),
  so a machine that slows down half-way slows both. The speedup is ``median(base) / median(dy)``.
* **One graph per backend, the fastest we know for it.** ``onnxruntime`` runs a Dy model in its deploy form
  (:mod:`dynet_deploy.deploy_forms`, ``--dy-form``); ``onnxruntime-portable`` runs the standard export
  (feature form, dynamic batch), ``onnxruntime-fused`` the ``DyNetDynamicConv2d`` graph of
  :func:`dynet_deploy.fuse.fuse_dynamic_convs`, ``onnxruntime-cuda`` the portable graph on the CUDA provider,
  ``tensorrt`` an fp32 engine of the fused graph. A static model has one graph, the standard export, on every
  onnxruntime backend. Backends that are absent (no CUDA provider, no TensorRT) are skipped with the reason.
* **onnxruntime's idle workers do not spin** (``session.intra_op.allow_spinning = 0``, ``--ort-spinning`` turns
  it back on): two interleaved sessions each own a thread pool, and the idle one's spinning workers would take
  cores from the running one.
* **Peak memory per model and backend, in one process.** Linux lets a process reset its resident-set high-water
  mark (``/proc/self/clear_refs``); before loading each model the mark is reset, and after its session is
  created and warmed up ``VmHWM`` is read. ``rss_delta_mb`` = that peak minus the RSS before loading: the
  memory this backend needed for this model. Where the reset is not available the peak is the
  process-lifetime high-water mark (``getrusage``) and the JSON says so.

Results are data (:class:`BenchResult`, JSON); the table and the PNG chart are views of it.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import BenchError, DynetDeployError
from .fileio import atomic_path, check_output_path

BACKENDS = ("torch", "onnxruntime", "onnxruntime-portable", "onnxruntime-fused", "onnxruntime-cuda", "tensorrt")
# The table: DyNet's three CPU pairs, batch 1, 2 threads, 224x224.
DEFAULT_MODELS = ("mobilenet_v2", "dy_mobile", "resnet18", "dy_resnet18", "resnet50", "dy_resnet50")
DEFAULT_BACKENDS = ("torch", "onnxruntime")
DEFAULT_BATCH_SIZES = (1,)
DEFAULT_THREADS = 2
DEFAULT_REPEATS = 30
DEFAULT_WARMUP = 5
DEFAULT_OUT_DIR = "build/bench"
SEED = 0


# ---- statistics -------------------------------------------------------------------------------------------------

def latency_stats(samples_s: Sequence[float]) -> dict[str, float]:
    """Milliseconds: median, p90 (linear interpolation between order statistics), mean, min, max, std, n."""
    x = np.asarray(samples_s, dtype=np.float64) * 1e3
    if x.size == 0:
        raise BenchError("no latency samples to summarise")
    return {
        "median_ms": float(np.median(x)),
        "p90_ms": float(np.percentile(x, 90)),
        "mean_ms": float(x.mean()),
        "min_ms": float(x.min()),
        "max_ms": float(x.max()),
        "std_ms": float(x.std()),
        "n": int(x.size),
    }


# ---- memory -----------------------------------------------------------------------------------------------------

def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: freed pages may stay resident, deltas read low
        pass


class PeakMemory:
    """Resident-set high-water mark of this process, resettable where Linux allows it (module docstring)."""

    def __init__(self) -> None:
        self.resettable = self._reset()
        self.method = (
            "per model: VmHWM after reset via /proc/self/clear_refs; delta = peak - RSS before loading"
            if self.resettable
            else "process-lifetime peak RSS (getrusage ru_maxrss); delta = peak - RSS before loading"
        )

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return _status_kib("VmHWM") is not None
        except OSError:
            return False

    def reset(self) -> None:
        """Return freed heap pages to the OS (else a new session reuses them and its RSS growth reads as ~0),
        then reset the high-water mark to the current RSS."""
        gc.collect()
        _malloc_trim()
        if self.resettable:
            self._reset()

    @staticmethod
    def current_mb() -> float:
        kib = _status_kib("VmRSS")
        if kib is not None:
            return kib / 1024
        import psutil

        return psutil.Process().memory_info().rss / 2**20

    def peak_mb(self) -> float:
        kib = _status_kib("VmHWM")
        if kib is not None:
            return kib / 1024
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if platform.system() == "Darwin" else peak / 1024


# ---- configuration and results ----------------------------------------------------------------------------------

@dataclass
class BenchConfig:
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    batch_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_BATCH_SIZES))
    threads: int = DEFAULT_THREADS
    backends: list[str] = field(default_factory=lambda: list(DEFAULT_BACKENDS))
    input_size: tuple[int, int] = (224, 224)
    repeats: int = DEFAULT_REPEATS
    warmup: int = DEFAULT_WARMUP
    dy_form: str = "auto"
    ort_spinning: bool = False
    model_kwargs: dict[str, dict] = field(default_factory=dict)
    keep_onnx_dir: str | None = None

    def validate(self) -> None:
        from .deploy_forms import DY_FORMS
        from .models import model_info

        if not self.models:
            raise BenchError("no models to benchmark")
        for name in self.models:
            model_info(name)  # ModelError with suggestions for unknown names
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown or not self.backends:
            raise BenchError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise BenchError(f"batch sizes must be positive integers, got {self.batch_sizes}")
        if self.threads < 1:
            raise BenchError(f"threads must be >= 1, got {self.threads}")
        if len(self.input_size) != 2 or min(self.input_size) < 8:
            raise BenchError(f"input size must be H W (each >= 8), got {self.input_size}")
        if self.repeats < 1 or self.warmup < 0:
            raise BenchError(f"repeats must be >= 1 and warmup >= 0, got {self.repeats} and {self.warmup}")
        if self.dy_form not in ("auto", *DY_FORMS):
            raise BenchError(f"unknown --dy-form {self.dy_form!r}; choose auto or one of {', '.join(DY_FORMS)}")


@dataclass
class BenchRow:
    model: str
    backend: str
    batch: int
    graph: str
    latency: dict[str, float]
    throughput_ips: float
    peak_rss_mb: float
    rss_delta_mb: float
    mflops: float
    mflops_with_overhead: float
    baseline: str | None = None
    speedup_vs_baseline: float | None = None
    flops_ratio_vs_baseline: float | None = None


@dataclass
class BenchResult:
    machine: dict[str, Any]
    config: dict[str, Any]
    rows: list[BenchRow]
    skipped: list[dict[str, str]]
    memory_method: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "config": self.config,
            "memory_method": self.memory_method,
            "results": [asdict(r) for r in self.rows],
            "skipped": self.skipped,
        }


class BackendUnavailable(Exception):
    """This backend cannot run here (absent component); the reason is printed and the run goes on."""


# ---- machine --------------------------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    for mod in ("torch", "onnxruntime", "onnx"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        info["load_average"] = None
    return info


# ---- units: pairs and singles ---------------------------------------------------------------------------------

def plan_units(models: Sequence[str]) -> list[list[str]]:
    """Group models into timing units: ``[dy, baseline]`` pairs (baseline added if missing), then singles."""
    from .models import model_info

    units: list[list[str]] = []
    placed: set[str] = set()
    for name in models:
        info = model_info(name)
        if info.dynamic and info.baseline:
            if name in placed:
                continue
            units.append([name, info.baseline])
            placed.update((name, info.baseline))
    for name in models:
        if name not in placed:
            units.append([name])
            placed.add(name)
    return units


# ---- artefacts: models, graphs ----------------------------------------------------------------------------------

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

        from .models import create_model

        if name not in self._models:
            torch.manual_seed(SEED)
            self._models[name] = create_model(name, **self.cfg.model_kwargs.get(name, {})).eval()
        return self._models[name]

    def flops(self, name: str):
        from .flops import count_flops

        if name not in self._flops:
            self._flops[name] = count_flops(self.model(name), (1, 3, *self.cfg.input_size))
        return self._flops[name]

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, 3, *self.cfg.input_size)

    def graph(self, name: str, kind: str, batch: int) -> tuple[Path, str]:
        """``kind``: "deploy" (fastest CPU form), "portable" (feature form, dynamic batch), "fused"."""
        from .deploy_forms import best_dy_form, export_deploy_onnx
        from .export_onnx import export_onnx
        from .models import model_info

        dynamic = model_info(name).dynamic
        if not dynamic or kind == "portable":
            key = (name, "portable", 0)
            if key not in self._graphs:
                path = self.workdir / f"{name}.portable.onnx"
                export_onnx(self.model(name), path, self.input_shape(max(self.cfg.batch_sizes)), form="feature", dynamic_batch=True)
                self._graphs[key] = path
            return self._graphs[key], "standard export" + (" (feature form, dynamic batch)" if dynamic else "")
        if kind == "deploy":
            form = best_dy_form() if self.cfg.dy_form == "auto" else self.cfg.dy_form
            key = (name, form, batch)
            if key not in self._graphs:
                path = self.workdir / f"{name}.{form}.b{batch}.onnx"
                report = export_deploy_onnx(self.model(name), path, self.input_shape(batch), form)
                self._graphs[key] = path
                self._forms[key] = report.form
            return self._graphs[key], f"deploy form {self._forms[key]!r}"
        if kind == "fused":
            key = (name, "fused", 0)
            if key not in self._graphs:
                try:
                    from .fuse import fuse_dynamic_convs
                except ImportError as exc:
                    raise BackendUnavailable(f"the fuse pass is not available ({exc})") from None
                portable, _ = self.graph(name, "portable", batch)
                path = self.workdir / f"{name}.fused.onnx"
                fuse_dynamic_convs(portable, path)
                self._graphs[key] = path
            return self._graphs[key], "DyNetDynamicConv2d graph"
        raise BenchError(f"unknown graph kind {kind!r}")


# ---- runners ------------------------------------------------------------------------------------------------------

@dataclass
class _Runner:
    run: Callable[[], Any]
    graph: str
    close: Callable[[], None] = lambda: None


def _input(shape: Sequence[int]) -> np.ndarray:
    return np.random.default_rng(SEED).standard_normal(shape, dtype=np.float32)


def _open_torch(art: _Artefacts, name: str, batch: int, cfg: BenchConfig) -> _Runner:
    import torch

    from .export_onnx import prepare_for_export
    from .models import model_info

    torch.set_num_threads(cfg.threads)
    # A copy made here, inside the measured phase, so that +MB counts the model's parameters as it does an
    # onnxruntime session's weights.
    if model_info(name).dynamic:
        model = prepare_for_export(art.model(name), "kernel")  # a copy, BN folded, kernel fusion: the inference path
        graph = "eager, kernel fusion, BN folded"
    else:
        model = copy.deepcopy(art.model(name))
        graph = "eager"
    x = torch.from_numpy(_input(art.input_shape(batch)))

    def run() -> Any:
        with torch.inference_mode():
            return model(x)

    return _Runner(run, graph)


def _ort_session(path: Path, cfg: BenchConfig, providers: list[str] | None):
    """A session like OnnxruntimeRunner's (threads, one inter-op thread, optimisation level "all"), plus the
    worker-spinning policy: interleaved sessions each keep their own pool, and the idle pool's spinning workers
    compete with the running one for the cores (dy_resnet18 vs resnet18, 2 threads, shared 2-core machine:
    1.38-1.47x with spinning, 1.68-2.17x without)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if cfg.ort_spinning else "0")
    try:
        return ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:
        raise BenchError(f"onnxruntime could not load {path.name}: {exc}") from None


def _open_onnxruntime(art: _Artefacts, name: str, batch: int, cfg: BenchConfig, kind: str, providers: list[str] | None, custom_op: bool) -> _Runner:
    path, graph = art.graph(name, kind, batch)
    x = _input(art.input_shape(batch))
    if custom_op:
        # The DyNetDynamicConv2d op needs the runner's registration; it keeps onnxruntime's default spinning.
        from .runtimes.onnxruntime_runtime import OnnxruntimeRunner

        runner = OnnxruntimeRunner(path, threads=cfg.threads, providers=providers)
        feeds = {runner.input_names[0]: x}
        runner.run(feeds)  # checks the inputs once; the timed loop calls the session directly
        session = runner.session
        graph += ", onnxruntime default thread spinning"
    else:
        session = _ort_session(path, cfg, providers)
        inp = session.get_inputs()[0]
        if any(isinstance(d, int) and d != s for d, s in zip(inp.shape, x.shape)):
            raise BenchError(f"{path.name} takes {inp.shape}, the benchmark feeds {list(x.shape)}")
        feeds = {inp.name: x}
        graph += ", worker spinning " + ("on" if cfg.ort_spinning else "off")

    def run() -> Any:
        return session.run(None, feeds)

    return _Runner(run, graph)


def art_is_dynamic(name: str) -> bool:
    from .models import model_info

    return model_info(name).dynamic


def check_backend(backend: str) -> None:
    """Raise :class:`BackendUnavailable` (with the reason) when ``backend`` cannot run on this machine."""
    if backend == "onnxruntime-cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable(
                f"onnxruntime {ort.__version__} has no CUDAExecutionProvider here "
                f"(providers: {', '.join(ort.get_available_providers())})"
            )
    elif backend == "tensorrt":
        from .runtimes.tensorrt_runtime import tensorrt_available

        ok, why = tensorrt_available()
        if not ok:
            raise BackendUnavailable(f"TensorRT is not installed here ({why})")
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("TensorRT needs a CUDA GPU; torch.cuda.is_available() is False")
    elif backend == "onnxruntime-fused":
        try:
            from . import fuse  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable(f"the fuse pass is not available ({exc})") from None


def _graph_kind(name: str, backend: str) -> str | None:
    if backend == "torch":
        return None
    if not art_is_dynamic(name):
        return "portable"  # a static model has one graph on every onnxruntime backend and TensorRT
    return {"onnxruntime": "deploy", "onnxruntime-portable": "portable", "onnxruntime-cuda": "portable",
            "onnxruntime-fused": "fused", "tensorrt": "fused"}[backend]


def prepare(art: _Artefacts, name: str, backend: str, batch: int) -> None:
    """Export (and fuse, build) what ``backend`` needs, before the memory of the run is measured."""
    art.flops(name)
    kind = _graph_kind(name, backend)
    try:
        if kind is not None:
            art.graph(name, kind, batch)
        if backend == "tensorrt":
            from .engine_build import Profile, build_engine

            path, _ = art.graph(name, kind, batch)
            engine = art.workdir / f"{path.stem}.b{batch}.engine"
            if not engine.exists():
                build_engine(path, engine, profile=Profile(batch=(batch, batch, batch)))
    except DynetDeployError as exc:
        if backend in ("onnxruntime-fused", "tensorrt"):
            raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from None
        raise


def open_runner(art: _Artefacts, name: str, backend: str, batch: int, cfg: BenchConfig) -> _Runner:
    if backend == "torch":
        return _open_torch(art, name, batch, cfg)
    kind = _graph_kind(name, backend)
    if backend == "tensorrt":
        from .runtimes.tensorrt_runtime import TensorRTRunner

        path, graph = art.graph(name, kind, batch)
        runner = TensorRTRunner(art.workdir / f"{path.stem}.b{batch}.engine")
        feeds = {runner.input_names[0]: _input(art.input_shape(batch))}
        return _Runner(lambda: runner.run(feeds), graph + ", TensorRT fp32 (timing includes host<->device copies)")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if backend == "onnxruntime-cuda" else None
    if kind == "fused":
        # The DyNetDynamicConv2d op runs in Python through torch: with torch's OpenMP pool at N threads its idle
        # workers spin against onnxruntime's threads and slow the baseline's interleaved runs (measured: 4-5x).
        import torch

        torch.set_num_threads(1)
    return _open_onnxruntime(art, name, batch, cfg, kind, providers, custom_op=backend == "onnxruntime-fused")


# ---- the benchmark --------------------------------------------------------------------------------------------------

def interleaved_latency(calls: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each callable, timed in alternating rounds (order reversed every other round) so
    that machine noise hits all of them alike."""
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for i in range(repeats):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            t0 = time.perf_counter()
            calls[name]()
            samples[name].append(time.perf_counter() - t0)
    return samples


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> BenchResult:
    """Benchmark every unit (pair or single) on every backend and batch size of ``cfg``."""
    cfg.validate()
    machine = machine_info()
    memory = PeakMemory()
    rows: list[BenchRow] = []
    skipped: list[dict[str, str]] = []
    units = plan_units(cfg.models)
    with tempfile.TemporaryDirectory(prefix="dynet-bench-") as tmp:
        workdir = Path(cfg.keep_onnx_dir) if cfg.keep_onnx_dir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        art = _Artefacts(cfg, workdir)
        for unit in units:
            for backend in cfg.backends:
                for batch in cfg.batch_sizes:
                    runners: dict[str, _Runner] = {}
                    mem: dict[str, tuple[float, float]] = {}
                    try:
                        check_backend(backend)
                        for name in unit:
                            prepare(art, name, backend, batch)
                        for name in unit:
                            memory.reset()
                            before = memory.current_mb()
                            runner = open_runner(art, name, backend, batch, cfg)
                            for _ in range(max(1, cfg.warmup)):
                                runner.run()
                            peak = memory.peak_mb()
                            runners[name] = runner
                            mem[name] = (peak, peak - before)
                    except BackendUnavailable as exc:
                        reason = str(exc)
                        log(f"skip {backend} for {', '.join(unit)} (batch {batch}): {reason}")
                        skipped.append({"backend": backend, "models": ", ".join(unit), "batch": str(batch), "reason": reason})
                        runners.clear()
                        gc.collect()
                        continue
                    log(f"timing {' vs '.join(unit)} on {backend}, batch {batch}: {cfg.repeats} interleaved rounds")
                    samples = interleaved_latency({n: r.run for n, r in runners.items()}, cfg.repeats, cfg.warmup)
                    unit_rows = {}
                    for name in unit:
                        stats = latency_stats(samples[name])
                        fl = art.flops(name)
                        unit_rows[name] = BenchRow(
                            model=name, backend=backend, batch=batch, graph=runners[name].graph, latency=stats,
                            throughput_ips=batch / (stats["median_ms"] / 1e3), peak_rss_mb=mem[name][0],
                            rss_delta_mb=mem[name][1], mflops=fl.conv_linear_macs / 1e6,
                            mflops_with_overhead=fl.total_macs / 1e6,
                        )
                    if len(unit) == 2:
                        dy, base = unit
                        r = unit_rows[dy]
                        r.baseline = base
                        r.speedup_vs_baseline = unit_rows[base].latency["median_ms"] / r.latency["median_ms"]
                        r.flops_ratio_vs_baseline = unit_rows[base].mflops / r.mflops
                        rows += [unit_rows[base], r]
                    else:
                        rows.append(unit_rows[unit[0]])
                    runners.clear()
                    gc.collect()
    machine["load_average_end"] = machine_info()["load_average"]
    config = asdict(cfg)
    config["input_size"] = list(cfg.input_size)
    return BenchResult(machine, config, rows, skipped, memory.method)


# ---- views ---------------------------------------------------------------------------------------------------------

def format_table(result: BenchResult) -> str:
    header = ["model", "backend", "batch", "median ms", "p90 ms", "img/s", "peak MB", "+MB", "MFLOPs", "speedup", "FLOPs ratio"]
    data = []
    for r in result.rows:
        data.append([
            r.model, r.backend, str(r.batch), f"{r.latency['median_ms']:.2f}", f"{r.latency['p90_ms']:.2f}",
            f"{r.throughput_ips:.1f}", f"{r.peak_rss_mb:.0f}", f"{r.rss_delta_mb:.0f}", f"{r.mflops:.1f}",
            "-" if r.speedup_vs_baseline is None else f"{r.speedup_vs_baseline:.2f}x",
            "-" if r.flops_ratio_vs_baseline is None else f"{r.flops_ratio_vs_baseline:.2f}x",
        ])
    widths = [max(len(x) for x in col) for col in zip(header, *data)] if data else [len(h) for h in header]
    left = {0, 1}

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), line(["-" * w for w in widths])] + [line(c) for c in data]
    m = result.machine
    out.append("")
    out.append(
        f"{m.get('cpu')}, {m.get('logical_cores')} logical cores, {result.config['threads']} threads; "
        f"onnxruntime {m.get('onnxruntime')}, torch {m.get('torch')}; input {result.config['input_size'][0]}x"
        f"{result.config['input_size'][1]}; {result.config['repeats']} interleaved rounds after {result.config['warmup']} warm-up runs"
    )
    out.append(
        "speedup: baseline median / Dy median, same backend and batch, timed interleaved; FLOPs ratio: baseline / Dy "
        "conv+linear multiply-adds. peak MB: process RSS high-water mark while loading and warming up the model; "
        "+MB: that minus the RSS before loading."
    )
    for s in result.skipped:
        out.append(f"skipped {s['backend']} ({s['models']}, batch {s['batch']}): {s['reason']}")
    return "\n".join(out)


def write_json(result: BenchResult, path: str | Path) -> Path:
    path = check_output_path(path, BenchError)
    with atomic_path(path, BenchError) as tmp:
        Path(tmp).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return path


def plot_png(result: BenchResult, path: str | Path) -> Path:
    """Median latency per model (bars, p90 as error bar), one panel per batch size, backends side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = check_output_path(path, BenchError)
    batches = sorted({r.batch for r in result.rows}) or [1]
    backends = [b for b in BACKENDS if any(r.backend == b for r in result.rows)]
    fig, axes = plt.subplots(len(batches), 1, figsize=(max(6.0, 1.3 * len({r.model for r in result.rows}) + 3), 3.6 * len(batches)), squeeze=False)
    for ax, batch in zip(axes[:, 0], batches):
        rows = [r for r in result.rows if r.batch == batch]
        models = list(dict.fromkeys(r.model for r in rows))
        width = 0.8 / max(1, len(backends))
        for j, backend in enumerate(backends):
            xs, ys, errs, labels = [], [], [], []
            for i, m in enumerate(models):
                r = next((r for r in rows if r.model == m and r.backend == backend), None)
                if r is None:
                    continue
                xs.append(i + (j - (len(backends) - 1) / 2) * width)
                ys.append(r.latency["median_ms"])
                errs.append(max(0.0, r.latency["p90_ms"] - r.latency["median_ms"]))
                labels.append("" if r.speedup_vs_baseline is None else f"{r.speedup_vs_baseline:.2f}x")
            bars = ax.bar(xs, ys, width, yerr=[np.zeros(len(errs)), errs], label=backend, capsize=2)
            for bar, err, label in zip(bars, errs, labels):
                if label:
                    ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height() + err), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("median latency (ms)")
        ax.set_title(f"batch {batch}, {result.config['threads']} threads (label: speedup over baseline)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, BenchError) as tmp:
        fig.savefig(str(tmp), dpi=110, format="png")
    plt.close(fig)
    return path


def write_outputs(result: BenchResult, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create the output folder {out}: {exc}") from None
    table = out / "bench.txt"
    with atomic_path(table, BenchError) as tmp:
        Path(tmp).write_text(format_table(result) + "\n")
    return {"table": table, "json": write_json(result, out / "bench.json"), "png": plot_png(result, out / "bench.png")}
