"""Data-set parity: top-1 (classification) or mIoU (segmentation) of PyTorch and of the backend, and their agreement."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..backends import BackendSession
from ..errors import ValidationError
from .compare import AGREEMENT_TARGETS, non_finite_count
from .random_inputs import read_graph_input


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
    non_finite: int = 0  # NaN/Inf values in the backend's outputs
    reference_non_finite: int = 0  # NaN/Inf values in PyTorch's outputs

    @property
    def passed(self) -> bool:
        # Two NaN outputs "agree" under argmax; NaN is a failure whatever the agreement.
        return self.agreement >= self.target_agreement and not self.non_finite and not self.reference_non_finite

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


def _run_in_batches(
    run: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    batch: int,
    fixed: bool,
    progress: bool | None,
    desc: str,
) -> np.ndarray:
    from ..progress import get_logger
    from ..progress import progress as progress_bar

    get_logger(__name__).info(f"  {desc}: {len(images)} images in batches of {batch}")
    outs = []
    for sl in progress_bar(list(_batches(len(images), batch)), desc=desc, unit="batch", enabled=progress):
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
    progress: bool | None = False,
    model_name: str = "",
    num_classes: int | None = None,
    reference_logits: np.ndarray | None = None,
    graph_onnx: str | Path | None = None,
    precision: str | None = None,
) -> DatasetReport:
    """Top-1 (or mIoU for segmentation, where ``labels`` are masks) of PyTorch and the backend, and agreement.

    ``reference_logits``: PyTorch's outputs on ``images`` if already computed (several graphs of one model
    are checked against one reference run); they must come from :func:`reference_outputs` on the same images.
    ``graph_onnx``: for a TensorRT engine, the ONNX it was built from (its input and output names and shapes).
    ``precision``: whose agreement target applies (default: the graph's own precision).
    """
    model_path = Path(model_path)
    graph = read_graph_input(graph_onnx or model_path)
    precision = precision or graph.precision
    if precision not in AGREEMENT_TARGETS:
        raise ValidationError(f"precision {precision!r}: choose one of {', '.join(AGREEMENT_TARGETS)}")
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
    be_logits = _run_in_batches(run_backend, images, bs, fixed, progress, f"{backend} {model_path.name}")
    ref_pred, be_pred = ref_logits.argmax(1), be_logits.argmax(1)
    segmentation = labels.ndim == 3
    if segmentation:
        k = num_classes or int(ref_logits.shape[1])
        ref_metric, be_metric = mean_iou(ref_pred, labels, k), mean_iou(be_pred, labels, k)
    else:
        ref_metric, be_metric = float((ref_pred == labels).mean()), float((be_pred == labels).mean())
    agreement = float((ref_pred == be_pred).mean())
    bad_be, bad_ref = non_finite_count(be_logits), non_finite_count(ref_logits)
    notes = []
    if bad_ref:
        notes.append(f"PyTorch's outputs hold NaN/Inf ({bad_ref} values): the checkpoint's weights hold NaN/Inf")
    if bad_be:
        notes.append(f"{backend}'s outputs hold NaN/Inf ({bad_be} values)")
    report = DatasetReport(
        model_name or model_path.stem,
        backend,
        precision,
        dataset,
        int(ref_pred.size if segmentation else len(labels)),
        "segmentation" if segmentation else "classification",
        ref_metric,
        be_metric,
        agreement,
        AGREEMENT_TARGETS[precision],
        time.perf_counter() - t0,
        "; ".join(notes),
        bad_be,
        bad_ref,
    )
    return report


def reference_outputs(
    model, images: np.ndarray, batch: int = 250, dtype=np.float32, progress: bool | None = False
) -> np.ndarray:
    """PyTorch's first output on ``images`` in batches (inputs rounded through ``dtype`` as a backend sees them)."""
    import torch

    def run(x):
        with torch.no_grad():
            out = model(torch.from_numpy(np.ascontiguousarray(x.astype(dtype).astype(np.float32))))
        out = out if isinstance(out, torch.Tensor) else (list(out.values())[0] if isinstance(out, dict) else out[0])
        return out.numpy()

    return _run_in_batches(run, np.asarray(images, dtype=np.float32), batch, False, progress, "pytorch reference")


def mean_iou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """Mean intersection-over-union over the classes present in ``pred`` or ``target``."""
    ious = []
    for c in range(num_classes):
        p, t = pred == c, target == c
        union = np.logical_or(p, t).sum()
        if union:
            ious.append(np.logical_and(p, t).sum() / union)
    return float(np.mean(ious)) if ious else 1.0


def synthetic_segmentation(
    n: int, height: int, width: int, num_classes: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
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
