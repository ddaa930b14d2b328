"""Measure, don't pattern-match: run a candidate's coefficient -> weight subgraph on basis coefficients to
read off the bank, then check it on fresh random coefficients to be the linear map the op computes."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .graph import _default_opset, _int_shape, _NoMatch, _walk_back

PROBE_RTOL = 1e-4


class _Probe:
    """Runs the subgraph ``leaf -> outputs`` on onnxruntime, ``batch`` samples at a time."""

    def __init__(self, nodes, leaf, outputs, batch: int, sample_shape: Sequence[int], opset_imports) -> None:
        import onnx_graphsurgeon as gs
        import onnxruntime as ort

        self.batch = batch
        self.sample_shape = list(sample_shape)
        inp = gs.Variable("probe_coefficients", dtype=np.float32, shape=[batch, *self.sample_shape])
        mapping = {id(leaf): inp}
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
        g = gs.Graph(nodes=copies, inputs=[inp], outputs=outs, opset=_default_opset(opset_imports))
        g.cleanup().toposort()
        model = gs.export_onnx(g)
        del model.opset_import[:]
        model.opset_import.extend(opset_imports)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
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

    def __call__(self, coeffs: np.ndarray) -> list[list[tuple[np.ndarray, int]]]:
        """``coeffs`` is ``[S, M]`` for any S; per output, its (batch output, real samples in it) per chunk of S."""
        results: list[list[tuple[np.ndarray, int]]] = [[] for _ in self.out_names]
        for start in range(0, coeffs.shape[0], self.batch):
            chunk = coeffs[start : start + self.batch]
            real = chunk.shape[0]
            if real < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - real, chunk.shape[1]), chunk.dtype)])
            outs = self.session.run(
                self.out_names, {"probe_coefficients": chunk.reshape(self.batch, *self.sample_shape).astype(np.float32)}
            )
            for i, o in enumerate(outs):
                results[i].append((o, real))
        return results


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


def _measure_aggregation(
    graph, leaf, weight_t, bias_ts, batch: int, c_out: int, j: int, layouts: Sequence[str], opset_imports
):
    """Read off the bank (and bias bank / static bias) by probing; verify on random coefficients.

    Returns (layout, K, weight bank [K, C_out, J] or None, bias_bank [K, C_out] or None, bias [C_out] or None).
    """
    outputs = ([weight_t] if weight_t is not None else []) + list(bias_ts)
    sub_nodes, leaves = _walk_back(outputs, stop=lambda t: t is leaf)
    if any(lf is not leaf for lf in leaves):
        raise _NoMatch("the aggregation depends on more than one run-time tensor")
    leaf_shape = _int_shape(leaf)
    if leaf_shape is None:
        if weight_t is not None:
            raise _NoMatch(f"coefficient tensor {leaf.name!r} has no static shape")
        leaf_shape = (
            [batch] + [int(d) for d in leaf.shape[1:]]
            if leaf.shape and all(isinstance(d, int) for d in leaf.shape[1:])
            else None
        )
        if leaf_shape is None:
            raise _NoMatch(f"coefficient tensor {leaf.name!r} has unknown per-sample shape")
    if leaf_shape[0] != batch:
        if weight_t is not None:
            raise _NoMatch(f"coefficient tensor {leaf.name!r} has batch {leaf_shape[0]}, the conv {batch}")
        leaf_shape = [batch] + leaf_shape[1:]
    sample = leaf_shape[1:]
    m = int(np.prod(sample)) if sample else 1
    try:
        probe = _Probe(sub_nodes, leaf, outputs, batch, sample, opset_imports)
    except Exception as exc:
        raise _NoMatch(
            f"the aggregation subgraph does not run on its own ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None

    def evaluate(coeffs: np.ndarray) -> list[np.ndarray]:
        raw = probe(coeffs)
        s = coeffs.shape[0]
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
    for layout in layouts:
        if layout == "expert":
            k = m
        else:
            if m % c_out:
                continue
            k = m // c_out
        if k < 1:
            continue
        basis = np.zeros((k + 1, m))  # row 0: all zero; row 1+k: basis k
        for kk in range(k):
            if layout == "expert":
                basis[kk + 1, kk] = 1.0
            elif layout == "tk":
                basis[kk + 1].reshape(c_out, k)[:, kk] = 1.0
            else:
                basis[kk + 1].reshape(k, c_out)[kk, :] = 1.0
        base_out = evaluate(basis)
        rand = rng.uniform(0.05, 1.0, size=(max(2, batch), m))
        rand_out = evaluate(rand)
        if layout == "expert":
            c_tk = np.repeat(rand.reshape(-1, 1, k), c_out, axis=1)
        elif layout == "tk":
            c_tk = rand.reshape(-1, c_out, k)
        else:
            c_tk = rand.reshape(-1, k, c_out).transpose(0, 2, 1)
        ok = True
        results = []
        for idx, (outs, actual) in enumerate(zip(base_out, rand_out)):
            zero = outs[0]
            deltas = outs[1:] - zero  # [K, C_out*J] or [K, C_out]
            if weight_t is not None and idx == 0:
                scale = np.abs(outs[1:]).max() if deltas.size else 0.0
                if np.abs(zero).max() > 1e-6 * max(scale, 1e-12):
                    ok = False
                    reasons.append(f"{layout}: the kernel has a part that does not scale with the coefficients")
                    break
                d = deltas.reshape(k, c_out, j)
                pred = np.einsum("stk,ktj->stj", c_tk, d).reshape(actual.shape)
                results.append(d)
            else:
                d = deltas.reshape(k, c_out)
                pred = zero[None, :] + np.einsum("stk,kt->st", c_tk, d)
                results.append((d, zero))
            err = np.abs(pred - actual).max() if actual.size else 0.0
            if err > PROBE_RTOL * max(np.abs(actual).max(), 1e-6):
                ok = False
                reasons.append(f"{layout}: not a coefficient-weighted sum of {k} bases (probe error {err:.2e})")
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
        return layout, k, bank, bias_bank, bias
    raise _NoMatch(
        "; ".join(reasons) or f"coefficient tensor of {m} values per sample fits no layout for C_out={c_out}"
    )
