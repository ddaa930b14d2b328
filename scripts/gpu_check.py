#!/usr/bin/env python3
"""The prepared GPU check of the DyNetDynamicConv2d CUDA kernels (run it through scripts/gpu_check.sh).

1. Correctness of every tactic (two-step, one-kernel, cuDNN; AUTO too) in fp32 and fp16, through the same plan API
   the TensorRT plugin uses, on every distinct dynamic-conv layer of Dy-ResNet50 and Dy-mobile (read from the zoo,
   else a built-in table) plus synthetic layers (dilation, asymmetric pads, depthwise, 5x5, groups of 6, 1x1 with
   stride), random batch / coefficient form / bias bank / bias / activation, against PyTorch in float64 on the same
   input values: relative error ||y - ref|| / ||ref|| <= 1e-5 (fp32), <= 1e-2 (fp16); max-abs printed. Small
   layers are also compared with the C++ CPU reference. The tactics must agree with each other in fp16 (they all
   convolve the same fp16-rounded fused kernels), NaN must pass through ReLU / ReLU6, each path must replay from a
   CUDA graph bit-exactly, and malformed calls must come back as error codes.
   Op version 2 (check_version_two): spatial (scaling each fused kernel tap), residual (added before the
   activation) and the mean output, alone and together, through dynet_conv_cuda_plan_run_v2 for every tactic in fp32
   and fp16, against the op's Python reference (dynet_deploy.op.reference) in float64: y and mean within the same
   tolerances, the tactics agreeing in fp16, NaN in the residual reaching y and the mean, CUDA-graph replay.
2. Shapes at the op's 2^31-1 element limit (output pixels; fused kernels of one sample), checked on crops.
3. Timing (CUDA events over CUDA-graph replays, candidates interleaved trial by trial, median) at batch 1, 8, 32,
   fp16 and fp32: every tactic vs (a) PyTorch batch-as-groups and (b) a static cuDNN convolution of the same shape.
   Goals (printed, enforced only with --strict-perf): fp16, N >= 8: best tactic <= 1.3x static; batch-as-groups /
   best >= 2. Every timed tactic's output is checked too.
4. Whole models: Dy-mobile, Dy-ResNet18, Dy-ResNet50 against MobileNetV2, ResNet18, ResNet50 (static: channels-last
   cuDNN, BN folded; Dy: BN folded, as batch-as-groups and through torch.ops.dynet.dynamic_conv2d with the fastest
   tactic per layer shape, timed as TensorRT does), fp16 and fp32, N = 1, 8, 32, interleaved CUDA-graph replays,
   each op output checked against the fp32 Dy model; then a per-kernel profile of Dy-ResNet50 (torch.profiler).
Verdict: FAIL (exit 1) on any failed check, an undocumented plan refusal included (only cuDNN's asymmetric pads are
documented); INCOMPLETE (exit 3) when a correctness or limit-shape part is cut by its budget or a tactic x dtype ran
fewer than MIN_CHECKS checks; else PASS. Outputs are pre-filled with NaN, so an unwritten element fails.
Modes: --sanitize (small shapes, no timing: what compute-sanitizer runs), --cpu-dry-run (no GPU: checks this
script's references against the C++ CPU reference and a per-sample loop, its crop arithmetic, its judging logic on
bad cases, and the model-level code through the custom op's CPU path, so it cannot rot).
--summary FILE writes the short summary there. Needs torch, numpy and the built libraries (--lib-dir).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import functools
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dynet_deploy.op import native as plugin_lib  # noqa: E402  (numpy + ctypes only)
from dynet_deploy.op import reference as op_reference  # noqa: E402
from dynet_deploy.op import torch_op  # noqa: E402  (torch.ops.dynet.dynamic_conv2d; tactic ids from the library)

TOL = {torch.float32: 1e-5, torch.float16: 1e-2}
AGREE_TOL = 2e-3  # fp16 tactics against each other: same fp16 fused kernels, different accumulation order
K_BASES = 6
MIN_CHECKS = 8  # every tactic x dtype must have at least this many correctness checks (sanitize runs: 2)
MIN_CHECKS_V2 = 3  # version-2 calls per tactic x dtype (counted as "float32 v2" / "float16 v2"; sanitize runs: 1)
V2_DTYPES = ("float32 v2", "float16 v2")
# The only refusals that are not failures: what a tactic's own documentation says it cannot express. Every other
# refusal (DYNET_ERR_UNSUPPORTED from a plan) fails the check.
DOCUMENTED_REFUSALS = {
    "cudnn": (lambda layer: (layer.pads[0], layer.pads[1]) != (layer.pads[2], layer.pads[3]), "asymmetric pads"),
    "cublas_gemm": (
        lambda layer: (layer.kh, layer.kw, layer.stride) != (1, 1, (1, 1)) or any(layer.pads),
        "not pointwise (1x1, stride 1, no pads)",
    ),
}
EXIT_FAIL, EXIT_NO_GPU, EXIT_INCOMPLETE = 1, 2, 3
SUMMARY_PATH: Path | None = None  # --summary: the short summary, written line by line (survives a timeout)


def note(line: str = "") -> None:
    """Print a line and append it to the summary."""
    print(line, flush=True)
    if SUMMARY_PATH is not None:
        with SUMMARY_PATH.open("a") as f:
            f.write(line + "\n")


@dataclasses.dataclass(frozen=True)
class Layer:
    model: str
    c_in: int
    c_out: int
    h: int
    w: int
    kh: int
    kw: int
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int
    k: int = K_BASES

    @property
    def label(self) -> str:
        g = f" g{self.groups}" if self.groups > 1 else ""
        s = f"/s{self.stride[0]}" if self.stride != (1, 1) else ""
        return f"{self.c_in}->{self.c_out} {self.kh}x{self.kw}{s}{g} @{self.h}x{self.w}"

    def flops(self, n: int) -> float:
        ho = (self.h + self.pads[0] + self.pads[2] - self.dilation[0] * (self.kh - 1) - 1) // self.stride[0] + 1
        wo = (self.w + self.pads[1] + self.pads[3] - self.dilation[1] * (self.kw - 1) - 1) // self.stride[1] + 1
        return 2.0 * n * self.c_out * ho * wo * (self.c_in // self.groups) * self.kh * self.kw


# Fallback when the zoo cannot be imported: DyNet's layer shapes at 224x224 (Dy-ResNet50 at half width inside
# blocks; Dy-mobile without expansion, group conv with C/6 groups).
FALLBACK_LAYERS = [
    *(
        Layer("dy_resnet50", ci, co, hw, hw, k, k, (s, s), (p,) * 4, (1, 1), 1)
        for ci, co, hw, k, s, p in [
            (32, 32, 56, 1, 1, 0),
            (32, 32, 56, 3, 1, 1),
            (32, 128, 56, 1, 1, 0),
            (128, 32, 56, 1, 1, 0),
            (128, 64, 56, 1, 1, 0),
            (64, 64, 56, 3, 2, 1),
            (64, 256, 28, 1, 1, 0),
            (256, 64, 28, 1, 1, 0),
            (64, 64, 28, 3, 1, 1),
            (256, 128, 28, 1, 1, 0),
            (128, 128, 28, 3, 2, 1),
            (128, 512, 14, 1, 1, 0),
            (512, 128, 14, 1, 1, 0),
            (128, 128, 14, 3, 1, 1),
            (512, 256, 14, 1, 1, 0),
            (256, 256, 14, 3, 2, 1),
            (256, 1024, 7, 1, 1, 0),
            (1024, 256, 7, 1, 1, 0),
            (256, 256, 7, 3, 1, 1),
        ]
    ),
    *(
        Layer("dy_mobile", ci, co, hw, hw, k, k, (s, s), (p,) * 4, (1, 1), g)
        for ci, co, hw, k, s, p, g in [
            (30, 18, 112, 1, 1, 0, 1),
            (18, 24, 112, 1, 1, 0, 1),
            (24, 24, 112, 3, 2, 1, 4),
            (24, 24, 56, 1, 1, 0, 1),
            (24, 30, 56, 1, 1, 0, 1),
            (30, 30, 56, 3, 2, 1, 5),
            (30, 30, 28, 1, 1, 0, 1),
            (30, 66, 28, 1, 1, 0, 1),
            (66, 66, 28, 3, 2, 1, 11),
            (66, 66, 14, 1, 1, 0, 1),
            (66, 96, 14, 1, 1, 0, 1),
            (96, 96, 14, 3, 1, 1, 16),
            (96, 162, 14, 1, 1, 0, 1),
            (162, 162, 14, 3, 2, 1, 27),
            (162, 162, 7, 1, 1, 0, 1),
            (162, 318, 7, 1, 1, 0, 1),
        ]
    ),
]


# Shapes the zoo does not have: dilation, asymmetric pads, depthwise, 5x5, groups of 6, strided 1x1, odd sizes.
SYNTHETIC_LAYERS = [
    Layer("synthetic", 32, 48, 17, 23, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 1),  # dilation 2
    Layer("synthetic", 24, 24, 15, 16, 3, 3, (2, 2), (0, 0, 1, 1), (1, 1), 1),  # asymmetric (TF "SAME")
    Layer("synthetic", 16, 16, 13, 11, 3, 3, (1, 1), (1, 0, 2, 1), (1, 2), 1),  # asymmetric + dilation
    Layer("synthetic", 64, 64, 28, 28, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 64),  # depthwise 3x3
    Layer("synthetic", 32, 32, 19, 19, 5, 5, (2, 2), (2, 2, 2, 2), (1, 1), 32),  # depthwise 5x5 / s2
    Layer("synthetic", 48, 64, 14, 14, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1),  # dense 5x5
    Layer("synthetic", 36, 36, 14, 14, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 6),  # groups of 6 channels
    Layer("synthetic", 60, 90, 9, 9, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 6),  # 6 groups, C/g = 10
    Layer("synthetic", 64, 128, 15, 15, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1),  # strided 1x1
    Layer("synthetic", 3, 8, 7, 7, 7, 3, (1, 2), (3, 1, 3, 1), (1, 1), 1, k=1),  # non-square kernel, K=1
]


def zoo_layers() -> tuple[list[Layer], str]:
    """Distinct dynamic-conv layers of dy_resnet50 and dy_mobile at 224x224, read with forward hooks."""
    try:
        from dynet_deploy.models import create_model
        from dynet_deploy.nn import DynamicConv2d
    except Exception as exc:  # the zoo is optional for this script
        return FALLBACK_LAYERS, f"built-in table (zoo not importable: {exc})"
    layers: list[Layer] = []
    try:
        for name in ("dy_resnet50", "dy_mobile"):
            model = create_model(name).eval()
            seen: dict[Layer, None] = {}

            def hook(mod, inputs, _out, name=name, seen=seen):
                x = inputs[0]
                kh, kw = mod.kernel_size
                seen[
                    Layer(
                        name,
                        mod.in_channels,
                        mod.out_channels,
                        x.shape[2],
                        x.shape[3],
                        kh,
                        kw,
                        tuple(mod.stride),
                        tuple(mod.pads),
                        tuple(mod.dilation),
                        mod.groups,
                        mod.num_bases,
                    )
                ] = None

            handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, DynamicConv2d)]
            with torch.no_grad():
                model(torch.randn(1, 3, 224, 224))
            for h in handles:
                h.remove()
            if not seen:
                raise RuntimeError(f"{name} has no DynamicConv2d layers")
            layers += list(seen)
    except Exception as exc:
        return FALLBACK_LAYERS, f"built-in table (zoo forward failed: {exc})"
    return layers, "zoo (dynet_deploy.models, forward hooks at 224x224)"


# ---- the op in PyTorch ---------------------------------------------------------------------------------------


def make_inputs(layer: Layer, n: int, dtype, device, gen: torch.Generator, per_channel=True, bank=False, bias=False):
    cin_g = layer.c_in // layer.groups
    fan_in = cin_g * layer.kh * layer.kw

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype).contiguous()

    x = rnd(n, layer.c_in, layer.h, layer.w)
    c_c = layer.c_out if per_channel else 1
    coeff = torch.sigmoid(torch.randn(n, c_c, layer.k, generator=gen)).to(device=device, dtype=dtype).contiguous()
    weight = rnd(layer.k, layer.c_out, cin_g, layer.kh, layer.kw, scale=1.0 / math.sqrt(fan_in * layer.k))
    bb = rnd(layer.k, layer.c_out, scale=0.1) if bank else None
    b = rnd(layer.c_out, scale=0.1) if bias else None
    return x, coeff, weight, bb, b


def make_extras(layer: Layer, n: int, dtype, device, gen: torch.Generator, spatial: bool, residual: bool):
    """Op version 2's inputs: spatial [N, kH*kW] in (0.25, 1.75) (a tap attention far from uniform), residual with
    y's shape and a scale like y's."""
    ho = (layer.h + layer.pads[0] + layer.pads[2] - layer.dilation[0] * (layer.kh - 1) - 1) // layer.stride[0] + 1
    wo = (layer.w + layer.pads[1] + layer.pads[3] - layer.dilation[1] * (layer.kw - 1) - 1) // layer.stride[1] + 1
    s = r = None
    if spatial:
        s = (torch.rand(n, layer.kh * layer.kw, generator=gen) * 1.5 + 0.25).to(device=device, dtype=dtype)
    if residual:
        r = torch.randn(n, layer.c_out, ho, wo, generator=gen).to(device=device, dtype=dtype).contiguous()
    return s, r


def act(y, activation):
    return op_reference.activate(y, activation)


def batch_as_groups(layer: Layer, x, coeff, weight, bias_bank, bias, activation):
    """What public dynamic-conv code does, and the op's Python reference: fuse, then one grouped conv with the batch
    folded into the groups (dynet_deploy.op.reference.dynamic_conv)."""
    return op_reference.dynamic_conv(
        x, coeff, weight, bias_bank, bias, layer.stride, layer.pads, layer.dilation, layer.groups, activation
    )


def reference(layer: Layer, x, coeff, weight, bias_bank, bias, activation):
    """The op in float64 on the same input values (so fp16 inputs are compared exactly, rounding only in ours)."""
    d = [t.double() if t is not None else None for t in (x, coeff, weight, bias_bank, bias)]
    return batch_as_groups(layer, *d, activation)


def reference_v2(layer: Layer, x, coeff, weight, bias_bank, bias, activation, spatial=None, residual=None):
    """Op version 2 in float64 on the same input values: (y, mean), through the op's Python reference (spatial scales
    the fused kernels, residual is added before the activation, mean = GlobalAveragePool(y))."""
    d = [t.double() if t is not None else None for t in (x, coeff, weight, bias_bank, bias, spatial, residual)]
    y = op_reference.dynamic_conv(
        *d[:5], layer.stride, layer.pads, layer.dilation, layer.groups, activation, spatial=d[5], residual=d[6]
    )
    return y, op_reference.channel_mean(y)


def static_conv(layer: Layer, x, w_static, b_static, activation):
    top, left, bottom, right = layer.pads
    if (top, left) != (bottom, right):
        x, padding = F.pad(x, (left, right, top, bottom)), (0, 0)
    else:
        padding = (top, left)
    y = F.conv2d(
        x, w_static, b_static, stride=layer.stride, padding=padding, dilation=layer.dilation, groups=layer.groups
    )
    return act(y, activation)


def errors(out, ref) -> tuple[float, float]:
    diff = out.double() - ref
    return float(diff.norm() / ref.norm().clamp_min(1e-30)), float(diff.abs().max())


def crop_reference(layer: Layer, inputs, o0: int, o1: int, activation: int, dtype=torch.float64):
    """The op's output rows [o0, o1) computed from only the input rows they read (for shapes too large for a full
    reference): the crop's missing context becomes explicit padding."""
    x = inputs[0]
    s, d, kh = layer.stride[0], layer.dilation[0], layer.kh
    top, left, _bottom, right = layer.pads
    first = o0 * s - top
    last = (o1 - 1) * s - top + d * (kh - 1)  # inclusive, in unpadded input rows
    lo, hi = max(first, 0), min(last, layer.h - 1)
    crop = dataclasses.replace(layer, h=hi - lo + 1, pads=(lo - first, left, last - hi, right))
    xs = x[:, :, lo : hi + 1]
    rest = [t.to(dtype) if t is not None else None for t in inputs[1:]]
    y = batch_as_groups(crop, xs.to(dtype), *rest, activation)
    assert y.shape[2] == o1 - o0, (y.shape, o0, o1)
    return y


