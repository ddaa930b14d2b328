"""The native onnxruntime op's CPU kernel on non-finite inputs and on large images.

1. NaN and +-Inf parity: inputs with NaN, +Inf and -Inf pixels through every CPU loop nest (direct, GEMM with the
   kernels fused in the tasks, implicit GEMM on the padded input, GEMM on im2col panels, narrow groups with whole
   images or lane blocks per task), every ISA the CPU has
   (DYNET_CPU_ISA, one process per ISA, the ISA used asserted; an ISA the CPU lacks is skipped with the reason),
   every activation, fp32 and fp16. The contract is the op's reference (dynet_deploy.op.reference, PyTorch):
   NaN stays NaN through every activation, relu(+inf) = +inf, relu(-inf) = 0, relu6(+inf) = 6, relu6(-inf) = 0.
   Outputs must be NaN / +inf / -inf exactly where the reference's are, and the finite rest within tolerance.
   Op version 2's residual the same way: NaN, +Inf and -Inf residual values (added before the activation) through
   every loop nest, ISA, activation, fp32 and fp16, y and its mean output NaN / +-inf exactly where the reference's
   are.
2. A large-image corpus (H, W 24-64, N up to 16, K = 1 in half the layers; grouped and depthwise 3x3, 1x1 stride 2,
   dense 1x1 and 3x3) that reaches the implicit-GEMM path of 224x224 models, fp32 and fp16 against PyTorch float64.

Tolerances: fp32 rel ||out - ref|| / ||ref|| <= 1e-5; fp16 (inputs rounded to fp16, computed in fp32, the output
rounded once) rel <= 1e-3 and max-abs <= 1e-3 * max(1, max|ref|). Measured worst over the large corpus: rel 2.2e-4,
max-abs 4.2e-4 of max(1, max|ref|) (rounding the output alone bounds that by 2^-11 = 4.9e-4); printed at the end of
the module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

from dynet_deploy.op import native as plugin_lib
from dynet_deploy.op import onnxruntime_lib

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_ort_native_op import (  # noqa: E402
    V2,
    Layer,
    errors,
    make_arrays,
    node_model,
    params_of,
    session,
    torch_reference,
    v2_arrays,
    v2_feeds,
    v2_model,
    v2_reference,
)

ort = pytest.importorskip("onnxruntime")

FP32_REL = 1e-5
FP16_REL, FP16_ABS = 1e-3, 1e-3
ISAS = ["generic", "avx2", "avx512"]
ACTIVATIONS = {0: "none", 1: "relu", 2: "relu6"}
SPECIALS = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def native_library():
    path = onnxruntime_lib.library_path()
    if path is None:
        pytest.skip(
            f"{onnxruntime_lib.ORT_LIBRARY} not built (no onnxruntime headers at build time; run 'make plugins')"
        )
    plugin_lib.ensure_built()
    return path


# ---- 1. NaN and Inf --------------------------------------------------------------------------------------------

# One layer per loop nest (the path each takes is asserted, so a change of the kernel's thresholds shows here).
PATH_LAYERS = {
    "direct": Layer(n=2, c_in=12, c_out=12, h=13, w=19, k=3, kh=3, kw=3, groups=12, pads=(1, 1, 1, 1), bias=True),
    "direct-x2": Layer(n=1, c_in=6, c_out=12, h=11, w=9, k=2, kh=3, kw=3, groups=6, stride=(2, 2), pads=(1, 1, 1, 1)),
    "gemm-small": Layer(n=2, c_in=8, c_out=12, h=9, w=11, k=3, kh=3, kw=3, pads=(1, 1, 1, 1), bank=True),
    "gemm-implicit": Layer(n=2, c_in=8, c_out=20, h=20, w=37, k=2, kh=3, kw=3, pads=(1, 1, 1, 1), bias=True),
    "gemm-implicit-1x1": Layer(n=1, c_in=16, c_out=12, h=21, w=19, k=1, kh=1, kw=1, per_channel=False),
    "gemm-im2col": Layer(n=2, c_in=8, c_out=12, h=33, w=20, k=2, kh=3, kw=3, pads=(1, 1, 1, 1), bank=True),
    "gemm-small-1x1": Layer(n=2, c_in=16, c_out=20, h=7, w=7, k=2, kh=1, kw=1, bias=True),
    "gemm-small-1x1-narrow-image": Layer(n=1, c_in=12, c_out=10, h=3, w=5, k=2, kh=1, kw=1),
    "narrow": Layer(n=2, c_in=12, c_out=12, h=9, w=11, k=3, kh=3, kw=3, groups=2, pads=(1, 1, 1, 1), bias=True),
    "narrow-x2": Layer(n=2, c_in=12, c_out=16, h=17, w=19, k=2, kh=3, kw=3, groups=2, stride=(2, 2), pads=(1, 0, 1, 2)),
    "narrow-blocks": Layer(n=1, c_in=10, c_out=14, h=30, w=29, k=2, kh=3, kw=3, groups=2, pads=(1, 1, 1, 1), bank=True),
}
EXPECTED_PATH = {
    "direct": "direct",
    "direct-x2": "direct",
    "gemm-small": "gemm-small",
    "gemm-implicit": "gemm-implicit",
    "gemm-implicit-1x1": "gemm-implicit",
    "gemm-im2col": "gemm-im2col",
    "gemm-small-1x1": "gemm-small",
    "gemm-small-1x1-narrow-image": "gemm-small",
    "narrow": "narrow",
    "narrow-x2": "narrow",
    "narrow-blocks": "narrow",
}
DTYPES = ("fp32", "fp16")


def special_case(name: str, activation: int, special: str, dtype: str):
    """Layer and inputs of one case: random x with about 2 % of its pixels (and the corners, which sit at tile and
    row edges) set to the special value."""
    base = PATH_LAYERS[name]
    layer = Layer(**{**base.__dict__, "activation": activation})
    seed = sorted(PATH_LAYERS).index(name) * 100 + activation * 10 + sorted(SPECIALS).index(special)
    rng = np.random.default_rng(seed)
    x, coeff, weight, bank, bias = make_arrays(layer, rng)
    hit = rng.random(x.shape) < 0.02
    hit[:, :, 0, 0] = hit[:, :, -1, -1] = True
    x[hit] = SPECIALS[special]
    arrays = [x, coeff, weight, bank, bias]
    if dtype == "fp16":
        arrays = [None if a is None else a.astype(np.float16) for a in arrays]
    return layer, arrays


def run_case(layer: Layer, arrays, dtype: str):
    x, coeff, weight, bank, bias = arrays
    onnx_dtype = TensorProto.FLOAT16 if dtype == "fp16" else TensorProto.FLOAT
    model = node_model(layer, weight, bank, bias, dtype=onnx_dtype)
    return session(model).run(None, {"x": x, "coeff": coeff})[0]


def all_cases():
    return [(name, act, sp, dt) for name in PATH_LAYERS for act in ACTIVATIONS for sp in SPECIALS for dt in DTYPES]


RESIDUAL = V2(residual=True, mean=True)


def residual_case(name: str, activation: int, special: str, dtype: str):
    """Op version 2: finite x, a residual with about 2 % of its values (and the corners) set to the special value."""
    base = PATH_LAYERS[name]
    layer = Layer(**{**base.__dict__, "activation": activation})
    seed = 7_000 + sorted(PATH_LAYERS).index(name) * 100 + activation * 10 + sorted(SPECIALS).index(special)
    rng = np.random.default_rng(seed)
    arrays = v2_arrays(layer, RESIDUAL, rng, dtype=np.float16 if dtype == "fp16" else np.float32)
    residual = arrays["residual"]
    hit = rng.random(residual.shape) < 0.02
    hit[:, :, 0, 0] = hit[:, :, -1, -1] = True
    residual[hit] = SPECIALS[special]
    return layer, arrays


def run_residual_case(layer: Layer, arrays, dtype: str):
    onnx_dtype = TensorProto.FLOAT16 if dtype == "fp16" else TensorProto.FLOAT
    return session(v2_model(layer, arrays, RESIDUAL, dtype=onnx_dtype)).run(None, v2_feeds(arrays))


def worker(out_dir: str) -> None:
    """Runs every special-value case in this process (its ISA fixed by DYNET_CPU_ISA) into out_dir."""
    out = {}
    for name, act, sp, dt in all_cases():
        layer, arrays = special_case(name, act, sp, dt)
        out[f"{name}|{act}|{sp}|{dt}"] = run_case(layer, arrays, dt)
        layer, arrays = residual_case(name, act, sp, dt)
        out[f"residual|{name}|{act}|{sp}|{dt}|y"], out[f"residual|{name}|{act}|{sp}|{dt}|mean"] = run_residual_case(
            layer, arrays, dt
        )
    np.savez(os.path.join(out_dir, "outputs.npz"), **out)
    paths = {name: onnxruntime_lib.cpu_path(params_of(layer)) for name, layer in PATH_LAYERS.items()}
    Path(out_dir, "meta.json").write_text(json.dumps({"isa": onnxruntime_lib.cpu_isa(), "paths": paths}))


def run_isa_process(isa: str | None, out_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DYNET_CPU_ISA"}
    if isa is not None:
        env["DYNET_CPU_ISA"] = isa
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    code = f"import sys; sys.path.insert(0, 'tests'); import test_native_nan_corpus as t; t.worker({str(out_dir)!r})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)


@pytest.fixture(scope="module")
def best_isa():
    """The best ISA of this CPU: what the kernel picks with DYNET_CPU_ISA unset."""
    code = "from dynet_deploy.op import onnxruntime_lib; print(onnxruntime_lib.cpu_isa())"
    env = {k: v for k, v in os.environ.items() if k != "DYNET_CPU_ISA"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def skip_unless_cpu_has(isa: str, best: str) -> None:
    if ISAS.index(isa) > ISAS.index(best):
        pytest.skip(f"this CPU lacks {isa} (its best kernel ISA is {best}); the {isa} kernel cannot run here")


ISA_RUNS = {}


@pytest.fixture(scope="module")
def isa_run(tmp_path_factory, best_isa):
    """Outputs of every special-value case per ISA, one process each (the kernel picks its ISA once per process)."""

    def get(isa):
        skip_unless_cpu_has(isa, best_isa)
        if isa not in ISA_RUNS:
            out_dir = tmp_path_factory.mktemp(f"isa_{isa}")
            proc = run_isa_process(isa, out_dir)
            assert proc.returncode == 0, proc.stderr[-3000:]
            meta = json.loads(Path(out_dir, "meta.json").read_text())
            with np.load(Path(out_dir, "outputs.npz")) as data:
                ISA_RUNS[isa] = (meta, {key: data[key] for key in data.files})
        return ISA_RUNS[isa]

    return get


def compare_special(y, ref, dtype: str) -> list[str]:
    """What differs between y and ref: the positions of NaN, +inf, -inf, and the error of the finite rest."""
    problems = []
    y = np.asarray(y, np.float64)
    for what, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        want, got = test(ref), test(y)
        if not np.array_equal(want, got):
            problems.append(
                f"{what}: {int(want.sum())} expected, {int(got.sum())} out, {int((want != got).sum())} differ"
            )
    finite = np.isfinite(ref) & np.isfinite(y)
    if finite.any():
        max_abs, rel = errors(y[finite], ref[finite])
        bound_rel = FP16_REL if dtype == "fp16" else FP32_REL
        bound_abs = FP16_ABS * max(1.0, float(np.abs(ref[finite]).max())) if dtype == "fp16" else np.inf
        if not (rel <= bound_rel and max_abs <= bound_abs):
            problems.append(f"finite part: rel {rel:.3e} (bound {bound_rel}), max-abs {max_abs:.3e}")
    return problems


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("special", sorted(SPECIALS))
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS), ids=lambda a: ACTIVATIONS[a])
@pytest.mark.parametrize("name", sorted(PATH_LAYERS))
@pytest.mark.parametrize("isa", ISAS)
def test_non_finite_inputs_propagate_like_pytorch(isa, name, activation, special, dtype, isa_run):
    meta, outputs = isa_run(isa)
    assert meta["isa"] == isa, f"DYNET_CPU_ISA={isa} ran the {meta['isa']} kernel"
    assert meta["paths"][name] == EXPECTED_PATH[name], (name, meta["paths"][name])
    layer, arrays = special_case(name, activation, special, dtype)
    y = outputs[f"{name}|{activation}|{special}|{dtype}"]
    ref = torch_reference(layer, *arrays)
    x = np.asarray(arrays[0], np.float64)
    assert (np.isnan(x) if special == "nan" else x == SPECIALS[special]).any(), "the case must feed the op its value"
    problems = compare_special(y, ref, dtype)
    assert not problems, f"{isa} {name} {ACTIVATIONS[activation]} {special} {dtype}: " + "; ".join(problems)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("special", sorted(SPECIALS))
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS), ids=lambda a: ACTIVATIONS[a])
@pytest.mark.parametrize("name", sorted(PATH_LAYERS))
@pytest.mark.parametrize("isa", ISAS)
def test_non_finite_residual_propagates_like_pytorch(isa, name, activation, special, dtype, isa_run):
    """The residual is added before the activation: its NaN survives relu / relu6, its +-inf is clamped like any
    pre-activation value, and the channel mean (of the stored y) is NaN / +-inf where the reference's is."""
    meta, outputs = isa_run(isa)
    assert meta["isa"] == isa, f"DYNET_CPU_ISA={isa} ran the {meta['isa']} kernel"
    layer, arrays = residual_case(name, activation, special, dtype)
    key = f"residual|{name}|{activation}|{special}|{dtype}"
    ref_y, ref_mean = v2_reference(layer, arrays)
    assert not np.isfinite(ref_y).all() or special != "nan", "the case must put NaN into y"
    for what, got, want in (("y", outputs[f"{key}|y"], ref_y), ("mean", outputs[f"{key}|mean"], ref_mean)):
        problems = compare_special(got, want, dtype)
        assert not problems, f"{isa} {name} {ACTIVATIONS[activation]} {special} {dtype} {what}: " + "; ".join(problems)


