"""Runs DyNetDynamicConv2d fuzz cases for tests/test_op_fuzz.py, one process per batch.

Reads a JSON list of cases on stdin; for each case prints ``start <id>`` before it runs it and ``done <id> <outcome>
<detail>`` after, flushing each line (and the process's peak resident memory of its own image, ``maxrss_kb <n>``, at the end), so that a parent seeing the process die by a signal knows which case did it.
Outcomes: ``refused`` (the library returned an error status), ``correct`` (an output that matches the oracle),
``wrong`` (an output that does not, or an error where the oracle computes one, or an output where it refuses).

Usage: python tests/op_fuzz_worker.py ort|cabi < cases.json
"""

from __future__ import annotations

import json
import resource
import sys

import numpy as np

MAX_INT = 2**31 - 1
# Cases whose padded input is at most this many elements are also held to dynet_deploy.op.reference (torch).
TORCH_PADDED_LIMIT = 1 << 20
REL_TOL = 1e-5


def peak_rss_kb() -> int:
    """This process image's peak resident memory in KiB.

    Linux's VmHWM belongs to the address space execve created, so it counts this worker only; getrusage's ru_maxrss
    also keeps the peak of the process that spawned it (the kernel carries it across execve), which inside a large
    pytest process is that process's size, not the worker's.
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def expected_refusal(c: dict) -> str | None:
    """Why the op contract refuses case c (the README's limits), or None when it must compute it."""
    n, cin, h, w = c["x"]
    k, cout, cing, kh, kw = c["weight"]
    a = c["attrs"]
    if h + a["pad_top"] + a["pad_bottom"] > MAX_INT or w + a["pad_left"] + a["pad_right"] > MAX_INT:
        return "padded extent"
    span_h = a["dilation_h"] * (kh - 1) + 1
    span_w = a["dilation_w"] * (kw - 1) + 1
    if span_h > MAX_INT or span_w > MAX_INT:
        return "dilated kernel"
    hp, wp = h + a["pad_top"] + a["pad_bottom"], w + a["pad_left"] + a["pad_right"]
    if hp < span_h or wp < span_w:
        return "empty output"
    h_out, w_out = (hp - span_h) // a["stride_h"] + 1, (wp - span_w) // a["stride_w"] + 1
    if n * cout * h_out * w_out > MAX_INT:
        return "output elements"
    return None


def output_hw(c: dict) -> tuple[int, int]:
    _, _, h, w = c["x"]
    _, _, _, kh, kw = c["weight"]
    a = c["attrs"]
    h_out = (h + a["pad_top"] + a["pad_bottom"] - a["dilation_h"] * (kh - 1) - 1) // a["stride_h"] + 1
    w_out = (w + a["pad_left"] + a["pad_right"] - a["dilation_w"] * (kw - 1) - 1) // a["stride_w"] + 1
    return h_out, w_out


def arrays(c: dict):
    rng = np.random.default_rng(c["seed"])
    n, _, _, _ = c["x"]
    k, cout, _, _, _ = c["weight"]
    x = rng.standard_normal(c["x"]).astype(np.float32)
    coeff = rng.standard_normal((n, cout, k)).astype(np.float32)
    weight = rng.standard_normal(c["weight"]).astype(np.float32)
    return x, coeff, weight


def gather_oracle(c: dict, x, coeff, weight) -> np.ndarray:
    """The op by direct gathering (no padded copy), in float64: cheap whatever the pads and dilations."""
    a = c["attrs"]
    n, cin, h, w = x.shape
    k, cout, cing, kh, kw = weight.shape
    groups = a["groups"]
    h_out, w_out = output_hw(c)
    ih = np.arange(h_out)[:, None] * a["stride_h"] - a["pad_top"] + np.arange(kh)[None, :] * a["dilation_h"]
    iw = np.arange(w_out)[:, None] * a["stride_w"] - a["pad_left"] + np.arange(kw)[None, :] * a["dilation_w"]
    mh, mw = (ih >= 0) & (ih < h), (iw >= 0) & (iw < w)
    cols = x.astype(np.float64)[:, :, np.clip(ih, 0, h - 1)][:, :, :, :, np.clip(iw, 0, w - 1)]
    cols = cols * (mh[:, :, None, None] & mw[None, None, :, :])  # [N, C_in, H_out, kH, W_out, kW]
    fused = np.einsum("ntk,ktcij->ntcij", coeff.astype(np.float64), weight.astype(np.float64))
    coutg = cout // groups
    y = np.empty((n, cout, h_out, w_out))
    for g in range(groups):
        xg = cols[:, g * cing : (g + 1) * cing]
        fg = fused[:, g * coutg : (g + 1) * coutg]
        y[:, g * coutg : (g + 1) * coutg] = np.einsum("ncaibj,ntcij->ntab", xg, fg)
    return y


def check_output(c: dict, y, x, coeff, weight) -> tuple[str, str]:
    ref = gather_oracle(c, x, coeff, weight)
    if y.shape != ref.shape:
        return "wrong", f"shape {y.shape} != {ref.shape}"
    rel = float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))
    if not rel <= REL_TOL:
        return "wrong", f"rel {rel:.2e} vs gather oracle"
    hp = c["x"][2] + c["attrs"]["pad_top"] + c["attrs"]["pad_bottom"]
    wp = c["x"][3] + c["attrs"]["pad_left"] + c["attrs"]["pad_right"]
    if c["x"][0] * c["x"][1] * hp * wp <= TORCH_PADDED_LIMIT:
        from dynet_deploy.op import reference

        t = reference.dynamic_conv_numpy(x, coeff, weight, **c["attrs"])
        rel_t = float(np.linalg.norm(y - t) / max(np.linalg.norm(t), 1e-30))
        if not rel_t <= REL_TOL:
            return "wrong", f"rel {rel_t:.2e} vs dynet_deploy.op.reference"
        return "correct", f"rel {rel:.1e} (gather), {rel_t:.1e} (reference)"
    return "correct", f"rel {rel:.1e} (gather)"


