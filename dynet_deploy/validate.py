"""Validation: does the deployed graph compute what the PyTorch model computes?

Two checks, both against the PyTorch reference (BatchNorms unfolded: the model as trained):

* **Random inputs** (``validate_random``): fresh random inputs per batch size are run through PyTorch and
  through the backend with Polygraphy's ``Comparator``; max-abs and relative error
  (``||out - ref|| / ||ref||``) are measured per output and held to tolerances stated per precision.
  Inputs and reference outputs are saved in Polygraphy's JSON formats so that the printed
  ``polygraphy run ... --load-inputs ... --load-outputs ...`` command replays the check by hand.
* **A data set** (``validate_dataset``): top-1 of PyTorch and of the backend over a whole test set
  (classification), or mIoU on generated images and masks (segmentation), and their agreement.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .errors import DynetDeployError, MissingDependencyError, ValidationError
from .fileio import atomic_path, atomic_write_text


@dataclass(frozen=True)
class Tolerance:
    """``max_abs``: largest allowed |out - ref|; ``rel``: largest allowed ||out - ref|| / ||ref||."""

    max_abs: float
    rel: float


# fp32: the graph computes the same function in the same precision; only summation order differs.
# fp16: 10-bit mantissa (about 1e-3 per op, accumulated over depth).
TOLERANCES = {"fp32": Tolerance(1e-4, 1e-5), "fp16": Tolerance(5e-2, 1e-2)}
# Agreement targets for data-set parity.
AGREEMENT_TARGETS = {"fp32": 1.0, "fp16": 0.999}

BACKENDS = ("onnxruntime", "tensorrt")


@dataclass
class OutputCheck:
    batch: int
    output: str
    shape: list[int]
    max_abs: float
    rel: float
    passed: bool


@dataclass
class RandomReport:
    model: str
    backend: str
    precision: str
    tolerance: Tolerance
    batch_sizes: list[int]
    checks: list[OutputCheck] = field(default_factory=list)
    polygraphy_passed: bool | None = None
    replay_command: str = ""
    files: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks) and self.polygraphy_passed is not False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        d["max_abs"] = max((c.max_abs for c in self.checks), default=None)
        d["rel"] = max((c.rel for c in self.checks), default=None)
        return d

    def table(self) -> str:
        rows = [f"{'batch':>5}  {'output':<12} {'shape':<20} {'max-abs':>10} {'rel':>10}  result"]
        for c in self.checks:
            rows.append(
                f"{c.batch:>5}  {c.output[:12]:<12} {str(c.shape):<20} {c.max_abs:>10.3e} {c.rel:>10.3e}  "
                + ("ok" if c.passed else "MISMATCH")
            )
        t = self.tolerance
        rows.append(
            f"{self.backend} {self.precision}: tolerance max-abs <= {t.max_abs:g}, rel <= {t.rel:g}; "
            f"Polygraphy comparator: {'passed' if self.polygraphy_passed else 'FAILED' if self.polygraphy_passed is False else 'not run'}"
        )
        return "\n".join(rows)


def errors(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max-abs, relative) error of ``out`` against ``ref``, computed in float64."""
    o = np.asarray(out, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if o.shape != r.shape:
        raise ValidationError(f"output shape {list(o.shape)} differs from the reference's {list(r.shape)}")
    diff = o - r
    max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
    denom = float(np.linalg.norm(r))
    rel = float(np.linalg.norm(diff) / denom) if denom > 0 else (0.0 if max_abs == 0 else float("inf"))
    if not np.all(np.isfinite(o)):
        return float("inf"), float("inf")
    return max_abs, rel


# ------------------------------------------------------------------------------------------- backends


@dataclass
class GraphInput:
    name: str
    shape: list[int | str | None]  # str/None: symbolic
    dtype: np.dtype
    output_names: list[str]

    @property
    def fixed_batch(self) -> int | None:
        d = self.shape[0]
        return d if isinstance(d, int) and d > 0 else None

    @property
    def precision(self) -> str:
        return "fp16" if self.dtype == np.float16 else "fp32"


def read_graph_input(onnx_path: str | Path) -> GraphInput:
    """The single image input of an exported graph (name, shape with symbolic dims, dtype) and its outputs."""
    import onnx
    from onnx import helper

    path = Path(onnx_path)
    if not path.is_file():
        raise ValidationError(f"model {str(path)!r} not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ValidationError(f"{str(path)!r} is not an ONNX model ({type(exc).__name__})") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValidationError(f"expected a graph with one image input, {path.name} has {[i.name for i in inputs]}")
    t = inputs[0].type.tensor_type
    shape: list[int | str | None] = []
    for d in t.shape.dim:
        shape.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    if len(shape) != 4:
        raise ValidationError(f"input {inputs[0].name!r} has rank {len(shape)}; an NCHW image input has rank 4")
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))
    return GraphInput(inputs[0].name, shape, dtype, [o.name for o in model.graph.output])


