"""Per-output check results, agreement targets and report writing (tolerances and error measures:
:mod:`dynet_deploy.tolerance`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ValidationError
from ..fileio import atomic_write_text
from ..tolerance import TOLERANCES, Tolerance, errors, non_finite_count

# Agreement targets for data-set parity.
AGREEMENT_TARGETS = {"fp32": 1.0, "fp16": 0.999, "fp16-bank": 0.999, "bf16-bank": 0.999}


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


__all__ = ["AGREEMENT_TARGETS", "TOLERANCES", "OutputCheck", "Tolerance", "errors", "non_finite_count", "write_report"]
