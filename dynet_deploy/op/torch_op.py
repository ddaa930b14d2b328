"""``torch.ops.dynet.dynamic_conv2d``: the DyNetDynamicConv2d op as a PyTorch custom op on the native kernels.

Importing this module registers the op (``torch.library.custom_op``) with a fake (meta) implementation, so
``torch.compile`` and ``torch.export`` trace it as one node. The native libraries are loaded on the first call, not
at import; a missing library is a :class:`~dynet_deploy.errors.MissingDependencyError` saying how to build it.

Signature (the op spec's inputs and int attributes, :mod:`dynet_deploy.op.spec`; ``has_bias_bank``, ``has_bias``,
``has_spatial`` and ``has_residual`` follow from whether the optional tensors are given)::

    dynamic_conv2d(x, coeff, weight, bias_bank=None, bias=None, stride_h=1, stride_w=1, pad_top=0, pad_left=0,
                   pad_bottom=0, pad_right=0, dilation_h=1, dilation_w=1, groups=1, activation=0,
                   tactic=TACTIC_TIMED, spatial=None, residual=None) -> y
    dynamic_conv2d_mean(<the same>) -> (y, mean)

``spatial`` [N, kH*kW], ``residual`` [N, C_out, H_out, W_out] and the ``mean`` output [N, C_out, 1, 1]
(``torch.ops.dynet.dynamic_conv2d_mean``, ``has_mean``) are op version 2 (README, "Versions"); a call with none of
them is version 1 exactly.

Where it runs:

- CPU tensors, float32 or float16: the fast CPU kernel (the onnxruntime custom-op library's, GEMM and direct paths,
  AVX-512 / AVX2), run as a one-node onnxruntime session per attribute set (dynamic shapes, so one session serves
  every batch and size); onnxruntime and ``libdynet_dynamic_conv_ort.so`` are needed. The fast kernel has no plain C
  entry point; the C ABI's CPU function (``dynet_conv_cpu_f32``, ``dynet_conv_cpu`` for version 2) is the
  double-accumulation reference, selected with ``tactic=TACTIC_CPU_REFERENCE`` (float32 only). CUDA tactic ids are
  ignored on the CPU.
- CUDA tensors, float32 or float16: the CUDA library's plan API on the current stream (``dynet_conv_cuda_plan_run``,
  or ``dynet_conv_cuda_plan_run_v2`` for a version-2 call), one plan per shape, attribute set, dtype and tactic, made
  once and cached (plans are made outside any CUDA-graph capture; a call
  inside a capture needs its plan made by an earlier eager call). ``tactic=TACTIC_TIMED`` times every tactic the
  library offers once per shape and keeps the fastest, as TensorRT does; a library tactic id (``native.ALGO_*``)
  runs that tactic and fails when its plan is refused.

The op has no autograd formula: it is an inference op (use the module's ``"kernel"`` mode to train).
"""

# No ``from __future__ import annotations`` here: torch.library.custom_op reads the op's schema from the real
# annotations of dynamic_conv2d below.
import ctypes
import statistics
import threading
from typing import Optional, Sequence

import torch

from . import native
from .spec import OP_DOMAIN, OP_DOMAIN_VERSION, OP_TYPE, check_attributes

TACTIC_TIMED = -1  # CUDA: time every tactic once per shape and keep the fastest; CPU: the fast kernel
TACTIC_CPU_REFERENCE = -2  # CPU: the C ABI's reference (dynet_conv_cpu_f32 / dynet_conv_cpu, float32 only)

OP_NAME = "dynet::dynamic_conv2d"
OP_NAME_MEAN = "dynet::dynamic_conv2d_mean"  # the same op with version 2's mean output: (y, mean)
_LOCK = threading.Lock()


def _attrs(stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right, dilation_h, dilation_w, groups, activation):
    return {
        "stride": (stride_h, stride_w),
        "pads": (pad_top, pad_left, pad_bottom, pad_right),
        "dilation": (dilation_h, dilation_w),
        "groups": groups,
        "activation": activation,
    }


