"""A recipe end to end: export -> fuse -> build -> validate -> latency, every artifact in one folder.

``run_deploy(recipe, out_dir)`` takes the recipe's checkpoint through each stage's library function (the ones
behind ``dynet-deploy export|fuse|build|validate|bench``) and writes into ``out_dir``:

- ``model.onnx`` (portable graph), ``model.kernel.onnx`` (the form ``fuse`` rewrites), ``model.plugin.onnx``
  (fused), ``model.plugin.fp16.onnx`` (fused, fp16 math, fp32 I/O; checked on onnxruntime) where the recipe lists
  fp16; ``model.engine`` (and ``model.fp16.engine``) where TensorRT is present, else the step is skipped with
  the reason; ``baseline.onnx`` when the recipe names a latency baseline;
- ``validate/<graph>/inputs.json`` + ``reference.json`` (Polygraphy's formats, replayable by hand);
- ``triton/`` with ``triton=True``: a Triton Inference Server model repository (:mod:`dynet_deploy.triton`);
- ``recipe.json`` (the recipe with its defaults filled in), ``report.json`` and ``report.txt``.

Everything is written into a hidden staging folder beside ``out_dir`` and renamed into place at the end, so an
error in any stage leaves nothing half-written. Failed checks (a parity mismatch) still write the folder, with
``passed: false`` in the report; the CLI then exits 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import DataError, DeployError, MissingDependencyError
from .fileio import _umask, atomic_write_text, check_output_folder, mark_output_folder
from .input_size import InputSize
from .progress import get_logger, progress_enabled
from .recipe import Recipe

if TYPE_CHECKING:
    from .triton import TritonOptions

log = get_logger(__name__)


@dataclass
class Step:
    name: str
    status: str  # "done" | "skipped" | "failed"
    detail: str
    seconds: float


@dataclass
class DeployResult:
    recipe: Recipe
    out_dir: Path
    steps: list[Step] = field(default_factory=list)
    parity: list[RandomParity | DatasetParity] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    dataset: str = ""
    engines: dict[str, str] = field(default_factory=dict)  # precision -> engine file name
    triton: dict[str, Any] | None = None
    # 1-minute load average before/after, cores other processes used meanwhile, bench.timing.busy_machine's verdict
    latency_load: dict[str, float | bool | None] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # dynet_deploy.provenance.provenance()
    notes: list[str] = field(default_factory=list)
    passed: bool = True

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe.to_dict(),
            "recipe_file": str(self.recipe.path) if self.recipe.path else None,
            "out_dir": str(self.out_dir),
            "passed": self.passed,
            "seconds": round(self.seconds, 2),
            "steps": [
                {"step": s.name, "status": s.status, "detail": s.detail, "seconds": round(s.seconds, 2)}
                for s in self.steps
            ],
            "parity": [asdict(p) for p in self.parity],
            "dataset": self.dataset,
            "latency": self.latency,
            "latency_load_average": self.latency_load,
            "engines": self.engines,
            "triton": self.triton,
            "artifacts": self.artifacts,
            "environment": self.environment,
            "provenance": self.provenance,
            "notes": self.notes,
        }


def run_deploy(
    recipe: Recipe,
    out_dir: str | Path | None = None,
    *,
    triton: bool = False,
    force: bool = False,
    dataset: str | None = None,
    limit: int | None = None,
    threads: int | None = None,
    triton_options: TritonOptions | None = None,
    progress: bool | None = None,
) -> DeployResult:
    """Run ``recipe`` end to end into ``out_dir`` (default ``out/<recipe name>``); see the module docstring.

    Each step is announced on the ``dynet_deploy.deploy`` logger when it starts and when it ends
    (:mod:`dynet_deploy.progress`); ``progress`` draws bars over the data-set passes (None: where stderr is a terminal).

    ``dataset`` / ``limit`` override the recipe's data set and sample count; ``threads`` its latency threads
    (also used for PyTorch and onnxruntime throughout). ``force`` replaces an existing non-empty ``out_dir``.
    ``triton_options``: how the Triton repository is served (:class:`dynet_deploy.triton.TritonOptions`).
    """
    out = Path(out_dir) if out_dir is not None else Path("out") / recipe.name
    _check_destination(out, force, recipe)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(stage, 0o777 & ~_umask())  # the folder is read by other users and services, as any the user makes
        mark_output_folder(stage, "deploy")  # a later --force may replace this folder, and only such folders
        result = _deploy_into(
            stage,
            out,
            recipe,
            triton=triton,
            dataset=dataset,
            limit=limit,
            threads=threads,
            triton_options=triton_options,
            progress=progress,
        )
        _publish(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return result


def check_deploy_flags(recipe: Recipe, args: Any) -> None:
    """The command line's flags against the recipe, before any stage: each given flag must apply, and be usable."""
    from .errors import RecipeError
    from .guards import check_library_dir, check_threads, refuse_unused_flags

    if recipe.dataset is None:
        refuse_unused_flags(
            (("--dataset", args.dataset is not None), ("--limit", args.limit is not None)),
            f"recipe {recipe.path or recipe.name} names no data set; add a 'dataset' to it for accuracy parity",
            RecipeError,
        )
    if not args.triton:
        refuse_unused_flags(
            (
                ("--op-library-dir", args.op_library_dir is not None),
                ("--plugin-dir", args.plugin_dir is not None),
                ("--copy-op-library", bool(getattr(args, "copy_op_library", False))),
                ("--instance-kind", getattr(args, "instance_kind", None) is not None),
                ("--gpu-accelerator", getattr(args, "gpu_accelerator", None) is not None),
            ),
            "these flags shape the Triton repository only; add --triton",
            RecipeError,
        )
    check_library_dir(args.op_library_dir, "--op-library-dir", RecipeError)
    check_library_dir(args.plugin_dir, "--plugin-dir", RecipeError)
    if args.triton:
        from .errors import TritonError

        try:
            triton_options(args).check()
        except TritonError as exc:
            raise RecipeError(str(exc)) from None
    if args.threads is not None:
        check_threads(args.threads, RecipeError, "--threads")
    else:
        check_threads(recipe.latency.threads, RecipeError, "latency.threads", f"recipe {recipe.path or recipe.name}: ")


