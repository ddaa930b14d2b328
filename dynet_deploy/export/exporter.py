"""Export a zoo model (or any module built from :mod:`dynet_deploy.nn`) to a standard-op ONNX graph.

Two export forms of every dynamic conv, selected with ``form``:

``"feature"`` (the default)  feature-map fusion: one Conv with ``K * C_out`` outputs, a Reshape to
                             ``[N, C_out, K, H, W]``, Mul by the coefficients, ReduceSum over K. ``K`` times
                             the conv FLOPs, but only standard ops with no batch baked in: the graph takes
                             any batch size (and any H/W for segmentation). The portable form.
``"kernel"``                 kernel fusion + the batch-as-groups conv (x as ``[1, N*C_in, H, W]``, Conv with
                             ``group = N*groups``), as every public dynamic-conv implementation exports.
                             ONNX ``Conv.group`` is a static attribute, so the batch is fixed at export.

Either form is what ``dynet-deploy fuse`` rewrites into one ``DyNetDynamicConv2d`` node per dynamic conv. A model with
dynamic convs that take a spatial attention (ODConv, the OD-ResNets) has the kernel form only: the feature form
cannot scale a kernel's taps (:func:`export_forms`).

What differs from a plain ``torch.onnx.export``:

* BatchNorms are folded before the graph reaches a runtime: the dynamic convs' in PyTorch
  (:func:`fold_batchnorms`, exact for any coefficients), every static ``Conv -> BatchNormalization`` pair
  in the ONNX graph (whichever exporter left it), so the graph has no BatchNormalization after a Conv.
* Weights are always embedded in the one ``.onnx`` file (the dynamo exporter writes them as external data
  beside the model; the zoo is far below protobuf's 2 GiB limit), and the file is written atomically.
* The graph records how it was made in ``metadata_props`` (form, exporter, model name), which ``fuse`` and
  ``validate`` read.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ExportError, summarise
from ..fileio import atomic_path, check_output_path
from ..graph import MIN_OPSET
from ..provenance import stamp_producer

log = logging.getLogger(__name__)

EXPORT_FORMS = ("feature", "kernel")
DEFAULT_FORM = "feature"
EXPORTERS = ("torchscript", "dynamo")
DEFAULT_EXPORTER = "torchscript"
# The dynamo exporter's op implementations start at opset 18; asking for 17 makes it try (and fail) a
# down-conversion, so it is asked for max(opset, 18).
DYNAMO_MIN_OPSET = 18
INPUT_NAME = "input"
STANDARD_DOMAINS = ("", "ai.onnx")

META_FORM = "dynet_deploy.form"
META_EXPORTER = "dynet_deploy.exporter"
META_MODEL = "dynet_deploy.model"
META_MODEL_ARGS = "dynet_deploy.model_args"
META_BATCH = "dynet_deploy.export_batch"


@dataclass
class ExportReport:
    path: Path
    form: str
    exporter: str
    opset: int
    input_shape: tuple[int, int, int, int]
    dynamic_batch: bool
    dynamic_hw: bool
    input_names: list[str]
    output_names: list[str]
    dynamic_convs: int
    folded_conv_batchnorms: int
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        batch = "dynamic" if self.dynamic_batch else f"static {self.input_shape[0]}"
        hw = "dynamic" if self.dynamic_hw else f"static {self.input_shape[2]}x{self.input_shape[3]}"
        return (
            f"{self.path}: opset {self.opset}, {self.exporter} exporter, form {self.form!r}, batch {batch}, "
            f"H/W {hw}, {self.dynamic_convs} dynamic convs, {self.folded_conv_batchnorms} Conv+BN folded in ONNX"
        )


# ---- model preparation ---------------------------------------------------------------------------------------


def count_dynamic_convs(model) -> int:
    from ..nn import DynamicConv2d

    return sum(isinstance(m, DynamicConv2d) for m in model.modules())


def export_forms(model) -> tuple[str, ...]:
    """The forms ``model`` exports in: both, or the kernel form alone when a dynamic conv takes a spatial attention."""
    from ..nn import DynamicConv2d

    if any(isinstance(m, DynamicConv2d) and m.spatial for m in model.modules()):
        return ("kernel",)
    return EXPORT_FORMS


def prepare_for_export(model, form: str = DEFAULT_FORM):
    """A deep copy of ``model`` in eval mode, dynamic-conv BatchNorms folded, every dynamic conv in ``form``."""
    from ..nn import fold_batchnorms, set_dynamic_conv_mode

    if form not in EXPORT_FORMS:
        raise ExportError(f"unknown export form {form!r}; choose one of {', '.join(EXPORT_FORMS)}")
    model = copy.deepcopy(model).eval()
    fold_batchnorms(model)
    set_dynamic_conv_mode(model, form)
    return model


# ---- ONNX-level clean-up ---------------------------------------------------------------------------------------


def fold_conv_batchnorms(model_proto):
    """Fold every ``Conv(constant W[, constant b]) -> BatchNormalization(constant stats)`` into the Conv.

    Only when the Conv output has no other reader. Returns ``(model_proto, count)``.
    """
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model_proto)
    count = 0
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        if len(bn.outputs) != 1 or not bn.inputs[0].inputs:
            continue
        conv = bn.inputs[0].inputs[0]
        if conv.op != "Conv" or len(conv.outputs[0].outputs) != 1 or conv.outputs[0] in graph.outputs:
            continue
        if not isinstance(conv.inputs[1], gs.Constant) or (
            len(conv.inputs) > 2 and not isinstance(conv.inputs[2], gs.Constant)
        ):
            continue
        if not all(isinstance(t, gs.Constant) for t in bn.inputs[1:5]):
            continue
        gamma, beta, mean, var = (np.asarray(t.values, dtype=np.float64) for t in bn.inputs[1:5])
        eps = float(bn.attrs.get("epsilon", 1e-5))
        w = np.asarray(conv.inputs[1].values)
        if w.dtype != np.float32 or w.shape[0] != gamma.shape[0]:
            continue
        b = np.asarray(conv.inputs[2].values, dtype=np.float64) if len(conv.inputs) > 2 else np.zeros_like(gamma)
        scale = gamma / np.sqrt(var + eps)
        new_w = (w.astype(np.float64) * scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        new_b = ((b - mean) * scale + beta).astype(np.float32)
        conv.inputs[1] = gs.Constant(f"{conv.name or 'conv'}_w_bnfolded_{count}", new_w)
        bias_const = gs.Constant(f"{conv.name or 'conv'}_b_bnfolded_{count}", new_b)
        if len(conv.inputs) > 2:
            conv.inputs[2] = bias_const
        else:
            conv.inputs.append(bias_const)
        conv.outputs = list(bn.outputs)
        bn.outputs.clear()
        count += 1
    if count:
        graph.cleanup().toposort()
        out = gs.export_onnx(graph)
        out.metadata_props.extend(model_proto.metadata_props)
        return out, count
    return model_proto, 0


def _non_standard_ops(model_proto) -> list[str]:
    return sorted({f"{n.domain}::{n.op_type}" for n in model_proto.graph.node if n.domain not in STANDARD_DOMAINS})


# ---- the export ---------------------------------------------------------------------------------------------


def _output_names(model, x) -> list[str]:
    import torch

    with torch.no_grad():
        out = model(x)
    if isinstance(out, torch.Tensor):
        return ["output"]
    if isinstance(out, dict):
        return [str(k) for k in out]
    if isinstance(out, (tuple, list)):
        return [f"output_{i}" for i in range(len(out))]
    raise ExportError(f"the model returns {type(out).__name__}; export needs tensors (a tensor, tuple or dict)")


@contextlib.contextmanager
def _quiet_exporters():
    """The exporters print progress and deprecation warnings; keep them for --verbose runs only."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if log.isEnabledFor(logging.DEBUG):
                yield
            else:
                sink = io.StringIO()
                with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                    yield
        finally:
            for lg, lvl in zip(loggers, levels):
                lg.setLevel(lvl)


