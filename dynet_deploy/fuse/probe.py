"""Measure, don't pattern-match: run a candidate's coefficient -> weight subgraph on basis coefficients to
read off the bank, then check it on fresh random coefficients to be the linear map the op computes.

A spatial factor (ODConv's ``a_s``: ``kH*kW`` values per sample, each scaling one tap of every fused kernel) is
measured the same way: the bank is read with the spatial values at one, the tap each value scales with one value
set at a time, and the whole map is then checked on random coefficients and random spatial values together."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from .graph import _default_opset, _int_shape, _NoMatch, _walk_back

PROBE_RTOL = 1e-4


class _Probe:
    """Runs the subgraph ``leaves -> outputs`` on onnxruntime, ``batch`` samples at a time."""

    def __init__(self, nodes, leaves, outputs, batch: int, sample_shapes, opset_imports) -> None:
        import onnx_graphsurgeon as gs
        import onnxruntime as ort

        self.batch = batch
        self.sample_shapes = [list(s) for s in sample_shapes]
        inputs = [
            gs.Variable(f"probe_in_{i}", dtype=np.float32, shape=[batch, *s]) for i, s in enumerate(self.sample_shapes)
        ]
        mapping = {id(leaf): inp for leaf, inp in zip(leaves, inputs)}
        outs = [gs.Variable(f"probe_out_{i}", dtype=np.float32) for i in range(len(outputs))]
        for t, o in zip(outputs, outs):
            mapping[id(t)] = o
        copies = []
        order = {id(n): i for i, n in enumerate(nodes)}
        for n in sorted(nodes, key=lambda n: order[id(n)]):
            copies.append(
                gs.Node(
                    n.op,
                    name=n.name,
                    attrs=dict(n.attrs),
                    inputs=[self._map(t, mapping) for t in n.inputs],
                    outputs=[self._map(t, mapping) for t in n.outputs],
                    domain=n.domain,
                )
            )
        g = gs.Graph(nodes=copies, inputs=inputs, outputs=outs, opset=_default_opset(opset_imports))
        g.cleanup().toposort()
        model = gs.export_onnx(g)
        del model.opset_import[:]
        model.opset_import.extend(opset_imports)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self.in_names = [i.name for i in inputs]
        self.out_names = [o.name for o in outs]

    @staticmethod
    def _map(t, mapping):
        import onnx_graphsurgeon as gs

        if id(t) in mapping:
            return mapping[id(t)]
        if isinstance(t, gs.Constant) or not t.name:
            return t
        v = gs.Variable(t.name, dtype=t.dtype, shape=t.shape)
        mapping[id(t)] = v
        return v

    def __call__(self, *values: np.ndarray) -> list[list[tuple[np.ndarray, int]]]:
        """One ``[S, M_i]`` array per leaf (any S, the same for all); per output, its (batch output, real samples
        in it) per chunk of S."""
        results: list[list[tuple[np.ndarray, int]]] = [[] for _ in self.out_names]
        total = values[0].shape[0]
        for start in range(0, total, self.batch):
            feed = {}
            real = min(self.batch, total - start)
            for name, shape, v in zip(self.in_names, self.sample_shapes, values):
                chunk = v[start : start + self.batch]
                if real < self.batch:
                    chunk = np.concatenate([chunk, np.zeros((self.batch - real, chunk.shape[1]), chunk.dtype)])
                feed[name] = chunk.reshape(self.batch, *shape).astype(np.float32)
            outs = self.session.run(self.out_names, feed)
            for i, o in enumerate(outs):
                results[i].append((o, real))
        return results


class _Aggregation(NamedTuple):
    """What a probe measured: the coefficient layout and K, the bank ``[K, C_out, J]`` (None without a weight), the
    bias bank ``[K, C_out]`` and static bias ``[C_out]`` (None when absent), and for a spatial factor the order
    of its values by tap (``spatial[n, t] = leaf[n, order[t]]``; None without one)."""

    layout: str
    num_bases: int
    bank: np.ndarray | None
    bias_bank: np.ndarray | None
    bias: np.ndarray | None
    spatial_order: tuple[int, ...] | None = None


def _is_channel_vector(shape, c_out: int, batch: int | None) -> bool:
    """A bias-like operand: ``[C_out,1,1]``, ``[1|N, C_out, 1, 1]`` (N = ``batch``, or symbolic when ``batch`` is None)."""
    if shape is None:
        return False
    shape = list(shape)
    if len(shape) == 4 and batch is None and not isinstance(shape[0], (int, np.integer)):
        shape[0] = None
    elif not all(isinstance(d, (int, np.integer)) for d in shape):
        return False
    if len(shape) == 3:
        return shape == [c_out, 1, 1]
    if len(shape) == 4:
        return shape[1] == c_out and shape[2:] == [1, 1] and (shape[0] in (1, batch))
    return False


def _per_sample_bias(arr: np.ndarray, samples: int, c_out: int) -> np.ndarray:
    """A bias term's value as ``[samples, C_out]`` (broadcasting a batch of 1)."""
    a = np.asarray(arr, dtype=np.float64)
    if a.size == c_out:
        return np.broadcast_to(a.reshape(1, c_out), (samples, c_out))
    if a.size == samples * c_out:
        return a.reshape(samples, c_out)
    raise _NoMatch(f"bias term of shape {list(a.shape)} does not fit {samples} samples x {c_out} channels")


