"""Random inputs: fresh random inputs per batch size through PyTorch and the backend, compared with Polygraphy.

Inputs and reference outputs are saved in Polygraphy's JSON formats so that the printed command
(:func:`replay_commands`: ``polygraphy run ... --load-inputs ... --load-outputs ...``, or ``dynet-deploy run ...
--load-outputs ...`` for a fused graph) replays the check by hand."""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..backends import BackendSession
from ..errors import ValidationError
from ..fileio import atomic_path
from ..graph import load_onnx
from .compare import TOLERANCES, OutputCheck, Tolerance, errors, non_finite_count


@dataclass
class RandomReport:
    model: str
    backend: str
    precision: str
    tolerance: Tolerance
    batch_sizes: list[int]
    checks: list[OutputCheck] = field(default_factory=list)
    polygraphy_passed: bool | None = None
    replay_command: str = ""  # runs on this machine
    replay_tensorrt: str = ""  # the same check on TensorRT, where TensorRT and its plugin library are present
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
                f"{c.batch:>5}  {c.output[:12]:<12} {str(c.shape):<20} {_num(c.max_abs, c):>10} {_num(c.rel, c):>10}  "
                + c.verdict()
            )
        t = self.tolerance
        rows.append(
            f"{self.backend} {self.precision}: tolerance max-abs <= {t.max_abs:g}, rel <= {t.rel:g}; "
            f"Polygraphy comparator: {'passed' if self.polygraphy_passed else 'FAILED' if self.polygraphy_passed is False else 'not run'}"
        )
        return "\n".join(rows)


def _num(value: float, check: OutputCheck) -> str:
    # errors() gives inf for a non-finite output; the table says NaN where NaN is what happened.
    return "NaN" if (check.non_finite or check.reference_non_finite) else f"{value:.3e}"


@dataclass
class GraphInput:
    name: str
    shape: list[int | str | None]  # str/None: symbolic
    dtype: np.dtype
    output_names: list[str]
    # The precision the graph computes in (dynet_deploy.precision.graph_precision): fp16 for an fp16-math graph
    # with fp32 inputs and outputs too.
    precision: str = "fp32"

    @property
    def fixed_batch(self) -> int | None:
        d = self.shape[0]
        return d if isinstance(d, int) and d > 0 else None


def read_graph_input(onnx_path: str | Path) -> GraphInput:
    """The single image input of an exported graph (name, shape with symbolic dims, dtype) and its outputs."""
    from onnx import helper

    path = Path(onnx_path)
    model = load_onnx(path, ValidationError, external_data=False)
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
    from ..precision import graph_precision

    return GraphInput(inputs[0].name, shape, dtype, [o.name for o in model.graph.output], graph_precision(model))


def _reference_runner(model, graph: GraphInput):
    from ..backends.torch_reference import TorchRunner

    return TorchRunner(model, [graph.name], graph.output_names)


def replay_commands(
    model_path: Path, backend: str, uses_plugin: bool, inputs_json: Path, ref_json: Path, tol: Tolerance
) -> list[str]:
    """Commands that replay the check by hand; the first runs on this machine.

    A portable graph replays in ``polygraphy run --onnxrt``, an engine in ``polygraphy run --trt --plugins``. A fused
    graph on onnxruntime replays in ``dynet-deploy run --load-outputs`` (Polygraphy's --onnxrt cannot load the op
    library), at the same max-abs and relative bounds as the check; where TensorRT and its plugin library are present,
    a second command replays it on TensorRT.
    """
    from ..backends import get_backend

    q = shlex.quote
    atol, rtol = tol.polygraphy()
    tail = f"--load-inputs {q(str(inputs_json))} --load-outputs {q(str(ref_json))} --atol {atol:g} --rtol {rtol:g}"
    impl = get_backend(backend)
    commands = []
    args, note = impl.replay_args(uses_plugin)
    if args:
        commands.append(
            f"polygraphy run {q(str(model_path))} {' '.join(args)} {tail}" + (f"   # {note}" if note else "")
        )
    elif impl.artifact_is_graph:
        commands.append(
            f"dynet-deploy run {q(str(model_path))} --inputs {q(str(inputs_json))} --load-outputs {q(str(ref_json))} "
            f"--atol {tol.max_abs:g} --rtol {tol.rel:g}"
        )
    if impl.artifact_is_graph and uses_plugin:
        trt = get_backend("tensorrt")
        if trt.availability():
            trt_args, _ = trt.replay_args(True)
            if trt_args:
                commands.append(
                    f"polygraphy run {q(str(model_path))} {' '.join(trt_args)} {tail}   # the same graph on TensorRT"
                )
    return commands


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
    graph_onnx: str | Path | None = None,
    precision: str | None = None,
) -> RandomReport:
    """Compare ``model`` (PyTorch, eval) with the graph at ``model_path`` on fresh random inputs.

    ``graph_onnx``: for a TensorRT engine, the ONNX it was built from (its input and output names and shapes).
    ``precision``: the precision whose tolerance applies when ``tolerance`` is None (default: the graph's own,
    :func:`dynet_deploy.precision.graph_precision`).
    """
    from polygraphy import json as pjson
    from polygraphy.comparator import Comparator, CompareFunc, RunResults

    model_path = Path(model_path)
    graph = read_graph_input(graph_onnx or model_path)
    precision = precision or graph.precision
    if precision not in TOLERANCES:
        raise ValidationError(f"precision {precision!r}: choose one of {', '.join(TOLERANCES)}")
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
        raise ValidationError(
            f"the graph's input is fixed at {hw[0]}x{hw[1]}; --input-size {input_size[0]} {input_size[1]} does not fit"
        )

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
    try:
        backend_results = Comparator.run([session.polygraphy_runner()], data_loader=feeds)
    except Exception as exc:  # the backend's own failure, passed up through Polygraphy's runner
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ValidationError(f"{backend} failed to run {model_path.name}: {first[:400]}") from None
    for b, ref, it in zip(batches, ref_outputs, backend_results[0][1]):
        for name, r in ref.items():
            if name not in it:
                raise ValidationError(f"backend output lacks {name!r}; it has {list(it.keys())}")
            max_abs, rel = errors(it[name], r)
            bad_out, bad_ref = non_finite_count(it[name]), non_finite_count(r)
            ok = tol.allows(max_abs, rel) and not bad_out and not bad_ref
            report.checks.append(OutputCheck(b, name, list(r.shape), max_abs, rel, ok, bad_out, bad_ref))
    combined = RunResults()
    combined.append(reference[0])
    combined.append(backend_results[0])
    # Polygraphy's check is element-wise: |out - ref| <= atol or |out - ref| / |ref| <= rtol (Tolerance.polygraphy).
    try:
        from polygraphy.comparator import SimpleCompareFunc as simple_compare
    except ImportError:  # Polygraphy < 0.50
        simple_compare = CompareFunc.simple
    accuracy = Comparator.compare_accuracy(
        combined,
        compare_func=simple_compare(atol=tol.polygraphy()[0], rtol=tol.polygraphy()[1], check_error_stat="max"),
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
        commands = replay_commands(model_path, backend, session.uses_plugin, inputs_json, ref_json, tol)
        report.replay_command = commands[0] if commands else ""
        report.replay_tensorrt = next((c for c in commands[1:] if " --trt " in c), "")
    return report
