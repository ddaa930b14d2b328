#!/usr/bin/env python3
"""The prepared GPU check of the DyNetDynamicConv2d CUDA kernels (run it through scripts/gpu_check.sh).

1. Correctness: every distinct dynamic-conv layer of Dy-ResNet50 and Dy-mobile (read from the zoo, else a built-in
   table), at a random batch in {1, 3, 8}, random coefficient form (per channel / per expert), random bias bank, bias
   and activation, for fp32 and fp16 and for each algorithm (AUTO, TWO_STEP, ONE_KERNEL), against PyTorch in float64
   on the same input values: relative error ||y - ref|| / ||ref|| <= 1e-5 (fp32), <= 1e-2 (fp16); max-abs printed.
   Plus: the call is captured in a CUDA graph and replayed (proves no allocation or synchronisation in the enqueue),
   and malformed arguments come back as error codes.
2. Timing (CUDA events over CUDA-graph replays, warm-up first, median of trials) at batch 1, 8 and 32, fp32 and
   fp16: ours (AUTO and both algorithms) vs (a) PyTorch batch-as-groups (aggregation + grouped conv) and (b) a static
   cuDNN convolution of the same shape. Goals (printed, not enforced unless --strict-perf): fp16, batch >= 8:
   ours <= 1.2x static, and batch-as-groups / ours >= 2.
Modes: --sanitize (small shapes, no timing: what compute-sanitizer runs), --cpu-dry-run (no GPU: checks this
script's own references against the C++ CPU reference, so the script cannot rot unnoticed).
Needs only torch, numpy (through plugin_lib) and the built libraries (DYNET_DEPLOY_PLUGIN_DIR or --lib-dir).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
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

TOL = {torch.float32: 1e-5, torch.float16: 1e-2}
ALGOS = {"auto": plugin_lib.ALGO_AUTO, "two_step": plugin_lib.ALGO_TWO_STEP, "one_kernel": plugin_lib.ALGO_ONE_KERNEL}
K_BASES = 6


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
    *(Layer("dy_resnet50", ci, co, hw, hw, k, k, (s, s), (p,) * 4, (1, 1), 1)
      for ci, co, hw, k, s, p in [
          (32, 32, 56, 1, 1, 0), (32, 32, 56, 3, 1, 1), (32, 128, 56, 1, 1, 0), (128, 32, 56, 1, 1, 0),
          (128, 64, 56, 1, 1, 0), (64, 64, 56, 3, 2, 1), (64, 256, 28, 1, 1, 0), (256, 64, 28, 1, 1, 0),
          (64, 64, 28, 3, 1, 1), (256, 128, 28, 1, 1, 0), (128, 128, 28, 3, 2, 1), (128, 512, 14, 1, 1, 0),
          (512, 128, 14, 1, 1, 0), (128, 128, 14, 3, 1, 1), (512, 256, 14, 1, 1, 0), (256, 256, 14, 3, 2, 1),
          (256, 1024, 7, 1, 1, 0), (1024, 256, 7, 1, 1, 0), (256, 256, 7, 3, 1, 1)]),
    *(Layer("dy_mobile", ci, co, hw, hw, k, k, (s, s), (p,) * 4, (1, 1), g)
      for ci, co, hw, k, s, p, g in [
          (30, 18, 112, 1, 1, 0, 1), (18, 24, 112, 1, 1, 0, 1), (24, 24, 112, 3, 2, 1, 4), (24, 24, 56, 1, 1, 0, 1),
          (24, 30, 56, 1, 1, 0, 1), (30, 30, 56, 3, 2, 1, 5), (30, 30, 28, 1, 1, 0, 1), (30, 66, 28, 1, 1, 0, 1),
          (66, 66, 28, 3, 2, 1, 11), (66, 66, 14, 1, 1, 0, 1), (66, 96, 14, 1, 1, 0, 1), (96, 96, 14, 3, 1, 1, 16),
          (96, 162, 14, 1, 1, 0, 1), (162, 162, 14, 3, 2, 1, 27), (162, 162, 7, 1, 1, 0, 1),
          (162, 318, 7, 1, 1, 0, 1)]),
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
                seen[Layer(name, mod.in_channels, mod.out_channels, x.shape[2], x.shape[3], kh, kw,
                           tuple(mod.stride), tuple(mod.pads), tuple(mod.dilation), mod.groups,
                           mod.num_bases)] = None

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

def make_inputs(layer: Layer, n: int, dtype, device, gen: torch.Generator, per_channel=True, bank=False,
                bias=False):
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


def fuse(coeff, weight, bias_bank, bias):
    """Per-sample kernels [N, C_out, C_in/g, kH, kW] and biases [N, C_out] (the kernel-fusion step)."""
    n, c_out = coeff.shape[0], weight.shape[1]
    c = coeff.expand(n, c_out, coeff.shape[2])
    fused = torch.einsum("ntk,ktcij->ntcij", c, weight)
    b = torch.zeros(n, c_out, dtype=weight.dtype, device=weight.device)
    if bias_bank is not None:
        b = b + torch.einsum("ntk,kt->nt", c, bias_bank)
    if bias is not None:
        b = b + bias
    return fused, b


def act(y, activation):
    return F.relu(y) if activation == 1 else F.relu6(y) if activation == 2 else y


def batch_as_groups(layer: Layer, x, coeff, weight, bias_bank, bias, activation):
    """What public dynamic-conv code does: fuse, then one grouped conv with the batch folded into the groups."""
    n = x.shape[0]
    fused, b = fuse(coeff, weight, bias_bank, bias)
    top, left, bottom, right = layer.pads
    if (top, left) == (bottom, right):
        xp, padding = x, (top, left)
    else:
        xp, padding = F.pad(x, (left, right, top, bottom)), (0, 0)
    y = F.conv2d(xp.reshape(1, n * layer.c_in, *xp.shape[2:]), fused.reshape(n * layer.c_out, *fused.shape[2:]),
                 b.reshape(-1), stride=layer.stride, padding=padding, dilation=layer.dilation,
                 groups=n * layer.groups)
    return act(y.reshape(n, layer.c_out, *y.shape[2:]), activation)


def reference(layer: Layer, x, coeff, weight, bias_bank, bias, activation):
    """The op in float64 on the same input values (so fp16 inputs are compared exactly, rounding only in ours)."""
    d = [t.double() if t is not None else None for t in (x, coeff, weight, bias_bank, bias)]
    return batch_as_groups(layer, *d, activation)


def static_conv(layer: Layer, x, w_static, b_static, activation):
    top, left, bottom, right = layer.pads
    if (top, left) != (bottom, right):
        x, padding = F.pad(x, (left, right, top, bottom)), (0, 0)
    else:
        padding = (top, left)
    y = F.conv2d(x, w_static, b_static, stride=layer.stride, padding=padding, dilation=layer.dilation,
                 groups=layer.groups)
    return act(y, activation)


def errors(out, ref) -> tuple[float, float]:
    diff = out.double() - ref
    return float(diff.norm() / ref.norm().clamp_min(1e-30)), float(diff.abs().max())


# ---- our kernels ------------------------------------------------------------------------------------------------

class Ours:
    """Preallocated output and workspace, so each call is exactly one dynet_conv_cuda enqueue."""

    def __init__(self, layer: Layer, x, coeff, weight, bias_bank, bias, activation, algo):
        self.lib = plugin_lib.load_cuda_library()
        self.layer, self.algo = layer, algo
        self.args = (x, coeff, weight, bias_bank, bias)
        self.dtype = plugin_lib.FLOAT16 if x.dtype == torch.float16 else plugin_lib.FLOAT32
        self.params = plugin_lib.make_params(tuple(x.shape), tuple(coeff.shape), tuple(weight.shape),
                                             has_bias_bank=bias_bank is not None, has_bias=bias is not None,
                                             stride=layer.stride, pads=layer.pads, dilation=layer.dilation,
                                             groups=layer.groups, activation=activation)
        ho, wo = plugin_lib.output_hw(self.params, self.lib)
        self.out = torch.empty(x.shape[0], layer.c_out, ho, wo, dtype=x.dtype, device=x.device)
        self.ws_bytes = plugin_lib.cuda_workspace_size(self.params, self.dtype, algo)
        self.ws = torch.empty(max(self.ws_bytes, 1), dtype=torch.uint8, device=x.device)

    def __call__(self):
        x, coeff, weight, bb, b = self.args
        status = self.lib.dynet_conv_cuda(
            ctypes.byref(self.params), self.dtype, self.algo, x.data_ptr(), coeff.data_ptr(), weight.data_ptr(),
            bb.data_ptr() if bb is not None else None, b.data_ptr() if b is not None else None,
            self.out.data_ptr(), self.ws.data_ptr(), self.ws_bytes, torch.cuda.current_stream().cuda_stream)
        if status != plugin_lib.OK:
            raise RuntimeError(f"dynet_conv_cuda returned {status}: {self.lib.dynet_status_string(status).decode()}")
        return self.out


# ---- checks --------------------------------------------------------------------------------------------------

class Report:
    def __init__(self):
        self.failures: list[str] = []
        self.checked = 0

    def fail(self, msg: str):
        self.failures.append(msg)
        print(f"  FAIL {msg}", flush=True)


def check_correctness(layers, report: Report, seed: int, batches=(1, 3, 8), sanitize=False):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    device = torch.device("cuda")
    worst: dict[tuple, tuple[float, float, str]] = {}
    for layer in layers:
        n = rng.choice(batches)
        per_channel, bank, bias, activation = rng.random() < 0.7, rng.random() < 0.5, rng.random() < 0.5, rng.randrange(3)
        for dtype in (torch.float32, torch.float16):
            inputs = make_inputs(layer, n, dtype, device, gen, per_channel, bank, bias)
            ref = reference(layer, *inputs, activation)
            for algo_name, algo in ALGOS.items():
                ours = Ours(layer, *inputs, activation, algo)
                out = ours().clone()
                torch.cuda.synchronize()
                rel, max_abs = errors(out, ref)
                report.checked += 1
                key = (dtype, algo_name)
                if key not in worst or rel > worst[key][0]:
                    worst[key] = (rel, max_abs, f"{layer.model} {layer.label} N={n}")
                if not (rel <= TOL[dtype]):  # also catches NaN
                    report.fail(f"{layer.model} {layer.label} N={n} {str(dtype)[6:]} {algo_name}: rel {rel:.2e} "
                                f"(tol {TOL[dtype]:.0e}) max-abs {max_abs:.2e}")
    print("  worst relative error per dtype/algorithm (tolerance fp32 1e-5, fp16 1e-2):")
    for (dtype, algo_name), (rel, max_abs, where) in sorted(worst.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        print(f"    {str(dtype)[6:]:8s} {algo_name:10s} rel {rel:.2e}  max-abs {max_abs:.2e}  ({where})")


def check_graph_capture_and_errors(layers, report: Report, seed: int):
    """One enqueue per path captured into a CUDA graph must replay to the eager result."""
    gen = torch.Generator().manual_seed(seed)
    device = torch.device("cuda")
    picked = {}
    for layer in layers:  # one layer per kernel path
        cin_g = layer.c_in // layer.groups
        path = "direct" if cin_g <= 8 else "pointwise" if (layer.kh, layer.kw, layer.stride) == (1, 1, (1, 1)) and \
            not any(layer.pads) else "implicit_gemm"
        picked.setdefault(path, layer)
    for path, layer in picked.items():
        for dtype in (torch.float32, torch.float16):
            for algo_name, algo in ALGOS.items():
                inputs = make_inputs(layer, 3, dtype, device, gen, True, True, True)
                ours = Ours(layer, *inputs, 1, algo)
                eager = ours().clone()
                ours.out.zero_()
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
                if not torch.equal(ours.out, eager):
                    report.fail(f"CUDA graph replay differs from eager ({path} {algo_name} {str(dtype)[6:]})")
    print(f"  CUDA graph capture + replay: paths {sorted(picked)} x fp32/fp16 x {list(ALGOS)}")
    # Malformed arguments: error codes, never a launch.
    lib = plugin_lib.load_cuda_library()
    p = plugin_lib.make_params((2, 16, 8, 8), (2, 32, 6), (6, 32, 16, 3, 3), pads=(1, 1, 1, 1))
    buf = torch.empty(1 << 20, dtype=torch.uint8, device=device)
    a = buf.data_ptr()
    cases = {
        "no workspace": (p, plugin_lib.ERR_WORKSPACE, (a, a, a, None, None, a, None, 0)),
        "null x": (p, plugin_lib.ERR_NULL_POINTER, (None, a, a, None, None, a, a, 1 << 20)),
    }
    bad = plugin_lib.make_params((2, 16, 8, 8), (2, 32, 6), (6, 32, 16, 3, 3))
    bad.groups = 3
    cases["groups=3"] = (bad, plugin_lib.ERR_INVALID_ARGUMENT, (a, a, a, None, None, a, a, 1 << 20))
    for name, (params, expected, ptrs) in cases.items():
        got = lib.dynet_conv_cuda(ctypes.byref(params), 0, 0, *ptrs, torch.cuda.current_stream().cuda_stream)
        report.checked += 1
        if got != expected:
            report.fail(f"malformed call '{name}' returned {got}, expected {expected}")
    torch.cuda.synchronize()


# ---- timing --------------------------------------------------------------------------------------------------

def time_fn(fn, reps=20, trials=7) -> float:
    """Median milliseconds per call: CUDA-graph replays of `reps` calls (eager fallback), CUDA events."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    run = None
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
            for _ in range(reps):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        run = graph.replay
    except Exception:
        torch.cuda.synchronize()

        def run():
            for _ in range(reps):
                fn()

    samples = []
    for _ in range(trials):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / reps)
    return statistics.median(samples)


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


