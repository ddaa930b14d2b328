"""``DyNetDynamicConv2d`` as an onnxruntime-extensions Python op, so fused graphs run on onnxruntime CPU.

The op computes the contract (plugins/dynamic_conv/README.md) with torch: kernel fusion of the whole batch,
then one batch-as-groups ``conv2d``. Registered once per process by :func:`register`.

Two limits of the onnxruntime-extensions Python-op API shape this module (found by trying, extensions 0.15):

* An op type has one fixed input count: registering ``DyNetDynamicConv2d`` again with 3 or 4 inputs fails in
  onnxruntime's schema creation, and an empty input name is rejected ("marked single"). The fused graph on
  disk keeps the contract's positional inputs (3, 4 or 5, per ``has_bias_bank``/``has_bias``), which
  TensorRT's plugin expects; the op is registered with all 5, and :func:`pad_optional_inputs` gives every
  node the missing optional inputs as empty constants in the in-memory copy the onnxruntime runner loads.
* Only float32 tensors: registering a float16 variant aborts the process ("Type float16 not supported by
  python customops api"). fp16 fused graphs run on TensorRT (or on onnxruntime after a cast to fp32).

Undeclared node attributes (``plugin_version``, ``plugin_namespace``) are ignored by the Python-op kernel.
An exception escaping a Python op aborts the process, so the op logs the error and returns NaNs instead;
:class:`~dynet_deploy.runtimes.onnxruntime_runtime.OnnxruntimeRunner` checks inputs before they get there.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from .reference import dynamic_conv_numpy
from .spec import ATTRIBUTE_NAMES, INPUTS, OP_DOMAIN, OP_TYPE, OPTIONAL_INPUT_FLAGS

log = logging.getLogger(__name__)

_lock = threading.Lock()
_registered = False


def _nan_output(x, weight, attrs) -> np.ndarray:
    """The output shape the op would have, filled with NaN (or one NaN if even the shape is unknowable)."""
    try:
        n, _, h, w = x.shape
        kh, kw = weight.shape[3], weight.shape[4]
        ho = (h + attrs["pad_top"] + attrs["pad_bottom"] - attrs["dilation_h"] * (kh - 1) - 1) // attrs["stride_h"] + 1
        wo = (w + attrs["pad_left"] + attrs["pad_right"] - attrs["dilation_w"] * (kw - 1) - 1) // attrs["stride_w"] + 1
        return np.full((n, weight.shape[1], max(ho, 0), max(wo, 0)), np.nan, np.float32)
    except Exception:
        return np.full((1,), np.nan, np.float32)


def register() -> str:
    """Register the Python op (once per process) and return the onnxruntime-extensions library path."""
    global _registered
    import torch
    from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op

    with _lock:
        if not _registered:
            f32 = PyCustomOpDef.dt_float

            @onnx_op(
                op_type=f"{OP_DOMAIN}::{OP_TYPE}",
                inputs=[f32] * len(INPUTS),
                outputs=[f32],
                attrs={name: PyCustomOpDef.dt_int64 for name in ATTRIBUTE_NAMES},
            )
            def dynet_dynamic_conv2d(x, coeff, weight, bias_bank, bias, **attrs):
                has_bias_bank = attrs.pop("has_bias_bank")
                has_bias = attrs.pop("has_bias")
                # torch's intra-op pool, woken from an onnxruntime worker thread, fights onnxruntime's own
                # workers for the cores: one torch thread inside the op measured 15x faster end to end.
                threads = torch.get_num_threads()
                torch.set_num_threads(1)
                try:
                    return dynamic_conv_numpy(
                        x, coeff, weight, bias_bank if has_bias_bank else None, bias if has_bias else None,
                        has_bias_bank=has_bias_bank, has_bias=has_bias, **attrs,
                    )
                except Exception as exc:  # an exception escaping a Python op aborts the whole process
                    log.error("%s failed: %s; returning NaN", OP_TYPE, exc)
                    return _nan_output(x, weight, attrs)
                finally:
                    torch.set_num_threads(threads)

            _registered = True
    return get_library_path()


def pad_optional_inputs(model_proto) -> int:
    """Give every DyNetDynamicConv2d node all its inputs (absent ones as empty constants), in place.

    The ``has_*`` attributes say which inputs carry data, so the op never reads the placeholders.
    Returns the number of nodes changed.
    """
    from onnx import helper, numpy_helper

    graph = model_proto.graph
    empty_name = "dynet_dynamic_conv_absent_input"
    changed = 0
    for node in graph.node:
        if node.op_type != OP_TYPE:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        inputs = list(node.input)
        fixed = inputs[:3]
        rest = inputs[3:]
        for name in INPUTS[3:]:
            fixed.append(rest.pop(0) if attrs.get(OPTIONAL_INPUT_FLAGS[name], 0) and rest else empty_name)
        if fixed != inputs:
            del node.input[:]
            node.input.extend(fixed)
            changed += 1
    if changed and not any(t.name == empty_name for t in graph.initializer):
        graph.initializer.append(numpy_helper.from_array(np.zeros((0,), np.float32), empty_name))
    return changed