def triton_options(args: Any) -> TritonOptions:
    """The command line's Triton flags as TritonOptions."""
    from .triton import TritonOptions

    return TritonOptions(
        op_library_dir=args.op_library_dir,
        plugin_library_dir=args.plugin_dir,
        copy_op_library=bool(getattr(args, "copy_op_library", False)),
        instance_kind=getattr(args, "instance_kind", None) or "cpu",
        gpu_accelerator=getattr(args, "gpu_accelerator", None) or "cuda",
    )


def _check_destination(out: Path, force: bool, recipe: Recipe) -> None:
    """Refuse, before any stage runs, an output folder whose replacement would harm (see check_output_folder)."""
    ckpt = recipe.checkpoint_path()
    inputs = [recipe.path, ckpt, ckpt.with_suffix(".json"), recipe.baseline_checkpoint_path()]
    check_output_folder(out, force, inputs, DeployError, "-o", written_before_marker=_deploy_report_inside)


def _deploy_report_inside(folder: Path) -> bool:
    """A deploy folder from before the marker: its report.json is a deploy report (validate's has other keys)."""
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(report, dict) and {"recipe", "steps", "artifacts", "out_dir"} <= report.keys()


def _publish(stage: Path, out: Path) -> None:
    """Move the finished staging folder onto ``out`` (replacing an old one only now that the new one is whole)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class RandomParity:
    """One graph (or engine) against PyTorch on fresh random inputs, at the recipe's tolerance."""

    graph: str
    backend: str
    precision: str
    check: str
    max_abs: float
    rel: float
    tolerance: dict[str, float]
    passed: bool
    replay: str  # a command that replays the check on this machine
    replay_tensorrt: str = ""  # the same check on TensorRT, where it is present

    def describe(self) -> str:
        return f"max-abs {self.max_abs:.2e}  rel {self.rel:.2e}"


