"""A registry of zoo models by name, like timm's ``create_model``.

A checkpoint's JSON config names a model and its keyword arguments; ``create_model`` rebuilds it.
Every entry records its family, its static baseline (for Dy models) and the paper's figures it is held
against, so the FLOPs table and the benchmarks can pair models without a second list.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from torch import nn

from ..errors import ModelError


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    task: str = "classification"  # or "segmentation"
    dynamic: bool = False
    baseline: str | None = None  # the static model a Dy model is compared with
    paper_mflops: float | None = None  # the paper's multiply-adds at its input size, in millions
    input_size: tuple[int, int] = (224, 224)  # the size the paper's figure refers to
    notes: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    # Where the figure comes from a paper other than DyNet's: its count includes the dynamic overhead (attention,
    # kernel aggregation), so ours is compared with conv+linear+overhead; its own figure for the baseline.
    paper_counts_overhead: bool = False
    paper_baseline_mflops: float | None = None
    paper_params_m: float | None = None  # the paper's parameter count, in millions, where it gives one
    # The export forms its dynamic convs have (dynet_deploy.export.export_forms): ODConv's spatial attention has
    # no feature form, so the OD models export in the kernel form alone.
    export_forms: tuple[str, ...] = ("feature", "kernel")


_REGISTRY: dict[str, ModelInfo] = {}


Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


def register_model(
    name: str,
    *,
    task: str = "classification",
    dynamic: bool = False,
    baseline: str | None = None,
    paper_mflops: float | None = None,
    input_size: tuple[int, int] = (224, 224),
    notes: str = "",
    paper_counts_overhead: bool = False,
    paper_baseline_mflops: float | None = None,
    paper_params_m: float | None = None,
    export_forms: tuple[str, ...] = ("feature", "kernel"),
    **defaults: Any,
) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelInfo(
            name,
            fn,
            task,
            dynamic,
            baseline,
            paper_mflops,
            input_size,
            notes,
            dict(defaults),
            paper_counts_overhead,
            paper_baseline_mflops,
            paper_params_m,
            tuple(export_forms),
        )
        return fn

    return deco


def _ensure_loaded() -> None:
    # Importing the package registers every model module.
    import importlib

    importlib.import_module("dynet_deploy.models")


def list_models(task: str | None = None, dynamic: bool | None = None) -> list[str]:
    _ensure_loaded()
    return [
        n
        for n, i in _REGISTRY.items()
        if (task is None or i.task == task) and (dynamic is None or i.dynamic == dynamic)
    ]


def model_info(name: str) -> ModelInfo:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"unknown model {name!r}{hint} (known: {', '.join(sorted(_REGISTRY))})") from None


def _check_common_args(name: str, args: dict[str, Any]) -> None:
    """Values every zoo builder shares; a builder would otherwise clamp or crash on them."""
    import math

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for key in ("num_classes", "in_chans"):
        if key in args and not (is_int(args[key]) and args[key] >= 1):
            raise ModelError(f"bad arguments for model {name!r}: {key} must be an integer >= 1, got {args[key]!r}")
    if "width_mult" in args:
        w = args["width_mult"]
        if not (isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w > 0):
            raise ModelError(f"bad arguments for model {name!r}: width_mult must be a positive number, got {w!r}")


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build zoo model ``name``; unknown names and arguments raise ModelError."""
    info = model_info(name)
    args = {**info.defaults, **kwargs}
    _check_common_args(name, args)
    try:
        model = info.builder(**args)
    except TypeError as exc:
        raise ModelError(f"bad arguments for model {name!r}: {exc}") from None
    except (ValueError, ZeroDivisionError, RuntimeError, AssertionError, KeyError, IndexError) as exc:
        raise ModelError(f"bad arguments for model {name!r}: {type(exc).__name__}: {exc}") from None
    # what the model was built from, for checkpoints and reports (plain attributes, not submodules or parameters)
    setattr(model, "zoo_name", name)
    setattr(model, "zoo_kwargs", dict(kwargs))
    return model