def _params(
    x, coeff, weight, bias_bank, bias, attrs, spatial=None, residual=None, mean=False
) -> native.DynetConvParams:
    """The call's DynetConvParams, checked by the C ABI's validator (its reason in the error)."""
    named = (("x", x), ("coeff", coeff), ("weight", weight), ("bias_bank", bias_bank), ("bias", bias))
    for name, t in (*named, ("spatial", spatial), ("residual", residual)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{OP_TYPE}: {name} is on {t.device}, x on {x.device}; put every input on one device")
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"{OP_TYPE}: {name} is {t.dtype}, x {x.dtype}; every input must have x's dtype")
    params = native.make_params(
        tuple(x.shape),
        tuple(coeff.shape),
        tuple(weight.shape),
        has_bias_bank=bias_bank is not None,
        has_bias=bias is not None,
        has_spatial=spatial is not None,
        has_residual=residual is not None,
        has_mean=mean,
        **attrs,
    )
    h_out, w_out = native.output_hw(params, native.load_cpu_library())  # raises DynamicConvCallError naming the fault
    if bias_bank is not None and tuple(bias_bank.shape) != (params.k, params.c_out):
        raise ValueError(
            f"{OP_TYPE}: bias_bank must be [K, C_out] = [{params.k}, {params.c_out}], got {tuple(bias_bank.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (params.c_out,):
        raise ValueError(f"{OP_TYPE}: bias must be [C_out] = [{params.c_out}], got {tuple(bias.shape)}")
    if spatial is not None and tuple(spatial.shape) != (params.n, params.kh * params.kw):
        raise ValueError(
            f"{OP_TYPE}: spatial must be [N, kH*kW] = [{params.n}, {params.kh * params.kw}], got {tuple(spatial.shape)}"
        )
    want = (params.n, params.c_out, h_out, w_out)
    if residual is not None and tuple(residual.shape) != want:
        raise ValueError(
            f"{OP_TYPE}: residual must be [N, C_out, H_out, W_out] = {list(want)} (y's shape), got "
            f"{list(residual.shape)}"
        )
    return params


def _version_two(params: native.DynetConvParams) -> bool:
    return bool(params.has_spatial or params.has_residual or params.has_mean)


def _key(params: native.DynetConvParams) -> tuple[int, ...]:
    return tuple(getattr(params, name) for name in native.PARAM_FIELDS)


# ---- CPU: the fast kernel through the onnxruntime custom-op library; the C reference through ctypes -------------

_ORT_SESSIONS: dict[tuple, object] = {}


def _ort_session(dtype: torch.dtype, attrs: dict, has_bb: bool, has_b: bool, has_s=False, has_r=False, mean=False):
    flags = (has_bb, has_b, has_s, has_r, mean)
    key = (dtype, tuple(sorted((k, v if isinstance(v, int) else tuple(v)) for k, v in attrs.items())), flags)
    with _LOCK:
        sess = _ORT_SESSIONS.get(key)
        if sess is not None:
            return sess
        import onnxruntime as ort
        from onnx import TensorProto, helper

        from . import onnxruntime_lib
        from .spec import attributes, input_names, make_node, op_version, output_names

        elem = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16}[dtype]
        values = attributes(
            has_bias_bank=has_bb, has_bias=has_b, has_spatial=has_s, has_residual=has_r, has_mean=mean, **attrs
        )
        names, outputs = input_names(values), output_names(values)
        dims: dict[str, list[str | int | None]] = {
            "x": ["N", "C_in", "H", "W"],
            "coeff": ["N", "C_c", "K"],
            "weight": ["K", "C_out", "C_in_g", "kH", "kW"],
            "bias_bank": ["K", "C_out"],
            "bias": ["C_out"],
            "spatial": ["N", "kHkW"],
            "residual": ["N", "C_out", "H_out", "W_out"],
            "y": ["N", "C_out", None, None],
            "mean": ["N", "C_out", 1, 1],
        }
        graph = helper.make_graph(
            [make_node(names, outputs, name="dynamic_conv", version=op_version(values), **values)],
            "dynet_dynamic_conv2d",
            [helper.make_tensor_value_info(n, elem, dims[n]) for n in names],
            [helper.make_tensor_value_info(n, elem, dims[n]) for n in outputs],
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(OP_DOMAIN, OP_DOMAIN_VERSION)]
        )
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, torch.get_num_threads())
        so.log_severity_level = 3
        onnxruntime_lib.register(so)
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        _ORT_SESSIONS[key] = sess
        return sess