@dataclass
class DatasetParity:
    """One graph (or engine) against PyTorch on a data set: both top-1s and their agreement."""

    graph: str
    backend: str
    precision: str
    check: str
    pytorch: float
    deployed: float
    agreement: float
    target: float | None
    passed: bool

    def describe(self) -> str:
        return f"top-1 {self.pytorch * 100:.2f}% vs {self.deployed * 100:.2f}%  agree {self.agreement * 100:.2f}%"


@dataclass
class _Deployment:
    """What the steps of one deploy share: the staging folder, the recipe, the options and what earlier steps made."""

    stage: Path
    out: Path
    recipe: Recipe
    res: DeployResult
    threads: int
    progress: bool
    total: int
    model: Any = None
    name: str = ""
    ckpt: Path | None = None
    ckpt_config: dict[str, Any] = field(default_factory=dict)
    base_ckpt: Path | None = None
    size: InputSize | None = None  # the recipe's input_shape, checked against the checkpoint
    trained_on: str | None = None
    portable: Path | None = None
    fused: Path | None = None
    fused_fp16: Path | None = None  # the fused graph in fp16 (fp32 I/O), where the recipe lists fp16
    engines: dict[str, Path] = field(default_factory=dict)
    engine_skip_reason: str = ""
    images: Any = None
    t0: float = 0.0

    def start(self, what: str) -> None:
        """Announce the next step (``what`` it does) and start its clock."""
        log.info(f"[{len(self.res.steps) + 1}/{self.total}] {what} ...")
        self.t0 = time.perf_counter()

    def step(self, name: str, status: str, detail: str) -> None:
        seconds = time.perf_counter() - self.t0
        self.res.steps.append(Step(name, status, detail, seconds))
        log.info(
            f"[{len(self.res.steps)}/{self.total}] {name}: {'' if status == 'done' else status + ': '}{detail} "
            f"({seconds:.1f} s)"
        )

    def targets(self) -> list[tuple[Path, str, str]]:
        """(artifact, backend, precision) of every graph and engine that is checked against PyTorch."""
        assert self.portable is not None and self.fused is not None
        rows = [(self.portable, "onnxruntime", "fp32"), (self.fused, "onnxruntime", "fp32")]
        if self.fused_fp16 is not None:
            rows.append((self.fused_fp16, "onnxruntime", "fp16"))
        return rows + [(path, "tensorrt", prec) for prec, path in self.engines.items()]

    def graph_onnx(self, backend: str) -> Path | None:
        """The ONNX a built artifact (an engine) came from: its input and output names and shapes."""
        from .backends import get_backend

        return None if get_backend(backend).artifact_is_graph else self.fused


def _deploy_into(
    stage: Path,
    out: Path,
    recipe: Recipe,
    *,
    triton: bool,
    dataset: str | None,
    limit: int | None,
    threads: int | None,
    triton_options: TritonOptions | None,
    progress: bool | None,
) -> DeployResult:
    import torch

    from .bench import machine_info

    threads = threads or recipe.latency.threads
    torch.set_num_threads(threads)
    progress = progress_enabled(progress)
    res = DeployResult(recipe, out, environment=machine_info())
    run = _Deployment(stage, out, recipe, res, threads, progress, 8 if triton else 7)
    _step_checkpoint(run)
    _step_export(run)
    _step_fuse(run)
    _step_build(run)
    _step_validate_random(run)
    _step_accuracy_parity(run, dataset, limit)
    _step_latency(run)
    if triton:
        _step_triton(run, triton_options)
    res.artifacts = _artifacts(stage)
    res.provenance = _provenance(run)
    atomic_write_text(stage / "report.json", json.dumps(res.to_dict(), indent=2, default=float) + "\n")
    atomic_write_text(stage / "report.txt", format_report(res) + "\n")
    return res


