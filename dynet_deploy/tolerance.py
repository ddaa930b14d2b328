"""The one tolerance type: how far a deployed graph's output may be from its reference, and how that is measured.

Two measures, both stated with every check: the largest element-wise difference ``max|out - ref|`` and the
relative error of the whole tensor ``||out - ref|| / ||ref||`` (computed in float64). Recipes, ``validate``,
``deploy``, ``export``'s check and ``fuse --verify`` all hold a :class:`Tolerance`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ValidationError


@dataclass(frozen=True)
class Tolerance:
    """``max_abs``: largest allowed |out - ref|; ``rel``: largest allowed ||out - ref|| / ||ref||."""

    max_abs: float
    rel: float

    def allows(self, max_abs: float, rel: float) -> bool:
        """Both measures within their bounds (validate and deploy: the graph must match everywhere)."""
        return max_abs <= self.max_abs and rel <= self.rel

    def allows_either(self, max_abs: float, rel: float) -> bool:
        """One measure within its bound (export's check, fuse --verify: outputs near 0 make ``rel`` large)."""
        return max_abs <= self.max_abs or rel <= self.rel

    def polygraphy(self) -> tuple[float, float]:
        """``(atol, rtol)`` for Polygraphy's element-wise comparison.

        Polygraphy's ``rtol`` is element-wise (|out - ref| / |ref| per value), not this type's norm-based ``rel``;
        passing ``rel`` there would fail graphs at values near zero. The element-wise check is therefore the max-abs
        bound alone (``rtol`` 0), the same bound this project's own check applies.
        """
        return self.max_abs, 0.0

    def describe(self) -> str:
        return f"max-abs {self.max_abs:g}, relative {self.rel:g}"


def non_finite_count(a: np.ndarray) -> int:
    """NaN and Inf values in ``a`` (0 for integer arrays)."""
    a = np.asarray(a)
    return int(a.size - np.isfinite(a).sum()) if np.issubdtype(a.dtype, np.inexact) else 0


def errors(out: np.ndarray, ref: np.ndarray, error: type[Exception] = ValidationError) -> tuple[float, float]:
    """(max-abs, relative) error of ``out`` against ``ref``, computed in float64 (inf where ``out`` is not finite)."""
    o = np.asarray(out, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if o.shape != r.shape:
        raise error(f"output shape {list(o.shape)} differs from the reference's {list(r.shape)}")
    diff = o - r
    max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
    denom = float(np.linalg.norm(r))
    rel = float(np.linalg.norm(diff) / denom) if denom > 0 else (0.0 if max_abs == 0 else float("inf"))
    if not np.all(np.isfinite(o)):
        return float("inf"), float("inf")
    return max_abs, rel


# fp32: the graph computes the same function in the same precision; only summation order differs.
# fp16: 10-bit mantissa (about 1e-3 per op, accumulated over depth).
# fp16-bank / bf16-bank: an fp32 graph whose op weight banks are stored in float16 / bfloat16 (`fuse --bank-dtype`),
# so only the bank is rounded (2^-11 / 2^-8 of each weight). Measured against PyTorch on random inputs (batches 1,
# 4, 3): the bundled Dy-ResNet18 (Fashion-MNIST) max-abs 7.2e-4 / 1.4e-2, relative 1.2e-4 / 1.9e-3; Dy-mobile,
# Dy-ResNet18 and Dy-ResNet50 at 224x224 relative at most 1.7e-4 / 1.2e-3. The bounds leave a factor of about 3 to 7.
TOLERANCES = {
    "fp32": Tolerance(1e-4, 1e-5),
    "fp16": Tolerance(5e-2, 1e-2),
    "fp16-bank": Tolerance(5e-3, 1e-3),
    "bf16-bank": Tolerance(5e-2, 1e-2),
}

# export's check and fuse --verify: two fp32 graphs of one function, summation order apart.
SUMMATION_ORDER = Tolerance(1e-4, 1e-4)