class BackendSession:
    """One backend over one graph: ``run(feeds) -> outputs`` and a Polygraphy runner for the comparator."""

    def __init__(self, backend: str, model_path: str | Path, threads: int | None = None) -> None:
        if backend not in BACKENDS:
            raise ValidationError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.model_path = Path(model_path)
        if backend == "onnxruntime":
            from .runtimes.onnxruntime_runtime import OnnxruntimeRunner

            self._runner = OnnxruntimeRunner(model_path, threads=threads)
            self.uses_plugin = self._runner.uses_custom_op
        else:
            from .runtimes import tensorrt_runtime

            self._runner = tensorrt_runtime.TensorRTRunner(model_path)
            self.uses_plugin = True

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._runner.run(feeds)

    def check_inputs(self, feeds: Mapping[str, np.ndarray]) -> None:
        check = getattr(self._runner, "check_inputs", None)
        if check is not None:
            check(feeds)

    def polygraphy_runner(self):
        if self.backend == "onnxruntime":
            from polygraphy.backend.onnxrt import OnnxrtRunner

            return OnnxrtRunner(self._runner.session, name="onnxruntime")
        return self._runner.polygraphy_runner()


# ------------------------------------------------------------------------------------ random inputs


def _reference_runner(model, graph: GraphInput):
    from .runtimes.torch_runtime import TorchRunner

    return TorchRunner(model, [graph.name], graph.output_names)


def replay_command(model_path: Path, backend: str, uses_plugin: bool, inputs_json: Path, ref_json: Path, tol: Tolerance) -> str:
    """The ``polygraphy run`` command that replays the check by hand."""
    q = shlex.quote
    tail = f"--load-inputs {q(str(inputs_json))} --load-outputs {q(str(ref_json))} --atol {tol.max_abs:g} --rtol {tol.rel:g}"
    if backend == "onnxruntime" and not uses_plugin:
        return f"polygraphy run {q(str(model_path))} --onnxrt {tail}"
    from .plugin_lib import tensorrt_plugin_path

    plugin = tensorrt_plugin_path()
    plugin_arg = q(str(plugin)) if plugin else "$TensorRT_PLUGIN_LIB"
    cmd = f"polygraphy run {q(str(model_path))} --trt --plugins {plugin_arg} {tail}"
    if backend == "onnxruntime":
        # Polygraphy's --onnxrt cannot load onnxruntime custom-op libraries; TensorRT replays the fused graph.
        cmd += "   # fused graph: Polygraphy's --onnxrt cannot load custom ops, so this replays on TensorRT"
    return cmd


