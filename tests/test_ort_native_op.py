"""The native onnxruntime DyNetDynamicConv2d (build/libdynet_dynamic_conv_ort.so) on single-node graphs.

Parity on a property corpus of random layers (dense, grouped, depthwise, strides, dilations, asymmetric pads,
coefficients [N, C_out, K] and [N, 1, K], K 1-6, bias bank, bias, activations, 3/4/5-input nodes) against the C++
reference (build/libdynet_dynamic_conv_cpu.so) and PyTorch in float64, on fresh random inputs per layer:
fp32 relative error ||out - ref|| / ||ref|| <= 1e-5 (max-abs reported with it); fp16 on the CPU kernel (fp16 inputs,
fp32 compute, the output rounded once, so about half an fp16 ulp of error) relative <= 1e-3 and max-abs
<= 1e-3 * max(1, max|ref|), the worst measured being 2.4e-4 and 4.4e-4 (rounding alone bounds the latter by
2^-11 = 4.9e-4). Bad attributes and shapes must come back as onnxruntime errors with a clear message, never abort the
process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from dynet_deploy.backends.onnxruntime import OnnxruntimeRunner
from dynet_deploy.errors import MissingDependencyError, RuntimeBackendError
from dynet_deploy.nn import DynamicConv2d
from dynet_deploy.op import native as plugin_lib
from dynet_deploy.op import onnxruntime_lib, reference
from dynet_deploy.op.spec import OP_DOMAIN, OP_TYPE

ort = pytest.importorskip("onnxruntime")

FP32_REL = 1e-5
FP16_REL, FP16_ABS = 1e-3, 1e-3  # CPU kernel; FP16_ABS scales with max(1, max|ref|)
CUDA_FP16_REL = 1e-2  # the CUDA kernels' fp16 bound, not yet measured against the CPU kernel's
CORPUS_SIZE = 220


@pytest.fixture(scope="module", autouse=True)
def native_library():
    path = onnxruntime_lib.library_path()
    if path is None:
        pytest.skip(
            f"{onnxruntime_lib.ORT_LIBRARY} not built (no onnxruntime headers at build time; run 'make plugins')"
        )
    plugin_lib.ensure_built()
    return path


@dataclass
class Layer:
    n: int
    c_in: int
    c_out: int
    h: int
    w: int
    k: int
    kh: int
    kw: int
    groups: int = 1
    per_channel: bool = True
    bank: bool = False
    bias: bool = False
    stride: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple = (1, 1)
    activation: int = 0
    extra: dict = field(default_factory=dict)


def random_layer(seed: int) -> Layer:
    """One random layer whose output is not empty; the kind cycles so every kind is in the corpus."""
    rng = np.random.default_rng(seed)
    kind = seed % 4  # 0 dense, 1 grouped, 2 depthwise, 3 dense with many channels (several 8-row panels)
    while True:
        kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        if kind == 0:
            groups, cin_g, cout_g = 1, int(rng.integers(1, 13)), int(rng.integers(1, 13))
        elif kind == 1:
            groups, cin_g, cout_g = int(rng.integers(2, 5)), int(rng.integers(1, 9)), int(rng.integers(1, 9))
        elif kind == 2:
            groups, cin_g, cout_g = int(rng.integers(2, 17)), 1, int(rng.choice([1, 1, 2]))
        else:
            groups, cin_g, cout_g = 1, int(rng.integers(8, 33)), int(rng.integers(9, 41))
        stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        pads = tuple(int(v) for v in rng.integers(0, 3, 4))
        h, w = int(rng.integers(3, 21)), int(rng.integers(3, 21))
        span_h, span_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
        if h + pads[0] + pads[2] >= span_h and w + pads[1] + pads[3] >= span_w:
            break
    return Layer(
        n=int(rng.integers(1, 4)),
        c_in=groups * cin_g,
        c_out=groups * cout_g,
        h=h,
        w=w,
        k=int(rng.integers(1, 7)),
        kh=kh,
        kw=kw,
        groups=groups,
        per_channel=bool(rng.integers(0, 2)),
        bank=bool(rng.integers(0, 2)),
        bias=bool(rng.integers(0, 2)),
        stride=stride,
        pads=pads,
        dilation=dilation,
        activation=int(rng.integers(0, 3)),
    )


def make_arrays(layer: Layer, rng: np.random.Generator):
    x = rng.standard_normal((layer.n, layer.c_in, layer.h, layer.w)).astype(np.float32)
    coeff = rng.uniform(0.05, 1.0, (layer.n, layer.c_out if layer.per_channel else 1, layer.k)).astype(np.float32)
    weight = rng.standard_normal((layer.k, layer.c_out, layer.c_in // layer.groups, layer.kh, layer.kw)) * 0.3
    weight = weight.astype(np.float32)
    bank = rng.standard_normal((layer.k, layer.c_out)).astype(np.float32) if layer.bank else None
    bias = rng.standard_normal((layer.c_out,)).astype(np.float32) if layer.bias else None
    return x, coeff, weight, bank, bias


def node_model(
    layer: Layer, weight, bank, bias, dtype=TensorProto.FLOAT, weight_as_input=False, attrs=None, inputs=None
):
    """One DyNetDynamicConv2d node, x and coeff as graph inputs (dynamic N, H, W), the bank as initializers."""
    names = (
        ["x", "coeff", "weight"] + (["bias_bank"] if bank is not None else []) + (["bias"] if bias is not None else [])
    )
    np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    inits = [
        numpy_helper.from_array(a.astype(np_dtype), name)
        for name, a in (("weight", weight), ("bias_bank", bank), ("bias", bias))
        if a is not None
    ]
    graph_inputs = [
        helper.make_tensor_value_info("x", dtype, ["N", layer.c_in, "H", "W"]),
        helper.make_tensor_value_info("coeff", dtype, ["N", layer.c_out if layer.per_channel else 1, layer.k]),
    ]
    if weight_as_input:
        inits = [i for i in inits if i.name != "weight"]
        graph_inputs.append(helper.make_tensor_value_info("weight", dtype, list(weight.shape)))
    top, left, bottom, right = layer.pads
    node_attrs = dict(
        stride_h=layer.stride[0],
        stride_w=layer.stride[1],
        pad_top=top,
        pad_left=left,
        pad_bottom=bottom,
        pad_right=right,
        dilation_h=layer.dilation[0],
        dilation_w=layer.dilation[1],
        groups=layer.groups,
        activation=layer.activation,
        has_bias_bank=int(bank is not None),
        has_bias=int(bias is not None),
        plugin_version="1",
        plugin_namespace="",
    )
    node_attrs.update(attrs or {})
    node = helper.make_node(
        OP_TYPE, inputs if inputs is not None else names, ["y"], domain=OP_DOMAIN, name="dynconv", **node_attrs
    )
    graph = helper.make_graph(
        [node],
        "one_dynamic_conv",
        graph_inputs,
        [helper.make_tensor_value_info("y", dtype, ["N", layer.c_out, None, None])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(OP_DOMAIN, 1)])


def session(model, threads=2):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    onnxruntime_lib.register(so)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def torch_reference(layer: Layer, x, coeff, weight, bank, bias):
    """The op's Python reference (dynet_deploy.op.reference, PyTorch) in float64."""

    def t(a):
        return None if a is None else torch.from_numpy(np.asarray(a, np.float64))

    with torch.no_grad():
        y = reference.dynamic_conv(
            t(x),
            t(coeff),
            t(weight),
            t(bank),
            t(bias),
            layer.stride,
            layer.pads,
            layer.dilation,
            layer.groups,
            layer.activation,
        )
    return y.numpy()