# ---- our kernels ------------------------------------------------------------------------------------------------


def cuda_lib():
    """The CUDA library with its stateless entry points and the plan API declared (dynet_deploy.op.native), and the
    version-2 entry points (dynet_conv_cuda_v2, dynet_conv_cuda_plan_run_v2)."""
    lib = plugin_lib.load_cuda_library()
    tensors = ctypes.POINTER(plugin_lib.DynetConvTensors)
    vp = ctypes.c_void_p
    lib.dynet_conv_cuda_v2.argtypes = [
        ctypes.POINTER(plugin_lib.DynetConvParams),
        ctypes.c_int32,
        ctypes.c_int32,
        tensors,
        vp,
        ctypes.c_size_t,
        vp,
    ]
    lib.dynet_conv_cuda_v2.restype = ctypes.c_int32
    lib.dynet_conv_cuda_plan_run_v2.argtypes = [vp, tensors, vp, ctypes.c_size_t, vp]
    lib.dynet_conv_cuda_plan_run_v2.restype = ctypes.c_int32
    return lib


def library_tactics() -> dict[str, int]:
    """Every tactic id the library knows, read from the library (dynet_deploy.op.torch_op.cuda_tactics)."""
    return {name: algo for algo, name in torch_op.cuda_tactics()}


def algos() -> dict[str, int]:
    """AUTO plus the tactics of this build (a fresh dict; the library is asked once)."""
    return dict(_algos())


@functools.lru_cache(maxsize=None)
def _algos() -> dict[str, int]:
    """AUTO plus the tactics of this build: cuDNN only when the library was built with it; any other tactic the
    library lists is expected to run."""
    out = {"auto": plugin_lib.ALGO_AUTO, **library_tactics()}
    lib = cuda_lib()
    # cuDNN and cuBLAS are loaded at run time: their tactics are expected only where they were built in and their
    # library loads (a library that does not load is said once, not hidden).
    for built, library, names in (
        (lib.dynet_conv_cuda_has_cudnn(), plugin_lib.LIBRARY_CUDNN, ("cudnn",)),
        (lib.dynet_conv_cuda_has_cublas(), plugin_lib.LIBRARY_CUBLAS, ("cublas_gemm", "cublas_im2col")),
    ):
        status, msg = plugin_lib.cuda_library_status(library) if built else (None, "not built in")
        if status != plugin_lib.OK:
            note(f"tactics {', '.join(names)} left out: {msg}")
            for name in names:
                out.pop(name, None)
    return out


def documented_refusal(algo_name: str, layer: "Layer") -> str | None:
    """The documented reason this tactic cannot express the layer, or None (then a refusal is a failure)."""
    rule = DOCUMENTED_REFUSALS.get(algo_name)
    if rule is not None and rule[0](layer):
        return rule[1]
    return None


def current_stream():
    """The current CUDA stream's handle (None, the legacy default stream, where torch has no CUDA: the CPU tests
    call the library's version-2 entry up to its launch)."""
    return torch.cuda.current_stream().cuda_stream if torch.cuda.is_available() else None


class Unsupported(Exception):
    """The plan refused this call (DYNET_ERR_UNSUPPORTED); a failure unless documented_refusal() names a reason."""


