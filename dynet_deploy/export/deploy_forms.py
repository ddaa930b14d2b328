"""Export a Dy model in any of :data:`DY_FORMS` for timing: the two textbook forms of :mod:`.exporter`, the
``matmul`` form of :mod:`dynet_deploy.nn.deploy_forms`, and that form on onnxruntime's NCHWc convs (:mod:`.nchwc`)."""

from __future__ import annotations

from torch import nn

from ..errors import ExportError
from ..graph import MIN_OPSET
from ..nn.deploy_forms import to_deploy_form
from .nchwc import NCHWC_MIN_SHARE, nchwc_block_size, nchwc_dynamic_convs

# Forms a Dy model can be exported in for timing: the two textbook forms of export_onnx, ours, and ours with
# onnxruntime's blocked-layout convolution (onnxruntime CPU only, block size of the machine that writes it).
DY_FORMS = ("feature", "kernel", "matmul", "matmul-nchwc")


META_DEPLOY_FORM = "dynet_deploy.deploy_form"


def best_dy_form() -> str:
    """The fastest measured form for onnxruntime CPU on this machine."""
    return "matmul-nchwc" if nchwc_block_size() else "matmul"


def export_deploy_onnx(model: nn.Module, path, input_shape, form: str = "matmul", opset: int = MIN_OPSET):
    """Export ``model`` in ``form`` (one of :data:`DY_FORMS`) to ``path``; returns the export report.

    ``feature``/``kernel`` are :func:`export_onnx`'s forms; ``matmul`` is :func:`to_deploy_form` exported with the
    standard exporter (standard ops, fixed batch); ``matmul-nchwc`` is that graph after
    :func:`nchwc_dynamic_convs` (onnxruntime CPU only, for machines with this one's NCHWc block size), when at
    least :data:`NCHWC_MIN_SHARE` of the dynamic convs fit it (else the ``matmul`` graph; ``report.form`` says
    which was written).
    """
    import onnx

    from ..fileio import atomic_path
    from ..provenance import stamp_producer
    from .exporter import export_onnx, get_metadata, set_metadata

    if form not in DY_FORMS:
        raise ExportError(f"unknown deploy form {form!r}; choose one of {', '.join(DY_FORMS)}")
    if form in ("feature", "kernel"):
        return export_onnx(
            model, path, input_shape, form=form, dynamic_batch=False if form == "kernel" else None, opset=opset
        )
    name, args = getattr(model, "zoo_name", None), getattr(model, "zoo_kwargs", None)
    report = export_onnx(
        to_deploy_form(model),
        path,
        input_shape,
        form="kernel",
        dynamic_batch=False,
        opset=opset,
        model_name=name,
        model_args=args,
    )
    proto = onnx.load(str(report.path))
    meta = {META_DEPLOY_FORM: form}
    if form == "matmul-nchwc":
        blocked, rewritten = nchwc_dynamic_convs(proto)
        total = _count_runtime_weight_convs(proto)
        if rewritten >= NCHWC_MIN_SHARE * total:
            proto = blocked
            meta["dynet_deploy.nchwc_block"] = str(nchwc_block_size())
            report.notes.append(
                f"{rewritten} of {total} dynamic convs on onnxruntime's NCHWc kernel (block {nchwc_block_size()})"
            )
        else:
            form = meta[META_DEPLOY_FORM] = "matmul"
            report.notes.append(
                f"only {rewritten} of {total} dynamic convs fit onnxruntime's NCHWc kernel (grouped or odd widths): "
                "kept the matmul form, where isolated blocked convs cost more in layout changes than they save"
            )
    set_metadata(proto, {**get_metadata(proto), **meta})
    stamp_producer(proto)
    with atomic_path(report.path, ExportError) as tmp:
        onnx.save(proto, str(tmp))
    report.form = form
    return report


def _count_runtime_weight_convs(proto) -> int:
    constants = {t.name for t in proto.graph.initializer}
    constants |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    return sum(n.op_type == "Conv" and len(n.input) > 1 and n.input[1] not in constants for n in proto.graph.node)