def _cpu_fast(x, coeff, weight, bias_bank, bias, attrs, spatial=None, residual=None, mean=False):
    """(y, mean or None) from the fast CPU kernel (a one-node onnxruntime session of the node's op version)."""
    if x.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"{OP_TYPE} on the CPU takes float32 or float16 tensors, got {x.dtype}")
    sess = _ort_session(
        x.dtype, attrs, bias_bank is not None, bias is not None, spatial is not None, residual is not None, mean
    )
    feeds = {
        "x": x,
        "coeff": coeff,
        "weight": weight,
        "bias_bank": bias_bank,
        "bias": bias,
        "spatial": spatial,
        "residual": residual,
    }
    feeds = {k: v.detach().contiguous().numpy() for k, v in feeds.items() if v is not None}
    outs = sess.run(["y", "mean"] if mean else ["y"], feeds)
    return torch.from_numpy(outs[0]), (torch.from_numpy(outs[1]) if mean else None)


def _cpu_reference(x, coeff, weight, bias_bank, bias, params, spatial=None, residual=None):
    """(y, mean or None) from the C ABI's reference: dynet_conv_cpu_f32, or dynet_conv_cpu for version 2."""
    if x.dtype != torch.float32:
        raise ValueError(f"{OP_TYPE}: the C reference (TACTIC_CPU_REFERENCE) takes float32 tensors, got {x.dtype}")
    lib = native.load_cpu_library()
    h_out, w_out = native.output_hw(params, lib)
    y = torch.empty((params.n, params.c_out, h_out, w_out), dtype=torch.float32)
    ts = [None if t is None else t.detach().contiguous() for t in (x, coeff, weight, bias_bank, bias)]
    if _version_two(params):
        extras = [None if t is None else t.detach().contiguous() for t in (spatial, residual)]
        mean = torch.empty((params.n, params.c_out, 1, 1), dtype=torch.float32) if params.has_mean else None
        tensors = native.DynetConvTensors(*(None if t is None else t.data_ptr() for t in (*ts, *extras, y, mean)))
        status = lib.dynet_conv_cpu(ctypes.byref(params), ctypes.byref(tensors))
        if status != native.OK:
            raise native._error(lib, status, params)
        return y, mean
    fp = ctypes.POINTER(ctypes.c_float)

    def ptr(t):
        return None if t is None else ctypes.cast(t.data_ptr(), fp)

    status = lib.dynet_conv_cpu_f32(ctypes.byref(params), *(ptr(t) for t in ts), ptr(y))
    if status != native.OK:
        raise native._error(lib, status, params)
    return y, None


# ---- CUDA: the plan API, tactics enumerated from the library, the fastest kept per shape ----------------------


def _tactic_names() -> dict[int, str]:
    # ALGO_LAST is an alias of the largest id (the C ABI's DYNET_ALGO_LAST), not a tactic's name.
    return {
        getattr(native, name): name[len("ALGO_") :].lower()
        for name in dir(native)
        if name.startswith("ALGO_")
        and name not in ("ALGO_AUTO", "ALGO_LAST")
        and isinstance(getattr(native, name), int)
    }


_TACTICS: list[tuple[int, str]] | None = None