def _step_checkpoint(run: _Deployment) -> None:
    """The checkpoint (and the latency baseline's, so that a wrong name stops the run before any work)."""
    from .checkpoint import load_checkpoint, read_checkpoint_config
    from .errors import RecipeError
    from .input_size import resolve_input_size

    run.start(f"checkpoint: loading {run.recipe.checkpoint_path().name}")
    recipe = run.recipe
    ckpt = run.ckpt = recipe.checkpoint_path()
    run.base_ckpt = recipe.baseline_checkpoint_path()
    run.model = load_checkpoint(ckpt)
    cfg = read_checkpoint_config(ckpt) if ckpt.suffix in (".safetensors", ".json") else {}
    run.name = cfg.get("model") or getattr(run.model, "zoo_name", None) or recipe.name
    run.size = resolve_input_size(
        recipe.input_shape, checkpoint=ckpt, given_by=f"recipe {recipe.name!r}: input_shape", error=RecipeError
    )
    run.ckpt_config = cfg
    run.trained_on = (cfg.get("metadata") or {}).get("dataset")
    atomic_write_text(run.stage / "recipe.json", json.dumps(recipe.to_dict(), indent=2) + "\n")
    args = json.dumps(cfg.get("model_args", {}), sort_keys=True)
    run.step("checkpoint", "done", f"{ckpt.name}: {run.name} {args}")


def _step_export(run: _Deployment) -> None:
    """The portable graph and the form that fuse rewrites."""
    from .export import export_onnx
    from .model_card import serving_metadata

    run.start("export: the portable graph and the kernel form (torch.onnx)")
    recipe = run.recipe
    assert run.size is not None
    serving = serving_metadata(run.ckpt_config, run.model)
    run.portable = run.stage / "model.onnx"
    kernel_form = run.stage / "model.kernel.onnx"
    described = []
    for path, form in ((run.portable, recipe.portable), (kernel_form, recipe.fuse_from)):
        export_onnx(
            run.model,
            path,
            run.size.shape(form.batch or 1),
            form=form.form,
            dynamic_batch=form.dynamic,
            opset=recipe.opset,
            model_name=run.name,
            metadata=serving,
        )
        described.append(f"{path.name} ({form.form} form, batch {'dynamic' if form.dynamic else form.batch})")
    run.step("export", "done", ", ".join(described))


def _step_fuse(run: _Deployment) -> None:
    from .export import count_dynamic_convs
    from .fuse import fuse_dynamic_convs

    run.start("fuse: every dynamic conv -> DyNetDynamicConv2d")
    run.fused = run.stage / "model.plugin.onnx"
    report = fuse_dynamic_convs(run.stage / "model.kernel.onnx", run.fused)
    expected = count_dynamic_convs(run.model)
    ok = report.matched == expected and not report.left
    fp16 = _fuse_fp16(run) if "fp16" in run.recipe.precisions else ""
    run.step(
        "fuse",
        "done" if ok else "failed",
        f"{report.matched} dynamic convs -> DyNetDynamicConv2d, {report.left} left (model has {expected}); "
        f"batch {report.batch}" + (f"; {fp16}" if fp16 else ""),
    )
    if not ok:
        run.res.passed = False
        run.res.notes.append(f"fuse matched {report.matched} of {expected} dynamic convs")


def _fuse_fp16(run: _Deployment) -> str:
    """The recipe's fp16 on onnxruntime: the fused graph in fp16 math with fp32 I/O (`fuse --precision fp16`).

    Returns what was done, or why it was skipped (also a note in the report)."""
    from .errors import DynetDeployError
    from .precision import convert_to_fp16

    assert run.fused is not None
    path = run.stage / "model.plugin.fp16.onnx"
    try:
        convert_to_fp16(run.fused, path, keep_io_types=True, error=DeployError)
    except DynetDeployError as exc:
        path.unlink(missing_ok=True)
        run.res.notes.append(f"fp16 on onnxruntime skipped: {exc}")
        return f"fp16 on onnxruntime skipped: {exc}"
    run.fused_fp16 = path
    return f"{path.name} (fp16, fp32 inputs and outputs) for onnxruntime"


def _step_build(run: _Deployment) -> None:
    """TensorRT engines, one per precision of the recipe, where TensorRT and the plugin are present."""
    run.start(f"build: TensorRT engines ({', '.join(run.recipe.precisions)}) where TensorRT is present")
    assert run.fused is not None
    engines = _build_engines(run.stage, run.fused, run.recipe)
    if isinstance(engines, str):
        run.engine_skip_reason = engines
        run.step("build", "skipped", engines)
        return
    run.engines = engines
    run.res.engines = {prec: path.name for prec, path in engines.items()}
    run.step("build", "done", ", ".join(f"{p.name} ({prec})" for prec, p in engines.items()))