def validate_random(
    model,
    model_path: str | Path,
    backend: str = "onnxruntime",
    batch_sizes: Sequence[int] = (1, 4, 3),
    input_size: tuple[int, int] | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    threads: int | None = None,
    tolerance: Tolerance | None = None,
    model_name: str = "",
) -> RandomReport:
    """Compare ``model`` (PyTorch, eval) with the graph at ``model_path`` on fresh random inputs."""
    from polygraphy import json as pjson
    from polygraphy.comparator import Comparator, CompareFunc, RunResults

    model_path = Path(model_path)
    graph = read_graph_input(model_path)
    precision = graph.precision
    tol = tolerance or TOLERANCES[precision]
    if graph.fixed_batch is not None:
        batches = [graph.fixed_batch]
    else:
        batches = list(dict.fromkeys(int(b) for b in batch_sizes))
        if not batches or min(batches) < 1:
            raise ValidationError(f"batch sizes must be positive, got {list(batch_sizes)}")
    c = graph.shape[1]
    if not isinstance(c, int):
        raise ValidationError(f"input {graph.name!r} has a symbolic channel dimension; cannot make inputs")
    hw = []
    for axis in (2, 3):
        d = graph.shape[axis]
        if isinstance(d, int) and d > 0:
            hw.append(d)
        elif input_size is not None:
            hw.append(int(input_size[axis - 2]))
        else:
            raise ValidationError(f"input {graph.name!r} has a dynamic {'HW'[axis - 2]}; pass --input-size H W")
    if input_size is not None and tuple(hw) != tuple(input_size):
        raise ValidationError(f"the graph's input is fixed at {hw[0]}x{hw[1]}; --input-size {input_size[0]} {input_size[1]} does not fit")

    session = BackendSession(backend, model_path, threads=threads)
    ref_runner = _reference_runner(model, graph)
    rng = np.random.default_rng(seed)
    feeds = []
    for b in batches:
        x = rng.standard_normal((b, c, hw[0], hw[1]), dtype=np.float32)
        feeds.append({graph.name: x.astype(graph.dtype)})
    session.check_inputs(feeds[0])

    # PyTorch runs in fp32 on the same (possibly fp16-rounded) inputs.
    ref_outputs = [ref_runner.run({graph.name: f[graph.name].astype(np.float32)}) for f in feeds]

    report = RandomReport(model_name or model_path.stem, backend, precision, tol, batches)
    reference = RunResults()
    reference.add(ref_outputs, runner_name="pytorch")
    backend_results = Comparator.run([session.polygraphy_runner()], data_loader=feeds)
    for b, ref, it in zip(batches, ref_outputs, backend_results[0][1]):
        for name, r in ref.items():
            if name not in it:
                raise ValidationError(f"backend output lacks {name!r}; it has {list(it.keys())}")
            max_abs, rel = errors(it[name], r)
            report.checks.append(OutputCheck(b, name, list(r.shape), max_abs, rel, max_abs <= tol.max_abs and rel <= tol.rel))
    combined = RunResults()
    combined.append(reference[0])
    combined.append(backend_results[0])
    # Polygraphy's check is element-wise: |out - ref| <= atol or |out - ref| / |ref| <= rtol.
    try:
        from polygraphy.comparator import SimpleCompareFunc as simple_compare
    except ImportError:  # Polygraphy < 0.50
        simple_compare = CompareFunc.simple
    accuracy = Comparator.compare_accuracy(
        combined, compare_func=simple_compare(atol=tol.max_abs, rtol=tol.rel, check_error_stat="max")
    )
    report.polygraphy_passed = bool(accuracy)

    if out_dir is not None:
        out = Path(out_dir)
        if not out.is_dir():
            raise ValidationError(f"output folder {str(out)!r} does not exist")
        inputs_json, ref_json = out / "inputs.json", out / "reference.json"
        with atomic_path(inputs_json, ValidationError) as tmp:
            pjson.save_json(feeds, str(tmp))
        with atomic_path(ref_json, ValidationError) as tmp:
            reference.save(str(tmp))
        report.files = {"inputs": str(inputs_json), "reference": str(ref_json)}
        report.replay_command = replay_command(model_path, backend, session.uses_plugin, inputs_json, ref_json, tol)
    return report


# --------------------------------------------------------------------------------------- data sets


@dataclass
class DatasetReport:
    model: str
    backend: str
    precision: str
    dataset: str
    samples: int
    task: str
    reference_metric: float  # top-1 or mIoU of PyTorch against the labels
    backend_metric: float  # the same for the backend
    agreement: float  # fraction of samples (pixels for segmentation) where both predict the same class
    target_agreement: float
    seconds: float = 0.0
    notes: str = ""

    @property
    def passed(self) -> bool:
        return self.agreement >= self.target_agreement

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def table(self) -> str:
        metric = "top-1" if self.task == "classification" else "mIoU"
        return "\n".join(
            [
                f"{'':<14}{metric:>10}",
                f"{'pytorch':<14}{self.reference_metric * 100:>9.2f}%",
                f"{self.backend:<14}{self.backend_metric * 100:>9.2f}%",
                f"agreement {self.agreement * 100:.3f}% over {self.samples} {'images' if self.task == 'classification' else 'pixels'} "
                f"of {self.dataset} (target >= {self.target_agreement * 100:g}%): {'ok' if self.passed else 'MISMATCH'}",
            ]
        )


def _batches(n: int, batch: int) -> Iterable[slice]:
    for s in range(0, n, batch):
        yield slice(s, min(n, s + batch))


def _run_in_batches(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int, fixed: bool, progress: bool, desc: str) -> np.ndarray:
    from tqdm import tqdm

    outs = []
    for sl in tqdm(list(_batches(len(images), batch)), desc=desc, disable=not progress, leave=False, unit="batch"):
        chunk = images[sl]
        n = len(chunk)
        if fixed and n < batch:  # a fixed-batch graph: pad the last chunk, drop the padding's outputs
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        outs.append(run(chunk)[:n])
    return np.concatenate(outs)