def _torch_export(
    model, x, tmp_file: Path, exporter: str, opset: int, output_names: list[str], dynamic_batch: bool, dynamic_hw: bool
) -> None:
    import torch

    kwargs: dict[str, Any] = dict(input_names=[INPUT_NAME], output_names=output_names, opset_version=opset)
    if exporter == "torchscript":
        axes: dict[int, str] = {}
        if dynamic_batch:
            axes[0] = "N"
        if dynamic_hw:
            axes.update({2: "H", 3: "W"})
        if axes:
            dyn = {INPUT_NAME: axes}
            out_axes = {k: v for k, v in axes.items() if k == 0}
            if dynamic_hw:
                out_axes.update({2: "H_out", 3: "W_out"})
            dyn.update({name: out_axes for name in output_names})
            kwargs["dynamic_axes"] = dyn
        kwargs.update(dynamo=False, do_constant_folding=True)
    else:
        shapes = {}
        if dynamic_batch:
            shapes[0] = torch.export.Dim("N", min=1, max=4096)
        if dynamic_hw:
            shapes[2] = torch.export.Dim.AUTO
            shapes[3] = torch.export.Dim.AUTO
        kwargs.update(dynamo=True, verbose=False, optimize=True, external_data=True)
        if shapes:
            kwargs["dynamic_shapes"] = ({**shapes},)
    with torch.no_grad(), _quiet_exporters():
        torch.onnx.export(model, (x,), str(tmp_file), **kwargs)