def _step_validate_random(run: _Deployment) -> None:
    """Every graph (and engine) against PyTorch on random inputs at the recipe's tolerance."""
    from .validate import validate_random

    run.start(f"validate: {len(run.targets())} graph(s) against PyTorch on random inputs")
    recipe, res = run.recipe, run.res
    batches = "/".join(str(b) for b in recipe.validate.batch_sizes)
    rows: list[RandomParity] = []
    for graph, backend, prec in run.targets():
        tol = recipe.tolerance(prec)
        vdir = run.stage / "validate" / (graph.name[: -len(".onnx")] if graph.suffix == ".onnx" else graph.name)
        vdir.mkdir(parents=True)
        rep = validate_random(
            run.model,
            graph,
            backend,
            recipe.validate.batch_sizes,
            seed=recipe.validate.seed,
            out_dir=vdir,
            threads=run.threads,
            tolerance=tol,
            model_name=run.name,
            graph_onnx=run.graph_onnx(backend),
            precision=prec,
        )
        rows.append(
            RandomParity(
                graph=graph.name,
                backend=backend,
                precision=prec,
                check=f"random inputs, batches {batches}",
                max_abs=max(ch.max_abs for ch in rep.checks),
                rel=max(ch.rel for ch in rep.checks),
                tolerance={"max_abs": tol.max_abs, "rel": tol.rel},
                passed=rep.passed,
                replay=rep.replay_command.replace(str(run.stage), str(run.out)),
                replay_tensorrt=rep.replay_tensorrt.replace(str(run.stage), str(run.out)),
            )
        )
        res.passed &= rep.passed
    res.parity += rows
    tols = ", ".join(f"{prec} {t.max_abs:g} / {t.rel:g}" for prec, t in recipe.precisions.items())
    run.step(
        "validate (random inputs)",
        "done" if all(p.passed for p in rows) else "failed",
        "; ".join(f"{p.graph}: max-abs {p.max_abs:.2e}, rel {p.rel:.2e}" for p in rows) + f" (tolerance {tols})",
    )


def _resolve_parity_dataset(run: _Deployment, dataset: str | None) -> str:
    """The data set parity runs on: the override, else the recipe's, else its fallback (with a note)."""
    from .data import fashion_mnist_available, resolve_dataset

    ds_spec, res = run.recipe.dataset, run.res
    assert ds_spec is not None
    wanted = dataset or ds_spec.name
    ds = resolve_dataset(wanted)
    if ds == "fashion-mnist" and not fashion_mnist_available():
        if ds_spec.fallback is None or dataset is not None:
            raise DataError(
                "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); install it "
                "or give the recipe a 'fallback' data set"
            )
        res.notes.append(
            f"Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); parity runs on "
            f"{ds_spec.fallback}, where the model's accuracy means nothing but agreement still does"
        )
        ds = ds_spec.fallback
    elif wanted == "auto" and ds != "fashion-mnist":
        res.notes.append(f"Fashion-MNIST is not installed; parity runs on {ds}")
    if run.trained_on and run.trained_on != ds:
        res.notes.append(
            f"the model was trained on {run.trained_on}; its accuracy on {ds} is not meaningful, agreement is"
        )
    return ds


def _parity_announcement(run: _Deployment, dataset: str | None, limit: int | None) -> str:
    ds = run.recipe.dataset
    if ds is None:
        return "accuracy parity: the recipe names no data set"
    n = limit or ds.limit
    images = f"the first {n} images" if n else "every image"
    return f"accuracy parity: PyTorch and {len(run.targets())} graph(s) on {dataset or ds.name} {ds.split}, {images}"