def errors(out, ref):
    diff = np.asarray(out, np.float64) - ref
    return float(np.abs(diff).max()), float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-30))


WORST = {}


@pytest.fixture(scope="module", autouse=True)
def report_worst():
    yield
    for key, (max_abs, rel) in sorted(WORST.items()):
        print(f"\n[native op parity] {key}: worst max-abs {max_abs:.3e}, worst rel {rel:.3e}")


def record(key, max_abs, rel):
    old = WORST.get(key, (0.0, 0.0))
    WORST[key] = (max(old[0], max_abs), max(old[1], rel))


@pytest.mark.parametrize("seed", range(CORPUS_SIZE))
def test_fp32_matches_cpp_reference_and_pytorch(seed):
    layer = random_layer(seed)
    rng = np.random.default_rng(10_000 + seed)
    x, coeff, weight, bank, bias = make_arrays(layer, rng)
    y = session(node_model(layer, weight, bank, bias)).run(None, {"x": x, "coeff": coeff})[0]
    cpp = plugin_lib.cpu_reference_conv(
        x,
        coeff,
        weight,
        bank,
        bias,
        stride=layer.stride,
        pads=layer.pads,
        dilation=layer.dilation,
        groups=layer.groups,
        activation=layer.activation,
    )
    ref = torch_reference(layer, x, coeff, weight, bank, bias)
    assert y.dtype == np.float32 and y.shape == ref.shape == cpp.shape, (layer, y.shape, ref.shape)
    for name, target in (("C++ reference", cpp.astype(np.float64)), ("PyTorch float64", ref)):
        max_abs, rel = errors(y, target)
        record(f"fp32 vs {name}", max_abs, rel)
        assert rel <= FP32_REL, f"{layer}: vs {name} rel {rel:.3e} > {FP32_REL} (max-abs {max_abs:.3e})"


@pytest.mark.parametrize("seed", range(0, CORPUS_SIZE, 3))
def test_fp16_matches_pytorch(seed):
    layer = random_layer(seed)
    rng = np.random.default_rng(20_000 + seed)
    x, coeff, weight, bank, bias = make_arrays(layer, rng)
    half = [None if a is None else a.astype(np.float16) for a in (x, coeff, weight, bank, bias)]
    model = node_model(layer, half[2], half[3], half[4], dtype=TensorProto.FLOAT16)
    y = session(model).run(None, {"x": half[0], "coeff": half[1]})[0]
    assert y.dtype == np.float16
    ref = torch_reference(layer, *half)  # the fp16-rounded inputs, computed in float64
    max_abs, rel = errors(y, ref)
    scaled = max_abs / max(1.0, float(np.abs(ref).max()))
    record("fp16 vs PyTorch float64", max_abs, rel)
    record("fp16 vs PyTorch float64, max-abs / max(1, max|ref|)", scaled, rel)
    assert rel <= FP16_REL and scaled <= FP16_ABS, f"{layer}: rel {rel:.3e}, max-abs {max_abs:.3e} ({scaled:.3e})"


def big_layers():
    """Layers large enough for several pixel blocks and panels: the GEMM tiling's edges."""
    return [
        Layer(n=2, c_in=32, c_out=72, h=23, w=29, k=4, kh=3, kw=3, pads=(1, 1, 1, 1), bank=True, bias=True),
        Layer(n=1, c_in=48, c_out=40, h=20, w=18, k=6, kh=1, kw=1, per_channel=False, activation=2),
        Layer(n=3, c_in=36, c_out=36, h=17, w=17, k=3, kh=3, kw=3, groups=6, stride=(2, 2), pads=(1, 0, 1, 2)),
        Layer(n=1, c_in=64, c_out=64, h=31, w=31, k=4, kh=3, kw=3, groups=64, pads=(1, 1, 1, 1), activation=1),
        Layer(n=4, c_in=24, c_out=17, h=9, w=35, k=2, kh=5, kw=3, dilation=(2, 1), pads=(4, 1, 3, 1)),
        Layer(n=2, c_in=16, c_out=24, h=50, w=61, k=3, kh=3, kw=3, stride=(2, 2), pads=(1, 0, 1, 2), bias=True),
        Layer(
            n=1,
            c_in=12,
            c_out=20,
            h=40,
            w=55,
            k=5,
            kh=3,
            kw=5,
            stride=(3, 2),
            dilation=(2, 1),
            pads=(2, 1, 0, 3),
            per_channel=False,
            activation=2,
        ),
        Layer(n=3, c_in=20, c_out=30, h=30, w=60, k=2, kh=1, kw=1, stride=(1, 2), groups=2, bank=True),
        *narrow_layers(),
        *small_pointwise_layers(),
    ]


def small_pointwise_layers():
    """1x1 layers on small images (the small-image GEMM reading x in place): Dy-mobile's 14x14 and 7x7 pointwise
    layers, a pixel count that is a multiple of every tile width, and images narrower than a tile (8 or 32 columns),
    with groups."""
    return [
        Layer(n=1, c_in=96, c_out=96, h=14, w=14, k=6, kh=1, kw=1, activation=1),
        Layer(n=3, c_in=162, c_out=160, h=7, w=7, k=6, kh=1, kw=1, bank=True, bias=True, activation=2),
        Layer(n=2, c_in=30, c_out=20, h=8, w=8, k=3, kh=1, kw=1, per_channel=False),
        Layer(n=2, c_in=12, c_out=10, h=3, w=5, k=2, kh=1, kw=1, bias=True),
        Layer(n=3, c_in=24, c_out=36, h=5, w=9, k=4, kh=1, kw=1, groups=2, bank=True),
    ]


@pytest.mark.parametrize("index", range(len(small_pointwise_layers())))
def test_small_pointwise_layers_take_the_small_image_gemm(index):
    layer = small_pointwise_layers()[index]
    assert onnxruntime_lib.cpu_path(params_of(layer)) == "gemm-small", layer