def export_onnx(
    model,
    path: str | Path,
    input_shape: Sequence[int],
    form: str = DEFAULT_FORM,
    dynamic_batch: bool | None = None,
    dynamic_hw: bool = False,
    exporter: str = DEFAULT_EXPORTER,
    opset: int = MIN_OPSET,
    model_name: str | None = None,
    model_args: dict | None = None,
    metadata: dict[str, str] | None = None,
) -> ExportReport:
    """Export ``model`` to ``path`` (weights embedded, written atomically).

    Args:
        input_shape: ``(N, C, H, W)`` of the example input; ``N`` is the batch of a static-batch graph.
        form: ``"feature"`` or ``"kernel"`` (module docstring).
        dynamic_batch: None picks the widest the form allows (feature: dynamic, kernel: static); True with
            the kernel form is an :class:`ExportError` (``Conv.group`` bakes the batch in).
        dynamic_hw: symbolic H and W (segmentation models).
        exporter: ``"torchscript"`` (``dynamo=False``) or ``"dynamo"``.
        opset: at least 17; the dynamo exporter emits at least 18.
        metadata: more ``metadata_props`` entries (the normalisation and classes of
            :func:`dynet_deploy.model_card.serving_metadata`).
    """
    import onnx
    import torch

    if form not in EXPORT_FORMS:
        raise ExportError(f"unknown export form {form!r}; choose one of {', '.join(EXPORT_FORMS)}")
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: DyNet graphs need opset >= {MIN_OPSET}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ExportError(f"input_shape must be (N, C, H, W) with positive sizes, got {tuple(input_shape)}")
    path = check_output_path(path, ExportError)
    if form not in export_forms(model):
        raise ExportError(
            f"the model's dynamic convs take a spatial attention (ODConv), which the {form} form cannot express: "
            f"export with --form kernel (a fixed batch; `dynet-deploy fuse` makes it dynamic)"
        )
    dyn_convs = count_dynamic_convs(model)
    if dynamic_batch is None:
        dynamic_batch = form == "feature" or dyn_convs == 0
    if dynamic_batch and form == "kernel" and dyn_convs:
        raise ExportError(
            "the kernel form bakes the batch into Conv.group (batch-as-groups), so it cannot have a dynamic batch; "
            "export with --static (then `dynet-deploy fuse` makes the batch dynamic) or use --form feature"
        )
    if exporter == "dynamo":
        opset = max(opset, DYNAMO_MIN_OPSET)

    prepared = prepare_for_export(model, form)
    example_batch = shape[0]
    if dynamic_batch and exporter == "dynamo" and example_batch < 2:
        example_batch = 2  # torch.export specialises a size-1 dimension
    x = torch.randn(example_batch, *shape[1:])
    try:
        output_names = _output_names(prepared, x)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"the model fails on an input of shape {list(x.shape)}: {type(exc).__name__}: {exc}") from exc
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dynet-export-") as tmp:
        tmp_file = Path(tmp) / "model.onnx"
        try:
            _torch_export(prepared, x, tmp_file, exporter, opset, output_names, dynamic_batch, dynamic_hw)
        except ExportError:
            raise
        except Exception as exc:  # the exporters raise many types; name the stage and the way out
            first = summarise(str(exc).strip().splitlines()[0], 400) if str(exc).strip() else type(exc).__name__
            hint = ""
            if exporter == "dynamo":
                hint = " (try --exporter torchscript)"
            elif dynamic_batch or dynamic_hw:
                hint = " (a fixed batch and size may export: 'dynet-deploy export --static --static-hw')"
            raise ExportError(
                f"torch.onnx.export ({exporter}, form {form}) failed: {type(exc).__name__}: {first}{hint}"
            ) from exc
        try:
            proto = onnx.load(str(tmp_file), load_external_data=True)
        except Exception as exc:
            raise ExportError(f"the exporter wrote an unreadable ONNX file: {exc}") from exc

    proto, folded = fold_conv_batchnorms(proto)
    extra = _non_standard_ops(proto)
    if extra:
        raise ExportError(
            f"the exported graph uses non-standard ops {extra}; the portable graph must use standard ops only"
        )
    meta = {
        META_FORM: form,
        META_EXPORTER: exporter,
        META_BATCH: "dynamic" if dynamic_batch else str(shape[0]),
    }
    name = model_name or getattr(model, "zoo_name", None)
    if name:
        meta[META_MODEL] = str(name)
        meta[META_MODEL_ARGS] = json.dumps(
            model_args if model_args is not None else getattr(model, "zoo_kwargs", {}), sort_keys=True
        )
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    set_metadata(proto, meta)
    stamp_producer(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported graph fails onnx.checker: {exc}") from exc
    if proto.ByteSize() >= 2**31 - 2**20:
        raise ExportError("the graph is over protobuf's 2 GiB limit; this exporter embeds weights and cannot write it")
    opset_written = max(o.version for o in proto.opset_import if o.domain in STANDARD_DOMAINS)
    with atomic_path(path, ExportError) as tmp_path:
        onnx.save(proto, str(tmp_path))
    return ExportReport(
        path=path,
        form=form,
        exporter=exporter,
        opset=opset_written,
        input_shape=shape,
        dynamic_batch=bool(dynamic_batch),
        dynamic_hw=bool(dynamic_hw),
        input_names=[i.name for i in proto.graph.input],
        output_names=[o.name for o in proto.graph.output],
        dynamic_convs=dyn_convs,
        folded_conv_batchnorms=folded,
        notes=notes,
    )


def set_metadata(proto, values: dict[str, str]) -> None:
    kept = [p for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for k, v in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, str(v)


def get_metadata(proto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}
