"""scripts/gpu_check.py's judging logic, on the CPU: a NaN, an unwritten (NaN-filled) element, a wrong kernel output
or a wrong shape is a failure; a run cut by its time budget, or with fewer checks than the minimum for a tactic x
dtype, is INCOMPLETE with a non-zero exit; only documented refusals are excused; the limit shapes are compared on
every row; the script's references agree with an independent per-sample loop. Op version 2: the script's reference
(spatial, residual, mean) agrees with the loop and the C++ reference of every version, its version-2 part is
INCOMPLETE when cut or short of checks, and its version-2 call passes every check of the library up to the launch.
The dry run itself (which also runs the model-level code through the custom op's CPU path) is run by
tests/test_plugin_build.py."""

from __future__ import annotations

import importlib.util
import random
import sys

import pytest
import torch

from dynet_deploy.op import native as plugin_lib
from dynet_deploy.op.native import REPO_ROOT, cpu_library_path


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", REPO_ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script is executed
    spec.loader.exec_module(module)
    return module


def _ref():
    return torch.randn(2, 4, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_exact_output_passes(gc):
    r = gc.Report()
    ref = _ref()
    r.compare("exact", ref.float(), ref, gc.TOL[torch.float32], "two_step", "float32")
    assert r.verdict() == ("PASS", 0) and r.per_tactic == {("two_step", "float32"): 1}


@pytest.mark.parametrize("bad", ["nan", "unwritten", "wrong", "shape", "inf"])
def test_bad_outputs_fail(gc, bad):
    ref = _ref()
    out = ref.float().clone()
    if bad == "nan":
        out[1, 2, 3, 4] = float("nan")
    elif bad == "unwritten":  # the kernel left the NaN pre-fill in one row
        out[0, 0, 5] = float("nan")
    elif bad == "wrong":  # a kernel off by 0.1 % everywhere: above the fp32 tolerance of 1e-5
        out = out * 1.001
    elif bad == "shape":
        out = out[:, :, :5]
    else:
        out[0, 0, 0, 0] = float("inf")
    r = gc.Report()
    r.compare(bad, out, ref, gc.TOL[torch.float32], "two_step", "float32")
    assert r.verdict() == ("FAIL", gc.EXIT_FAIL), r.failures


def test_correctness_run_cut_by_its_budget_is_incomplete(gc):
    r = gc.Report()
    gc.check_correctness(gc.SYNTHETIC_LAYERS, r, 0, budget_s=-1.0)
    assert r.verdict() == ("INCOMPLETE", gc.EXIT_INCOMPLETE) and gc.EXIT_INCOMPLETE != 0
    assert "0 of" in r.incomplete[0]


def test_limit_run_cut_by_its_budget_is_incomplete(gc):
    r = gc.Report()
    gc.check_limit_shapes(r, 0, budget_s=-1.0)
    assert r.verdict() == ("INCOMPLETE", gc.EXIT_INCOMPLETE)


def test_failure_outranks_incomplete(gc):
    r = gc.Report()
    r.cut_short("budget")
    r.fail("wrong")
    assert r.verdict() == ("FAIL", gc.EXIT_FAIL)


def test_too_few_checks_per_tactic_and_dtype_is_incomplete(gc):
    r = gc.Report()
    ref = _ref()
    for _ in range(3):
        r.compare("ok", ref.float(), ref, 1e-5, "two_step", "float32")
    r.require_minimum(["two_step"], ["float32"], 3)
    assert r.verdict() == ("PASS", 0)
    r.require_minimum(["two_step", "one_kernel"], ["float32", "float16"], 3)
    assert r.verdict()[0] == "INCOMPLETE"
    assert len(r.incomplete) == 3  # one_kernel fp32, two_step fp16, one_kernel fp16


def test_only_documented_refusals_are_excused(gc):
    symmetric, asymmetric = gc.SYNTHETIC_LAYERS[0], gc.SYNTHETIC_LAYERS[1]
    assert asymmetric.pads[:2] != asymmetric.pads[2:]
    assert gc.documented_refusal("cudnn", asymmetric) == "asymmetric pads"
    assert gc.documented_refusal("cudnn", symmetric) is None
    for tactic in ("two_step", "one_kernel", "auto", "a_new_tactic"):
        assert gc.documented_refusal(tactic, asymmetric) is None


@pytest.mark.parametrize("ho,row", [(46340, 46340), (3, 16384 * 3), (1, 10), (7, 1 << 28)])
def test_limit_rows_are_all_compared(gc, ho, row):
    chunks = gc.row_chunks(ho, row)
    assert [r for a, b in chunks for r in range(a, b)] == list(range(ho))
    assert all((b - a) * row <= max(1 << 27, row) for a, b in chunks)


@pytest.mark.skipif(cpu_library_path() is None, reason="native CPU library not built (make plugins)")
def test_script_reference_agrees_with_an_independent_loop(gc):
    gen = torch.Generator().manual_seed(1)
    rng = random.Random(1)
    for layer in gc.SYNTHETIC_LAYERS:
        act = rng.randrange(3)
        inputs = gc.make_inputs(layer, 3, torch.float32, "cpu", gen, rng.random() < 0.5, True, True)
        rel, max_abs = gc.errors(gc.loop_reference(layer, *inputs, act), gc.reference(layer, *inputs, act))
        assert rel <= 1e-12, (layer.label, rel, max_abs)


def test_judge_self_test_finds_nothing_wrong(gc):
    assert gc.judge_self_test() == []


# ---- op version 2 -------------------------------------------------------------------------------------------


@pytest.mark.skipif(cpu_library_path() is None, reason="native CPU library not built (make plugins)")
def test_version_two_reference_agrees_with_the_loop_and_the_cpp_reference(gc):
    gen = torch.Generator().manual_seed(2)
    rng = random.Random(2)
    for i, layer in enumerate(gc.SYNTHETIC_LAYERS):
        spatial, residual, _ = gc.V2_COMBOS[i % len(gc.V2_COMBOS)]
        act = rng.randrange(3)
        inputs = gc.make_inputs(layer, 3, torch.float32, "cpu", gen, rng.random() < 0.5, True, True)
        s, r = gc.make_extras(layer, 3, torch.float32, "cpu", gen, spatial, residual)
        y, mean = gc.reference_v2(layer, *inputs, act, s, r)
        loop = gc.loop_reference(layer, *inputs, act, s, r)
        assert gc.errors(loop, y)[0] <= 1e-12, (layer.label, i)
        assert gc.errors(loop.mean(dim=(2, 3), keepdim=True), mean)[0] <= 1e-12
        cpp_y, cpp_mean = plugin_lib.cpu_reference_conv(
            *[t.numpy() if t is not None else None for t in inputs],
            stride=layer.stride,
            pads=layer.pads,
            dilation=layer.dilation,
            groups=layer.groups,
            activation=act,
            spatial=None if s is None else s.numpy(),
            residual=None if r is None else r.numpy(),
            mean=True,
        )
        assert gc.errors(torch.from_numpy(cpp_y), y)[0] <= 1e-5, (layer.label, i)
        assert gc.errors(torch.from_numpy(cpp_mean), mean)[0] <= 1e-5, (layer.label, i)
    # The spatial input really changes the result (a reference that dropped it would pass the loop above only if the
    # loop dropped it too): a tap scale of 0.5 everywhere halves the convolution.
    layer = gc.SYNTHETIC_LAYERS[0]
    x, coeff, weight, _, _ = gc.make_inputs(layer, 2, torch.float32, "cpu", gen, True, False, False)
    half = torch.full((2, layer.kh * layer.kw), 0.5)
    y_half, _ = gc.reference_v2(layer, x, coeff, weight, None, None, 0, half, None)
    y_full, _ = gc.reference_v2(layer, x, coeff, weight, None, None, 0, None, None)
    assert gc.errors(y_half, 0.5 * y_full)[0] <= 1e-12


def test_version_two_run_cut_by_its_budget_is_incomplete(gc):
    r = gc.Report()
    gc.check_version_two(gc.SYNTHETIC_LAYERS, r, 0, budget_s=-1.0)
    assert r.verdict() == ("INCOMPLETE", gc.EXIT_INCOMPLETE)
    assert "version-2 budget" in r.incomplete[0]


def test_too_few_version_two_checks_is_incomplete(gc):
    r = gc.Report()
    ref = _ref()
    for _ in range(gc.MIN_CHECKS_V2):
        r.compare("ok", ref.float(), ref, 1e-5, "two_step", "float32 v2")
    r.require_minimum(["two_step"], ["float32 v2"], gc.MIN_CHECKS_V2)
    assert r.verdict() == ("PASS", 0)
    r.require_minimum(["two_step"], gc.V2_DTYPES, gc.MIN_CHECKS_V2)
    assert r.verdict()[0] == "INCOMPLETE" and "float16 v2" in r.incomplete[0]


@pytest.mark.skipif(plugin_lib.cuda_library_path() is None, reason="CUDA library not built (no nvcc)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("flags", [(True, True, True), (False, True, False), (False, False, True)])
def test_version_two_call_passes_every_library_check_up_to_the_launch(gc, dtype, flags):
    """The script's version-2 call (its params, weight_dtype and DynetConvTensors) on host tensors: without a device
    the library's only complaint is the launch (DYNET_ERR_CUDA), never a pointer, flag or weight-type error."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: gpu_check.py runs the version-2 calls there")
    spatial, residual, mean = flags
    layer = gc.SYNTHETIC_LAYERS[0]
    gen = torch.Generator().manual_seed(3)
    inputs = gc.make_inputs(layer, 2, dtype, "cpu", gen, True, True, True)
    s, r = gc.make_extras(layer, 2, dtype, "cpu", gen, spatial, residual)
    ours = gc.Ours(layer, *inputs, 1, plugin_lib.ALGO_TWO_STEP, spatial=s, residual=r, mean=mean)
    assert ours.v2 and ours.params.weight_dtype == (plugin_lib.FLOAT16 if dtype == torch.float16 else 0)
    assert (ours.mean is not None) == mean and (ours.tensors.mean is not None) == mean
    with pytest.raises(RuntimeError, match=f"dynet_conv_cuda_plan_run_v2 returned {plugin_lib.ERR_CUDA}:"):
        ours()