def run_ort(c: dict) -> tuple[str, str]:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from dynet_deploy.op import onnxruntime_lib
    from dynet_deploy.op.spec import OP_DOMAIN, OP_TYPE

    x, coeff, weight = arrays(c)
    attrs = dict(c["attrs"], activation=0, has_bias_bank=0, has_bias=0, plugin_version="1", plugin_namespace="")
    node = helper.make_node(OP_TYPE, ["x", "coeff", "weight"], ["y"], domain=OP_DOMAIN, name="fuzz", **attrs)
    graph = helper.make_graph(
        [node],
        "fuzz",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape)),
            helper.make_tensor_value_info("coeff", TensorProto.FLOAT, list(coeff.shape)),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(OP_DOMAIN, 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    onnxruntime_lib.register(so)
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {"x": x, "coeff": coeff})
    except Exception as e:  # an onnxruntime error status: the outcome a refused case must have
        return "refused", str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    return check_output(c, y, x, coeff, weight)


def run_cabi(c: dict) -> tuple[str, str]:
    from dynet_deploy.op import native

    x, coeff, weight = arrays(c)
    a = c["attrs"]
    try:
        y = native.cpu_reference_conv(
            x,
            coeff,
            weight,
            stride=(a["stride_h"], a["stride_w"]),
            pads=(a["pad_top"], a["pad_left"], a["pad_bottom"], a["pad_right"]),
            dilation=(a["dilation_h"], a["dilation_w"]),
            groups=a["groups"],
        )
    except native.DynamicConvCallError as e:
        return "refused", f"status {e.status}: {str(e)[:200]}"
    return check_output(c, y, x, coeff, weight)


def main() -> int:
    runner = {"ort": run_ort, "cabi": run_cabi}[sys.argv[1]]
    for c in json.load(sys.stdin):
        print(f"start {c['id']}", flush=True)
        outcome, detail = runner(c)
        want = expected_refusal(c)
        if outcome == "refused" and want is None:
            outcome, detail = "wrong", f"refused a case the contract computes: {detail}"
        elif outcome != "refused" and want is not None:
            outcome, detail = "wrong", f"computed a case the contract refuses ({want}): {detail}"
        print(f"done {c['id']} {outcome} {detail}", flush=True)
    print(f"maxrss_kb {peak_rss_kb()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