def _step_accuracy_parity(run: _Deployment, dataset: str | None, limit: int | None) -> None:
    """Top-1 of PyTorch and of every graph (and engine) on the recipe's data set, and their agreement."""
    from .backends import get_backend
    from .data import load_dataset
    from .validate import reference_outputs, validate_dataset

    run.start(_parity_announcement(run, dataset, limit))
    recipe, res, ds_spec = run.recipe, run.res, run.recipe.dataset
    if ds_spec is None:
        run.step("accuracy parity", "skipped", "the recipe names no data set")
        return
    ds = res.dataset = _resolve_parity_dataset(run, dataset)
    x_t, y_t = load_dataset(ds, ds_spec.split, limit=limit or ds_spec.limit)
    images, labels = x_t.numpy(), y_t.numpy()
    assert run.size is not None
    if images.shape[1:] != run.size.shape(1)[1:]:
        raise DataError(
            f"data set {ds} has images {list(images.shape[1:])}, the recipe's input_shape is {list(recipe.input_shape)}"
        )
    run.images = images
    ref_logits = reference_outputs(run.model, images, batch=ds_spec.batch, progress=run.progress)
    rows: list[DatasetParity] = []
    for graph, backend, prec in run.targets():
        target = recipe.agreement(prec)
        batch = ds_spec.batch if get_backend(backend).artifact_is_graph else min(ds_spec.batch, recipe.profile.max)
        d = validate_dataset(
            run.model,
            graph,
            images,
            labels,
            ds,
            backend,
            batch=batch,
            threads=run.threads,
            progress=run.progress,
            model_name=run.name,
            reference_logits=ref_logits,
            graph_onnx=run.graph_onnx(backend),
            precision=prec,
        )
        if target is not None:
            d.target_agreement = target
        rows.append(
            DatasetParity(
                graph=graph.name,
                backend=backend,
                precision=prec,
                check=f"top-1 on {ds} {ds_spec.split} ({d.samples})",
                pytorch=d.reference_metric,
                deployed=d.backend_metric,
                agreement=d.agreement,
                target=d.target_agreement,
                passed=d.passed,
            )
        )
        res.passed &= d.passed
    res.parity += rows
    run.step(
        "accuracy parity",
        "done" if all(p.passed for p in rows) else "failed",
        "; ".join(f"{p.graph}: agreement {p.agreement * 100:.2f}%" for p in rows),
    )


def _latency_runners(run: _Deployment, sample) -> dict[str, Callable[[], Any]]:
    """PyTorch, onnxruntime portable and fused, the engines, and the recipe's static baseline, each on ``sample``."""
    import torch

    from .backends import get_backend
    from .checkpoint import load_checkpoint, read_checkpoint_config
    from .export import export_onnx
    from .nn import fold_batchnorms

    xt = torch.from_numpy(sample)

    def torch_fn(m):
        def f():
            with torch.no_grad():
                return m(xt)

        return f

    def backend_fn(backend: str, path: Path):
        runner = get_backend(backend).open_runner(path, threads=run.threads)
        return runner.bound_run({runner.input_names[0]: sample})

    assert run.ckpt is not None and run.portable is not None and run.fused is not None
    name = run.name
    runners: dict[str, Callable[[], Any]] = {
        f"{name} pytorch": torch_fn(fold_batchnorms(load_checkpoint(run.ckpt))),
        f"{name} onnxruntime portable": backend_fn("onnxruntime", run.portable),
        f"{name} onnxruntime fused": backend_fn("onnxruntime", run.fused),
    }
    if run.fused_fp16 is not None:
        runners[f"{name} onnxruntime fused fp16"] = backend_fn("onnxruntime", run.fused_fp16)
    for prec, path in run.engines.items():
        runners[f"{name} tensorrt {prec}"] = backend_fn("tensorrt", path)
    if run.base_ckpt is not None:
        base = load_checkpoint(run.base_ckpt)
        base_name = read_checkpoint_config(run.base_ckpt)["model"]
        base_onnx = run.stage / "baseline.onnx"
        assert run.size is not None
        export_onnx(base, base_onnx, run.size.shape(1), opset=run.recipe.opset, model_name=base_name)
        runners[f"{base_name} pytorch"] = torch_fn(base)
        runners[f"{base_name} onnxruntime"] = backend_fn("onnxruntime", base_onnx)
    return runners