def run_timing(layers, budget_s: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    rows = []
    t0 = time.monotonic()
    header = (f"{'model':12s} {'layer':32s} {'N':>3s} {'dtype':5s} {'ours':>8s} {'2step':>8s} {'1kern':>8s} "
              f"{'bag':>8s} {'static':>8s} {'ours/static':>11s} {'bag/ours':>8s}")
    print(header)
    print("-" * len(header))
    for layer in layers:
        for n in (1, 8, 32):
            for dtype in (torch.float16, torch.float32):
                if time.monotonic() - t0 > budget_s:
                    print(f"  (timing budget of {budget_s:.0f}s reached: table is partial)")
                    return rows
                x, coeff, weight, bb, b = make_inputs(layer, n, dtype, device, gen, True, False, False)
                t_algo = {}
                for algo_name, algo in ALGOS.items():
                    t_algo[algo_name] = time_fn(Ours(layer, x, coeff, weight, bb, b, 1, algo))
                t_bag = time_fn(lambda: batch_as_groups(layer, x, coeff, weight, bb, b, 1))
                w_static = weight[0].contiguous()
                t_static = time_fn(lambda: static_conv(layer, x, w_static, None, 1))
                ours = t_algo["auto"]
                row = dict(model=layer.model, layer=layer.label, n=n, dtype=str(dtype)[6:], ours=ours,
                           two_step=t_algo["two_step"], one_kernel=t_algo["one_kernel"], bag=t_bag, static=t_static,
                           vs_static=ours / t_static, bag_speedup=t_bag / ours)
                rows.append(row)
                print(f"{row['model']:12s} {row['layer']:32s} {n:3d} {row['dtype']:5s} {ours:8.4f} "
                      f"{row['two_step']:8.4f} {row['one_kernel']:8.4f} {t_bag:8.4f} {t_static:8.4f} "
                      f"{row['vs_static']:11.2f} {row['bag_speedup']:8.2f}", flush=True)
    return rows


def summarize_goals(rows) -> bool:
    goal_rows = [r for r in rows if r["dtype"] == "float16" and r["n"] >= 8]
    if not goal_rows:
        print("goals: no fp16 batch>=8 rows timed")
        return False
    ok_static = sum(r["vs_static"] <= 1.2 for r in goal_rows)
    ok_bag = sum(r["bag_speedup"] >= 2.0 for r in goal_rows)
    faster = {"two_step": 0, "one_kernel": 0}
    for r in rows:
        faster["two_step" if r["two_step"] <= r["one_kernel"] else "one_kernel"] += 1
    print(f"goal fused <= 1.2x static cuDNN (fp16, N>=8): {ok_static}/{len(goal_rows)} rows; "
          f"geo-mean ratio {math.exp(statistics.fmean(math.log(r['vs_static']) for r in goal_rows)):.2f}")
    print(f"goal >= 2x faster than batch-as-groups (fp16, N>=8): {ok_bag}/{len(goal_rows)} rows; "
          f"geo-mean speed-up {math.exp(statistics.fmean(math.log(r['bag_speedup']) for r in goal_rows)):.2f}")
    print(f"faster algorithm per row: two-step {faster['two_step']}, one-kernel {faster['one_kernel']} "
          "(AUTO picks one-kernel on the direct path, two-step on the GEMM paths)")
    return ok_static == len(goal_rows) and ok_bag == len(goal_rows)


# ---- CPU dry run: the script's own references against the C++ reference --------------------------------------

def cpu_dry_run(layers, seed: int) -> int:
    plugin_lib.load_cpu_library()
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    small = [dataclasses.replace(layer, h=min(layer.h, 9), w=min(layer.w, 9)) for layer in layers]
    worst = 0.0
    for layer in rng.sample(small, min(len(small), 10)):
        activation = rng.randrange(3)
        inputs = make_inputs(layer, 3, torch.float32, "cpu", gen, rng.random() < 0.5, True, True)
        ref = reference(layer, *inputs, activation)
        cpu = plugin_lib.cpu_reference_conv(*[t.numpy() if t is not None else None for t in inputs],
                                            stride=layer.stride, pads=layer.pads, dilation=layer.dilation,
                                            groups=layer.groups, activation=activation)
        rel, _ = errors(torch.from_numpy(cpu), ref)
        bag = batch_as_groups(layer, *inputs, activation)
        rel_bag, _ = errors(bag, ref)
        worst = max(worst, rel)
        if rel > 1e-5 or rel_bag > 1e-4:
            print(f"FAIL dry run {layer.model} {layer.label}: C++ reference rel {rel:.2e}, batch-as-groups {rel_bag:.2e}")
            return 1
    print(f"cpu dry run: references agree with the C++ CPU reference (worst rel {worst:.2e}) on {len(layers)} "
          "zoo layers sampled; no GPU used")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib-dir", help="folder with libdynet_dynamic_conv_cuda.so (default: DYNET_DEPLOY_PLUGIN_DIR, build/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sanitize", action="store_true", help="small shapes, correctness only (for compute-sanitizer)")
    ap.add_argument("--cpu-dry-run", action="store_true", help="no GPU: check this script's references on the CPU")
    ap.add_argument("--timing-budget", type=float, default=150.0, help="seconds for the timing table (default 150)")
    ap.add_argument("--timing-layers", type=int, default=8, help="layers per model in the timing table (default 8)")
    ap.add_argument("--strict-perf", action="store_true", help="exit 1 when a performance goal is missed")
    args = ap.parse_args(argv)
    if args.lib_dir:
        os.environ[plugin_lib.ENV_PLUGIN_DIR] = args.lib_dir

    layers, source = zoo_layers()
    print(f"layers: {len(layers)} distinct dynamic convs from {source}")
    if args.cpu_dry_run:
        return cpu_dry_run(layers, args.seed)

    if not torch.cuda.is_available():
        print("gpu_check: FAIL: torch.cuda.is_available() is False; this check needs a CUDA GPU", file=sys.stderr)
        return 2
    if plugin_lib.cuda_library_path() is None:
        print(f"gpu_check: FAIL: {plugin_lib.CUDA_LIBRARY} not found in {plugin_lib.search_dirs()}", file=sys.stderr)
        return 2
    # TF32 would make PyTorch's own convs the less accurate side of the comparison.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"device: {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))}), "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}, library {plugin_lib.cuda_library_path()}")

    report = Report()
    t0 = time.monotonic()
    if args.sanitize:
        small = [dataclasses.replace(layer, h=min(layer.h, 10), w=min(layer.w, 10)) for layer in layers]
        distinct = list(dict.fromkeys(dataclasses.replace(layer, model="any") for layer in small))
        sample = random.Random(args.seed).sample(distinct, min(len(distinct), 8))
        check_correctness(sample, report, args.seed, batches=(1, 3))
        check_graph_capture_and_errors(sample + small, report, args.seed)
    else:
        print("[1/2] correctness against PyTorch (float64 reference)")
        check_correctness(layers, report, args.seed)
        check_graph_capture_and_errors(layers, report, args.seed)
        print(f"  {report.checked} checks, {len(report.failures)} failures ({time.monotonic() - t0:.0f}s)")
    if report.failures:
        print(f"gpu_check: FAIL: {len(report.failures)} of {report.checked} checks failed", file=sys.stderr)
        return 1
    if args.sanitize:
        print(f"sanitize run: {report.checked} checks passed")
        return 0

    print("[2/2] timing, ms per call (median of CUDA-graph replays); ours = AUTO; bag = batch-as-groups")
    rows = run_timing(pick_timing_layers(layers, args.timing_layers), args.timing_budget, args.seed)
    goals_met = summarize_goals(rows)
    print(f"gpu_check: correctness PASS ({report.checked} checks); performance goals "
          f"{'met' if goals_met else 'NOT all met (see above)'}")
    return 1 if (args.strict_perf and not goals_met) else 0


if __name__ == "__main__":
    sys.exit(main())