def cuda_tactics() -> list[tuple[int, str]]:
    """Every tactic id the loaded CUDA library knows, as (id, name), read from the library itself.

    The C ABI has no list: the ids are probed upwards from 1 with ``dynet_conv_cuda_plan_create`` on a small valid
    call until the library answers DYNET_ERR_INVALID_ARGUMENT (an unknown algorithm). A tactic this build cannot run
    (cuDNN without cuDNN) answers otherwise and is listed; its plans are refused later. Names come from the
    ``ALGO_*`` constants of :mod:`dynet_deploy.op.native` (``algo<id>`` for an id it does not name).
    """
    global _TACTICS
    if _TACTICS is not None:
        return list(_TACTICS)
    lib = native.load_cuda_library()
    p = native.make_params((1, 8, 4, 4), (1, 8, 2), (2, 8, 8, 1, 1))
    names = _tactic_names()
    found = []
    msg = ctypes.create_string_buffer(256)
    for algo in range(1, 64):
        plan = ctypes.c_void_p()
        status = lib.dynet_conv_cuda_plan_create(ctypes.byref(p), native.FLOAT32, algo, 0, ctypes.byref(plan), msg, 256)
        if plan.value:
            lib.dynet_conv_cuda_plan_destroy(plan)
        if status == native.ERR_INVALID_ARGUMENT:
            break
        found.append((algo, names.get(algo, f"algo{algo}")))
    _TACTICS = found
    return list(found)


class PlanRefused(RuntimeError):
    """A tactic's plan was refused for this call; ``status`` is the DynetStatus code, ``reason`` the library's."""

    def __init__(self, status: int, reason: str, tactic: int):
        super().__init__(f"{OP_TYPE}: tactic {tactic} refused the call (status {status}): {reason}")
        self.status, self.reason, self.tactic = status, reason, tactic


class CudaPlan:
    """One plan of the CUDA library for one call shape, dtype and tactic (made outside any enqueue)."""

    def __init__(self, params: native.DynetConvParams, dtype: int, tactic: int):
        self.lib = _declare_v2(native.load_cuda_library())
        self.params = params
        # Version 2 (a version-2 flag; the bank typed as the I/O dtype) runs through dynet_conv_cuda_plan_run_v2.
        self.v2 = self.lib.dynet_conv_op_version(ctypes.byref(params)) > 1
        self.plan = ctypes.c_void_p()
        msg = ctypes.create_string_buffer(512)
        status = self.lib.dynet_conv_cuda_plan_create(
            ctypes.byref(params), dtype, tactic, 0, ctypes.byref(self.plan), msg, len(msg)
        )
        if status != native.OK:
            raise PlanRefused(status, msg.value.decode(errors="replace"), tactic)
        self.tactic = int(self.lib.dynet_conv_cuda_plan_algo(self.plan))
        self.workspace_bytes = int(self.lib.dynet_conv_cuda_plan_workspace_size(self.plan))

    def __del__(self):
        if getattr(self, "plan", None) is not None and self.plan.value:
            self.lib.dynet_conv_cuda_plan_destroy(self.plan)
            self.plan = ctypes.c_void_p()

    def run(self, tensors: Sequence[torch.Tensor | None], out: torch.Tensor, workspace=None, mean=None) -> torch.Tensor:
        """The plan on ``tensors`` (x, coeff, weight, bias_bank, bias[, spatial, residual]; the optional ones may be
        None) into ``out`` (and ``mean`` for a plan with has_mean)."""
        x, coeff, weight, bias_bank, bias, spatial, residual = (*tensors, None, None)[:7]
        assert x is not None and coeff is not None and weight is not None
        if workspace is None and self.workspace_bytes:
            workspace = torch.empty(self.workspace_bytes, dtype=torch.uint8, device=x.device)
        if self.v2:
            t = native.DynetConvTensors(
                *(
                    None if v is None else v.data_ptr()
                    for v in (x, coeff, weight, bias_bank, bias, spatial, residual, out, mean)
                )
            )
            status = self.lib.dynet_conv_cuda_plan_run_v2(
                self.plan,
                ctypes.byref(t),
                None if workspace is None else workspace.data_ptr(),
                self.workspace_bytes,
                torch.cuda.current_stream(x.device).cuda_stream,
            )
            if status != native.OK:
                raise native._error(self.lib, status, self.params)
            return out
        status = self.lib.dynet_conv_cuda_plan_run(
            self.plan,
            x.data_ptr(),
            coeff.data_ptr(),
            weight.data_ptr(),
            None if bias_bank is None else bias_bank.data_ptr(),
            None if bias is None else bias.data_ptr(),
            out.data_ptr(),
            None if workspace is None else workspace.data_ptr(),
            self.workspace_bytes,
            torch.cuda.current_stream(x.device).cuda_stream,
        )
        if status != native.OK:
            raise native._error(self.lib, status, self.params)
        return out