def narrow_layers():
    """Dy-mobile's grouped 3x3 convs (6 channels per group) at the sizes its 224x224 model runs them, and the edges of
    the narrow-group path: batch 1 with few groups (lane blocks on an input padded in its own step), stride 2,
    asymmetric pads, dilation, 5 and 8 channels per group, coefficients shared by all channels."""
    return [
        Layer(n=1, c_in=30, c_out=30, h=112, w=112, k=6, kh=3, kw=3, groups=5, pads=(1, 1, 1, 1), activation=1),
        Layer(n=1, c_in=18, c_out=18, h=112, w=112, k=6, kh=3, kw=3, groups=3, stride=(2, 2), pads=(1, 1, 1, 1)),
        Layer(n=2, c_in=24, c_out=24, h=56, w=56, k=6, kh=3, kw=3, groups=4, stride=(2, 2), pads=(1, 1, 1, 1)),
        Layer(
            n=3,
            c_in=66,
            c_out=66,
            h=14,
            w=14,
            k=6,
            kh=3,
            kw=3,
            groups=11,
            pads=(1, 1, 1, 1),
            bank=True,
            bias=True,
            activation=2,
        ),
        Layer(n=8, c_in=96, c_out=96, h=14, w=14, k=6, kh=3, kw=3, groups=16, stride=(2, 2), pads=(1, 1, 1, 1)),
        Layer(n=1, c_in=162, c_out=162, h=7, w=7, k=6, kh=3, kw=3, groups=27, pads=(1, 1, 1, 1), per_channel=False),
        Layer(n=2, c_in=10, c_out=16, h=29, w=33, k=3, kh=3, kw=3, groups=2, pads=(0, 2, 1, 1), dilation=(2, 1)),
        Layer(
            n=1, c_in=16, c_out=14, h=25, w=40, k=2, kh=3, kw=3, groups=2, stride=(2, 1), pads=(1, 1, 1, 1), bank=True
        ),
    ]


@pytest.mark.parametrize("index", range(len(narrow_layers())))
def test_narrow_groups_take_the_narrow_path(index):
    """The shapes the narrow-group loop nest serves must reach it (so the parity runs above, at every ISA and thread
    count, cover it); a change of the path decision shows here."""
    layer = narrow_layers()[index]
    assert onnxruntime_lib.cpu_path(params_of(layer)) == "narrow", layer


def params_of(layer: Layer):
    return plugin_lib.make_params(
        (layer.n, layer.c_in, layer.h, layer.w),
        (layer.n, layer.c_out if layer.per_channel else 1, layer.k),
        (layer.k, layer.c_out, layer.c_in // layer.groups, layer.kh, layer.kw),
        has_bias_bank=layer.bank,
        has_bias=layer.bias,
        stride=layer.stride,
        pads=layer.pads,
        dilation=layer.dilation,
        groups=layer.groups,
        activation=layer.activation,
    )


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("index", range(len(big_layers())))
def test_large_layers_and_thread_counts(index, threads):
    layer = big_layers()[index]
    x, coeff, weight, bank, bias = make_arrays(layer, np.random.default_rng(index))
    y = session(node_model(layer, weight, bank, bias), threads=threads).run(None, {"x": x, "coeff": coeff})[0]
    max_abs, rel = errors(y, torch_reference(layer, x, coeff, weight, bank, bias))
    record("fp32 large layers vs PyTorch float64", max_abs, rel)
    assert rel <= FP32_REL, (layer, threads, max_abs, rel)


def test_dynamic_batch_and_size_in_one_session():
    layer = Layer(n=1, c_in=12, c_out=20, h=8, w=8, k=3, kh=3, kw=3, pads=(1, 1, 1, 1), bias=True)
    _, _, weight, bank, bias = make_arrays(layer, np.random.default_rng(1))
    sess = session(node_model(layer, weight, bank, bias))
    rng = np.random.default_rng(2)
    for n, h, w in [(1, 8, 8), (5, 13, 6), (2, 3, 17), (1, 8, 8)]:
        shaped = Layer(**{**layer.__dict__, "n": n, "h": h, "w": w})
        x = rng.standard_normal((n, 12, h, w)).astype(np.float32)
        coeff = rng.uniform(0, 1, (n, 20, 3)).astype(np.float32)
        y = sess.run(None, {"x": x, "coeff": coeff})[0]
        assert errors(y, torch_reference(shaped, x, coeff, weight, bank, bias))[1] <= FP32_REL


def test_weight_as_graph_input_is_packed_per_call():
    layer = Layer(n=2, c_in=16, c_out=24, h=9, w=9, k=4, kh=3, kw=3, pads=(1, 1, 1, 1), bank=True)
    rng = np.random.default_rng(3)
    x, coeff, weight, bank, bias = make_arrays(layer, rng)
    sess = session(node_model(layer, weight, bank, bias, weight_as_input=True))
    for _ in range(2):  # a new weight each call must be used, not a cached packing
        weight = rng.standard_normal(weight.shape).astype(np.float32)
        y = sess.run(None, {"x": x, "coeff": coeff, "weight": weight})[0]
        assert errors(y, torch_reference(layer, x, coeff, weight, bank, bias))[1] <= FP32_REL


def isa_subprocess(isa):
    code = (
        "import numpy as np, sys\n"
        "sys.path.insert(0, 'tests')\n"
        "import test_ort_native_op as t\n"
        "worst = []\n"
        f"for seed in list(range(0, 220, 5)) + list(range(-1, -{len(big_layers()) + 1}, -1)):\n"
        "    layer = t.random_layer(seed) if seed >= 0 else t.big_layers()[-seed - 1]\n"
        "    x, c, w, bb, b = t.make_arrays(layer, np.random.default_rng(abs(seed)))\n"
        "    y = t.session(t.node_model(layer, w, bb, b)).run(None, {'x': x, 'coeff': c})[0]\n"
        "    worst.append(t.errors(y, t.torch_reference(layer, x, c, w, bb, b))[1])\n"
        "from dynet_deploy.op import onnxruntime_lib\n"
        "print(onnxruntime_lib.cpu_isa(), np.max(worst))\n"  # np.max keeps a NaN error (max() would drop it)
    )
    env = {k: v for k, v in os.environ.items() if k != "DYNET_CPU_ISA"}
    if isa is not None:
        env["DYNET_CPU_ISA"] = isa
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, timeout=600)


ISA_ORDER = ["generic", "avx2", "avx512"]