def _step_latency(run: _Deployment) -> None:
    """Every runner interleaved at the recipe's batch; a busy machine is noted."""
    import numpy as np

    from .bench import interleaved_latency, latency_stats
    from .bench.timing import ForeignLoad

    run.start(
        f"latency: every runner interleaved, {run.recipe.latency.repeats} runs each at batch {run.recipe.latency.batch}"
    )
    lat, res = run.recipe.latency, run.res
    if run.images is not None and len(run.images) >= lat.batch:
        sample = np.ascontiguousarray(run.images[: lat.batch])
    else:
        assert run.size is not None
        sample = np.random.default_rng(0).standard_normal(run.size.shape(lat.batch), dtype=np.float32)
    runners = _latency_runners(run, sample)
    load = ForeignLoad().start()
    samples = interleaved_latency(runners, repeats=lat.repeats, warmup=lat.warmup)
    verdict = load.stop().verdict()  # the busy-machine rule bench uses
    res.latency_load = {
        "before": load.load_before,
        "after": load.load_after,
        "foreign_cores": load.foreign_cores,
        "busy": verdict.busy,
    }
    if verdict.busy:
        res.notes.append(
            f"the machine was busy during the latency run ({verdict.reason}); "
            "its times are inflated: re-run on a quiet machine before quoting them"
        )
    for key, v in samples.items():
        stats = latency_stats(v)
        res.latency.append(
            {
                "runner": key,
                "batch": lat.batch,
                "median_ms": stats["median_ms"],
                "p90_ms": stats["p90_ms"],
                "runs": stats["n"],
            }
        )
    run.step(
        f"latency (batch {lat.batch})",
        "done",
        f"{len(runners)} runners, interleaved, {lat.repeats} runs each, {run.threads} threads",
    )


def _step_triton(run: _Deployment, options: TritonOptions | None) -> None:
    """A Triton Inference Server model repository of the fused graph (and the fp32 engine)."""
    import dataclasses

    from .triton import TritonOptions, write_model_repository

    run.start("triton repository: the fused graph (and the fp32 engine)")
    recipe = run.recipe
    assert run.fused is not None
    options = options or TritonOptions()
    if options.copy_op_library and options.served_path is None:  # the config names the copy where it will be
        options = dataclasses.replace(options, served_path=os.path.abspath(run.out / "triton"))
    repo = write_model_repository(
        run.stage / "triton",
        recipe.name,
        run.fused,
        run.engines.get("fp32"),
        max_batch_size=recipe.profile.max,
        engine_skipped_reason=run.engine_skip_reason or "no fp32 engine in the recipe",
        options=options,
    )
    run.res.triton = {
        "repository": "triton",
        "models": sorted(repo.models),
        "skipped": repo.skipped,
        "op_library": repo.op_library,
        "op_library_copied": repo.op_library_copied,
        "instance_kind": options.instance_kind,
        "gpu_accelerator": options.gpu_accelerator if options.instance_kind == "gpu" else None,
        "parameters": repo.parameters,
        "plugin_library": repo.plugin_library,
        "launch": repo.launch_command.replace(str(run.stage), str(run.out)),
    }
    detail = ", ".join(sorted(repo.models))
    if repo.skipped:
        detail += "; " + "; ".join(f"{k} skipped: {v}" for k, v in repo.skipped.items())
    run.step("triton repository", "done", detail)


def _build_engines(stage: Path, fused: Path, recipe: Recipe) -> dict[str, Path] | str:
    """{precision: engine} for every precision of the recipe, or the reason the build was skipped."""
    from .backends import get_backend
    from .backends.tensorrt import load_plugin_library, tensorrt_available

    ok, why = tensorrt_available()
    if not ok:
        return f"TensorRT is not installed ({why}); export, fuse and onnxruntime still run"
    try:
        load_plugin_library()
    except MissingDependencyError as exc:
        return str(exc)
    tensorrt = get_backend("tensorrt")
    engines = {}
    for prec in recipe.precisions:
        path = stage / ("model.engine" if prec == "fp32" else f"model.{prec}.engine")
        engines[prec] = tensorrt.prepare(fused, path, batch=recipe.profile.as_tuple(), precision=prec)
    return engines


