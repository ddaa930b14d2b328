"""Fuzz of DyNetDynamicConv2d's attributes at their extremes: never a signal, always a refusal or a correct output.

Every case is one single-node graph (or one C ABI call) with attribute values drawn from 0, 1, small values, powers
of two and the limits up to 2^31-1, alone and combined (the crash cases of the bad-input corpus among them), plus
random combinations from a fixed seed. Cases run in batches in child processes (tests/op_fuzz_worker.py) that
announce each case before running it, so a death by signal names its case; the rest of the batch then runs in a new
child. A case must end with an error status where the op's limits refuse it (plugins/dynamic_conv/README.md,
"Limits") and with an output equal to a gathering oracle (float64, relative error <= 1e-5; also to
dynet_deploy.op.reference when the padded input is small) where they do not. Cases the contract accepts but whose
output is too costly to compute in a test (more than WORK_LIMIT multiply-adds) are left out and counted.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from dynet_deploy.op import native, onnxruntime_lib

sys.path.insert(0, str(Path(__file__).parent))
from op_fuzz_worker import expected_refusal, output_hw  # noqa: E402

WORKER = Path(__file__).with_name("op_fuzz_worker.py")
MAX_INT = 2**31 - 1
WORK_LIMIT = 20_000_000
BATCH = 60
PADS = ("pad_top", "pad_left", "pad_bottom", "pad_right")
POSITIVE = ("stride_h", "stride_w", "dilation_h", "dilation_w")
EXTREMES = [0, 1, 2, 3, 7, 255, 256, 4096, 65536, 2**30, 2**31 - 27, MAX_INT - 1, MAX_INT]
SHAPES = [  # x, weight, groups
    ([1, 8, 28, 28], [6, 8, 8, 3, 3], 1),
    ([2, 4, 9, 7], [3, 6, 2, 2, 3], 2),
    ([1, 3, 5, 5], [2, 3, 1, 1, 1], 3),
    ([1, 2, 30, 40], [2, 16, 2, 3, 3], 1),
]
BASE = dict(
    stride_h=1, stride_w=1, pad_top=0, pad_left=0, pad_bottom=0, pad_right=0, dilation_h=1, dilation_w=1, groups=1
)

# The bad-input corpus' crash cases: a valid 10x32 output with pads and dilations near 2^31 (segfaulted the op's
# CPU kernel), and stride 256 with pads 4096 on a 25 KB input (a 2.3 GB scratch buffer).
CRASH_CASES = [
    dict(
        pad_top=2147483647,
        pad_bottom=2147483621,
        pad_left=1073741824,
        pad_right=1073741796,
        dilation_h=2147483643,
        dilation_w=1073741808,
    ),
    dict(stride_h=256, stride_w=256, pad_top=4096, pad_left=4096, pad_bottom=4096, pad_right=4096),
]


def make_case(cid: int, shape_index: int, attrs: dict, seed: int) -> dict:
    x, weight, groups = SHAPES[shape_index]
    return {"id": cid, "x": x, "weight": weight, "attrs": dict(BASE, groups=groups, **attrs), "seed": seed}


def work(c: dict) -> int:
    h_out, w_out = output_hw(c)
    k, cout, cing, kh, kw = c["weight"]
    return c["x"][0] * cout * h_out * w_out * cing * kh * kw


def structured_cases() -> list[dict]:
    """Each extreme alone on each attribute, the crash cases, and all-extreme combinations."""
    specs: list[tuple[int, dict]] = []
    for name in PADS + POSITIVE:
        for v in EXTREMES:
            if name in POSITIVE and v == 0:
                continue
            specs.append((0, {name: v}))
    specs += [(0, a) for a in CRASH_CASES] + [(1, a) for a in CRASH_CASES]
    for v in (MAX_INT, 2**30, 65536):
        specs.append((0, {p: v for p in PADS}))
        specs.append((1, {p: v for p in PADS} | {"stride_h": v, "stride_w": v}))
        specs.append((0, {p: v for p in PADS} | {"dilation_h": v, "dilation_w": v}))
        specs.append((2, {p: v for p in PADS} | {d: v for d in POSITIVE}))
        specs.append((3, {"dilation_h": v, "dilation_w": v, "pad_top": v, "pad_left": v}))
    return [make_case(i, s, a, seed=i) for i, (s, a) in enumerate(specs)]


def random_cases(count: int, seed: int, first_id: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        attrs = {}
        for name in PADS + POSITIVE:
            r = rng.random()
            if r < 0.4:
                v = rng.choice(EXTREMES)
            elif r < 0.6:
                v = rng.randint(0, MAX_INT)
            else:
                v = rng.randint(0, 5)
            attrs[name] = max(v, 1) if name in POSITIVE else v
        out.append(make_case(first_id + i, rng.randrange(len(SHAPES)), attrs, seed=seed * 100000 + i))
    return out


def affordable(cases: list[dict]) -> tuple[list[dict], int]:
    keep = [c for c in cases if expected_refusal(c) is not None or work(c) <= WORK_LIMIT]
    return keep, len(cases) - len(keep)


def run_cases(mode: str, cases: list[dict]) -> tuple[Counter, list[str], list[str]]:
    """Outcome counts, the cases that died by a signal, and the wrong ones (with details)."""
    counts: Counter = Counter()
    crashed: list[str] = []
    wrong: list[str] = []
    by_id = {c["id"]: c for c in cases}
    pending = list(cases)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    while pending:
        batch, pending = pending[:BATCH], pending[BATCH:]
        proc = subprocess.run(
            [sys.executable, str(WORKER), mode],
            input=json.dumps(batch),
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        finished = set()
        started = None
        for line in proc.stdout.splitlines():
            parts = line.split(" ", 3)
            if parts[0] == "start":
                started = int(parts[1])
            elif parts[0] == "done":
                cid = int(parts[1])
                finished.add(cid)
                counts[parts[2]] += 1
                if parts[2] == "wrong":
                    wrong.append(f"case {json.dumps(by_id[cid])}: {parts[3] if len(parts) > 3 else ''}")
        if proc.returncode != 0:
            if started is None or started in finished:
                pytest.fail(f"fuzz worker exited {proc.returncode} outside a case: {proc.stderr[-2000:]}")
            why = (
                f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else f"exit {proc.returncode}"
            )
            crashed.append(f"{why} on case {json.dumps(by_id[started])}; stderr tail: {proc.stderr[-600:]}")
            counts["crashed"] += 1
            rest = [c for c in batch if c["id"] not in finished and c["id"] != started]
            pending = rest + pending
    return counts, crashed, wrong


def check(mode: str, cases: list[dict]) -> None:
    cases, skipped = affordable(cases)
    counts, crashed, wrong = run_cases(mode, cases)
    print(f"\n{mode}: {len(cases)} cases: {dict(counts)}; {skipped} left out (over {WORK_LIMIT} multiply-adds)")
    assert not crashed, "died by a signal:\n" + "\n".join(crashed)
    assert not wrong, f"{len(wrong)} wrong outcomes:\n" + "\n".join(wrong[:20])
    assert counts["refused"] + counts["correct"] == len(cases)


@pytest.fixture(scope="module")
def ort_library():
    pytest.importorskip("onnxruntime")
    if onnxruntime_lib.library_path() is None:
        pytest.skip(f"{onnxruntime_lib.ORT_LIBRARY} not built (run 'make plugins')")


@pytest.fixture(scope="module")
def cpu_library():
    if native.cpu_library_path() is None:
        pytest.skip("the CPU reference library is not built (run 'make plugins')")


def test_crash_cases_end_with_a_status_not_a_signal(ort_library):
    cases = [make_case(i, s, a, seed=i) for i, (s, a) in enumerate((s, a) for s in (0, 1) for a in CRASH_CASES)]
    counts, crashed, wrong = run_cases("ort", cases)
    assert not crashed, "died by a signal:\n" + "\n".join(crashed)
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    "attrs, named",
    [
        (CRASH_CASES[0], "pad_top"),
        (dict(pad_left=2**30, pad_right=2**30), "pad_right"),
        (dict(dilation_h=2**30), "dilation_h"),
        (dict(dilation_w=MAX_INT), "dilation_w"),
    ],
)
def test_derived_size_limits_are_a_status_naming_the_attribute(cpu_library, attrs, named):
    lib = native.load_cpu_library()
    a = dict(BASE, **attrs)
    p = native.make_params(
        [1, 8, 28, 28],
        [1, 6, 6],
        [6, 6, 8, 3, 3],
        stride=(a["stride_h"], a["stride_w"]),
        pads=(a["pad_top"], a["pad_left"], a["pad_bottom"], a["pad_right"]),
        dilation=(a["dilation_h"], a["dilation_w"]),
    )
    msg = ctypes.create_string_buffer(256)
    assert lib.dynet_conv_validate(ctypes.byref(p), msg, len(msg)) == native.ERR_LIMIT
    assert named in msg.value.decode() and "2^31-1" in msg.value.decode(), msg.value
    assert lib.dynet_status_string(native.ERR_LIMIT).decode() != "unknown status"


def test_huge_pads_with_a_large_stride_need_no_huge_buffer(ort_library):
    # stride 256, pads 4096 on a 25 KB input: a 33x33 output that once cost a 2.3 GB padded copy of the input.
    case = make_case(0, 0, CRASH_CASES[1], seed=0)
    proc = subprocess.run(
        [sys.executable, str(WORKER), "ort"], input=json.dumps([case]), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert lines["done"].startswith("0 correct"), lines["done"]
    peak_mb = int(lines["maxrss_kb"]) / 1024
    print(f"\npeak resident memory {peak_mb:.0f} MB")
    assert peak_mb < 1024, f"peak resident memory {peak_mb:.0f} MB for a 25 KB input and a 26 KB output"


def test_extreme_attributes_through_onnxruntime(ort_library):
    check("ort", structured_cases() + random_cases(60, seed=20, first_id=10_000))


def test_extreme_attributes_through_the_c_abi(cpu_library):
    check("cabi", structured_cases() + random_cases(60, seed=21, first_id=10_000))


@pytest.mark.slow
def test_many_random_attribute_combinations(ort_library, cpu_library):
    check("ort", random_cases(600, seed=22, first_id=20_000))
    check("cabi", random_cases(300, seed=23, first_id=30_000))