def _declare_v2(lib: ctypes.CDLL) -> ctypes.CDLL:
    """The CUDA library's version-2 enqueue (dynet_conv_cuda_plan_run_v2) declared."""
    vp = ctypes.c_void_p
    lib.dynet_conv_cuda_plan_run_v2.argtypes = [vp, ctypes.POINTER(native.DynetConvTensors), vp, ctypes.c_size_t, vp]
    lib.dynet_conv_cuda_plan_run_v2.restype = ctypes.c_int32
    return lib


_PLANS: dict[tuple, CudaPlan] = {}
_CHOSEN: dict[tuple, tuple[int, dict[str, float]]] = {}


def _refuse_while_capturing(what: str) -> None:
    """Making a plan or timing tactics allocates and synchronises, which a CUDA graph capture cannot hold."""
    if torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            f"{OP_TYPE}: no {what} for this shape yet and a CUDA graph is being captured; run the model once "
            "eagerly with the same shapes before capturing"
        )


def _plan(params, dtype: int, tactic: int, device: int) -> CudaPlan:
    key = (_key(params), dtype, tactic, device)
    plan = _PLANS.get(key)
    if plan is None:
        _refuse_while_capturing("plan")
        plan = CudaPlan(params, dtype, tactic)
        _PLANS[key] = plan
    return plan


def _time_tactics(params, dtype: int, device: int, tensors, reps: int = 5) -> tuple[int, dict[str, float]]:
    """Median ms per call of every tactic the library offers for this call; the fastest id and the table."""
    x = tensors[0]
    times: dict[str, float] = {}
    best, best_ms = None, float("inf")
    for tactic, name in cuda_tactics():
        try:
            plan = _plan(params, dtype, tactic, device)
        except PlanRefused:
            continue  # TensorRT skips a tactic whose plan is refused, and so does the choice here
        out, mean = _outputs(params, plan.lib, x)
        ws = torch.empty(max(plan.workspace_bytes, 1), dtype=torch.uint8, device=x.device)
        plan.run(tensors, out, ws, mean)
        samples = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            plan.run(tensors, out, ws, mean)
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        ms = statistics.median(samples)
        times[name] = ms
        if ms < best_ms:
            best, best_ms = tactic, ms
    if best is None:
        raise RuntimeError(f"{OP_TYPE}: every CUDA tactic refused this call ({_describe(params)})")
    for tactic, _ in cuda_tactics():  # only the kept tactic's plan stays (a cuDNN plan holds a handle)
        if tactic != best:
            _PLANS.pop((_key(params), dtype, tactic, device), None)
    return best, times


def _outputs(params, lib, x) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Empty y (and mean, with has_mean) for a call, on x's device and dtype."""
    h_out, w_out = native.output_hw(params, lib)
    out = torch.empty((params.n, params.c_out, h_out, w_out), dtype=x.dtype, device=x.device)
    mean = torch.empty((params.n, params.c_out, 1, 1), dtype=x.dtype, device=x.device) if params.has_mean else None
    return out, mean


def _describe(params) -> str:
    return ", ".join(f"{name}={getattr(params, name)}" for name in native.PARAM_FIELDS)


