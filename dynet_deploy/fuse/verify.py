"""``fuse --verify``: the fused graph and the graph it came from, run on onnxruntime on one fresh random input."""

from __future__ import annotations

import numpy as np

from ..errors import FuseError
from ..tolerance import SUMMATION_ORDER, TOLERANCES, errors, non_finite_count


def verify_fused(original: str, fused: str, precision: str = "fp32") -> list[str]:
    """Run both graphs on one fresh random input; returns one result line per output; FuseError on non-finite
    outputs or a mismatch beyond :data:`~dynet_deploy.tolerance.SUMMATION_ORDER` (the two differ by summation order
    only), or for an fp16 fused graph beyond the fp16 tolerance."""
    from ..backends.onnxruntime import OnnxruntimeRunner

    tol = SUMMATION_ORDER if precision == "fp32" else TOLERANCES[precision]
    ref = OnnxruntimeRunner(original)
    new = OnnxruntimeRunner(fused)
    feeds = {}
    for name, (shape, dtype) in ref.input_spec().items():
        # Symbolic dims: batch 2 (catches batch mix-ups), 64 for spatial dims.
        dims = [d if isinstance(d, int) and d > 0 else (2 if axis == 0 else 64) for axis, d in enumerate(shape)]
        feeds[name] = np.random.default_rng().standard_normal(dims).astype(dtype)
    new_spec = new.input_spec()
    a = ref.run(feeds)
    b = new.run({n: x.astype(new_spec[n][1]) if n in new_spec else x for n, x in feeds.items()})
    failures = []
    lines = []
    for name in ref.output_names:
        bad_a, bad_b = non_finite_count(a[name]), non_finite_count(b[name])
        if bad_a or bad_b:
            failures.append(f"output {name!r} has non-finite values (NaN/Inf: {bad_b} fused, {bad_a} original)")
            continue
        max_abs, rel = errors(b[name].astype(np.float32), a[name], FuseError)
        ok = tol.allows_either(max_abs, rel)
        lines.append(
            f"verify {name}: fused vs original on onnxruntime, max-abs {max_abs:.2e}, relative {rel:.2e} "
            f"({'ok' if ok else 'MISMATCH'}: tolerance relative {tol.rel:g} or max-abs {tol.max_abs:g})"
        )
        if not ok:
            failures.append(f"output {name!r} differs (relative {rel:.2e} > {tol.rel:g})")
    if failures:
        raise FuseError(f"--verify failed, the fused graph was removed: {'; '.join(failures)}")
    return lines
