"""scripts/gpu_check.py's judging logic, on the CPU: a NaN, an unwritten (NaN-filled) element, a wrong kernel output
or a wrong shape is a failure; a run cut by its time budget, or with fewer checks than the minimum for a tactic x
dtype, is INCOMPLETE with a non-zero exit; only documented refusals are excused; the limit shapes are compared on
every row; the script's references agree with an independent per-sample loop. The dry run itself (which also runs
the model-level code through the custom op's CPU path) is run by tests/test_plugin_build.py."""

from __future__ import annotations

import importlib.util
import random
import sys

import pytest
import torch

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