class Ours:
    """One plan (made here, outside any timing or capture), preallocated output and workspace: each call is exactly
    one dynet_conv_cuda_plan_run enqueue, as in the TensorRT plugin's enqueue up to version 1. With op version 2's
    spatial / residual / mean (keyword arguments) it is one dynet_conv_cuda_plan_run_v2 enqueue with weight_dtype set
    to the I/O dtype (the plugin's enqueue for every version); the mean output is self.mean."""

    def __init__(
        self, layer: Layer, x, coeff, weight, bias_bank, bias, activation, algo, spatial=None, residual=None, mean=False
    ):
        self.lib = cuda_lib()
        self.layer, self.algo = layer, algo
        self.args = (x, coeff, weight, bias_bank, bias)
        self.extras = (spatial, residual)
        self.v2 = spatial is not None or residual is not None or mean
        self.dtype = plugin_lib.FLOAT16 if x.dtype == torch.float16 else plugin_lib.FLOAT32
        self.params = plugin_lib.make_params(
            tuple(x.shape),
            tuple(coeff.shape),
            tuple(weight.shape),
            has_bias_bank=bias_bank is not None,
            has_bias=bias is not None,
            stride=layer.stride,
            pads=layer.pads,
            dilation=layer.dilation,
            groups=layer.groups,
            activation=activation,
            has_spatial=spatial is not None,
            has_residual=residual is not None,
            has_mean=mean,
            weight_dtype=self.dtype if self.v2 else plugin_lib.FLOAT32,
        )
        self.plan = ctypes.c_void_p()
        msg = ctypes.create_string_buffer(512)
        status = self.lib.dynet_conv_cuda_plan_create(
            ctypes.byref(self.params), self.dtype, algo, 0, ctypes.byref(self.plan), msg, len(msg)
        )
        if status == plugin_lib.ERR_UNSUPPORTED:
            raise Unsupported(msg.value.decode())
        if status != plugin_lib.OK:
            raise RuntimeError(f"dynet_conv_cuda_plan_create returned {status}: {msg.value.decode()}")
        ho, wo = plugin_lib.output_hw(self.params, self.lib)
        # NaN-filled: an element the kernel never writes fails the comparison.
        self.out = torch.full((x.shape[0], layer.c_out, ho, wo), float("nan"), dtype=x.dtype, device=x.device)
        self.mean = (
            torch.full((x.shape[0], layer.c_out, 1, 1), float("nan"), dtype=x.dtype, device=x.device) if mean else None
        )
        self.ws_bytes = self.lib.dynet_conv_cuda_plan_workspace_size(self.plan)
        self.ws = torch.empty(max(self.ws_bytes, 1), dtype=torch.uint8, device=x.device)
        if self.v2:

            def ptr(t):
                return t.data_ptr() if t is not None else None

            self.tensors = plugin_lib.DynetConvTensors(
                x=ptr(x),
                coeff=ptr(coeff),
                weight=ptr(weight),
                bias_bank=ptr(bias_bank),
                bias=ptr(bias),
                spatial=ptr(spatial),
                residual=ptr(residual),
                y=ptr(self.out),
                mean=ptr(self.mean),
            )

    def __del__(self):
        if getattr(self, "plan", None) and self.plan.value:
            self.lib.dynet_conv_cuda_plan_destroy(self.plan)
            self.plan = ctypes.c_void_p()

    def __call__(self):
        if self.v2:
            status = self.lib.dynet_conv_cuda_plan_run_v2(
                self.plan,
                ctypes.byref(self.tensors),
                self.ws.data_ptr(),
                self.ws_bytes,
                current_stream(),
            )
            if status != plugin_lib.OK:
                raise RuntimeError(
                    f"dynet_conv_cuda_plan_run_v2 returned {status}: {self.lib.dynet_status_string(status).decode()}"
                )
            return self.out
        x, coeff, weight, bb, b = self.args
        status = self.lib.dynet_conv_cuda_plan_run(
            self.plan,
            x.data_ptr(),
            coeff.data_ptr(),
            weight.data_ptr(),
            bb.data_ptr() if bb is not None else None,
            b.data_ptr() if b is not None else None,
            self.out.data_ptr(),
            self.ws.data_ptr(),
            self.ws_bytes,
            torch.cuda.current_stream().cuda_stream,
        )
        if status != plugin_lib.OK:
            raise RuntimeError(
                f"dynet_conv_cuda_plan_run returned {status}: {self.lib.dynet_status_string(status).decode()}"
            )
        return self.out


# ---- checks --------------------------------------------------------------------------------------------------