def per_sample_size(t, batch: int) -> int | None:
    """Values per sample of a run-time tensor whose static shape starts with ``batch``, else None."""
    shape = _int_shape(t)
    if shape is None or not shape or shape[0] != batch:
        return None
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1


def _sample_shape(t, batch: int, weight: bool) -> list[int]:
    """The per-sample shape a probe feeds ``t`` at ``batch`` samples."""
    shape = _int_shape(t)
    if shape is None:
        if weight:
            raise _NoMatch(f"run-time tensor {t.name!r} has no static shape")
        shape = (
            [batch] + [int(d) for d in t.shape[1:]]
            if t.shape and all(isinstance(d, int) for d in t.shape[1:])
            else None
        )
        if shape is None:
            raise _NoMatch(f"coefficient tensor {t.name!r} has unknown per-sample shape")
    if shape[0] != batch:
        if weight:
            raise _NoMatch(f"run-time tensor {t.name!r} has batch {shape[0]}, the conv {batch}")
        shape = [batch] + shape[1:]
    return shape[1:]


def _tap_order(weights: np.ndarray, taps: int) -> tuple[int, ...]:
    """``weights[m]`` is the kernel made with spatial value ``m`` at one and the others at zero: the tap each value
    scales (``order[t] = m``), which must be one tap per value."""
    energy = np.abs(weights.reshape(taps, -1, taps)).sum(axis=1)  # [value m, tap t]
    peak = energy.max() if energy.size else 0.0
    if peak == 0.0:
        raise _NoMatch("the kernel does not depend on the spatial factor")
    order = [-1] * taps
    unused = []
    for m in range(taps):
        row = energy[m]
        if row.max() <= 1e-9 * peak:
            unused.append(m)  # a tap whose weights are all zero: any value may scale it
            continue
        t = int(row.argmax())
        if taps > 1 and np.sort(row)[-2] > 1e-6 * row[t]:
            raise _NoMatch(f"spatial value {m} scales several taps of the kernel")
        if order[t] != -1:
            raise _NoMatch(f"spatial values {order[t]} and {m} scale the same tap")
        order[t] = m
    for t in range(taps):
        if order[t] == -1:
            order[t] = unused.pop(0)
    return tuple(order)