def test_reference_contract_for_non_finite_values():
    """The contract the kernels are held to, from PyTorch itself: NaN survives every activation."""
    import torch

    from dynet_deploy.op import reference

    v = torch.tensor([np.nan, np.inf, -np.inf, -1.0, 3.0, 7.0], dtype=torch.float64)
    expected = {
        0: [np.nan, np.inf, -np.inf, -1.0, 3.0, 7.0],
        1: [np.nan, np.inf, 0.0, 0.0, 3.0, 7.0],
        2: [np.nan, 6.0, 0.0, 0.0, 3.0, 6.0],
    }
    for act, want in expected.items():
        got = reference.activate(v, act).numpy()
        np.testing.assert_array_equal(got, np.array(want), err_msg=ACTIVATIONS[act])
    np.testing.assert_array_equal(torch.nn.functional.relu6(v).numpy(), np.array(expected[2]))


# ---- 2. large-image corpus -------------------------------------------------------------------------------------

LARGE_CORPUS = 24


def large_layer(seed: int) -> Layer:
    """Kinds cycle: 0 grouped 3x3, 1 depthwise 3x3 (multiplier 1 or 2), 2 dense 1x1 stride 2, 3 dense 3x3 or 1x1."""
    rng = np.random.default_rng(500 + seed)
    kind = seed % 4
    h, w = int(rng.integers(24, 65)), int(rng.integers(24, 65))
    n = int(rng.choice([1, 2, 4, 16])) if kind != 3 else int(rng.choice([1, 2, 8]))
    k = 1 if seed % 8 < 4 else int(rng.integers(2, 5))
    stride = (1, 1) if rng.random() < 0.5 else (2, 2)
    if kind == 0:
        groups, cin_g, cout_g, ks = int(rng.integers(2, 5)), int(rng.integers(2, 9)), int(rng.integers(4, 13)), 3
    elif kind == 1:
        groups, cin_g, cout_g, ks = int(rng.integers(4, 25)), 1, int(rng.choice([1, 2])), 3
    elif kind == 2:
        groups, cin_g, cout_g, ks, stride = 1, int(rng.integers(8, 33)), int(rng.integers(8, 41)), 1, (2, 2)
    else:
        groups, cin_g, cout_g, ks = 1, int(rng.integers(8, 25)), int(rng.integers(8, 33)), int(rng.choice([1, 3]))
        stride = (1, 1)
    pad = ks // 2
    return Layer(
        n=n,
        c_in=groups * cin_g,
        c_out=groups * cout_g,
        h=h,
        w=w,
        k=k,
        kh=ks,
        kw=ks,
        groups=groups,
        per_channel=bool(rng.integers(0, 2)),
        bank=bool(rng.integers(0, 2)),
        bias=bool(rng.integers(0, 2)),
        stride=stride,
        pads=(pad, pad, pad, pad),
        activation=int(rng.integers(0, 3)),
    )