def best_cpu_isa():
    """The kernel's ISA with DYNET_CPU_ISA unset: the best this CPU supports."""
    env = {k: v for k, v in os.environ.items() if k != "DYNET_CPU_ISA"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    code = "from dynet_deploy.op import onnxruntime_lib; print(onnxruntime_lib.cpu_isa())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("isa", ISA_ORDER)
def test_every_isa_path_matches_pytorch(isa):
    """The kernel picks its ISA once per process; DYNET_CPU_ISA lowers it. An ISA the CPU lacks is skipped (the
    kernel would run a lower one), and the test asserts the ISA that actually ran."""
    best = best_cpu_isa()
    if ISA_ORDER.index(isa) > ISA_ORDER.index(best):
        pytest.skip(f"this CPU lacks {isa} (its best kernel ISA is {best}); the {isa} kernel cannot run here")
    proc = isa_subprocess(isa)
    assert proc.returncode == 0, proc.stderr[-2000:]
    used, worst = proc.stdout.strip().splitlines()[-1].split()
    worst = float(worst)
    print(f"\n[native op parity] DYNET_CPU_ISA={isa} (ran {used}): worst rel {worst:.3e}")
    assert used == isa, f"DYNET_CPU_ISA={isa} ran the {used} kernel"
    assert worst <= FP32_REL, (used, worst)  # False for NaN too


# ---- errors -------------------------------------------------------------------------------------------------------

SMALL = Layer(n=2, c_in=8, c_out=12, h=7, w=7, k=3, kh=3, kw=3, pads=(1, 1, 1, 1))


def small_arrays(layer=SMALL):
    return make_arrays(layer, np.random.default_rng(7))


def creation_error(model):
    with pytest.raises(Exception) as info:
        session(model)
    return str(info.value)


def run_error(model, feeds):
    sess = session(model)
    with pytest.raises(Exception) as info:
        sess.run(None, feeds)
    return str(info.value)


@pytest.mark.parametrize(
    "attrs, expected",
    [
        ({"stride_h": -1}, "attribute 'stride_h' = -1: must be >= 1"),
        ({"stride_w": 0}, "attribute 'stride_w' = 0: must be >= 1"),
        ({"pad_left": -2}, "attribute 'pad_left' = -2: must be >= 0"),
        ({"dilation_h": 0}, "attribute 'dilation_h' = 0: must be >= 1"),
        ({"groups": 0}, "attribute 'groups' = 0: must be >= 1"),
        ({"activation": 3}, "attribute 'activation' = 3: must be in [0, 2]"),
        ({"has_bias": 2}, "attribute 'has_bias' = 2: must be 0 or 1"),
        ({"stride_h": 2**40}, "attribute 'stride_h' = 1099511627776"),
        ({"groups": 5}, "groups=5 must divide C_out=12"),
        ({"stride_h": 1.5}, "attribute 'stride_h' must be a scalar int"),
    ],
)
def test_bad_attributes_fail_at_session_creation(attrs, expected):
    _, _, weight, bank, bias = small_arrays()
    message = creation_error(node_model(SMALL, weight, bank, bias, attrs=attrs))
    assert expected in message and "DyNetDynamicConv2d node 'dynconv'" in message, message


def test_input_count_must_match_has_attributes():
    _, _, weight, bank, bias = small_arrays()
    message = creation_error(node_model(SMALL, weight, bank, bias, attrs={"has_bias": 1}))
    assert "has 3 inputs, but has_bias_bank=0 and has_bias=1 call for 4" in message, message
    bias = np.zeros(12, np.float32)
    message = creation_error(node_model(SMALL, weight, bank, bias, attrs={"has_bias": 0}))
    assert "has 4 inputs" in message and "call for 3" in message, message


def test_missing_weight_is_refused():
    _, _, weight, bank, bias = small_arrays()
    message = creation_error(node_model(SMALL, weight, bank, bias, inputs=["x", "coeff"]))
    assert "DyNetDynamicConv2d" in message, message


def test_bad_constant_shapes_fail_at_session_creation():
    _, _, weight, _, _ = small_arrays()
    message = creation_error(node_model(SMALL, weight[0], None, None))
    assert "weight must be rank 5" in message, message
    message = creation_error(
        node_model(Layer(**{**SMALL.__dict__, "bank": True}), weight, np.zeros((2, 12), np.float32), None)
    )
    assert "bias_bank must be [K, C_out] = [3, 12], got [2, 12]" in message, message
    message = creation_error(node_model(SMALL, weight, None, np.zeros(11, np.float32)))
    assert "bias must be [C_out] = [12], got [11]" in message, message


def test_bad_runtime_shapes_are_errors_not_crashes():
    x, coeff, weight, bank, bias = small_arrays()
    model = node_model(SMALL, weight, bank, bias)
    model.graph.input[1].type.tensor_type.shape.Clear()  # let any coeff shape through onnxruntime's own checks
    model.graph.input[0].type.tensor_type.shape.Clear()
    message = run_error(model, {"x": x, "coeff": coeff[:, :, :2]})
    assert "coeff [2, 12, 2] must be [N=2, C_out or 1, K=3]" in message, message
    message = run_error(model, {"x": x, "coeff": coeff[:1]})
    assert "must be [N=2" in message, message
    message = run_error(model, {"x": x, "coeff": coeff[:, :5]})
    assert "coeff must be [N, C_out, K] or [N, 1, K]: C_c=5, C_out=12" in message, message
    message = run_error(model, {"x": x[:, :5], "coeff": coeff})
    assert "expects C_in = 8 * groups 1 = 8 input channels" in message, message
    assert "needs groups" not in message, message  # 5 channels: no groups value explains it
    # twice the weight's channels: the shapes of a grouped layer whose node lost its groups attribute
    message = run_error(model, {"x": np.concatenate([x, x], axis=1), "coeff": coeff})
    assert "x [2, 16, " in message and "needs groups=2 (the node's groups is 1, the default)" in message, message
    message = run_error(model, {"x": x[0], "coeff": coeff})
    assert "x must be rank 4" in message, message
    tiny = node_model(Layer(**{**SMALL.__dict__, "pads": (0, 0, 0, 0)}), weight, bank, bias)
    tiny.graph.input[0].type.tensor_type.shape.Clear()
    message = run_error(tiny, {"x": np.zeros((2, 8, 2, 2), np.float32), "coeff": coeff})
    assert "empty output" in message, message


def test_groups_not_dividing_input_channels_is_a_runtime_error():
    layer = Layer(n=1, c_in=6, c_out=12, h=5, w=5, k=2, kh=3, kw=3, groups=4)
    weight = np.ones((2, 12, 2, 3, 3), np.float32)  # C_out divisible by 4; C_in = 6 is not
    model = node_model(layer, weight, None, None)
    message = run_error(model, {"x": np.ones((1, 6, 5, 5), np.float32), "coeff": np.ones((1, 12, 2), np.float32)})
    assert "groups=4 must divide C_in=6" in message, message


def test_session_still_works_after_an_error():
    x, coeff, weight, bank, bias = small_arrays()
    model = node_model(SMALL, weight, bank, bias)
    model.graph.input[1].type.tensor_type.shape.Clear()
    sess = session(model)
    with pytest.raises(Exception):
        sess.run(None, {"x": x, "coeff": coeff[:, :, :1]})
    y = sess.run(None, {"x": x, "coeff": coeff})[0]
    assert errors(y, torch_reference(SMALL, x, coeff, weight, bank, bias))[1] <= FP32_REL


def test_missing_library_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(onnxruntime_lib, "search_dirs", lambda: [tmp_path])
    monkeypatch.setattr(onnxruntime_lib, "find_library", lambda name: None)
    with pytest.raises(MissingDependencyError, match="make plugins"):
        onnxruntime_lib.register(ort.SessionOptions())


def test_single_node_models_are_valid_onnx():
    _, _, weight, bank, bias = small_arrays()
    onnx.checker.check_model(node_model(SMALL, weight, bank, bias), full_check=False)


# ---- through OnnxruntimeRunner (what validate, demo and bench use) ------------------------------------------------


def module_layer(conv: DynamicConv2d, activation=0) -> Layer:
    return Layer(
        n=1,
        c_in=conv.in_channels,
        c_out=conv.out_channels,
        h=1,
        w=1,
        k=conv.num_bases,
        kh=conv.weight.shape[3],
        kw=conv.weight.shape[4],
        groups=conv.groups,
        per_channel=conv.coeff_channels != 1,
        bank=conv.bias_bank is not None,
        bias=conv.bias is not None,
        stride=tuple(conv.stride),
        pads=tuple(conv.pads),
        dilation=tuple(conv.dilation),
        activation=activation,
    )


def module_model(conv: DynamicConv2d, activation=0, dtype=TensorProto.FLOAT):
    layer = module_layer(conv, activation)
    arrays = [None if p is None else p.detach().numpy() for p in (conv.weight, conv.bias_bank, conv.bias)]
    return node_model(layer, *arrays, dtype=dtype)


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(coeff_mode="expert", bias_bank=True, bias=True),
        dict(bias=True),
        dict(groups=8, padding=1),
        dict(padding=(0, 1, 2, 1), dilation=2, bias_bank=True),
    ],
)
def test_runner_matches_dynamic_conv2d(kw):
    """The runner's fused graph against the PyTorch layer (loop form), 3/4/5-input nodes, batches 1, 3, 4."""
    torch.manual_seed(0)
    conv = DynamicConv2d(8, 8, kernel_size=3, mode="loop", **kw)
    with torch.no_grad():
        if conv.bias is not None:
            conv.bias.uniform_(-0.5, 0.5)
    runner = OnnxruntimeRunner(module_model(conv, activation=1), threads=2)
    assert runner.uses_custom_op and runner.custom_op_library.name == onnxruntime_lib.ORT_LIBRARY
    rng = np.random.default_rng(1)
    for n, (h, w) in [(1, (9, 11)), (3, (7, 7)), (4, (12, 5))]:
        x = rng.standard_normal((n, 8, h, w)).astype(np.float32)
        coeff = rng.uniform(0, 1, (n, conv.coeff_channels, conv.num_bases)).astype(np.float32)
        with torch.no_grad():
            ref = torch.relu(conv(torch.from_numpy(x), torch.from_numpy(coeff))).double().numpy()
        max_abs, rel = errors(runner.run({"x": x, "coeff": coeff})["y"], ref)
        record("fp32 runner vs DynamicConv2d", max_abs, rel)
        assert rel <= FP32_REL, (kw, n, max_abs, rel)