def _provenance(run: _Deployment) -> dict[str, Any]:
    """The tool, the checkpoint, the deployed graphs and engines (at their final paths), the op library, runtimes."""
    from .provenance import provenance

    assert run.portable is not None and run.fused is not None
    files = [run.portable, run.fused, *run.engines.values()]
    return provenance(run.ckpt, [(p, run.out / p.relative_to(run.stage)) for p in files])


def _artifacts(folder: Path) -> list[dict[str, Any]]:
    """Every file under ``folder`` (reports excluded): path relative to it, size, sha256."""
    rows = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name in ("report.json", "report.txt"):
            continue
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        rows.append({"path": p.relative_to(folder).as_posix(), "bytes": p.stat().st_size, "sha256": h.hexdigest()})
    return rows


def format_tables(res: DeployResult) -> str:
    """The parity and latency tables (what ``demo`` prints at the end)."""
    lines = ["", "== parity against PyTorch"]
    lines.append(f"{'graph':<22} {'check':<36} {'result':<42} ok")
    for p in res.parity:
        graph = p.graph if p.backend == "onnxruntime" else f"{p.graph} (trt)"
        lines.append(f"{graph:<22} {p.check:<36} {p.describe():<42} {'yes' if p.passed else 'NO'}")
    if res.latency:
        lines.append("")
        load = res.latency_load
        load_text = ""
        if load.get("before") is not None and load.get("after") is not None:
            load_text = f"; load average {load['before']:.2f} -> {load['after']:.2f}"
        lines.append(f"== latency, batch {res.latency[0]['batch']} (interleaved; medians{load_text})")
        base = res.latency[0]["median_ms"]
        lines.append(f"{'runner':<40} {'median ms':>10} {'p90 ms':>8} {'vs first':>9}")
        for r in res.latency:
            lines.append(
                f"{r['runner']:<40} {r['median_ms']:>10.3f} {r['p90_ms']:>8.3f} {r['median_ms'] / base:>8.2f}x"
            )
    for n in res.notes:
        lines.append(f"note: {n}")
    lines.append(f"{'PASSED' if res.passed else 'FAILED'} in {res.seconds:.0f} s")
    return "\n".join(lines)


def format_report(res: DeployResult) -> str:
    """``report.txt``: the steps, the tables, the artifacts and (with Triton) how to serve them."""
    src = res.recipe.path or res.recipe.name
    lines = [f"dynet-deploy deploy {src} -> {res.out_dir}", "", "== steps"]
    for s in res.steps:
        lines.append(f"{s.name:<26} {s.status:<8} {s.seconds:>7.1f} s  {s.detail}")
    lines.append(format_tables(res))
    lines += ["", "== artifacts"]
    for a in res.artifacts:
        lines.append(f"{a['path']:<48} {a['bytes']:>12,d} B  sha256 {a['sha256'][:16]}")
    replays = [p for p in res.parity if isinstance(p, RandomParity) and p.replay]
    if replays:
        lines += ["", "== replay the random-input checks by hand"]
        for p in replays:
            lines.append(f"{p.graph}: {p.replay}")
            if p.replay_tensorrt:
                lines.append(f"{p.graph} (TensorRT): {p.replay_tensorrt}")
    if res.triton:
        lines += ["", "== Triton Inference Server", f"models: {', '.join(res.triton['models'])}"]
        lines += [f"{k}: skipped ({v})" for k, v in res.triton["skipped"].items()]
        copied = " (a copy inside the repository)" if res.triton.get("op_library_copied") else ""
        lines.append(f"op library: {res.triton['op_library']}{copied}")
        lines.append(f"serve: {res.triton['launch']}")
        bare = [
            lib
            for lib, used in ((res.triton["op_library"], True), (res.triton["plugin_library"], bool(res.engines)))
            if used and "/" not in lib
        ]
        if bare:
            lines.append(f"($DYNET_LIB_DIR: the folder holding {' and '.join(bare)} on the server)")
    return "\n".join(lines)


__all__ = [
    "DeployResult",
    "Step",
    "check_deploy_flags",
    "format_report",
    "format_tables",
    "run_deploy",
    "triton_options",
]