def _measure_aggregation(
    graph,
    leaf,
    weight_t,
    bias_ts,
    batch: int,
    c_out: int,
    j: int,
    layouts: Sequence[str],
    opset_imports,
    spatial=None,
    taps: int = 1,
) -> _Aggregation:
    """Read off the bank (and bias bank / static bias, and a spatial factor's tap order) by probing; verify on
    random coefficients (and random spatial values).

    ``leaf`` is the coefficient tensor; with ``spatial`` (a tensor of ``taps`` values per sample, ``taps`` = kH*kW)
    it may be None: the weight depends on the spatial factor alone (one basis kernel, coefficient 1). The map
    checked is ``W[n] = s[n] (.) sum_k c[n, t|0, k] W_k`` with ``s[n]`` scaling tap ``(i, j)`` by one value.
    """
    runtime = [t for t in (leaf, spatial) if t is not None]
    outputs = ([weight_t] if weight_t is not None else []) + list(bias_ts)
    sub_nodes, leaves = _walk_back(outputs, stop=lambda t: any(t is r for r in runtime))
    if any(all(lf is not r for r in runtime) for lf in leaves):
        raise _NoMatch("the aggregation depends on more than one run-time tensor")
    sample = _sample_shape(leaf, batch, weight_t is not None) if leaf is not None else []
    m = int(np.prod(sample)) if leaf is not None and sample else (1 if leaf is not None else 0)
    shapes = [sample] if leaf is not None else []
    if spatial is not None:
        s_sample = _sample_shape(spatial, batch, True)
        if int(np.prod(s_sample)) != taps:
            raise _NoMatch(
                f"spatial factor {spatial.name!r} has {int(np.prod(s_sample))} values per sample, not {taps}"
            )
        shapes.append(s_sample)
    try:
        probe = _Probe(sub_nodes, runtime, outputs, batch, shapes, opset_imports)
    except Exception as exc:
        raise _NoMatch(
            f"the aggregation subgraph does not run on its own ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None

    def unit_spatial(rows: int) -> np.ndarray:
        return np.ones((rows, taps if spatial is not None else 0))

    def evaluate(coeffs: np.ndarray, spat: np.ndarray) -> list[np.ndarray]:
        """Outputs for ``[S, M]`` coefficients and ``[S, taps]`` spatial values (each ignored when absent)."""
        s = coeffs.shape[0]
        raw = probe(*([coeffs] if leaf is not None else []), *([spat] if spatial is not None else []))
        per_out = []
        for i, chunks in enumerate(raw):
            parts = []
            for arr, real in chunks:
                a = np.asarray(arr, dtype=np.float64)
                if i == 0 and weight_t is not None:
                    parts.append(a.reshape(batch, c_out * j)[:real])
                else:
                    parts.append(_per_sample_bias(a, batch, c_out)[:real])
            per_out.append(np.concatenate(parts)[:s])
        return per_out

    rng = np.random.default_rng(0)
    reasons = []
    for layout in layouts if leaf is not None else ("expert",):
        if leaf is None:
            k = 1
        elif layout == "expert":
            k = m
        else:
            if m % c_out:
                continue
            k = m // c_out
        if k < 1:
            continue
        samples = max(2, batch)
        if leaf is not None:
            basis = np.zeros((k + 1, m))  # row 0: all zero; row 1+k: basis k
            for kk in range(k):
                if layout == "expert":
                    basis[kk + 1, kk] = 1.0
                elif layout == "tk":
                    basis[kk + 1].reshape(c_out, k)[:, kk] = 1.0
                else:
                    basis[kk + 1].reshape(k, c_out)[kk, :] = 1.0
            base_out = evaluate(basis, unit_spatial(k + 1))
        else:  # the spatial factor alone: row 0 all zero, row 1 all one
            base_out = evaluate(np.zeros((2, 0)), np.stack([np.zeros(taps), np.ones(taps)]))
        rand = rng.uniform(0.05, 1.0, size=(samples, m))
        rand_s = rng.uniform(0.05, 1.0, size=(samples, taps)) if spatial is not None else unit_spatial(samples)
        rand_out = evaluate(rand, rand_s)
        if leaf is None:
            c_tk = np.ones((samples, c_out, 1))
        elif layout == "expert":
            c_tk = np.repeat(rand.reshape(-1, 1, k), c_out, axis=1)
        elif layout == "tk":
            c_tk = rand.reshape(-1, c_out, k)
        else:
            c_tk = rand.reshape(-1, k, c_out).transpose(0, 2, 1)
        ok = True
        results = []
        order = None
        for idx, (outs, actual) in enumerate(zip(base_out, rand_out)):
            zero = outs[0]
            deltas = outs[1:] - zero  # [K, C_out*J] or [K, C_out]
            if weight_t is not None and idx == 0:
                scale = np.abs(outs[1:]).max() if deltas.size else 0.0
                if np.abs(zero).max() > 1e-6 * max(scale, 1e-12):
                    ok = False
                    what = "spatial factor" if leaf is None else "coefficients"
                    reasons.append(f"{layout}: the kernel has a part that does not scale with the {what}")
                    break
                d = deltas.reshape(k, c_out, j)
                pred = np.einsum("stk,ktj->stj", c_tk, d)
                if spatial is not None:
                    try:
                        order = _tap_order(evaluate(np.repeat(rand[:1], taps, 0), np.eye(taps))[0], taps)
                    except _NoMatch as exc:
                        ok = False
                        reasons.append(f"{layout}: {exc}")
                        break
                    s_tap = rand_s[:, list(order)]
                    pred = (pred.reshape(samples, c_out, j // taps, taps) * s_tap[:, None, None, :]).reshape(
                        samples, c_out, j
                    )
                pred = pred.reshape(actual.shape)
                results.append(d)
            else:
                d = deltas.reshape(k, c_out)
                pred = zero[None, :] + np.einsum("stk,kt->st", c_tk, d)
                results.append((d, zero))
            err = np.abs(pred - actual).max() if actual.size else 0.0
            if err > PROBE_RTOL * max(np.abs(actual).max(), 1e-6):
                ok = False
                what = f"{k} bases" + (" scaled tap by tap by the spatial factor" if spatial is not None else "")
                reasons.append(f"{layout}: not a coefficient-weighted sum of {what} (probe error {err:.2e})")
                break
        if not ok:
            continue
        bank = results[0] if weight_t is not None else None
        bias_bank = None
        bias = None
        for r in results[1 if weight_t is not None else 0 :]:
            d, zero = r
            bias_bank = d if bias_bank is None else bias_bank + d
            bias = zero if bias is None else bias + zero
        return _Aggregation(layout, k, bank, bias_bank, bias, order)
    raise _NoMatch(
        "; ".join(reasons) or f"coefficient tensor of {m} values per sample fits no layout for C_out={c_out}"
    )