class Report:
    """Checks run, failures and cut-short parts; the verdict: FAIL (any failure), INCOMPLETE (a correctness or
    limit-shape part cut by its time budget, or a tactic x dtype with fewer than its minimum checks), else PASS."""

    def __init__(self):
        self.failures: list[str] = []
        self.incomplete: list[str] = []
        self.checked = 0
        self.unsupported: dict[str, int] = {}
        self.per_tactic: dict[tuple[str, str], int] = {}

    def fail(self, msg: str):
        self.failures.append(msg)
        print(f"  FAIL {msg}", flush=True)

    def cut_short(self, msg: str):
        self.incomplete.append(msg)
        print(f"  INCOMPLETE {msg}", flush=True)

    def compare(self, where: str, out, ref, tol: float, tactic: str | None = None, dtype: str | None = None) -> float:
        """One check: ||out - ref|| / ||ref|| <= tol, written so NaN (in out, e.g. an unwritten element of the
        NaN-filled output, or in the error) fails. Counted per tactic x dtype when both are given."""
        self.checked += 1
        if tactic is not None and dtype is not None:
            self.per_tactic[(tactic, dtype)] = self.per_tactic.get((tactic, dtype), 0) + 1
        if out.shape != ref.shape:
            self.fail(f"{where}: output shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
            return float("nan")
        rel, max_abs = errors(out, ref)
        nan_out = int(torch.isnan(out).sum()) - int(torch.isnan(ref).sum())
        if not (rel <= tol) or nan_out > 0:
            self.fail(f"{where}: rel {rel:.2e} (tol {tol:.0e}) max-abs {max_abs:.2e}, {max(nan_out, 0)} extra NaN")
        return rel

    def require_minimum(self, tactics, dtypes, minimum: int):
        for tactic in tactics:
            for dtype in dtypes:
                got = self.per_tactic.get((tactic, dtype), 0)
                if got < minimum:
                    self.cut_short(f"{tactic} {dtype}: {got} correctness checks ran, the minimum is {minimum}")

    def verdict(self) -> tuple[str, int]:
        if self.failures:
            return "FAIL", EXIT_FAIL
        if self.incomplete:
            return "INCOMPLETE", EXIT_INCOMPLETE
        return "PASS", 0


def cpu_reference_of(layer: Layer, inputs, activation):
    """The C++ CPU reference on the same (fp32) values, or None for layers too large to run it quickly."""
    x = inputs[0]
    if x.numel() * layer.c_out * layer.kh * layer.kw // max(layer.groups, 1) > 1e8:
        return None
    cpu = [t.float().cpu().numpy() if t is not None else None for t in inputs]
    y = plugin_lib.cpu_reference_conv(
        *cpu, stride=layer.stride, pads=layer.pads, dilation=layer.dilation, groups=layer.groups, activation=activation
    )
    return torch.from_numpy(y)


def check_correctness(layers, report: Report, seed: int, batches=(1, 3, 8, 32), budget_s: float = float("inf")):
    t0 = time.monotonic()
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    device = torch.device("cuda")
    worst: dict[tuple, tuple[float, float, str]] = {}
    worst_cpu, worst_agree = 0.0, 0.0
    for done, layer in enumerate(layers):
        if time.monotonic() - t0 > budget_s:
            report.cut_short(f"correctness budget of {budget_s:.0f}s reached after {done} of {len(layers)} layers")
            break
        # Every batch size in turn (N > 8 included), so each is checked on a spread of layers.
        n = batches[done % len(batches)]
        per_channel, bank, bias, activation = (
            rng.random() < 0.7,
            rng.random() < 0.5,
            rng.random() < 0.5,
            rng.randrange(3),
        )
        for dtype in (torch.float32, torch.float16):
            inputs = make_inputs(layer, n, dtype, device, gen, per_channel, bank, bias)
            ref = reference(layer, *inputs, activation)
            where = f"{layer.model} {layer.label} N={n} {str(dtype)[6:]}"
            if dtype == torch.float32:
                cpu = cpu_reference_of(layer, inputs, activation)
                if cpu is not None:
                    rel_cpu = report.compare(f"{where}: C++ CPU reference vs PyTorch", cpu.to(device), ref, 1e-5)
                    worst_cpu = max(worst_cpu, rel_cpu)
            outs = {}
            for algo_name, algo in algos().items():
                try:
                    ours = Ours(layer, *inputs, activation, algo)
                except Unsupported as exc:
                    if documented_refusal(algo_name, layer) is None:
                        report.fail(f"{where} {algo_name}: plan refused without a documented reason ({exc})")
                    report.unsupported[algo_name] = report.unsupported.get(algo_name, 0) + 1
                    continue
                except RuntimeError as exc:
                    report.fail(f"{where} {algo_name}: {exc}")
                    continue
                try:
                    out = ours().clone()
                    torch.cuda.synchronize()
                except RuntimeError as exc:
                    report.fail(f"{where} {algo_name}: {exc}")
                    continue
                outs[algo_name] = out
                rel = report.compare(f"{where} {algo_name}", out, ref, TOL[dtype], algo_name, str(dtype)[6:])
                max_abs = float((out.double() - ref).abs().max())
                key = (str(dtype)[6:], algo_name)
                if key not in worst or not rel <= worst[key][0]:
                    worst[key] = (rel, max_abs, where)
            # The tactics TensorRT picks between must agree: the same fused kernels, rounded to the I/O dtype.
            names = [a for a in outs if a != "auto"]
            for other in names[1:]:
                tol = AGREE_TOL if dtype == torch.float16 else 2 * TOL[torch.float32]
                rel = report.compare(f"{where}: {other} vs {names[0]}", outs[other], outs[names[0]].double(), tol)
                worst_agree = max(worst_agree, rel)
    note("  worst relative error per dtype/tactic vs PyTorch float64 (tolerance fp32 1e-5, fp16 1e-2):")
    for (dt, algo_name), (rel, max_abs, where) in sorted(worst.items()):
        note(f"    {dt:8s} {algo_name:10s} rel {rel:.2e}  max-abs {max_abs:.2e}  ({where})")
    note(f"  C++ CPU reference vs PyTorch (fp32, small layers): worst rel {worst_cpu:.2e}")
    note(f"  tactics against each other: worst rel {worst_agree:.2e} (fp16 tol {AGREE_TOL:.0e})")
    if report.unsupported:
        note(
            f"  refused by a plan (documented: {dict((k, v[1]) for k, v in DOCUMENTED_REFUSALS.items())}; any other "
            f"refusal is a failure above): {report.unsupported}"
        )


def check_nan_propagation(report: Report, seed: int):
    """NaN in x must reach y through ReLU and ReLU6 in every tactic, as in PyTorch."""
    gen = torch.Generator().manual_seed(seed)
    device = torch.device("cuda")
    results = []
    for layer in (
        Layer("nan", 8, 16, 6, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
        Layer("nan", 8, 8, 6, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 8),
    ):
        for dtype in (torch.float32, torch.float16):
            for activation in (1, 2):
                inputs = list(make_inputs(layer, 2, dtype, device, gen, True, False, True))
                inputs[0][0, 0, 2, 2] = float("nan")
                ref = reference(layer, *inputs, activation)
                for algo_name, algo in algos().items():
                    try:
                        out = Ours(layer, *inputs, activation, algo)().clone()
                        torch.cuda.synchronize()
                    except Unsupported as exc:
                        if documented_refusal(algo_name, layer) is None:
                            report.fail(f"NaN propagation {layer.label} {algo_name}: plan refused ({exc})")
                        continue
                    except RuntimeError as exc:
                        report.fail(f"NaN propagation {layer.label} {algo_name}: {exc}")
                        continue
                    report.checked += 1
                    dropped = int((torch.isnan(ref) & ~torch.isnan(out)).sum())
                    extra = int((~torch.isnan(ref) & torch.isnan(out)).sum())
                    # Our kernels must match PyTorch's NaN positions exactly. cuDNN may pick a transform algorithm
                    # (Winograd, FFT) that spreads a NaN over a tile, so only dropped NaN count against it.
                    ok = dropped == 0 and (extra == 0 or algo_name == "cudnn")
                    results.append(ok)
                    if not ok:
                        report.fail(
                            f"NaN propagation {layer.label} act={activation} {str(dtype)[6:]} {algo_name}: "
                            f"{dropped} NaN dropped, {extra} extra (PyTorch has {int(torch.isnan(ref).sum())})"
                        )
    note(f"  NaN through ReLU/ReLU6: {sum(results)}/{len(results)} tactic x dtype x activation cases keep every NaN")


def conv_path(layer: Layer) -> str:
    """The convolution path of the hand-written tactics (dynetDynamicConvKernel.h's selectPath)."""
    if layer.c_in // layer.groups <= 8:
        return "direct"
    if (layer.kh, layer.kw, layer.stride) == (1, 1, (1, 1)) and not any(layer.pads):
        return "pointwise"
    return "implicit_gemm"


def one_per_path(layers, per_path: int = 1) -> list[Layer]:
    """The first per_path layers of each convolution path, in order."""
    picked: dict[str, list[Layer]] = {}
    for layer in layers:
        got = picked.setdefault(conv_path(layer), [])
        if len(got) < per_path:
            got.append(layer)
    return [layer for group in picked.values() for layer in group]


# Version 2's flag combinations (spatial, residual, mean), cycled over the layers: each alone, then all three.
V2_COMBOS = ((True, False, False), (False, True, False), (False, False, True), (True, True, True))


def _v2_flags(spatial: bool, residual: bool, mean: bool) -> str:
    return "+".join(name for name, on in (("spatial", spatial), ("residual", residual), ("mean", mean)) if on)


def check_version_two(layers, report: Report, seed: int, batches=(1, 3, 8), budget_s: float = float("inf")):
    """Op version 2 through dynet_conv_cuda_plan_run_v2, every tactic, fp32 and fp16: y and the mean output against
    the Python reference in float64 (TOL), the tactics against each other. Counted per tactic x "<dtype> v2"."""
    t0 = time.monotonic()
    rng = random.Random(seed + 2)
    gen = torch.Generator().manual_seed(seed + 2)
    device = torch.device("cuda")
    worst: dict[tuple, tuple[float, str]] = {}
    worst_agree = 0.0
    for done, layer in enumerate(layers):
        if time.monotonic() - t0 > budget_s:
            report.cut_short(f"version-2 budget of {budget_s:.0f}s reached after {done} of {len(layers)} layers")
            break
        n = batches[done % len(batches)]
        spatial, residual, mean = V2_COMBOS[done % len(V2_COMBOS)]
        per_channel, bank, bias, activation = (
            rng.random() < 0.7,
            rng.random() < 0.5,
            rng.random() < 0.5,
            rng.randrange(3),
        )
        for dtype in (torch.float32, torch.float16):
            dt = str(dtype)[6:]
            inputs = make_inputs(layer, n, dtype, device, gen, per_channel, bank, bias)
            s, r = make_extras(layer, n, dtype, device, gen, spatial, residual)
            ref_y, ref_mean = reference_v2(layer, *inputs, activation, s, r)
            where = f"v2 {_v2_flags(spatial, residual, mean)} {layer.model} {layer.label} N={n} {dt}"
            outs = {}
            for algo_name, algo in algos().items():
                try:
                    ours = Ours(layer, *inputs, activation, algo, spatial=s, residual=r, mean=mean)
                except Unsupported as exc:
                    if documented_refusal(algo_name, layer) is None:
                        report.fail(f"{where} {algo_name}: plan refused without a documented reason ({exc})")
                    continue
                except RuntimeError as exc:
                    report.fail(f"{where} {algo_name}: {exc}")
                    continue
                try:
                    out = ours().clone()
                    out_mean = ours.mean.clone() if mean else None
                    torch.cuda.synchronize()
                except RuntimeError as exc:
                    report.fail(f"{where} {algo_name}: {exc}")
                    continue
                outs[algo_name] = (out, out_mean)
                rel = report.compare(f"{where} {algo_name}", out, ref_y, TOL[dtype], algo_name, f"{dt} v2")
                key = (dt, algo_name, "y")
                if key not in worst or not rel <= worst[key][0]:
                    worst[key] = (rel, where)
                if mean:
                    rel = report.compare(f"{where} {algo_name}: mean", out_mean, ref_mean, TOL[dtype])
                    key = (dt, algo_name, "mean")
                    if key not in worst or not rel <= worst[key][0]:
                        worst[key] = (rel, where)
            names = [a for a in outs if a != "auto"]
            tol = AGREE_TOL if dtype == torch.float16 else 2 * TOL[torch.float32]
            for other in names[1:]:
                for i, what in enumerate(("y", "mean") if mean else ("y",)):
                    a, b = outs[other][i], outs[names[0]][i]
                    rel = report.compare(f"{where}: {other} vs {names[0]} ({what})", a, b.double(), tol)
                    worst_agree = max(worst_agree, rel)
    note("  op version 2 (spatial, residual, mean): worst relative error per dtype/tactic/output vs float64:")
    for (dt, algo_name, what), (rel, where) in sorted(worst.items()):
        note(f"    {dt:8s} {algo_name:13s} {what:4s} rel {rel:.2e}  ({where})")
    note(f"  op version 2: tactics against each other: worst rel {worst_agree:.2e}")


def check_version_two_nan_and_capture(layers, report: Report, seed: int):
    """Version 2: a NaN in the residual reaches y at its position (every activation) and the mean of its plane, in
    every tactic; one call per path and tactic with spatial, residual and mean captured into a CUDA graph replays to
    the eager y and mean."""
    gen = torch.Generator().manual_seed(seed + 3)
    device = torch.device("cuda")
    kept = cases = captured = 0
    for layer in (
        Layer("nan", 8, 16, 6, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
        Layer("nan", 32, 32, 6, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ):
        for dtype in (torch.float32, torch.float16):
            for activation in (0, 1, 2):
                inputs = make_inputs(layer, 2, dtype, device, gen, True, False, True)
                s, r = make_extras(layer, 2, dtype, device, gen, True, True)
                r[1, 3, 2, 4] = float("nan")
                ref_y, ref_mean = reference_v2(layer, *inputs, activation, s, r)
                for algo_name, algo in algos().items():
                    try:
                        ours = Ours(layer, *inputs, activation, algo, spatial=s, residual=r, mean=True)
                        out = ours().clone()
                        out_mean = ours.mean.clone()
                        torch.cuda.synchronize()
                    except Unsupported as exc:
                        if documented_refusal(algo_name, layer) is None:
                            report.fail(f"v2 NaN {layer.label} {algo_name}: plan refused ({exc})")
                        continue
                    except RuntimeError as exc:
                        report.fail(f"v2 NaN {layer.label} {algo_name}: {exc}")
                        continue
                    report.checked += 1
                    cases += 1
                    same = torch.equal(torch.isnan(out), torch.isnan(ref_y)) and torch.equal(
                        torch.isnan(out_mean), torch.isnan(ref_mean)
                    )
                    kept += int(same)
                    if not same:
                        report.fail(
                            f"v2 NaN in the residual {layer.label} act={activation} {str(dtype)[6:]} {algo_name}: "
                            f"y has {int(torch.isnan(out).sum())} NaN (reference {int(torch.isnan(ref_y).sum())}), "
                            f"mean {int(torch.isnan(out_mean).sum())} (reference {int(torch.isnan(ref_mean).sum())})"
                        )
    note(f"  op version 2: NaN in the residual kept at PyTorch's positions in y and mean: {kept}/{cases} cases")
    for layer in one_per_path(layers):
        for dtype in (torch.float32, torch.float16):
            for algo_name, algo in algos().items():
                inputs = make_inputs(layer, 3, dtype, device, gen, True, True, True)
                s, r = make_extras(layer, 3, dtype, device, gen, True, True)
                try:
                    ours = Ours(layer, *inputs, 1, algo, spatial=s, residual=r, mean=True)
                    eager, eager_mean = ours().clone(), ours.mean.clone()
                except Unsupported as exc:
                    if documented_refusal(algo_name, layer) is None:
                        report.fail(f"v2 capture {layer.label} {algo_name}: plan refused ({exc})")
                    continue
                except RuntimeError as exc:
                    report.fail(f"v2 capture {layer.label} {algo_name} before capture: {exc}")
                    continue
                ours.out.fill_(float("nan"))
                ours.mean.fill_(float("nan"))
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                graph = torch.cuda.CUDAGraph()
                try:
                    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
                        ours()
                    graph.replay()
                    torch.cuda.synchronize()
                except Exception as exc:
                    report.fail(f"v2 CUDA graph capture {conv_path(layer)} {algo_name} {str(dtype)[6:]}: {exc}")
                    continue
                report.checked += 1
                captured += 1
                if not (torch.equal(ours.out, eager) and torch.equal(ours.mean, eager_mean)):
                    report.fail(f"v2 CUDA graph replay differs from eager ({conv_path(layer)} {algo_name})")
    note(f"  op version 2: CUDA graph capture + replay of y and mean: {captured} captures")


def check_graph_capture_and_errors(layers, report: Report, seed: int):
    """One enqueue per path and tactic captured into a CUDA graph must replay to the eager result."""
    gen = torch.Generator().manual_seed(seed)
    device = torch.device("cuda")
    picked = {conv_path(layer): layer for layer in one_per_path(layers)}  # one layer per kernel path
    captured = 0
    for path, layer in picked.items():
        for dtype in (torch.float32, torch.float16):
            for algo_name, algo in algos().items():
                inputs = make_inputs(layer, 3, dtype, device, gen, True, True, True)
                try:
                    ours = Ours(layer, *inputs, 2, algo)
                    eager = ours().clone()
                except Unsupported as exc:
                    if documented_refusal(algo_name, layer) is None:
                        report.fail(f"{path} {algo_name}: plan refused without a documented reason ({exc})")
                    continue
                except RuntimeError as exc:
                    report.fail(f"{path} {algo_name} {str(dtype)[6:]} before capture: {exc}")
                    continue
                ours.out.fill_(float("nan"))
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                graph = torch.cuda.CUDAGraph()
                try:
                    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
                        ours()
                    graph.replay()
                    torch.cuda.synchronize()
                except Exception as exc:
                    report.fail(f"CUDA graph capture of {path} {algo_name} {str(dtype)[6:]}: {exc}")
                    continue
                report.checked += 1
                captured += 1
                if not torch.equal(ours.out, eager):
                    report.fail(f"CUDA graph replay differs from eager ({path} {algo_name} {str(dtype)[6:]})")
    note(
        f"  CUDA graph capture + replay: {captured} captures over paths {sorted(picked)} x fp32/fp16 x {list(algos())}"
    )
    # Malformed arguments: error codes, never a launch.
    lib = cuda_lib()
    p = plugin_lib.make_params((2, 16, 8, 8), (2, 32, 6), (6, 32, 16, 3, 3), pads=(1, 1, 1, 1))
    buf = torch.empty(1 << 20, dtype=torch.uint8, device=device)
    a = buf.data_ptr()
    cases = {
        "no workspace": (p, 0, plugin_lib.ERR_WORKSPACE, (a, a, a, None, None, a, None, 0)),
        "null x": (p, 0, plugin_lib.ERR_NULL_POINTER, (None, a, a, None, None, a, a, 1 << 20)),
        "cuDNN without a plan": (
            p,
            plugin_lib.ALGO_CUDNN,
            plugin_lib.ERR_UNSUPPORTED,
            (a, a, a, None, None, a, a, 1 << 20),
        ),
    }
    bad = plugin_lib.make_params((2, 16, 8, 8), (2, 32, 6), (6, 32, 16, 3, 3))
    bad.groups = 3
    cases["groups=3"] = (bad, 0, plugin_lib.ERR_INVALID_ARGUMENT, (a, a, a, None, None, a, a, 1 << 20))
    for name, (params, algo, expected, ptrs) in cases.items():
        got = lib.dynet_conv_cuda(ctypes.byref(params), 0, algo, *ptrs, torch.cuda.current_stream().cuda_stream)
        report.checked += 1
        if got != expected:
            report.fail(f"malformed call '{name}' returned {got}, expected {expected}")
    torch.cuda.synchronize()


# Shapes at the element limit (2^31-1), where 32-bit grid-stride counters wrap. fp16 to halve the memory.
LIMIT_LAYERS = [
    # output pixels: 46340^2 = 2147395600 per plane (direct path, pixel loop)
    (Layer("limit", 1, 1, 46340, 46340, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, k=2), "output pixels 46340^2"),
    # fused kernels of one sample: C_out * R = 16384 * 14563 * 9 = 2147401728 (fuse loop, implicit GEMM, K = 1)
    (Layer("limit", 14563, 16384, 3, 3, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, k=1), "C_out*R = 2147401728"),
]


def row_chunks(ho: int, row_elements: int, max_elements: int = 1 << 27) -> list[tuple[int, int]]:
    """Every output row, in chunks of at most max_elements output elements (at least one row each)."""
    step = max(1, max_elements // max(row_elements, 1))
    return [(o, min(o + step, ho)) for o in range(0, ho, step)]


def check_limit_shapes(report: Report, seed: int, budget_s: float):
    """Each limit layer through every tactic, compared on ALL output rows (in chunks, against crop references),
    with one relative error over the whole output. A run cut by the budget is INCOMPLETE."""
    gen = None
    t0 = time.monotonic()
    for layer, what in LIMIT_LAYERS:
        if time.monotonic() - t0 > budget_s:
            report.cut_short(f"limit shapes: budget of {budget_s:.0f}s reached before '{what}'")
            return
        gen = gen or torch.Generator(device="cuda").manual_seed(seed)
        dtype = torch.float16
        n = 1
        cin_g = layer.c_in // layer.groups
        x = torch.randn(n, layer.c_in, layer.h, layer.w, device="cuda", dtype=dtype, generator=gen)
        coeff = torch.rand(n, layer.c_out, layer.k, device="cuda", generator=gen).to(dtype)
        weight = torch.randn(
            layer.k, layer.c_out, cin_g, layer.kh, layer.kw, device="cuda", dtype=dtype, generator=gen
        ) * (1.0 / math.sqrt(cin_g * layer.kh * layer.kw))
        inputs = (x, coeff, weight, None, None)
        ho = (layer.h + layer.pads[0] + layer.pads[2] - layer.dilation[0] * (layer.kh - 1) - 1) // layer.stride[0] + 1
        for algo_name, algo in algos().items():
            if time.monotonic() - t0 > budget_s:
                report.cut_short(f"limit shapes: budget of {budget_s:.0f}s reached before '{what}' {algo_name}")
                return
            try:
                ours = Ours(layer, *inputs, 1, algo)
            except Unsupported as exc:
                if documented_refusal(algo_name, layer) is None and algo_name != "cudnn":
                    report.fail(f"limit {what} {algo_name}: plan refused ({exc})")
                else:
                    note(f"  limit {what}: {algo_name} refused by its plan ({exc})")
                continue
            except RuntimeError as exc:
                if algo_name != "cudnn":
                    report.fail(f"limit {what} {algo_name}: {exc}")
                else:  # cuDNN's own size limits are cuDNN's; our kernels are what this part checks
                    note(f"  limit {what}: cuDNN could not plan it ({exc})")
                continue
            try:
                out = ours()
                torch.cuda.synchronize()
            except RuntimeError as exc:
                report.fail(f"limit {what} {algo_name}: {exc}")
                continue
            chunks = row_chunks(ho, n * layer.c_out * out.shape[3])
            diff2, ref2, max_abs, nan_count, done = 0.0, 0.0, 0.0, 0, 0
            for o0, o1 in chunks:
                if time.monotonic() - t0 > budget_s:
                    break
                ref = crop_reference(layer, inputs, o0, o1, 1, dtype=torch.float32).double()
                got = out[:, :, o0:o1].double()
                nan_count += int(torch.isnan(got).sum())
                d = got - ref
                diff2 += float((d * d).sum())
                ref2 += float((ref * ref).sum())
                max_abs = max(max_abs, float(d.abs().max()))
                done += 1
            report.checked += 1
            report.per_tactic[(algo_name, "limit")] = report.per_tactic.get((algo_name, "limit"), 0) + 1
            rel = math.sqrt(diff2) / max(math.sqrt(ref2), 1e-30)
            if done < len(chunks):
                report.cut_short(f"limit {what} {algo_name}: budget reached after {done} of {len(chunks)} row chunks")
            if not (rel <= TOL[dtype]) or nan_count:
                report.fail(f"limit {what} {algo_name}: rel {rel:.2e} max-abs {max_abs:.2e}, {nan_count} NaN")
            note(
                f"  limit {what}: {algo_name} compared on all {ho} output rows ({done} chunks; rel {rel:.2e}, "
                f"max-abs {max_abs:.2e}; {time.monotonic() - t0:.0f}s)"
            )
            del ours, out
            torch.cuda.empty_cache()
        del x, coeff, weight, inputs
        torch.cuda.empty_cache()


# ---- timing ----------------------------------------------------------------------------------------------------


def graph_runner(fn, reps: int):
    """A callable replaying `reps` calls of fn from one CUDA graph (eager loop when capture fails)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
            for _ in range(reps):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        return graph.replay, graph
    except Exception as exc:
        torch.cuda.synchronize()
        print(f"  (CUDA graph capture failed, timing eager calls instead: {type(exc).__name__}: {exc})", flush=True)

        def run():
            for _ in range(reps):
                fn()

        return run, None


def time_interleaved(fns: dict, reps=20, trials=7) -> dict[str, float]:
    """Median ms per call of each candidate; trial t times every candidate once, in an order rotated per trial, so
    clock and thermal drift fall on all of them alike."""
    runners = {name: graph_runner(fn, reps) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for t in range(trials):
        for name in names[t % len(names) :] + names[: t % len(names)]:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            runners[name][0]()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end) / reps)
    return {name: statistics.median(v) for name, v in samples.items()}


def pick_timing_layers(layers, per_model: int):
    out = []
    for model in sorted({layer.model for layer in layers}):
        ms = [layer for layer in layers if layer.model == model]
        if len(ms) <= per_model:
            out += ms
        else:
            step = (len(ms) - 1) / (per_model - 1)
            out += [ms[round(i * step)] for i in range(per_model)]
    return out


def run_timing(layers, budget_s: float, seed: int, report: Report):
    """Rows of medians; per dtype its own share of the budget, so an fp32 table exists even when fp16 is slow.
    Every timed tactic's output (what the last replay wrote) is also checked against PyTorch float64."""
    gen = torch.Generator().manual_seed(seed)
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    all_tactics = algos()
    tactics = [a for a in all_tactics if a != "auto"]
    rows = []
    header = (
        f"{'model':12s} {'layer':30s} {'N':>3s} {'dtype':5s} "
        + " ".join(f"{t[:8]:>8s}" for t in tactics)
        + f" {'bag':>8s} {'static':>8s} {'best':>10s} {'best/stat':>9s} {'bag/best':>8s}"
    )
    note(header)
    note("-" * len(header))
    for dtype, share in ((torch.float16, 0.6), (torch.float32, 0.4)):
        t0 = time.monotonic()
        for layer in layers:
            for n in (1, 8, 32):
                if time.monotonic() - t0 > budget_s * share:
                    note(f"  ({str(dtype)[6:]}: timing budget of {budget_s * share:.0f}s reached: table is partial)")
                    break
                x, coeff, weight, bb, b = make_inputs(layer, n, dtype, device, gen, True, False, False)
                fns = {}
                for name in tactics:
                    try:
                        fns[name] = Ours(layer, x, coeff, weight, bb, b, 1, all_tactics[name])
                    except Unsupported as exc:
                        if documented_refusal(name, layer) is None:
                            report.fail(f"timing {layer.label} N={n} {name}: plan refused ({exc})")
                        print(f"  ({layer.label} N={n}: {name} not timed: {exc})")
                    except RuntimeError as exc:
                        report.fail(f"timing {layer.label} N={n} {name}: {exc}")
                fns["bag"] = lambda: batch_as_groups(layer, x, coeff, weight, bb, b, 1)  # noqa: B023
                w_static = weight[0].contiguous()
                fns["static"] = lambda: static_conv(layer, x, w_static, None, 1)  # noqa: B023
                t = time_interleaved(fns)
                torch.cuda.synchronize()
                ref = reference(layer, x, coeff, weight, bb, b, 1)
                for name in tactics:
                    if name in fns:
                        where = f"timing {layer.model} {layer.label} N={n} {str(dtype)[6:]} {name} (replayed output)"
                        report.compare(where, fns[name].out, ref, TOL[dtype], name, str(dtype)[6:])
                del ref
                ours = {k: v for k, v in t.items() if k in tactics}
                best_name = min(ours, key=ours.get)
                best = ours[best_name]
                row = dict(
                    model=layer.model,
                    layer=layer.label,
                    n=n,
                    dtype=str(dtype)[6:],
                    best=best,
                    best_name=best_name,
                    bag=t["bag"],
                    static=t["static"],
                    vs_static=best / t["static"],
                    bag_speedup=t["bag"] / best,
                    **{k: ours.get(k) for k in tactics},
                )
                rows.append(row)
                cells = " ".join(f"{ours[k]:8.4f}" if k in ours else f"{'n/a':>8s}" for k in tactics)
                note(
                    f"{layer.model[:12]:12s} {layer.label[:30]:30s} {n:3d} {row['dtype']:5s} {cells} "
                    f"{t['bag']:8.4f} {t['static']:8.4f} {best_name[:10]:>10s} {row['vs_static']:9.2f} "
                    f"{row['bag_speedup']:8.2f}"
                )
            else:
                continue
            break
    return rows


def summarize_goals(rows) -> bool:
    goal_rows = [r for r in rows if r["dtype"] == "float16" and r["n"] >= 8]
    if not goal_rows:
        note("goals: no fp16 batch>=8 rows timed")
        return False
    ok_static = sum(r["vs_static"] <= 1.3 for r in goal_rows)
    ok_bag = sum(r["bag_speedup"] >= 2.0 for r in goal_rows)
    fastest: dict[str, int] = {}
    for r in rows:
        fastest[r["best_name"]] = fastest.get(r["best_name"], 0) + 1
    note(
        f"goal best tactic <= 1.3x static cuDNN (fp16, N>=8): {ok_static}/{len(goal_rows)} rows; "
        f"geo-mean ratio {math.exp(statistics.fmean(math.log(r['vs_static']) for r in goal_rows)):.2f}"
    )
    note(
        f"goal >= 2x faster than batch-as-groups (fp16, N>=8): {ok_bag}/{len(goal_rows)} rows; "
        f"geo-mean speed-up {math.exp(statistics.fmean(math.log(r['bag_speedup']) for r in goal_rows)):.2f}"
    )
    note(f"fastest tactic per row (what TensorRT would keep): {fastest}")
    return ok_static == len(goal_rows) and ok_bag == len(goal_rows)


# ---- whole models: static (cuDNN, channels-last, BN folded) vs Dy (batch-as-groups; the custom op) -----------

MODEL_PAIRS = (("mobilenet_v2", "dy_mobile"), ("resnet18", "dy_resnet18"), ("resnet50", "dy_resnet50"))
MODEL_TOL = {torch.float32: 1e-4, torch.float16: 5e-2}  # whole model vs the fp32 batch-as-groups model


def randomize_batchnorm(model, seed: int = 0):
    """Non-trivial BatchNorm statistics and affine parameters (a fresh model's fold to zero biases, which would let a
    kernel that drops the bias pass)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(m.running_var.sqrt() * (torch.rand(c, generator=g) * 0.4 + 0.8))  # scale ~1
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model


def build_models(static_name: str, dy_name: str, device, dtype):
    """(static, bag, op, ref): the static model with BN folded into its convs (torch.fx fuse), channels-last; the Dy
    model with BN folded, as batch-as-groups (DynamicConv2d mode "kernel") and through torch.ops.dynet.dynamic_conv2d
    (mode "native", the tactic TensorRT would pick, timed per layer shape); ref: the Dy model in fp32, mode "kernel"."""
    import copy

    from torch.fx.experimental.optimization import fuse

    from dynet_deploy.models import create_model
    from dynet_deploy.nn import fold_batchnorms, set_dynamic_conv_mode

    torch.manual_seed(0)
    static = fuse(randomize_batchnorm(create_model(static_name).eval()))
    static = static.to(device=device, dtype=dtype, memory_format=torch.channels_last)
    torch.manual_seed(0)
    ref = fold_batchnorms(randomize_batchnorm(create_model(dy_name).eval())).to(device=device)
    bag = copy.deepcopy(ref).to(dtype=dtype)
    op = set_dynamic_conv_mode(copy.deepcopy(bag), "native")
    for m in (static, ref, bag, op):
        m.requires_grad_(False)
    return static, bag, op, ref


def time_candidates(fns: dict, device, reps: int, trials: int) -> dict[str, float]:
    """Median ms per call: CUDA-graph replays interleaved on a GPU (time_interleaved), a wall clock on the CPU."""
    if torch.device(device).type == "cuda":
        return time_interleaved(fns, reps=reps, trials=trials)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for name, fn in fns.items():
        fn()
    for _ in range(trials):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            samples[name].append((time.perf_counter() - t) * 1e3 / reps)
    return {name: statistics.median(v) for name, v in samples.items()}


def model_table(report: Report, device, dtypes, batches, size: int, budget_s: float, reps=10, trials=5, pairs=None):
    """The model-level table: per pair, dtype and N, ms of the static model, the Dy model as batch-as-groups and
    through the custom op, with the op's output checked against the fp32 Dy model (it may be no further from it than
    max(tol, 3 x batch-as-groups' own error)). Rows past the budget are left out and said so (timing, not
    correctness: the per-layer checks above are complete)."""
    t0 = time.monotonic()
    rows = []
    header = (
        f"{'pair':28s} {'dtype':7s} {'N':>3s} {'static':>9s} {'Dy bag':>9s} {'Dy op':>9s} {'static/op':>9s} "
        f"{'bag/op':>7s} {'op rel':>8s}  tactics kept (new shapes)"
    )
    note(header)
    note("-" * len(header))
    for dtype in dtypes:
        for static_name, dy_name in pairs or MODEL_PAIRS:
            if time.monotonic() - t0 > budget_s:
                note(f"  (model table: budget of {budget_s:.0f}s reached; {static_name}/{dy_name} {dtype} not timed)")
                continue
            static, bag, op, ref_model = build_models(static_name, dy_name, device, dtype)
            for n in batches:
                if time.monotonic() - t0 > budget_s:
                    note(f"  (model table: budget reached; {dy_name} {str(dtype)[6:]} N={n} not timed)")
                    break
                gen = torch.Generator().manual_seed(n)
                x32 = torch.randn(n, 3, size, size, generator=gen).to(device)
                x = x32.to(dtype)
                x_cl = x.contiguous(memory_format=torch.channels_last)
                before = len(torch_op.chosen_tactics())
                with torch.no_grad():
                    ref = ref_model(x32).double()
                    y_bag = bag(x)
                    y_op = op(x)  # eager first: the per-layer tactic choice happens here, outside any capture
                    kept = torch_op.chosen_tactics()[before:]
                    bag_rel, _ = errors(y_bag, ref)
                    tol = max(MODEL_TOL[dtype], 3 * bag_rel) if bag_rel == bag_rel else MODEL_TOL[dtype]
                    where = f"model {dy_name} {str(dtype)[6:]} N={n}: custom op vs fp32 Dy model"
                    op_rel = report.compare(where, y_op, ref, tol, "model_op", str(dtype)[6:])
                    t = time_candidates(
                        {
                            "static": lambda m=static, v=x_cl: m(v),
                            "bag": lambda m=bag, v=x: m(v),
                            "op": lambda m=op, v=x: m(v),
                        },
                        device,
                        reps,
                        trials,
                    )
                counts: dict[str, int] = {}
                for row in kept:
                    counts[row["tactic"]] = counts.get(row["tactic"], 0) + 1
                row = dict(
                    pair=f"{static_name}/{dy_name}",
                    dtype=str(dtype)[6:],
                    n=n,
                    static=t["static"],
                    bag=t["bag"],
                    op=t["op"],
                    op_rel=op_rel,
                    bag_rel=bag_rel,
                    tactics=counts,
                )
                rows.append(row)
                note(
                    f"{row['pair']:28s} {row['dtype']:7s} {n:3d} {t['static']:9.3f} {t['bag']:9.3f} {t['op']:9.3f} "
                    f"{t['static'] / t['op']:8.2f}x {t['bag'] / t['op']:6.2f}x {op_rel:8.1e}  {counts or '-'}"
                )
            static = bag = op = ref_model = None  # free before the next pair
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
    return rows


def summarize_model_goals(rows) -> bool:
    fp16 = [r for r in rows if r["dtype"] == "float16"]
    if not fp16:
        note("model goals: no fp16 rows timed")
        return False
    faster_bag = sum(r["op"] < r["bag"] for r in fp16)
    n32 = [r for r in fp16 if r["n"] == 32 and r["pair"].split("/")[1] in ("dy_resnet50", "dy_mobile")]
    beat_static = sum(r["op"] <= r["static"] for r in n32)
    note(f"model goal: Dy op faster than batch-as-groups (fp16): {faster_bag}/{len(fp16)} rows")
    note(f"model goal: Dy-ResNet50 and Dy-mobile at least as fast as static at N=32 (fp16): {beat_static}/{len(n32)}")
    return faster_bag == len(fp16) and beat_static == len(n32) == 2


def _event_time(e, device_type: str) -> float:
    """Self time of a profiler average on the device (us), across torch versions' attribute names."""
    names = ("self_device_time_total", "self_cuda_time_total") if device_type == "cuda" else ("self_cpu_time_total",)
    for name in names:
        v = getattr(e, name, None)
        if v is not None:
            return float(v)
    return 0.0


def profile_models(static_name: str, dy_name: str, device, dtype, n: int, size: int, out_path: Path | None, iters=3):
    """Per-kernel time profile (torch.profiler) of the Dy model through the custom op, and kernels per forward of
    the static model, the Dy model as batch-as-groups and through the op. The full table goes to out_path."""
    from torch.profiler import ProfilerActivity, profile

    dev = torch.device(device).type
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
    static, bag, op, _ = build_models(static_name, dy_name, device, dtype)
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    counts, tables = {}, {}
    with torch.no_grad():
        for name, model, inp in (("static", static, x_cl), ("bag", bag, x), ("op", op, x)):
            model(inp)  # warm-up (the op's tactic choice included)
            if dev == "cuda":
                torch.cuda.synchronize()
            with profile(activities=activities) as prof:
                for _ in range(iters):
                    model(inp)
                if dev == "cuda":
                    torch.cuda.synchronize()
            avgs = prof.key_averages()
            if dev == "cuda":
                kernels = [e for e in avgs if str(getattr(e, "device_type", "")).endswith("CUDA")]
            else:
                kernels = [e for e in avgs if e.key.startswith("aten::") or "dynet" in e.key]
            counts[name] = sum(e.count for e in kernels) / iters
            tables[name] = sorted(
                ((_event_time(e, dev) / iters, e.count / iters, e.key) for e in kernels), reverse=True
            )
    rows = tables["op"]
    total = sum(t for t, _, _ in rows) or 1.0
    note(
        f"profile {dy_name} through the op, {str(dtype)[6:]}, N={n}, {size}x{size}: {total / 1e3:.3f} ms of "
        f"{'GPU kernels' if dev == 'cuda' else 'CPU ops'} per forward; per forward: {counts['op']:.0f} "
        f"{'kernels' if dev == 'cuda' else 'ops'} "
        f"(batch-as-groups {counts['bag']:.0f}, {static_name} {counts['static']:.0f})"
    )
    note(f"  {'ms/fwd':>8s} {'%':>5s} {'calls':>6s}  kernel")
    for t, c, key in rows[:12]:
        note(f"  {t / 1e3:8.3f} {100 * t / total:5.1f} {c:6.1f}  {key[:90]}")
    if out_path is not None:
        lines = []
        for name in ("op", "bag", "static"):
            lines.append(f"== {name}: {counts[name]:.0f} kernels per forward")
            lines += [f"{t / 1e3:10.4f} ms {c:7.1f}  {key}" for t, c, key in tables[name]]
        out_path.write_text("\n".join(lines) + "\n")
    return counts, rows


# ---- CPU dry run: the script's own references and its judging logic, on the CPU ----------------------------------


def loop_reference(layer: Layer, x, coeff, weight, bias_bank, bias, activation, spatial=None, residual=None):
    """The op written independently of batch-as-groups: fused kernels by an explicit sum over the bank (each tap
    scaled by spatial), then one conv2d per sample plus the residual (the module's "loop" oracle), in float64."""
    x, coeff, weight = x.double(), coeff.double(), weight.double()
    top, left, bottom, right = layer.pads
    xp = F.pad(x, (left, right, top, bottom))
    outs = []
    for i in range(x.shape[0]):
        c = coeff[i].expand(layer.c_out, -1)  # [C_out, K]
        w = sum(c[:, k].reshape(-1, 1, 1, 1) * weight[k] for k in range(weight.shape[0]))
        if spatial is not None:
            w = w * spatial[i].double().reshape(1, 1, layer.kh, layer.kw)
        b = torch.zeros(layer.c_out, dtype=torch.float64)
        if bias_bank is not None:
            b = b + (c * bias_bank.double().t()).sum(1)
        if bias is not None:
            b = b + bias.double()
        y = F.conv2d(xp[i : i + 1], w, b, layer.stride, 0, layer.dilation, layer.groups)
        if residual is not None:
            y = y + residual[i : i + 1].double()
        outs.append(y)
    return act(torch.cat(outs), activation)


def judge_self_test() -> list[str]:
    """The judging logic fed bad cases on the CPU: each must end as FAIL or INCOMPLETE. Returns what went wrong."""
    problems = []
    ref = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    cases = {
        "NaN in the output": ref.float().index_fill(3, torch.tensor([2]), float("nan")),
        "an unwritten (NaN-filled) output": torch.full(ref.shape, float("nan")),
        "a wrong kernel output": (ref * 1.01).float(),
        "a wrong shape": ref[:, :3].float(),
    }
    for what, out in cases.items():
        r = Report()
        r.compare(what, out, ref, TOL[torch.float32], "two_step", "float32")
        if r.verdict()[0] != "FAIL":
            problems.append(f"{what} was not a failure")
    r = Report()
    r.compare("exact", ref.float(), ref, TOL[torch.float32], "two_step", "float32")
    if r.verdict() != ("PASS", 0):
        problems.append("an exact output did not pass")
    # A correctness run cut by its budget, and too few checks per tactic x dtype, end INCOMPLETE with a non-zero exit.
    r = Report()
    check_correctness(SYNTHETIC_LAYERS, r, 0, budget_s=-1.0)
    if r.verdict() != ("INCOMPLETE", EXIT_INCOMPLETE):
        problems.append(f"a correctness run cut by its budget gave {r.verdict()}")
    r = Report()
    check_limit_shapes(r, 0, budget_s=-1.0)
    if r.verdict() != ("INCOMPLETE", EXIT_INCOMPLETE):
        problems.append(f"a limit-shape run cut by its budget gave {r.verdict()}")
    r = Report()
    r.compare("one", ref.float(), ref, TOL[torch.float32], "two_step", "float32")
    r.require_minimum(["two_step", "one_kernel"], ["float32"], 1)
    if r.verdict()[0] != "INCOMPLETE":
        problems.append("a tactic with no checks did not make the run INCOMPLETE")
    # Refusals: only the documented ones are not failures.
    asym = SYNTHETIC_LAYERS[1]
    if documented_refusal("cudnn", asym) is None or documented_refusal("two_step", asym) is not None:
        problems.append("documented_refusal accepts the wrong refusals")
    if documented_refusal("cudnn", SYNTHETIC_LAYERS[0]) is not None:
        problems.append("documented_refusal excuses cuDNN on symmetric pads")
    # The limit shapes are compared on every row.
    for ho, row in ((46340, 46340), (3, 16384 * 3), (7, 10)):
        chunks = row_chunks(ho, row)
        covered = [r for a, b in chunks for r in range(a, b)]
        if covered != list(range(ho)):
            problems.append(f"row_chunks({ho}, {row}) does not cover every row once")
    return problems


def cpu_dry_run(layers, seed: int, model_budget: float = 120.0) -> int:
    """Everything this script compares against and how it judges, checked on the CPU: the float64 PyTorch reference
    against the C++ reference and against an independent per-sample loop on sampled zoo layers and every synthetic
    layer; the crop reference of the limit check against the full reference; the limit layers' sizes against the C
    ABI's validation; the judging logic on bad cases (NaN, unwritten and wrong outputs, cut-short runs); the tactic
    list read from the CUDA library when it is built; and the model-level table and profile through the custom op's
    CPU path (tiny sizes)."""
    lib = plugin_lib.load_cpu_library()
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    small = [dataclasses.replace(layer, h=min(layer.h, 9), w=min(layer.w, 9)) for layer in layers]
    sample = rng.sample(small, min(len(small), 10)) + SYNTHETIC_LAYERS
    worst = worst_loop = 0.0
    for layer in sample:
        activation = rng.randrange(3)
        inputs = make_inputs(layer, 3, torch.float32, "cpu", gen, rng.random() < 0.5, True, True)
        ref = reference(layer, *inputs, activation)
        cpu = cpu_reference_of(layer, inputs, activation)
        if cpu is None:
            print(f"FAIL dry run {layer.model} {layer.label}: too large for the CPU reference")
            return 1
        rel, _ = errors(cpu, ref)
        rel_loop, _ = errors(loop_reference(layer, *inputs, activation), ref)
        worst, worst_loop = max(worst, rel), max(worst_loop, rel_loop)
        if not (rel <= 1e-5 and rel_loop <= 1e-12):  # NaN fails too
            print(
                f"FAIL dry run {layer.model} {layer.label}: C++ reference rel {rel:.2e}, per-sample loop {rel_loop:.2e}"
            )
            return 1
    # The crop reference (limit check) must equal the full reference on the rows it computes.
    for layer in SYNTHETIC_LAYERS[:3] + [dataclasses.replace(LIMIT_LAYERS[0][0], h=12, w=10)]:
        inputs = make_inputs(layer, 2, torch.float32, "cpu", gen, True, True, True)
        full = reference(layer, *inputs, 1)
        ho = full.shape[2]
        for o0, o1 in row_chunks(ho, full.shape[3], 3 * full.shape[3]) + [(ho // 2, ho // 2 + 1)]:
            crop = crop_reference(layer, inputs, o0, o1, 1)
            if not torch.allclose(crop, full[:, :, o0:o1], rtol=1e-12, atol=1e-12):
                print(f"FAIL dry run: crop reference rows {o0}:{o1} of {layer.label} differ from the full reference")
                return 1
    # The limit layers sit just inside the op's 2^31-1 element limit, and one step beyond it is refused.
    msg = ctypes.create_string_buffer(256)
    for layer, what in LIMIT_LAYERS:
        cin_g = layer.c_in // layer.groups
        p = plugin_lib.make_params(
            (1, layer.c_in, layer.h, layer.w),
            (1, layer.c_out, layer.k),
            (layer.k, layer.c_out, cin_g, layer.kh, layer.kw),
            pads=layer.pads,
        )
        if lib.dynet_conv_validate(ctypes.byref(p), msg, len(msg)) != plugin_lib.OK:
            print(f"FAIL dry run: limit layer '{what}' is not valid: {msg.value.decode()}")
            return 1
        p.n = 2
        if lib.dynet_conv_validate(ctypes.byref(p), msg, len(msg)) == plugin_lib.OK:
            print(f"FAIL dry run: limit layer '{what}' at N=2 should break the element limit")
            return 1
    # Op version 2: reference_v2 (y and mean) against the C++ reference of every op version (dynet_conv_cpu) and the
    # per-sample loop with spatial and residual.
    worst_v2 = worst_v2_loop = 0.0
    for i, layer in enumerate(sample):
        spatial, residual, _ = V2_COMBOS[i % len(V2_COMBOS)]
        activation = rng.randrange(3)
        inputs = make_inputs(layer, 3, torch.float32, "cpu", gen, rng.random() < 0.5, True, True)
        s, r = make_extras(layer, 3, torch.float32, "cpu", gen, spatial, residual)
        ref_y, ref_mean = reference_v2(layer, *inputs, activation, s, r)
        y, m = plugin_lib.cpu_reference_conv(
            *[t.numpy() if t is not None else None for t in inputs],
            stride=layer.stride,
            pads=layer.pads,
            dilation=layer.dilation,
            groups=layer.groups,
            activation=activation,
            spatial=s.numpy() if s is not None else None,
            residual=r.numpy() if r is not None else None,
            mean=True,
        )
        loop = loop_reference(layer, *inputs, activation, s, r)
        rels = (errors(torch.from_numpy(y), ref_y)[0], errors(torch.from_numpy(m), ref_mean)[0])
        rels_loop = (errors(loop, ref_y)[0], errors(loop.mean(dim=(2, 3), keepdim=True), ref_mean)[0])
        worst_v2, worst_v2_loop = max(worst_v2, *rels), max(worst_v2_loop, *rels_loop)
        if not (max(rels) <= 1e-5 and max(rels_loop) <= 1e-12):
            print(
                f"FAIL dry run v2 {_v2_flags(spatial, residual, True)} {layer.model} {layer.label}: C++ reference "
                f"rel (y, mean) {rels}, per-sample loop {rels_loop}"
            )
            return 1
    print(
        f"cpu dry run: op version 2 references (spatial, residual; y and mean) agree with the C++ CPU reference (worst "
        f"rel {worst_v2:.2e}) and with the per-sample loop (worst rel {worst_v2_loop:.2e}) on {len(sample)} layers"
    )
    print(
        f"cpu dry run: references agree with the C++ CPU reference (worst rel {worst:.2e}) and with a per-sample loop "
        f"(worst rel {worst_loop:.2e}) on {len(sample) - len(SYNTHETIC_LAYERS)} of {len(layers)} zoo layers and "
        f"{len(SYNTHETIC_LAYERS)} synthetic layers; crop reference exact; limit layers at the edge of the element limit"
    )
    problems = judge_self_test()
    for p in problems:
        print(f"FAIL dry run: judging logic: {p}")
    if problems:
        return 1
    print("cpu dry run: judging logic: NaN, unwritten, wrong and misshapen outputs FAIL; cut-short runs INCOMPLETE")
    if plugin_lib.cuda_library_path() is not None:
        tactics = torch_op.cuda_tactics()
        print(f"cpu dry run: tactics read from {plugin_lib.CUDA_LIBRARY}: {tactics}")
        if not tactics:
            print("FAIL dry run: the CUDA library lists no tactic")
            return 1
    else:
        print(f"cpu dry run: {plugin_lib.CUDA_LIBRARY} not built; tactic list not read")
    # The model-level code through the custom op's CPU path (fast CPU kernel), tiny sizes.
    report = Report()
    rows = model_table(
        report, "cpu", (torch.float32,), (1, 2), 32, model_budget, reps=1, trials=1, pairs=MODEL_PAIRS[:2]
    )
    counts, _ = profile_models("resnet18", "dy_resnet18", "cpu", torch.float32, 1, 32, None, iters=1)
    verdict, code = report.verdict()
    if code or len(rows) < 4 or not counts["op"]:
        print(f"FAIL dry run: model table {verdict} ({len(rows)} rows; {report.failures[:3]})")
        return 1
    print(f"cpu dry run: model table through the custom op's CPU path: {len(rows)} rows, {report.checked} checks PASS")
    print("cpu dry run: PASS")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--lib-dir", help="folder with libdynet_dynamic_conv_cuda.so (default: DYNET_DEPLOY_PLUGIN_DIR, build/)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sanitize", action="store_true", help="small shapes, correctness only (for compute-sanitizer)")
    ap.add_argument("--cpu-dry-run", action="store_true", help="no GPU: check this script's references on the CPU")
    ap.add_argument("--timing-budget", type=float, default=150.0, help="seconds for the timing table (default 150)")
    ap.add_argument(
        "--correctness-budget",
        type=float,
        default=120.0,
        help="seconds for the per-layer correctness part (default 120)",
    )
    ap.add_argument("--limit-budget", type=float, default=60.0, help="seconds for the 2^31-limit shapes (default 60)")
    ap.add_argument(
        "--v2-budget", type=float, default=40.0, help="seconds for the op-version-2 correctness part (default 40)"
    )
    ap.add_argument("--timing-layers", type=int, default=6, help="layers per model in the timing table (default 6)")
    ap.add_argument("--model-budget", type=float, default=120.0, help="seconds for the model table (default 120)")
    ap.add_argument("--profile-out", help="write the full per-kernel profile of Dy-ResNet50 here")
    ap.add_argument("--summary", help="write the short summary (correctness, limits, timing table, goals) here")
    ap.add_argument("--strict-perf", action="store_true", help="exit 1 when a performance goal is missed")
    args = ap.parse_args(argv)
    if args.lib_dir:
        os.environ[plugin_lib.ENV_PLUGIN_DIR] = args.lib_dir

    layers, source = zoo_layers()
    print(f"layers: {len(layers)} distinct dynamic convs from {source}; {len(SYNTHETIC_LAYERS)} synthetic")
    if args.cpu_dry_run:
        return cpu_dry_run(layers, args.seed, args.model_budget)

    if args.summary:
        global SUMMARY_PATH
        SUMMARY_PATH = Path(args.summary)
        SUMMARY_PATH.write_text("")
    if not torch.cuda.is_available():
        print("gpu_check: FAIL: torch.cuda.is_available() is False; this check needs a CUDA GPU", file=sys.stderr)
        return EXIT_NO_GPU
    if plugin_lib.cuda_library_path() is None:
        print(f"gpu_check: FAIL: {plugin_lib.CUDA_LIBRARY} not found in {plugin_lib.search_dirs()}", file=sys.stderr)
        return EXIT_NO_GPU
    # TF32 would make PyTorch's own convs the less accurate side of the comparison.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    note(
        f"device: {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))}), "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN (torch) {torch.backends.cudnn.version()}, "
        f"library {plugin_lib.cuda_library_path()}, tactics {list(algos())}"
    )

    report = Report()
    t0 = time.monotonic()
    if args.sanitize:
        small = [dataclasses.replace(layer, h=min(layer.h, 10), w=min(layer.w, 10)) for layer in layers]
        distinct = list(dict.fromkeys(dataclasses.replace(layer, model="any") for layer in small))
        sample = random.Random(args.seed).sample(distinct, min(len(distinct), 6)) + SYNTHETIC_LAYERS[:4]
        check_correctness(sample, report, args.seed, batches=(1, 3, 9))
        check_graph_capture_and_errors(sample + small, report, args.seed)
        check_version_two(sample + one_per_path(small), report, args.seed, batches=(1, 3))
        report.require_minimum([a for a in algos() if a != "auto"], ("float32", "float16"), 2)
        report.require_minimum([a for a in algos() if a != "auto"], V2_DTYPES, 1)
    else:
        note("[1/4] correctness of every tactic against PyTorch float64 and the C++ reference (N = 1, 3, 8, 32)")
        # Synthetic layers first: they carry the shapes the zoo lacks (dilation, asymmetric pads, 5x5, groups of 6).
        check_correctness(SYNTHETIC_LAYERS + layers, report, args.seed, budget_s=args.correctness_budget)
        check_nan_propagation(report, args.seed)
        check_graph_capture_and_errors(layers + SYNTHETIC_LAYERS, report, args.seed)
        note("  op version 2: spatial, residual and mean through dynet_conv_cuda_plan_run_v2 (N = 1, 3, 8)")
        v2_layers = SYNTHETIC_LAYERS + one_per_path(layers, per_path=4)
        check_version_two(v2_layers, report, args.seed, budget_s=args.v2_budget)
        check_version_two_nan_and_capture(layers + SYNTHETIC_LAYERS, report, args.seed)
        report.require_minimum(list(algos()), ("float32", "float16"), MIN_CHECKS)
        report.require_minimum(list(algos()), V2_DTYPES, MIN_CHECKS_V2)
        note(
            f"  {report.checked} checks, {len(report.failures)} failures; per tactic x dtype: "
            f"{dict(sorted(report.per_tactic.items()))} ({time.monotonic() - t0:.0f}s)"
        )
        note("[2/4] shapes at the 2^31-1 element limit (fp16, every output row against PyTorch crops)")
        check_limit_shapes(report, args.seed, args.limit_budget)
    for failure in report.failures[:20]:
        note(f"  FAIL {failure}")
    for cut in report.incomplete[:20]:
        note(f"  INCOMPLETE {cut}")
    verdict, code = report.verdict()
    if code:
        note(
            f"gpu_check: correctness {verdict}: {len(report.failures)} failures, {len(report.incomplete)} parts cut "
            f"short, of {report.checked} checks"
        )
    if report.failures:
        return code  # a failure stops here; an INCOMPLETE run still times, and exits non-zero at the end
    if args.sanitize:
        if not code:
            print(f"sanitize run: {report.checked} checks passed")
        return code

    note(
        "[3/4] per layer, ms per call (median of interleaved CUDA-graph replays); bag = batch-as-groups; "
        "best = fastest tactic (TensorRT keeps it); every timed output checked"
    )
    rows = run_timing(pick_timing_layers(layers, args.timing_layers), args.timing_budget, args.seed, report)
    goals_met = summarize_goals(rows)
    note(
        "[4/4] whole models at 224x224, ms per forward (median of interleaved CUDA-graph replays); static = "
        "channels-last cuDNN, BN folded; Dy bag = batch-as-groups; Dy op = torch.ops.dynet.dynamic_conv2d with the "
        "fastest tactic per layer shape (timed, as TensorRT picks)"
    )
    model_rows = model_table(report, "cuda", (torch.float16, torch.float32), (1, 8, 32), 224, args.model_budget)
    model_goals = summarize_model_goals(model_rows)
    try:
        profile_models(
            "resnet50",
            "dy_resnet50",
            "cuda",
            torch.float16,
            32,
            224,
            Path(args.profile_out) if args.profile_out else None,
        )
    except Exception as exc:  # the profile is information; its failure is reported, not fatal
        note(f"profile: not taken ({type(exc).__name__}: {exc})")
    verdict, code = report.verdict()
    note(
        f"gpu_check: correctness {verdict} ({report.checked} checks, {len(report.failures)} failures); performance "
        f"goals per layer {'met' if goals_met else 'NOT all met'}, whole models {'met' if model_goals else 'NOT all met'}"
    )
    if code:
        return code
    return 1 if (args.strict_perf and not (goals_met and model_goals)) else 0


if __name__ == "__main__":
    sys.exit(main())