def test_runner_keeps_the_node_inputs_on_disk(tmp_path):
    conv = DynamicConv2d(4, 4, 3, padding=1, bias=True)
    path = tmp_path / "m.onnx"
    onnx.save(module_model(conv), str(path))
    runner = OnnxruntimeRunner(path)
    x = np.random.default_rng(0).standard_normal((2, 4, 6, 6)).astype(np.float32)
    runner.run({"x": x, "coeff": np.full((2, 4, 6), 0.5, np.float32)})
    assert list(onnx.load(str(path)).graph.node[0].input) == ["x", "coeff", "weight", "bias"]


def test_runner_runs_float16_graphs():
    torch.manual_seed(2)
    conv = DynamicConv2d(6, 10, 3, padding=1, bias_bank=True, mode="loop")
    runner = OnnxruntimeRunner(module_model(conv, dtype=TensorProto.FLOAT16))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 6, 8, 8)).astype(np.float16)
    coeff = rng.uniform(0, 1, (3, 10, conv.num_bases)).astype(np.float16)
    y = runner.run({"x": x, "coeff": coeff})["y"]
    assert y.dtype == np.float16
    layer = Layer(**{**module_layer(conv).__dict__, "n": 3, "h": 8, "w": 8})
    half = [p.detach().numpy().astype(np.float16) for p in (conv.weight, conv.bias_bank)]
    max_abs, rel = errors(y, torch_reference(layer, x, coeff, half[0], half[1], None))
    record("fp16 runner vs PyTorch float64", max_abs, rel)
    assert rel <= FP16_REL


def test_runner_input_errors_are_clear():
    conv = DynamicConv2d(4, 6, 3, padding=1)
    runner = OnnxruntimeRunner(module_model(conv))
    x = np.ones((2, 4, 6, 6), np.float32)
    c = np.ones((2, 6, 6), np.float32)
    with pytest.raises(RuntimeBackendError, match="rank 3"):
        runner.run({"x": x[0], "coeff": c})
    with pytest.raises(RuntimeBackendError, match="channels 5"):
        runner.run({"x": np.ones((2, 5, 6, 6), np.float32), "coeff": c})
    with pytest.raises(RuntimeBackendError, match="coeff"):
        runner.run({"x": x, "coeff": np.ones((3, 6, 6), np.float32)})


def test_runner_op_errors_come_back_as_runtime_backend_errors():
    conv = DynamicConv2d(4, 4, 3, padding=1, num_bases=3)
    model = module_model(conv)
    model.graph.input[1].type.tensor_type.shape.dim[2].Clear()  # K left open: only the op can see it is wrong
    runner = OnnxruntimeRunner(model)
    x = np.ones((1, 4, 5, 5), np.float32)
    with pytest.raises(RuntimeBackendError, match=r"coeff \[1, 4, 2\] must be \[N=1, C_out or 1, K=3\]"):
        runner.run({"x": x, "coeff": np.ones((1, 4, 2), np.float32)})
    with pytest.raises(RuntimeBackendError, match="attribute 'groups' = 0"):
        model.graph.node[0].attribute[[a.name for a in model.graph.node[0].attribute].index("groups")].i = 0
        OnnxruntimeRunner(model)


def test_runner_refuses_another_domain():
    conv = DynamicConv2d(4, 4, 3, padding=1)
    model = module_model(conv)
    model.graph.node[0].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(RuntimeBackendError, match="trt.plugins"):
        OnnxruntimeRunner(model)


def test_runner_without_the_library_says_how_to_build_it(monkeypatch):
    monkeypatch.setattr(onnxruntime_lib, "find_library", lambda name: None)
    with pytest.raises(RuntimeBackendError, match="make plugins"):
        OnnxruntimeRunner(module_model(DynamicConv2d(4, 4, 3, padding=1)))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
def test_cuda_execution_provider_matches_pytorch(dtype):
    """The library's CUDA execution-provider kernels (built where nvcc was found) on onnxruntime-gpu."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (needs onnxruntime-gpu and a GPU)")
    if plugin_lib.cuda_library_path() is None:
        pytest.skip("the library was built without the CUDA kernels (no nvcc at build time)")
    layer = big_layers()[0]
    x, coeff, weight, bank, bias = make_arrays(layer, np.random.default_rng(5))
    np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    arrays = [None if a is None else a.astype(np_dtype) for a in (x, coeff, weight, bank, bias)]
    so = ort.SessionOptions()
    onnxruntime_lib.register(so)
    sess = ort.InferenceSession(
        node_model(layer, *arrays[2:], dtype=dtype).SerializeToString(), so, providers=["CUDAExecutionProvider"]
    )
    assert sess.get_providers()[0] == "CUDAExecutionProvider"
    y = sess.run(None, {"x": arrays[0], "coeff": arrays[1]})[0]
    max_abs, rel = errors(y, torch_reference(layer, *arrays))
    record(f"CUDA EP {np.dtype(np_dtype).name} vs PyTorch float64", max_abs, rel)
    assert rel <= (CUDA_FP16_REL if dtype == TensorProto.FLOAT16 else FP32_REL), (max_abs, rel)


def test_absent_attributes_take_the_defaults():
    """A node without attributes is stride 1, no padding, dilation 1, groups 1, no activation, no biases."""
    layer = Layer(n=2, c_in=5, c_out=7, h=8, w=9, k=3, kh=3, kw=2)
    x, coeff, weight, _, _ = make_arrays(layer, np.random.default_rng(11))
    model = node_model(layer, weight, None, None)
    del model.graph.node[0].attribute[:]
    y = session(model).run(None, {"x": x, "coeff": coeff})[0]
    assert y.shape == (2, 7, 6, 8)
    assert errors(y, torch_reference(layer, x, coeff, weight, None, None))[1] <= FP32_REL


# ---- op version 2: spatial, residual, mean, a float16 / bfloat16 bank -----------------------------------------------

BANKS = {"fp32": np.float32, "fp16": np.float16, "bf16": ml_dtypes.bfloat16}
BANK_ELEMENT = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}


@dataclass
class V2:
    spatial: bool = False
    residual: bool = False
    mean: bool = False
    bank: str = "fp32"  # the weight bank's storage under float I/O


V2_ALL = {bank: V2(True, True, True, bank) for bank in BANKS}


def v2_arrays(layer: Layer, v2: V2, rng: np.random.Generator, dtype=np.float32) -> dict:
    """Every input of a version-2 call: make_arrays' five, the bank narrowed, spatial and residual as v2 says."""
    x, coeff, weight, bank, bias = make_arrays(layer, rng)
    arrays = dict(x=x, coeff=coeff, weight=weight, bias_bank=bank, bias=bias, spatial=None, residual=None)
    if v2.spatial:
        arrays["spatial"] = rng.uniform(0.0, 1.0, (layer.n, layer.kh * layer.kw)).astype(np.float32)
    if v2.residual:
        h_out, w_out = plugin_lib.output_hw(params_of(layer))
        arrays["residual"] = rng.standard_normal((layer.n, layer.c_out, h_out, w_out)).astype(np.float32)
    arrays = {k: None if a is None else a.astype(dtype) for k, a in arrays.items()}
    if dtype == np.float32:
        arrays["weight"] = arrays["weight"].astype(BANKS[v2.bank])
    return arrays


