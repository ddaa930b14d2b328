"""Tolerances per precision, the error measures (max-abs and ``||out - ref|| / ||ref||``) and report writing."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ValidationError
from ..fileio import atomic_write_text


@dataclass(frozen=True)
class Tolerance:
    """``max_abs``: largest allowed |out - ref|; ``rel``: largest allowed ||out - ref|| / ||ref||."""

    max_abs: float
    rel: float


# fp32: the graph computes the same function in the same precision; only summation order differs.
# fp16: 10-bit mantissa (about 1e-3 per op, accumulated over depth).
TOLERANCES = {"fp32": Tolerance(1e-4, 1e-5), "fp16": Tolerance(5e-2, 1e-2)}


# Agreement targets for data-set parity.
AGREEMENT_TARGETS = {"fp32": 1.0, "fp16": 0.999}


@dataclass
class OutputCheck:
    batch: int
    output: str
    shape: list[int]
    max_abs: float
    rel: float
    passed: bool
    non_finite: int = 0  # NaN/Inf values in the backend's output
    reference_non_finite: int = 0  # NaN/Inf values in PyTorch's output

    def verdict(self) -> str:
        if self.reference_non_finite:
            return f"NaN/Inf in PyTorch's output ({self.reference_non_finite} values): the weights hold NaN/Inf"
        if self.non_finite:
            return f"NaN/Inf in the output ({self.non_finite} values)"
        return "ok" if self.passed else "MISMATCH"


def non_finite_count(a: np.ndarray) -> int:
    """NaN and Inf values in ``a`` (0 for integer arrays)."""
    a = np.asarray(a)
    return int(a.size - np.isfinite(a).sum()) if np.issubdtype(a.dtype, np.inexact) else 0


def errors(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max-abs, relative) error of ``out`` against ``ref``, computed in float64."""
    o = np.asarray(out, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if o.shape != r.shape:
        raise ValidationError(f"output shape {list(o.shape)} differs from the reference's {list(r.shape)}")
    diff = o - r
    max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
    denom = float(np.linalg.norm(r))
    rel = float(np.linalg.norm(diff) / denom) if denom > 0 else (0.0 if max_abs == 0 else float("inf"))
    if not np.all(np.isfinite(o)):
        return float("inf"), float("inf")
    return max_abs, rel


def write_report(path: str | Path, payload: dict[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, default=_jsonable) + "\n", ValidationError)


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
