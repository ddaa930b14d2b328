"""The passes over a fused graph, in order: epilogue folds (:mod:`.epilogue`), coefficient predictors in fewer nodes
(:mod:`.predictor`), a narrowed weight bank (:mod:`.bank`), then every op node stamped with the lowest op version the
graph needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import DynetDeployError, FuseError
from ..op.spec import BANK_DTYPES, stamp_version
from .epilogue import EpilogueFold, fold_epilogues, summarise_folds
from .predictor import PredictorRewrite, rewrite_predictors, summarise_predictors


@dataclass
class PostFuseReport:
    folds: list[EpilogueFold] = field(default_factory=list)
    predictors: list[PredictorRewrite] = field(default_factory=list)
    bank_dtype: str = "fp32"
    bank_nodes: int = 0
    op_version: int = 0

    @property
    def residuals(self) -> int:
        return sum(f.residual is not None for f in self.folds)

    @property
    def means(self) -> int:
        return sum(f.mean for f in self.folds)

    def details(self) -> list[str]:
        lines = [f.describe() for f in self.folds]
        if self.folds:
            lines.append(summarise_folds(self.folds))
        if self.predictors:
            lines.append(summarise_predictors(self.predictors))
        if self.bank_nodes:
            lines.append(
                f"weight bank: {self.bank_dtype} in {self.bank_nodes} node{'s' if self.bank_nodes != 1 else ''}"
            )
        if self.op_version:
            lines.append(f"op version {self.op_version}")
        return lines


def check_bank_dtype(bank_dtype: str, error: type[DynetDeployError] = FuseError) -> None:
    if bank_dtype not in BANK_DTYPES:
        raise error(f"bank dtype must be one of {', '.join(BANK_DTYPES)}, got {bank_dtype!r}")


def post_fuse(
    proto: Any,
    fold: bool = True,
    bank_dtype: str = "fp32",
    predictors: bool = True,
    error: type[DynetDeployError] = FuseError,
) -> tuple[Any, PostFuseReport]:
    """The passes over a fused ``onnx.ModelProto``: returns (new proto, what was done). ``fold``: the epilogue folds;
    ``predictors``: the predictor rewrite (exact, op version 1); ``bank_dtype``: the bank's storage type."""
    from .bank import apply_bank

    check_bank_dtype(bank_dtype, error)
    report = PostFuseReport(bank_dtype=bank_dtype)
    if fold:
        proto, report.folds = fold_epilogues(proto)
    if predictors:
        proto, report.predictors = rewrite_predictors(proto)
    proto, report.bank_nodes = apply_bank(proto, bank_dtype, error)
    report.op_version = stamp_version(proto)
    return proto, report