def v2_model(layer: Layer, arrays: dict, v2: V2, dtype=TensorProto.FLOAT, attrs=None, weight_as_input=False, version=2):
    """One node of op version `version` (plugin_version and the domain import), its optional inputs and outputs as
    v2 says; x, coeff, spatial and residual are graph inputs, the bank initializers (or weight a graph input)."""
    names = ["x", "coeff", "weight"] + [
        n for n in ("bias_bank", "bias", "spatial", "residual") if arrays.get(n) is not None
    ]
    outputs = ["y"] + (["mean"] if v2.mean else [])
    elem = {"x": dtype, "coeff": dtype, "spatial": dtype, "residual": dtype}
    shapes = {
        "x": ["N", layer.c_in, "H", "W"],
        "coeff": ["N", layer.c_out if layer.per_channel else 1, layer.k],
        "spatial": ["N", layer.kh * layer.kw],
        "residual": ["N", layer.c_out, None, None],
    }
    graph_inputs = [helper.make_tensor_value_info(n, elem[n], shapes[n]) for n in names if n in shapes]
    weight_elem = BANK_ELEMENT[v2.bank] if dtype == TensorProto.FLOAT else dtype
    inits = [numpy_helper.from_array(arrays[n], n) for n in ("bias_bank", "bias") if arrays.get(n) is not None]
    if weight_as_input:
        graph_inputs.append(helper.make_tensor_value_info("weight", weight_elem, list(arrays["weight"].shape)))
    else:
        inits.append(numpy_helper.from_array(arrays["weight"], "weight"))
    top, left, bottom, right = layer.pads
    node_attrs = dict(
        stride_h=layer.stride[0],
        stride_w=layer.stride[1],
        pad_top=top,
        pad_left=left,
        pad_bottom=bottom,
        pad_right=right,
        dilation_h=layer.dilation[0],
        dilation_w=layer.dilation[1],
        groups=layer.groups,
        activation=layer.activation,
        has_bias_bank=int(arrays.get("bias_bank") is not None),
        has_bias=int(arrays.get("bias") is not None),
        has_spatial=int(v2.spatial),
        has_residual=int(v2.residual),
        has_mean=int(v2.mean),
        plugin_version=str(version),
        plugin_namespace="",
    )
    node_attrs.update(attrs or {})
    node = helper.make_node(OP_TYPE, names, outputs, domain=OP_DOMAIN, name="dynconv", **node_attrs)
    graph_outputs = [helper.make_tensor_value_info("y", dtype, ["N", layer.c_out, None, None])]
    if v2.mean:
        graph_outputs.append(helper.make_tensor_value_info("mean", dtype, ["N", layer.c_out, 1, 1]))
    graph = helper.make_graph([node], "one_dynamic_conv_v2", graph_inputs, graph_outputs, initializer=inits)
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(OP_DOMAIN, version)]
    )


def v2_feeds(arrays: dict) -> dict:
    return {n: arrays[n] for n in ("x", "coeff", "spatial", "residual") if arrays.get(n) is not None}


def v2_run(layer: Layer, arrays: dict, v2: V2, threads=2, dtype=TensorProto.FLOAT):
    out = session(v2_model(layer, arrays, v2, dtype=dtype), threads=threads).run(None, v2_feeds(arrays))
    return out[0], (out[1] if v2.mean else None)


def v2_reference(layer: Layer, arrays: dict):
    """The op's Python reference in float64 on the widened bank: y and its channel mean."""

    def t(name):
        a = arrays.get(name)
        return None if a is None else torch.from_numpy(np.asarray(a).astype(np.float64))

    with torch.no_grad():
        y = reference.dynamic_conv(
            t("x"),
            t("coeff"),
            t("weight"),
            t("bias_bank"),
            t("bias"),
            layer.stride,
            layer.pads,
            layer.dilation,
            layer.groups,
            layer.activation,
            spatial=t("spatial"),
            residual=t("residual"),
        )
        return y.numpy(), reference.channel_mean(y).numpy()


def v2_cpp(layer: Layer, arrays: dict, v2: V2):
    """The C++ reference (dynet_conv_cpu) on the same call."""
    out = plugin_lib.cpu_reference_conv(
        arrays["x"],
        arrays["coeff"],
        arrays["weight"],
        arrays["bias_bank"],
        arrays["bias"],
        stride=layer.stride,
        pads=layer.pads,
        dilation=layer.dilation,
        groups=layer.groups,
        activation=layer.activation,
        spatial=arrays["spatial"],
        residual=arrays["residual"],
        mean=True,
    )
    return out


def v2_check(layer: Layer, arrays: dict, v2: V2, y, mean, key: str, rel_bound=FP32_REL) -> float:
    """y and mean against the C++ and the Python references; mean also against the mean of the op's own y (it is
    computed from the stored y). Returns the worst relative error."""
    ref_y, ref_mean = v2_reference(layer, arrays)
    cpp_y, cpp_mean = v2_cpp(layer, arrays, v2)
    worst = 0.0
    for name, target in (("C++ reference", cpp_y.astype(np.float64)), ("PyTorch float64", ref_y)):
        max_abs, rel = errors(y, target)
        record(f"{key} vs {name}", max_abs, rel)
        worst = max(worst, rel)
        assert rel <= rel_bound, f"{layer} {v2}: y vs {name} rel {rel:.3e} > {rel_bound} (max-abs {max_abs:.3e})"
    if v2.mean:
        assert mean.shape == (layer.n, layer.c_out, 1, 1)
        own = np.asarray(y, np.float64).mean(axis=(2, 3), keepdims=True)
        for name, target in (("its y", own), ("C++ reference", cpp_mean.astype(np.float64)), ("PyTorch", ref_mean)):
            max_abs = float(np.abs(np.asarray(mean, np.float64) - target).max())
            scale = max(1.0, float(np.abs(target).max()))
            record(f"{key} mean vs {name}, max-abs / max(1, max|ref|)", max_abs / scale, 0.0)
            assert max_abs <= rel_bound * scale, f"{layer} {v2}: mean vs {name} max-abs {max_abs:.3e}"
    return worst