WORST = {}


@pytest.fixture(scope="module", autouse=True)
def report_worst():
    yield
    for key, (max_abs, rel, scaled) in sorted(WORST.items()):
        print(
            f"\n[native large corpus] {key}: worst max-abs {max_abs:.3e} ({scaled:.3e} of max(1, max|ref|)), "
            f"worst rel {rel:.3e}"
        )


def record(key, max_abs, rel, scaled):
    old = WORST.get(key, (0.0, 0.0, 0.0))
    WORST[key] = (max(old[0], max_abs), max(old[1], rel), max(old[2], scaled))


def test_large_corpus_reaches_every_path():
    """The corpus exists to reach the large-image loop nests; it must keep reaching them."""
    paths = {onnxruntime_lib.cpu_path(params_of(large_layer(s))) for s in range(LARGE_CORPUS)}
    assert {"direct", "gemm-implicit", "gemm-im2col"} <= paths, paths


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(LARGE_CORPUS))
def test_large_images_match_pytorch(seed, dtype):
    layer = large_layer(seed)
    rng = np.random.default_rng(30_000 + seed)
    arrays = list(make_arrays(layer, rng))
    if dtype == "fp16":
        arrays = [None if a is None else a.astype(np.float16) for a in arrays]
    y = run_case(layer, arrays, dtype)
    ref = torch_reference(layer, *arrays)
    path = onnxruntime_lib.cpu_path(params_of(layer))
    assert y.shape == ref.shape and y.dtype == (np.float16 if dtype == "fp16" else np.float32)
    assert np.isfinite(y).all(), f"{layer} ({path}): non-finite output from finite input"
    max_abs, rel = errors(y, ref)
    scaled = max_abs / max(1.0, float(np.abs(ref).max()))
    record(f"{dtype} {path}", max_abs, rel, scaled)
    if dtype == "fp16":
        assert rel <= FP16_REL and scaled <= FP16_ABS, f"{layer} ({path}): rel {rel:.3e}, max-abs {max_abs:.3e}"
    else:
        assert rel <= FP32_REL, f"{layer} ({path}): rel {rel:.3e}, max-abs {max_abs:.3e}"
