"""The main job on the bundled model: checkpoint -> export -> fuse -> onnxruntime -> validation -> parity -> latency.

Every step is the library function behind the matching CLI command; the demo only strings them together
and prints one closing table. It runs on a 2-core CPU in well under three minutes.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


from .errors import DynetDeployError
from .fileio import atomic_write_text


@dataclass
class DemoResult:
    steps: list[tuple[str, str, float]] = field(default_factory=list)  # (step, outcome, seconds)
    parity: list[dict[str, Any]] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)
    dataset: str = ""
    passed: bool = True
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": [{"step": s, "outcome": o, "seconds": round(t, 2)} for s, o, t in self.steps],
            "parity": self.parity,
            "latency": self.latency,
            "dataset": self.dataset,
            "passed": self.passed,
            "notes": self.notes,
        }


def run_demo(out_dir: str | Path = "out/demo", dataset: str = "auto", threads: int = 2, limit: int | None = None, progress: bool | None = None, log: Callable[[str], None] = print) -> DemoResult:
    import torch
    from tqdm import tqdm

    from .bench import interleaved_latency, latency_stats
    from .checkpoint import load_checkpoint, read_checkpoint_config
    from .data import fashion_mnist_available, load_dataset, resolve_dataset
    from .export import export_onnx
    from .fuse import fuse_dynamic_convs
    from .models import model_info
    from .nn import fold_batchnorms
    from .runtimes.onnxruntime_runtime import OnnxruntimeRunner
    from .train import BUNDLED_BASELINE, BUNDLED_MODEL, bundled_checkpoint
    from .validate import reference_outputs, validate_dataset, validate_random

    torch.set_num_threads(threads)
    progress = sys.stderr.isatty() if progress is None else progress
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = DemoResult()
    bar = tqdm(total=7, desc="demo", unit="step", disable=not progress, leave=False)

    def step(name: str, outcome: str, t0: float) -> None:
        res.steps.append((name, outcome, time.perf_counter() - t0))
        bar.update(1)
        log(f"[{len(res.steps)}/7] {name}: {outcome} ({time.perf_counter() - t0:.1f} s)")

    # 1. checkpoint
    t0 = time.perf_counter()
    ckpt = bundled_checkpoint(BUNDLED_MODEL)
    model = load_checkpoint(ckpt)
    cfg = read_checkpoint_config(ckpt)
    name = cfg["model"]
    args = cfg.get("model_args", {})
    in_chans = int(args.get("in_chans", 3))
    trained_on = (cfg.get("metadata") or {}).get("dataset", "fashion-mnist")
    step("load bundled checkpoint", f"{ckpt.name}: {name} {json.dumps(args, sort_keys=True)}", t0)

    # 2. export: the portable graph (dynamic batch) and the batch-as-groups form that fuse rewrites
    t0 = time.perf_counter()
    portable, kernel_form = out / "model.onnx", out / "model.kernel.onnx"
    export_onnx(model, portable, (1, in_chans, 28, 28), form="feature")
    export_onnx(model, kernel_form, (1, in_chans, 28, 28), form="kernel")
    step("export", f"{portable.name} (feature form, dynamic batch), {kernel_form.name} (kernel form, batch 1)", t0)

    # 3. fuse
    t0 = time.perf_counter()
    fused = out / "model.plugin.onnx"
    report = fuse_dynamic_convs(kernel_form, fused)
    expected = sum(1 for m in model.modules() if type(m).__name__ == "DynamicConv2d")
    step("fuse", f"{report.matched} dynamic convs -> DyNetDynamicConv2d, {report.left} left (model has {expected})", t0)
    if report.matched != expected or report.left:
        res.passed = False
        res.notes.append(f"fuse matched {report.matched} of {expected} dynamic convs")

    # 4. onnxruntime inference + validation on random inputs
    t0 = time.perf_counter()
    for graph in (portable, fused):
        rep = validate_random(model, graph, "onnxruntime", (1, 4, 7), out_dir=None, threads=threads, model_name=name)
        res.parity.append({"graph": graph.name, "check": "random inputs, batches 1/4/7", "max_abs": max(c.max_abs for c in rep.checks), "rel": max(c.rel for c in rep.checks), "passed": rep.passed})
        res.passed &= rep.passed
    step("validate (random inputs)", "; ".join(f"{p['graph']}: max-abs {p['max_abs']:.2e}, rel {p['rel']:.2e}" for p in res.parity), t0)

    # 5. accuracy parity on the test set
    t0 = time.perf_counter()
    ds = resolve_dataset(dataset)
    if ds != "fashion-mnist" and not fashion_mnist_available():
        res.notes.append(
            "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); parity runs on sklearn's digits, "
            "where the model's accuracy means nothing but PyTorch/onnxruntime agreement still does"
        )
    res.dataset = ds
    images, labels = load_dataset(ds, "test", limit=limit)
    x, y = images.numpy(), labels.numpy()
    ref_logits = reference_outputs(model, x, batch=500, progress=progress)  # one PyTorch run serves both graphs
    for graph in (portable, fused):
        d = validate_dataset(model, graph, x, y, ds, "onnxruntime", batch=500, threads=threads, progress=progress, model_name=name, reference_logits=ref_logits)
        res.parity.append({"graph": graph.name, "check": f"top-1 on {ds} test ({d.samples})", "pytorch": d.reference_metric, "onnxruntime": d.backend_metric, "agreement": d.agreement, "passed": d.passed})
        res.passed &= d.passed
    step("accuracy parity", "; ".join(f"{p['graph']}: agreement {p['agreement'] * 100:.2f}%" for p in res.parity[2:]), t0)

    # 6. latency at batch 1: PyTorch eager, onnxruntime portable and fused, and the static baseline if bundled
    t0 = time.perf_counter()
    sample = x[:1].copy()
    deployed = fold_batchnorms(load_checkpoint(ckpt))
    runners: dict[str, Callable[[], Any]] = {}
    xt = torch.from_numpy(sample)

    def torch_fn(m):
        def f():
            with torch.no_grad():
                return m(xt)

        return f

    runners[f"{name} pytorch"] = torch_fn(deployed)
    sess_p = OnnxruntimeRunner(portable, threads=threads)
    sess_f = OnnxruntimeRunner(fused, threads=threads)
    in_p, in_f = sess_p.input_names[0], sess_f.input_names[0]
    runners[f"{name} onnxruntime portable"] = lambda: sess_p.run({in_p: sample})
    runners[f"{name} onnxruntime fused"] = lambda: sess_f.run({in_f: sample})
    try:
        base_ckpt = bundled_checkpoint(BUNDLED_BASELINE)
    except DynetDeployError:
        base_ckpt = None
    if base_ckpt is not None:
        base = load_checkpoint(base_ckpt)
        base_name = read_checkpoint_config(base_ckpt)["model"]
        base_onnx = out / "baseline.onnx"
        export_onnx(base, base_onnx, (1, in_chans, 28, 28))
        sess_b = OnnxruntimeRunner(base_onnx, threads=threads)
        in_b = sess_b.input_names[0]
        runners[f"{base_name} pytorch"] = torch_fn(base)
        runners[f"{base_name} onnxruntime"] = lambda: sess_b.run({in_b: sample})
    samples = interleaved_latency(runners, repeats=50, warmup=5)
    for k, v in samples.items():
        stats = latency_stats(v)
        res.latency.append({"runner": k, "median_ms": stats["median_ms"], "p90_ms": stats["p90_ms"], "runs": stats["n"]})
    step("latency (batch 1)", f"{len(runners)} runners, interleaved, {len(next(iter(samples.values())))} runs each", t0)

    # 7. summary
    t0 = time.perf_counter()
    if trained_on != ds:
        res.notes.append(f"the bundled model was trained on {trained_on}; its accuracy on {ds} is not meaningful")
    atomic_write_text(out / "summary.json", json.dumps(res.to_dict(), indent=2, default=float) + "\n")
    step("summary", str(out / "summary.json"), t0)
    bar.close()
    return res


def format_summary(res: DemoResult) -> str:
    lines = ["", "== parity against PyTorch"]
    lines.append(f"{'graph':<22} {'check':<34} {'result':<42} ok")
    for p in res.parity:
        if "max_abs" in p:
            r = f"max-abs {p['max_abs']:.2e}  rel {p['rel']:.2e}"
        else:
            r = f"top-1 {p['pytorch'] * 100:.2f}% vs {p['onnxruntime'] * 100:.2f}%  agree {p['agreement'] * 100:.2f}%"
        lines.append(f"{p['graph']:<22} {p['check']:<34} {r:<42} {'yes' if p['passed'] else 'NO'}")
    lines.append("")
    lines.append("== latency, batch 1 (interleaved; medians)")
    base = res.latency[0]["median_ms"] if res.latency else 1.0
    lines.append(f"{'runner':<40} {'median ms':>10} {'p90 ms':>8} {'vs first':>9}")
    for r in res.latency:
        lines.append(f"{r['runner']:<40} {r['median_ms']:>10.3f} {r['p90_ms']:>8.3f} {r['median_ms'] / base:>8.2f}x")
    for n in res.notes:
        lines.append(f"note: {n}")
    total = sum(t for _, _, t in res.steps)
    lines.append(f"{'PASSED' if res.passed else 'FAILED'} in {total:.0f} s")
    return "\n".join(lines)