def validate_dataset(
    model,
    model_path: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    dataset: str,
    backend: str = "onnxruntime",
    batch: int = 250,
    threads: int | None = None,
    progress: bool = False,
    model_name: str = "",
    num_classes: int | None = None,
    reference_logits: np.ndarray | None = None,
) -> DatasetReport:
    """Top-1 (or mIoU for segmentation, where ``labels`` are masks) of PyTorch and the backend, and agreement.

    ``reference_logits``: PyTorch's outputs on ``images`` if already computed (several graphs of one model
    are checked against one reference run); they must come from :func:`reference_outputs` on the same images.
    """
    model_path = Path(model_path)
    graph = read_graph_input(model_path)
    session = BackendSession(backend, model_path, threads=threads)
    fixed = graph.fixed_batch is not None
    bs = graph.fixed_batch or batch
    out_name = graph.output_names[0]
    images = np.ascontiguousarray(images, dtype=np.float32)
    t0 = time.perf_counter()

    def run_backend(x):
        return session.run({graph.name: x.astype(graph.dtype)})[out_name].astype(np.float32)

    if reference_logits is None:
        ref_logits = reference_outputs(model, images, bs, graph.dtype, progress)
    else:
        ref_logits = np.asarray(reference_logits)
        if len(ref_logits) != len(images):
            raise ValidationError(f"reference_logits has {len(ref_logits)} rows for {len(images)} images")
    be_logits = _run_in_batches(run_backend, images, bs, fixed, progress, backend)
    ref_pred, be_pred = ref_logits.argmax(1), be_logits.argmax(1)
    segmentation = labels.ndim == 3
    if segmentation:
        k = num_classes or int(ref_logits.shape[1])
        ref_metric, be_metric = mean_iou(ref_pred, labels, k), mean_iou(be_pred, labels, k)
    else:
        ref_metric, be_metric = float((ref_pred == labels).mean()), float((be_pred == labels).mean())
    agreement = float((ref_pred == be_pred).mean())
    return DatasetReport(
        model_name or model_path.stem,
        backend,
        graph.precision,
        dataset,
        int(ref_pred.size if segmentation else len(labels)),
        "segmentation" if segmentation else "classification",
        ref_metric,
        be_metric,
        agreement,
        AGREEMENT_TARGETS[graph.precision],
        time.perf_counter() - t0,
    )


def reference_outputs(model, images: np.ndarray, batch: int = 250, dtype=np.float32, progress: bool = False) -> np.ndarray:
    """PyTorch's first output on ``images`` in batches (inputs rounded through ``dtype`` as a backend sees them)."""
    import torch

    def run(x):
        with torch.no_grad():
            out = model(torch.from_numpy(np.ascontiguousarray(x.astype(dtype).astype(np.float32))))
        out = out if isinstance(out, torch.Tensor) else (list(out.values())[0] if isinstance(out, dict) else out[0])
        return out.numpy()

    return _run_in_batches(run, np.asarray(images, dtype=np.float32), batch, False, progress, "pytorch")


def mean_iou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """Mean intersection-over-union over the classes present in ``pred`` or ``target``."""
    ious = []
    for c in range(num_classes):
        p, t = pred == c, target == c
        union = np.logical_or(p, t).sum()
        if union:
            ious.append(np.logical_and(p, t).sum() / union)
    return float(np.mean(ious)) if ious else 1.0


def synthetic_segmentation(n: int, height: int, width: int, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generated images and masks: rectangles and ellipses of random classes, each class a colour plus noise.

    No segmentation data set can be downloaded here; these give a task with known masks so that mIoU
    parity between PyTorch and a backend is measured on structured inputs, not only on noise.
    """
    rng = np.random.default_rng(seed)
    palette = rng.uniform(-1.5, 1.5, size=(num_classes, 3)).astype(np.float32)
    images = np.empty((n, 3, height, width), np.float32)
    masks = np.zeros((n, height, width), np.int64)
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(n):
        mask = np.zeros((height, width), np.int64)
        for _ in range(rng.integers(2, 6)):
            c = int(rng.integers(1, num_classes))
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            ry, rx = rng.uniform(height / 8, height / 3), rng.uniform(width / 8, width / 3)
            if rng.random() < 0.5:
                shape = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            else:
                shape = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            mask[shape] = c
        masks[i] = mask
        images[i] = palette[mask].transpose(2, 0, 1) + 0.3 * rng.standard_normal((3, height, width), dtype=np.float32)
    return images, masks


# ------------------------------------------------------------------------------------------ reports


def write_report(path: str | Path, payload: dict[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, default=_jsonable) + "\n", ValidationError)


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def require_backend(backend: str) -> None:
    """Raise MissingDependencyError early where a backend cannot run here."""
    if backend == "tensorrt":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise MissingDependencyError(
                "the tensorrt backend needs TensorRT (the `tensorrt` Python package with its libraries) and a CUDA GPU; "
                "neither is installed here. Use --backend onnxruntime, or run `dynet-deploy doctor` on the GPU machine"
            ) from None
    elif backend != "onnxruntime":
        raise ValidationError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


__all__ = [
    "AGREEMENT_TARGETS",
    "BACKENDS",
    "DatasetReport",
    "DynetDeployError",
    "RandomReport",
    "TOLERANCES",
    "Tolerance",
    "errors",
    "mean_iou",
    "read_graph_input",
    "reference_outputs",
    "synthetic_segmentation",
    "validate_dataset",
    "validate_random",
    "write_report",
]