def v2_of_seed(seed: int) -> V2:
    return V2(bool(seed & 1), bool(seed & 2), bool(seed & 4), sorted(BANKS)[seed % 3])


@pytest.mark.parametrize("seed", range(0, CORPUS_SIZE, 2))
def test_version_2_matches_cpp_reference_and_pytorch(seed):
    layer = random_layer(seed)
    v2 = v2_of_seed(seed // 2)
    arrays = v2_arrays(layer, v2, np.random.default_rng(40_000 + seed))
    y, mean = v2_run(layer, arrays, v2)
    assert y.dtype == np.float32
    v2_check(layer, arrays, v2, y, mean, "v2 fp32 corpus")


def v2_path_layers():
    """One layer per CPU loop nest (the path each takes is asserted), for version 2's epilogue and fusion."""
    return {
        "direct": Layer(n=2, c_in=12, c_out=12, h=13, w=19, k=3, kh=3, kw=3, groups=12, pads=(1, 1, 1, 1), bias=True),
        "direct-x2": Layer(
            n=1, c_in=6, c_out=12, h=11, w=9, k=2, kh=3, kw=3, groups=6, stride=(2, 2), pads=(1, 1, 1, 1), activation=2
        ),
        "gemm-small": Layer(n=2, c_in=8, c_out=12, h=9, w=11, k=3, kh=3, kw=3, pads=(1, 1, 1, 1), bank=True),
        "gemm-small-1x1": Layer(n=2, c_in=16, c_out=20, h=7, w=7, k=2, kh=1, kw=1, bias=True, activation=1),
        "gemm-small-1x1-narrow-image": Layer(n=1, c_in=12, c_out=10, h=3, w=5, k=2, kh=1, kw=1, per_channel=False),
        "gemm-implicit": Layer(
            n=2, c_in=8, c_out=20, h=20, w=37, k=2, kh=3, kw=3, pads=(1, 1, 1, 1), bias=True, activation=1
        ),
        "gemm-implicit-x2": Layer(
            n=1, c_in=12, c_out=16, h=40, w=70, k=3, kh=3, kw=3, stride=(2, 2), pads=(1, 1, 1, 1), per_channel=False
        ),
        "gemm-implicit-1x1": Layer(n=1, c_in=16, c_out=12, h=21, w=19, k=1, kh=1, kw=1, per_channel=False),
        "gemm-im2col": Layer(
            n=2, c_in=8, c_out=12, h=33, w=20, k=2, kh=3, kw=3, pads=(1, 1, 1, 1), bank=True, activation=2
        ),
        "narrow": Layer(n=2, c_in=12, c_out=12, h=9, w=11, k=3, kh=3, kw=3, groups=2, pads=(1, 1, 1, 1), bias=True),
        "narrow-x2": Layer(
            n=2,
            c_in=12,
            c_out=16,
            h=17,
            w=19,
            k=2,
            kh=3,
            kw=3,
            groups=2,
            stride=(2, 2),
            pads=(1, 0, 1, 2),
            activation=1,
        ),
        "narrow-blocks": Layer(
            n=1, c_in=10, c_out=14, h=30, w=29, k=2, kh=3, kw=3, groups=2, pads=(1, 1, 1, 1), bank=True, activation=2
        ),
    }


def v2_path_cases():
    """(path layer, features) pairs: everything at once in every bank type, and each feature alone in fp32."""
    alone = [V2(spatial=True), V2(residual=True), V2(mean=True)]
    return [(name, v2) for name in v2_path_layers() for v2 in [*V2_ALL.values(), *alone]]


@pytest.mark.parametrize("name", sorted(v2_path_layers()))
def test_version_2_path_layers_take_their_path(name):
    expected = next(p for p in ("direct", "gemm-small", "gemm-implicit", "gemm-im2col", "narrow") if name.startswith(p))
    assert onnxruntime_lib.cpu_path(params_of(v2_path_layers()[name])) == expected, name


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("case", range(len(v2_path_cases())))
def test_version_2_on_every_path(case, threads):
    name, v2 = v2_path_cases()[case]
    layer = v2_path_layers()[name]
    arrays = v2_arrays(layer, v2, np.random.default_rng(case))
    y, mean = v2_run(layer, arrays, v2, threads=threads)
    v2_check(layer, arrays, v2, y, mean, f"v2 paths ({threads} threads)")


def v2_isa_worker() -> None:
    """Every path case in this process (its ISA fixed by DYNET_CPU_ISA); prints the ISA, the paths and the worst
    relative error as one JSON line (an assertion failure raises)."""
    import json

    worst = 0.0
    for case, (name, v2) in enumerate(v2_path_cases()):
        layer = v2_path_layers()[name]
        arrays = v2_arrays(layer, v2, np.random.default_rng(case))
        y, mean = v2_run(layer, arrays, v2)
        worst = max(worst, v2_check(layer, arrays, v2, y, mean, "v2 per ISA"))
    paths = {name: onnxruntime_lib.cpu_path(params_of(layer)) for name, layer in v2_path_layers().items()}
    print(json.dumps({"isa": onnxruntime_lib.cpu_isa(), "paths": paths, "worst": worst}))


@pytest.mark.parametrize("isa", ISA_ORDER)
def test_version_2_every_path_on_every_isa(isa):
    """Spatial, residual, mean and the 16-bit banks (F16C / shift widening on AVX2 and AVX-512, portable code on
    generic) on every loop nest, per ISA; an ISA the CPU lacks is skipped with the reason."""
    import json

    best = best_cpu_isa()
    if ISA_ORDER.index(isa) > ISA_ORDER.index(best):
        pytest.skip(f"this CPU lacks {isa} (its best kernel ISA is {best}); the {isa} kernel cannot run here")
    env = {k: v for k, v in os.environ.items() if k != "DYNET_CPU_ISA"}
    env["DYNET_CPU_ISA"] = isa
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    code = "import sys; sys.path.insert(0, 'tests'); import test_ort_native_op as t; t.v2_isa_worker()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n[native op v2] DYNET_CPU_ISA={isa} (ran {out['isa']}): worst rel {out['worst']:.3e}")
    assert out["isa"] == isa, f"DYNET_CPU_ISA={isa} ran the {out['isa']} kernel"
    assert set(out["paths"].values()) == {"direct", "gemm-small", "gemm-implicit", "gemm-im2col", "narrow"}, out
    assert out["worst"] <= FP32_REL