def _cuda(x, coeff, weight, bias_bank, bias, params, tactic: int, spatial=None, residual=None):
    """(y, mean or None) from the CUDA library's plan for this call."""
    dtype = {torch.float32: native.FLOAT32, torch.float16: native.FLOAT16}.get(x.dtype)
    if dtype is None:
        raise ValueError(f"{OP_TYPE} on CUDA takes float32 or float16 tensors, got {x.dtype}")
    if _version_two(params):
        params.weight_dtype = dtype  # the version-2 enqueue takes the bank's type explicitly: the I/O dtype
    tensors = tuple(
        None if t is None else t.contiguous() for t in (x, coeff, weight, bias_bank, bias, spatial, residual)
    )
    device = x.device.index if x.device.index is not None else torch.cuda.current_device()
    if tactic == TACTIC_TIMED:
        key = (_key(params), dtype, device)
        chosen = _CHOSEN.get(key)
        if chosen is None:
            _refuse_while_capturing("tactic chosen")
            chosen = _time_tactics(params, dtype, device, tensors)
            _CHOSEN[key] = chosen
        tactic = chosen[0]
    elif tactic < 0:
        raise ValueError(f"{OP_TYPE}: tactic {tactic} is not a CUDA tactic (TACTIC_TIMED or a library id)")
    plan = _plan(params, dtype, tactic, device)
    out, mean = _outputs(params, plan.lib, x)
    plan.run(tensors, out, mean=mean)
    return out, mean


def chosen_tactics() -> list[dict]:
    """The timed choices made so far: per call shape and dtype, the kept tactic and every tactic's median ms."""
    names = dict(cuda_tactics()) if _CHOSEN else {}
    rows = []
    for (key, dtype, device), (tactic, times) in _CHOSEN.items():
        fields = dict(zip(native.PARAM_FIELDS, key))
        rows.append(
            {
                "params": fields,
                "dtype": "float16" if dtype == native.FLOAT16 else "float32",
                "device": device,
                "tactic": names.get(tactic, str(tactic)),
                "times_ms": dict(times),
            }
        )
    return rows


def clear_caches() -> None:
    """Drop the cached plans, timed choices and onnxruntime sessions."""
    with _LOCK:
        _PLANS.clear()
        _CHOSEN.clear()
        _ORT_SESSIONS.clear()


# ---- the op ----------------------------------------------------------------------------------------------------


def _run(x, coeff, weight, bias_bank, bias, attr_values, tactic, spatial, residual, mean: bool):
    """(y, mean or None) of one call, on x's device."""
    attrs = _attrs(*attr_values)
    params = _params(x, coeff, weight, bias_bank, bias, attrs, spatial, residual, mean)
    if x.device.type == "cuda":
        return _cuda(x, coeff, weight, bias_bank, bias, params, tactic, spatial, residual)
    if x.device.type != "cpu":
        raise ValueError(f"{OP_TYPE} runs on CPU and CUDA tensors, got {x.device}")
    if tactic == TACTIC_CPU_REFERENCE:
        return _cpu_reference(x, coeff, weight, bias_bank, bias, params, spatial, residual)
    return _cpu_fast(x, coeff, weight, bias_bank, bias, attrs, spatial, residual, mean)


