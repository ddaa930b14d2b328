"""torch.ops.dynet.dynamic_conv2d: the op as a PyTorch custom op on the native kernels.

Parity against the op's PyTorch reference (dynet_deploy.op.reference) in float64 on fresh random inputs, by max-abs
and relative error ||y - ref|| / ||ref||: fp32 rel <= 1e-5 and max-abs <= 1e-4, fp16 rel <= 1e-2 (the reference runs
on the fp16-rounded values). Also torch.library.opcheck, torch.export (the graph holds the op), torch.compile, a
whole Dy zoo model on the native path against the default path, and the CUDA tactics where a GPU is present.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from dynet_deploy.errors import MissingDependencyError
from dynet_deploy.op import native, reference
from dynet_deploy.op import torch_op as top

pytestmark = pytest.mark.skipif(native.cpu_library_path() is None, reason="native CPU library not built (make plugins)")

try:
    from dynet_deploy.op import onnxruntime_lib

    HAVE_FAST = onnxruntime_lib.library_path() is not None
except ImportError:  # pragma: no cover - onnxruntime is a dependency
    HAVE_FAST = False
needs_fast = pytest.mark.skipif(not HAVE_FAST, reason="onnxruntime custom-op library not built (make plugins)")
HAVE_CUDA = torch.cuda.is_available() and native.cuda_library_path() is not None
CUDA_REASON = (
    "no CUDA device visible to torch" if not torch.cuda.is_available() else "libdynet_dynamic_conv_cuda.so not built"
)
needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason=CUDA_REASON)

FP32_REL, FP32_ABS, FP16_REL = 1e-5, 1e-4, 1e-2

# (C_in, C_out, H, W, kH, kW, stride, pads t/l/b/r, dilation, groups, K)
LAYERS = [
    (8, 16, 9, 10, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, 4),
    (16, 24, 11, 9, 3, 3, (2, 1), (1, 0, 2, 1), (1, 2), 2, 3),  # asymmetric pads, stride, dilation, groups
    (12, 12, 8, 8, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 12, 6),  # depthwise
    (32, 16, 7, 7, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1, 6),  # pointwise
    (16, 32, 9, 9, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1, 2),  # strided 1x1
    (6, 8, 10, 7, 5, 3, (2, 2), (2, 1, 2, 1), (2, 1), 2, 5),  # non-square kernel, dilation
    (3, 8, 7, 7, 7, 7, (1, 2), (3, 3, 3, 3), (1, 1), 1, 1),  # K = 1
]


def make_case(layer, n, per_channel, bank, bias, dtype=torch.float32, seed=0, device="cpu"):
    c_in, c_out, h, w, kh, kw, stride, pads, dilation, groups, k = layer
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype=dtype, device=device)

    x = rnd(n, c_in, h, w)
    coeff = torch.sigmoid(torch.randn(n, c_out if per_channel else 1, k, generator=g)).to(dtype=dtype, device=device)
    weight = rnd(k, c_out, c_in // groups, kh, kw, scale=(c_in // groups * kh * kw * k) ** -0.5)
    bb = rnd(k, c_out, scale=0.1) if bank else None
    b = rnd(c_out, scale=0.1) if bias else None
    return (x, coeff, weight, bb, b), dict(stride=stride, pads=pads, dilation=dilation, groups=groups)


def ref64(tensors, conv, activation):
    d = [None if t is None else t.double().cpu() for t in tensors]
    return reference.dynamic_conv(*d, **conv, activation=activation)


def errs(y, ref):
    diff = y.double().cpu() - ref
    return float(diff.norm() / ref.norm().clamp_min(1e-30)), float(diff.abs().max())


def run_op(tensors, conv, activation, tactic=top.TACTIC_TIMED):
    return torch.ops.dynet.dynamic_conv2d(*tensors, *top.op_arguments(**conv, activation=activation), tactic)


CASES = [
    (i, layer, per_channel, bank, bias, act)
    for i, (layer, (per_channel, bank, bias), act) in enumerate(
        itertools.product(LAYERS, [(True, False, False), (False, True, True), (True, True, False)], [0, 1, 2])
    )
]


def case_id(case):
    i, layer, per_channel, bank, bias, act = case
    return f"{i}-cin{layer[0]}k{layer[4]}x{layer[5]}g{layer[9]}-{'chan' if per_channel else 'expert'}-act{act}"


@pytest.mark.parametrize("tactic", [top.TACTIC_TIMED, top.TACTIC_CPU_REFERENCE], ids=["fast", "c_reference"])
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_cpu_parity_fp32(case, tactic):
    if tactic == top.TACTIC_TIMED and not HAVE_FAST:
        pytest.skip("onnxruntime custom-op library not built (make plugins)")
    i, layer, per_channel, bank, bias, act = case
    n = random.Random(i).choice([1, 2, 5])
    tensors, conv = make_case(layer, n, per_channel, bank, bias, seed=1000 + i)
    y = run_op(tensors, conv, act, tactic)
    ref = ref64(tensors, conv, act)
    assert y.shape == ref.shape and y.dtype == torch.float32
    rel, max_abs = errs(y, ref)
    assert rel <= FP32_REL and max_abs <= FP32_ABS, f"rel {rel:.2e} max-abs {max_abs:.2e}"


@needs_fast
@pytest.mark.parametrize("layer", LAYERS[:4])
def test_cpu_parity_fp16(layer):
    tensors, conv = make_case(layer, 3, True, True, True, dtype=torch.float16, seed=7)
    y = run_op(tensors, conv, 1)
    assert y.dtype == torch.float16
    rel, max_abs = errs(y, ref64(tensors, conv, 1))
    assert rel <= FP16_REL, f"rel {rel:.2e} max-abs {max_abs:.2e}"


@pytest.mark.parametrize(
    "tactic",
    [
        pytest.param(top.TACTIC_TIMED, marks=[needs_fast]),
        top.TACTIC_CPU_REFERENCE,
    ],
    ids=["fast", "c_reference"],
)
def test_nan_passes_through_relu(tactic):
    tensors, conv = make_case(LAYERS[0], 2, True, False, True, seed=3)
    tensors[0][0, 0, 4, 4] = float("nan")
    y = run_op(tensors, conv, 1, tactic)
    ref = ref64(tensors, conv, 1)
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.isnan(ref).any()


@needs_fast
def test_clear_caches_drops_the_sessions_and_the_op_still_runs():
    tensors, conv = make_case(LAYERS[0], 2, True, False, True, seed=5)
    first = run_op(tensors, conv, 1)
    assert top._ORT_SESSIONS, "the fast CPU path keeps its onnxruntime session"
    top.clear_caches()
    assert not top._ORT_SESSIONS and not top._PLANS and not top._CHOSEN
    assert torch.equal(run_op(tensors, conv, 1), first)  # a fresh session computes the same


def test_bad_input_is_a_clear_error():
    tensors, conv = make_case(LAYERS[0], 2, True, False, False)
    x, coeff, weight, _, _ = tensors
    with pytest.raises(ValueError, match="coeff"):
        run_op((x, coeff[:1], weight, None, None), conv, 0)
    with pytest.raises(ValueError, match="groups"):
        run_op((x, coeff, weight, None, None), {**conv, "groups": 3}, 0)
    with pytest.raises(ValueError, match="dtype"):
        run_op((x, coeff.double(), weight, None, None), conv, 0)


def test_missing_library_says_how_to_build(monkeypatch):
    monkeypatch.setattr(native, "_LOADED", {})
    monkeypatch.setattr(native, "find_library", lambda name: None)
    tensors, conv = make_case(LAYERS[0], 1, True, False, False)
    with pytest.raises(MissingDependencyError, match="make plugins"):
        run_op(tensors, conv, 0, top.TACTIC_CPU_REFERENCE)


@needs_fast
def test_opcheck():
    if not hasattr(torch.library, "opcheck"):
        pytest.skip("torch.library.opcheck is not in this torch")
    for layer, (per_channel, bank, bias) in [(LAYERS[1], (True, True, True)), (LAYERS[3], (False, False, False))]:
        tensors, conv = make_case(layer, 2, per_channel, bank, bias, seed=11)
        args = (*tensors, *top.op_arguments(**conv, activation=2), top.TACTIC_TIMED)
        torch.library.opcheck(torch.ops.dynet.dynamic_conv2d.default, args)


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from dynet_deploy.nn import DynamicConv2d

        self.a = DynamicConv2d(8, 16, 3, padding=(1, 0, 2, 1), stride=2, num_bases=4, bias=True, mode="native")
        self.b = DynamicConv2d(16, 16, 3, padding=1, groups=4, num_bases=4, coeff_mode="expert", mode="native")

    def forward(self, x, coeff_a, coeff_b):
        return self.b(torch.relu(self.a(x, coeff_a)), coeff_b)

    def inputs(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        return (
            torch.randn(n, 8, 12, 11, generator=g),
            torch.rand(n, 16, 4, generator=g),
            torch.rand(n, 4, generator=g),
        )


def _set_mode(model, mode):
    from dynet_deploy.nn import set_dynamic_conv_mode

    return set_dynamic_conv_mode(model, mode)


@needs_fast
def test_torch_export_holds_the_op():
    model = TwoLayers().eval()
    inputs = model.inputs(3)
    with torch.no_grad():
        ep = torch.export.export(model, inputs)
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.dynet.dynamic_conv2d.default) == 2, targets
    fresh = model.inputs(3, seed=1)
    with torch.no_grad():
        y = ep.module()(*fresh)
        ref = _set_mode(model, "kernel")(*fresh)
    rel, max_abs = errs(y, ref.double())
    assert rel <= FP32_REL and max_abs <= FP32_ABS, f"rel {rel:.2e} max-abs {max_abs:.2e}"


@needs_fast
def test_torch_compile_runs_and_matches():
    model = TwoLayers().eval()
    compiled = torch.compile(model, backend="aot_eager", dynamic=False)
    for n, seed in ((2, 0), (2, 1)):
        inputs = model.inputs(n, seed)
        with torch.no_grad():
            y = compiled(*inputs)
            _set_mode(model, "kernel")
            ref = model(*inputs)
            _set_mode(model, "native")
        rel, max_abs = errs(y, ref.double())
        assert rel <= FP32_REL and max_abs <= FP32_ABS, f"rel {rel:.2e} max-abs {max_abs:.2e}"


@needs_fast
@pytest.mark.parametrize("name", ["dy_resnet18", pytest.param("dy_mobile", marks=pytest.mark.slow)])
def test_zoo_model_native_matches_default(name):
    from dynet_deploy.models import create_model
    from dynet_deploy.nn import fold_batchnorms

    torch.manual_seed(0)
    model = create_model(name).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the folded static biases are not zero
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(m.running_var.sqrt() * (torch.rand(c, generator=g) * 0.4 + 0.8))  # scale ~1
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    model = fold_batchnorms(model)
    assert any(getattr(m, "bias", None) is not None and m.bias.abs().sum() > 0 for m in model.modules())
    x = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x)
        y = _set_mode(model, "native")(x)
    rel, max_abs = errs(y, ref.double())
    assert rel <= FP32_REL and max_abs <= FP32_ABS, f"{name}: rel {rel:.2e} max-abs {max_abs:.2e}"


# ---- CUDA ------------------------------------------------------------------------------------------------------


def test_cuda_tactics_come_from_the_library():
    if native.cuda_library_path() is None:
        pytest.skip("libdynet_dynamic_conv_cuda.so not built (no nvcc at build time)")
    tactics = top.cuda_tactics()
    ids = [t for t, _ in tactics]
    assert ids == list(range(1, len(ids) + 1)), tactics
    named = {v for k, v in vars(native).items() if k.startswith("ALGO_") and k != "ALGO_AUTO"}
    assert named <= set(ids), (named, tactics)
    # Each tactic under its own name (the GPU check and chosen_tactics() report these), never the ALGO_LAST alias.
    names = dict(tactics)
    assert names[native.ALGO_CUBLAS_IM2COL] == "cublas_im2col" and "last" not in names.values(), tactics


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_parity_every_tactic(dtype):
    tol = FP32_REL if dtype == torch.float32 else FP16_REL
    ran = 0
    for i, layer in enumerate(LAYERS):
        tensors, conv = make_case(layer, 3, i % 2 == 0, True, True, dtype=dtype, seed=50 + i, device="cuda")
        ref = ref64(tensors, conv, 2)
        for tactic in [top.TACTIC_TIMED] + [t for t, _ in top.cuda_tactics()]:
            try:
                y = run_op(tensors, conv, 2, tactic)
            except top.PlanRefused as exc:  # a library tactic may refuse a shape it cannot express, never the
                # hand-written ones, and never with anything but DYNET_ERR_UNSUPPORTED
                assert tactic not in (native.ALGO_TWO_STEP, native.ALGO_ONE_KERNEL), exc
                assert exc.status == native.ERR_UNSUPPORTED, exc
                continue
            rel, max_abs = errs(y, ref)
            assert rel <= tol, f"layer {i} tactic {tactic}: rel {rel:.2e} max-abs {max_abs:.2e}"
            ran += 1
    assert ran >= len(LAYERS) * 2


@needs_cuda
def test_cuda_graph_capture_after_eager_call():
    tensors, conv = make_case(LAYERS[1], 2, True, True, True, dtype=torch.float16, seed=9, device="cuda")
    eager = run_op(tensors, conv, 1)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        captured = run_op(tensors, conv, 1)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)
    assert top.chosen_tactics(), "the timed choice was not recorded"


# ---- op version 2: spatial, residual, the mean output ------------------------------------------------------------

# (spatial, residual, mean): each alone, then all three
V2_FLAGS = [(True, False, False), (False, True, False), (False, False, True), (True, True, True)]


def make_extras(layer, n, spatial, residual, dtype=torch.float32, seed=0, device="cpu"):
    c_in, c_out, h, w, kh, kw, stride, pads, dilation, groups, k = layer
    h_out = (h + pads[0] + pads[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (w + pads[1] + pads[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    g = torch.Generator().manual_seed(1000 + seed)
    s = (torch.rand(n, kh * kw, generator=g) * 1.5 + 0.25).to(dtype=dtype, device=device) if spatial else None
    r = torch.randn(n, c_out, h_out, w_out, generator=g).to(dtype=dtype, device=device) if residual else None
    return s, r


def run_v2(tensors, conv, activation, tactic, spatial, residual, mean):
    args = (*tensors, *top.op_arguments(**conv, activation=activation), tactic, spatial, residual)
    if mean:
        return torch.ops.dynet.dynamic_conv2d_mean(*args)
    return torch.ops.dynet.dynamic_conv2d(*args), None


def ref64_v2(tensors, conv, activation, spatial, residual):
    d = [None if t is None else t.double().cpu() for t in (*tensors, spatial, residual)]
    y = reference.dynamic_conv(*d[:5], **conv, activation=activation, spatial=d[5], residual=d[6])
    return y, reference.channel_mean(y)


@pytest.mark.parametrize(
    "tactic",
    [pytest.param(top.TACTIC_TIMED, marks=[needs_fast]), top.TACTIC_CPU_REFERENCE],
    ids=["fast", "c_reference"],
)
@pytest.mark.parametrize("flags", V2_FLAGS, ids=["spatial", "residual", "mean", "all"])
@pytest.mark.parametrize("layer_i", [0, 1, 2, 3])
def test_version_two_cpu_parity(layer_i, flags, tactic):
    spatial, residual, mean = flags
    layer = LAYERS[layer_i]
    tensors, conv = make_case(layer, 3, layer_i % 2 == 0, True, True, seed=20 + layer_i)
    s, r = make_extras(layer, 3, spatial, residual, seed=layer_i)
    act = layer_i % 3
    y, m = run_v2(tensors, conv, act, tactic, s, r, mean)
    ref_y, ref_mean = ref64_v2(tensors, conv, act, s, r)
    rel, max_abs = errs(y, ref_y)
    assert rel <= FP32_REL and max_abs <= FP32_ABS, f"rel {rel:.2e} max-abs {max_abs:.2e}"
    if mean:
        assert m.shape == (3, layer[1], 1, 1)
        rel, max_abs = errs(m, ref_mean)
        assert rel <= FP32_REL and max_abs <= FP32_ABS, f"mean: rel {rel:.2e} max-abs {max_abs:.2e}"
    # The version-2 inputs change the result (so a path that dropped them could not pass).
    if spatial or residual:
        plain, _ = ref64_v2(tensors, conv, act, None, None)
        assert errs(plain.float(), ref_y)[0] > 1e-3


def test_version_two_bad_shapes_are_clear_errors():
    tensors, conv = make_case(LAYERS[0], 2, True, False, False)
    s, r = make_extras(LAYERS[0], 2, True, True)
    with pytest.raises(ValueError, match=r"spatial must be \[N, kH\*kW\] = \[2, 9\]"):
        run_v2(tensors, conv, 0, top.TACTIC_CPU_REFERENCE, s[:, :8], None, False)
    with pytest.raises(ValueError, match=r"residual must be \[N, C_out, H_out, W_out\]"):
        run_v2(tensors, conv, 0, top.TACTIC_CPU_REFERENCE, None, r[:, :, 1:], False)
    with pytest.raises(ValueError, match="dtype"):
        run_v2(tensors, conv, 0, top.TACTIC_CPU_REFERENCE, s.double(), None, False)


def test_version_two_opcheck():
    if not hasattr(torch.library, "opcheck"):
        pytest.skip("torch.library.opcheck is not in this torch")
    layer = LAYERS[1]
    tensors, conv = make_case(layer, 2, True, True, True, seed=12)
    s, r = make_extras(layer, 2, True, True, seed=12)
    args = (*tensors, *top.op_arguments(**conv, activation=1), top.TACTIC_CPU_REFERENCE, s, r)
    torch.library.opcheck(torch.ops.dynet.dynamic_conv2d_mean.default, args)
    torch.library.opcheck(torch.ops.dynet.dynamic_conv2d.default, args)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_version_two_parity_every_tactic(dtype):
    tol = FP32_REL if dtype == torch.float32 else FP16_REL
    ran = 0
    for i, layer in enumerate(LAYERS):
        spatial, residual, mean = V2_FLAGS[i % len(V2_FLAGS)]
        tensors, conv = make_case(layer, 3, i % 2 == 0, True, True, dtype=dtype, seed=60 + i, device="cuda")
        s, r = make_extras(layer, 3, spatial, residual, dtype=dtype, seed=i, device="cuda")
        ref_y, ref_mean = ref64_v2(tensors, conv, 1, s, r)
        for tactic in [top.TACTIC_TIMED] + [t for t, _ in top.cuda_tactics()]:
            try:
                y, m = run_v2(tensors, conv, 1, tactic, s, r, mean)
            except top.PlanRefused as exc:
                assert tactic not in (native.ALGO_TWO_STEP, native.ALGO_ONE_KERNEL), exc
                assert exc.status == native.ERR_UNSUPPORTED, exc
                continue
            rel, max_abs = errs(y, ref_y)
            assert rel <= tol, f"layer {i} tactic {tactic}: rel {rel:.2e} max-abs {max_abs:.2e}"
            if mean:
                rel, max_abs = errs(m, ref_mean)
                assert rel <= tol, f"layer {i} tactic {tactic} mean: rel {rel:.2e} max-abs {max_abs:.2e}"
            ran += 1
    assert ran >= len(LAYERS) * 2