@pytest.mark.parametrize("seed", range(0, 60, 3))
def test_version_2_fp16_graphs_match_pytorch(seed):
    """A float16 graph of version 2: spatial, residual and mean in float16 (computed in fp32, rounded once; the mean
    from the stored float16 y)."""
    layer = random_layer(seed)
    v2 = V2(True, True, True)
    arrays = v2_arrays(layer, v2, np.random.default_rng(50_000 + seed), dtype=np.float16)
    y, mean = v2_run(layer, arrays, v2, dtype=TensorProto.FLOAT16)
    assert y.dtype == np.float16 and mean.dtype == np.float16
    ref_y, _ = v2_reference(layer, arrays)
    max_abs, rel = errors(y, ref_y)
    scaled = max_abs / max(1.0, float(np.abs(ref_y).max()))
    record("v2 fp16 vs PyTorch float64, max-abs / max(1, max|ref|)", scaled, rel)
    assert rel <= FP16_REL and scaled <= FP16_ABS, f"{layer}: rel {rel:.3e}, max-abs {max_abs:.3e}"
    own = np.asarray(y, np.float64).mean(axis=(2, 3), keepdims=True)  # the stored y's mean, rounded to fp16 once
    np.testing.assert_allclose(np.asarray(mean, np.float64), own, rtol=2**-10, atol=2**-24)


def test_version_2_without_new_features_equals_version_1():
    """A version-2 node that uses nothing new computes what the version-1 node does, bit for bit."""
    layer = big_layers()[0]
    arrays = v2_arrays(layer, V2(), np.random.default_rng(9))
    y2, _ = v2_run(layer, arrays, V2())
    y1 = session(node_model(layer, arrays["weight"], arrays["bias_bank"], arrays["bias"])).run(
        None, {"x": arrays["x"], "coeff": arrays["coeff"]}
    )[0]
    np.testing.assert_array_equal(y1, y2)


def test_version_2_bank_as_graph_input_is_packed_per_call():
    layer = Layer(n=2, c_in=16, c_out=24, h=9, w=9, k=4, kh=3, kw=3, pads=(1, 1, 1, 1), bank=True)
    rng = np.random.default_rng(12)
    v2 = V2(spatial=True, bank="fp16")  # onnxruntime's Python feeds take no bfloat16 array; initializers do
    arrays = v2_arrays(layer, v2, rng)
    sess = session(v2_model(layer, arrays, v2, weight_as_input=True))
    for _ in range(2):  # a new bank each call must be used, not a cached packing
        arrays["weight"] = rng.standard_normal(arrays["weight"].shape).astype(np.float16)
        y = sess.run(None, {**v2_feeds(arrays), "weight": arrays["weight"]})[0]
        assert errors(y, v2_reference(layer, arrays)[0])[1] <= FP32_REL


@pytest.mark.parametrize("flag", ["has_spatial", "has_residual", "has_mean"])
@pytest.mark.parametrize("value", [0, 1])
def test_version_1_node_refuses_version_2_attributes(flag, value):
    """A version-1 node (plugin_version "1" or absent) carries none of version 2's attributes, not even at 0."""
    _, _, weight, bank, bias = small_arrays()
    message = creation_error(node_model(SMALL, weight, bank, bias, attrs={flag: value}))
    assert "DyNetDynamicConv2d node 'dynconv'" in message, message
    assert f"attribute '{flag}' is an op version 2 attribute, but the node is op version 1" in message, message
    assert 'set plugin_version "2" and import domain trt.plugins at version 2' in message, message
    model = node_model(SMALL, weight, bank, bias, attrs={flag: value})
    del model.graph.node[0].attribute[[a.name for a in model.graph.node[0].attribute].index("plugin_version")]
    assert "is an op version 2 attribute" in creation_error(model)  # absent plugin_version means "1"


@pytest.mark.parametrize("bank", ["fp16", "bf16"])
def test_version_1_node_refuses_a_narrowed_bank(bank):
    arrays = v2_arrays(SMALL, V2(bank=bank), np.random.default_rng(1))
    message = creation_error(v2_model(SMALL, arrays, V2(bank=bank), version=1, attrs={}))
    assert "is an op version 2 attribute" in message, message  # the version-2 flags at 0 come first
    model = v2_model(SMALL, arrays, V2(bank=bank), version=1)
    attrs = model.graph.node[0].attribute
    for flag in ("has_spatial", "has_residual", "has_mean"):
        del attrs[[a.name for a in attrs].index(flag)]
    message = creation_error(model)
    name = {"fp16": "float16", "bf16": "bfloat16"}[bank]
    assert f"weight (input 2) is a {name} bank under float I/O: a reduced-precision bank is op version 2" in message


def test_unknown_plugin_version_is_refused():
    _, _, weight, bank, bias = small_arrays()
    message = creation_error(node_model(SMALL, weight, bank, bias, attrs={"plugin_version": "3"}))
    assert "plugin_version '3' is not an op version this library implements (1 to 2)" in message, message


def test_version_2_weight_of_another_type_is_refused():
    arrays = v2_arrays(SMALL, V2(), np.random.default_rng(2))
    arrays["weight"] = arrays["weight"].astype(np.int32)
    model = v2_model(SMALL, arrays, V2())
    model.graph.initializer[-1].CopyFrom(numpy_helper.from_array(arrays["weight"], "weight"))
    message = creation_error(model)
    assert "weight (input 2) must be float, or a float16 / bfloat16 bank" in message and "got int32" in message


def test_version_2_input_and_output_counts_must_match_the_flags():
    v2 = V2(True, True, True)
    arrays = v2_arrays(SMALL, v2, np.random.default_rng(3))
    model = v2_model(SMALL, arrays, v2, attrs={"has_residual": 0})
    message = creation_error(model)
    assert "has 5 inputs, but has_bias_bank=0, has_bias=0, has_spatial=1 and has_residual=0 call for 4" in message
    model = v2_model(SMALL, arrays, v2, attrs={"has_mean": 0})
    message = creation_error(model)
    assert "has 2 outputs, but has_mean=0 calls for 1 (y)" in message, message


def test_version_2_wrong_spatial_and_residual_shapes_are_runtime_errors():
    v2 = V2(True, True, True)
    arrays = v2_arrays(SMALL, v2, np.random.default_rng(4))
    model = v2_model(SMALL, arrays, v2)
    for i in (2, 3):
        model.graph.input[i].type.tensor_type.shape.Clear()  # let any shape through onnxruntime's own checks
    feeds = v2_feeds(arrays)
    message = run_error(model, {**feeds, "spatial": feeds["spatial"].reshape(2, 3, 3)})
    assert "spatial must be [N, kH*kW] = [2, 9], got [2, 3, 3]" in message, message
    message = run_error(model, {**feeds, "spatial": feeds["spatial"][:, :8]})
    assert "spatial must be [N, kH*kW] = [2, 9], got [2, 8]" in message, message
    message = run_error(model, {**feeds, "residual": feeds["residual"][:, :, :6]})
    assert "residual must be [N, C_out, H_out, W_out] = [2, 12, 7, 7] (y's shape), got [2, 12, 6, 7]" in message
    message = run_error(model, {**feeds, "residual": feeds["residual"][:1]})
    assert "got [1, 12, 7, 7]" in message, message
    y, mean = session(model).run(None, feeds)  # and the right shapes still run
    v2_check(SMALL, arrays, v2, y, mean, "v2 after shape errors")