@torch.library.custom_op(OP_NAME, mutates_args=())
def dynamic_conv2d(
    x: torch.Tensor,
    coeff: torch.Tensor,
    weight: torch.Tensor,
    bias_bank: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    stride_h: int = 1,
    stride_w: int = 1,
    pad_top: int = 0,
    pad_left: int = 0,
    pad_bottom: int = 0,
    pad_right: int = 0,
    dilation_h: int = 1,
    dilation_w: int = 1,
    groups: int = 1,
    activation: int = 0,
    tactic: int = TACTIC_TIMED,
    spatial: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    attr_values = (stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right, dilation_h, dilation_w, groups)
    y, _ = _run(x, coeff, weight, bias_bank, bias, (*attr_values, activation), tactic, spatial, residual, False)
    return y


@torch.library.custom_op(OP_NAME_MEAN, mutates_args=())
def dynamic_conv2d_mean(
    x: torch.Tensor,
    coeff: torch.Tensor,
    weight: torch.Tensor,
    bias_bank: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    stride_h: int = 1,
    stride_w: int = 1,
    pad_top: int = 0,
    pad_left: int = 0,
    pad_bottom: int = 0,
    pad_right: int = 0,
    dilation_h: int = 1,
    dilation_w: int = 1,
    groups: int = 1,
    activation: int = 0,
    tactic: int = TACTIC_TIMED,
    spatial: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    attr_values = (stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right, dilation_h, dilation_w, groups)
    y, mean = _run(x, coeff, weight, bias_bank, bias, (*attr_values, activation), tactic, spatial, residual, True)
    assert mean is not None
    return y, mean


def _fake_y(
    x,
    coeff,
    weight,
    stride_h,
    stride_w,
    pad_top,
    pad_left,
    pad_bottom,
    pad_right,
    dilation_h,
    dilation_w,
    groups,
    activation,
    spatial,
    residual,
) -> torch.Tensor:
    check_attributes(
        dict(
            zip(
                ("stride_h", "stride_w", "pad_top", "pad_left", "pad_bottom", "pad_right"),
                (stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right),
            ),
            dilation_h=dilation_h,
            dilation_w=dilation_w,
            groups=groups,
            activation=activation,
        )
    )
    torch._check(x.dim() == 4 and coeff.dim() == 3 and weight.dim() == 5, lambda: f"{OP_TYPE}: bad input ranks")
    n, c_in, h, w = x.shape
    k, c_out, cin_g, kh, kw = weight.shape
    torch._check(coeff.shape[0] == n, lambda: f"{OP_TYPE}: coeff's batch differs from x's")
    torch._check(coeff.shape[2] == k, lambda: f"{OP_TYPE}: coeff's K differs from weight's")
    torch._check(cin_g * groups == c_in, lambda: f"{OP_TYPE}: x's channels differ from weight's C_in/groups * groups")
    h_out = (h + pad_top + pad_bottom - dilation_h * (kh - 1) - 1) // stride_h + 1
    w_out = (w + pad_left + pad_right - dilation_w * (kw - 1) - 1) // stride_w + 1
    if spatial is not None:
        torch._check(
            spatial.dim() == 2 and spatial.shape[0] == n and spatial.shape[1] == kh * kw,
            lambda: f"{OP_TYPE}: spatial must be [N, kH*kW]",
        )
    if residual is not None:
        torch._check(
            tuple(residual.shape) == (n, c_out, h_out, w_out), lambda: f"{OP_TYPE}: residual must have y's shape"
        )
    return x.new_empty((n, c_out, h_out, w_out))


@dynamic_conv2d.register_fake
def _(
    x,
    coeff,
    weight,
    bias_bank=None,
    bias=None,
    stride_h=1,
    stride_w=1,
    pad_top=0,
    pad_left=0,
    pad_bottom=0,
    pad_right=0,
    dilation_h=1,
    dilation_w=1,
    groups=1,
    activation=0,
    tactic=TACTIC_TIMED,
    spatial=None,
    residual=None,
):
    return _fake_y(
        x,
        coeff,
        weight,
        stride_h,
        stride_w,
        pad_top,
        pad_left,
        pad_bottom,
        pad_right,
        dilation_h,
        dilation_w,
        groups,
        activation,
        spatial,
        residual,
    )


@dynamic_conv2d_mean.register_fake
def _(
    x,
    coeff,
    weight,
    bias_bank=None,
    bias=None,
    stride_h=1,
    stride_w=1,
    pad_top=0,
    pad_left=0,
    pad_bottom=0,
    pad_right=0,
    dilation_h=1,
    dilation_w=1,
    groups=1,
    activation=0,
    tactic=TACTIC_TIMED,
    spatial=None,
    residual=None,
):
    y = _fake_y(
        x,
        coeff,
        weight,
        stride_h,
        stride_w,
        pad_top,
        pad_left,
        pad_bottom,
        pad_right,
        dilation_h,
        dilation_w,
        groups,
        activation,
        spatial,
        residual,
    )
    return y, x.new_empty((y.shape[0], y.shape[1], 1, 1))


def op_arguments(stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1, activation=0) -> tuple[int, ...]:
    """The op's int attributes, in its signature's order, from conv-style arguments (pads: top, left, bottom, right)."""
    return (*map(int, stride), *map(int, pads), *map(int, dilation), int(groups), int(activation))
