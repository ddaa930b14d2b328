"""Deployment recipes: one JSON file per deployed model, read by ``dynet-deploy deploy`` (and ``build`` /
``validate --recipe``).

A recipe is data: the checkpoint, the input shape, how the graphs are exported, the TensorRT optimisation
profile, the precisions with their tolerances, the random-input check, the data set for accuracy parity and the
latency run. :func:`load_recipe` reads and checks every field (unknown field, wrong type, out of range, a profile
whose min > opt or opt > max, an unknown data set) and returns a frozen :class:`Recipe` that the stages read.
Every error names the file and the field (``profile.opt``) and says what would be accepted.

The schema (``dynet_deploy/recipes/README.md`` documents it for users)::

    {
      "name": "dy_resnet18_fmnist",                 optional; default: the file's stem. One path component and a
                                                  Triton model name: letters, digits, '_', '-', '.', <= 64 characters
      "checkpoint": "dy_resnet18_fmnist",           a bundled checkpoint's name, or a path (relative to the recipe)
      "input_shape": [1, 28, 28],                   C, H, W of one sample
      "export": {"portable": {"form": "feature", "batch": "dynamic"},
                 "fuse_from": {"form": "kernel", "batch": 1},
                 "opset": 17},                      optional, >= 17
      "profile": {"min": 1, "opt": 8, "max": 8},    TensorRT batch profile; also the Triton max_batch_size
      "precisions": {"fp32": {"max_abs": 1e-4, "rel": 1e-5}, "fp16": {...}},   fp32 required
      "validate": {"batch_sizes": [1, 4, 7], "seed": 0},                      optional
      "dataset": {"name": "fashion-mnist", "split": "test", "fallback": "digits", "limit": null,
                  "batch": 500, "agreement": {"fp32": 1.0, "fp16": 0.999}},  optional
      "latency": {"batch": 1, "repeats": 50, "warmup": 5, "threads": 2, "baseline": "resnet18_fmnist"}  optional
    }

``latency.baseline`` names a bundled checkpoint only; a checkpoint of one's own is ``latency.baseline_checkpoint``,
a path relative to the recipe. ``input_shape`` holds at most :data:`MAX_SAMPLE_VALUES` values per sample and every
batch size at most :data:`MAX_BATCH`, so that no stage is asked for an allocation no machine has.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import RecipeError
from .graph import MIN_OPSET
from .resources import ASSETS_DIR, RECIPES_DIR
from .tolerance import Tolerance

BUNDLED_RECIPE = "dy_resnet18_fmnist"

FORMS = ("feature", "kernel")
PRECISIONS = ("fp32", "fp16")
SPLITS = ("test", "train")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # one path component and a valid Triton model name
MAX_SAMPLE_VALUES = 1 << 26  # values in one input sample (C*H*W): 256 MB as fp32, e.g. 3x4096x4096 fits
MAX_BATCH = 1 << 16  # largest batch in the profile: TensorRT and Triton hold batch sizes in 32-bit integers


@dataclass(frozen=True)
class ExportForm:
    """One exported graph: ``form`` (feature / kernel) and its batch (``None``: dynamic)."""

    form: str
    batch: int | None

    @property
    def dynamic(self) -> bool:
        return self.batch is None


@dataclass(frozen=True)
class BatchProfile:
    """TensorRT optimisation profile over the batch dimension: min <= opt <= max, all >= 1."""

    min: int
    opt: int
    max: int

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.min, self.opt, self.max)


# A precision's tolerances: largest max-abs error and largest relative error ||out-ref|| / ||ref||.
PrecisionSpec = Tolerance


@dataclass(frozen=True)
class ValidateSpec:
    batch_sizes: tuple[int, ...] = (1, 4, 7)
    seed: int = 0


@dataclass(frozen=True)
class DatasetSpec:
    """Accuracy parity: top-1 of PyTorch and the deployed graph over a split, and their agreement per precision."""

    name: str
    split: str = "test"
    fallback: str | None = None
    limit: int | None = None
    batch: int = 500
    agreement: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LatencySpec:
    batch: int = 1
    repeats: int = 50
    warmup: int = 5
    threads: int = 2
    baseline: str | None = None  # a bundled checkpoint's name
    baseline_checkpoint: str | None = None  # or a checkpoint path, relative to the recipe


@dataclass(frozen=True)
class Recipe:
    name: str
    checkpoint: str
    input_shape: tuple[int, int, int]
    portable: ExportForm
    fuse_from: ExportForm
    opset: int
    profile: BatchProfile
    precisions: Mapping[str, PrecisionSpec]
    validate: ValidateSpec
    dataset: DatasetSpec | None
    latency: LatencySpec
    path: Path | None = None  # the file it was read from; relative checkpoint paths resolve against its folder

    def tolerance(self, precision: str) -> PrecisionSpec:
        if precision not in self.precisions:
            raise RecipeError(
                f"{self._where()}: precision {precision!r} is not in the recipe's 'precisions' "
                f"({', '.join(self.precisions)}); add it with its max_abs and rel tolerances"
            )
        return self.precisions[precision]

    def agreement(self, precision: str) -> float | None:
        return None if self.dataset is None else self.dataset.agreement.get(precision)

    def checkpoint_path(self) -> Path:
        """The checkpoint file: a bundled checkpoint by name, else a path relative to the recipe's folder."""
        bundled = ASSETS_DIR / f"{self.checkpoint}.safetensors"
        if "/" not in self.checkpoint and not Path(self.checkpoint).suffix and bundled.is_file():
            return bundled
        p = Path(self.checkpoint).expanduser()
        if not p.is_absolute() and self.path is not None:
            p = self.path.parent / p
        if not p.is_file():
            known = sorted(q.name[: -len(".safetensors")] for q in ASSETS_DIR.glob("*.safetensors"))
            raise RecipeError(
                f"{self._where()}: checkpoint {self.checkpoint!r} is neither a bundled checkpoint "
                f"({', '.join(known) or 'none'}) nor a file ({p}); fix 'checkpoint'"
            )
        return p

    def baseline_checkpoint_path(self) -> Path | None:
        """The latency baseline's checkpoint: a bundled one by name, or the recipe's path field; None without one."""
        from .train import bundled_checkpoint

        if self.latency.baseline is not None:
            return bundled_checkpoint(self.latency.baseline)
        if self.latency.baseline_checkpoint is None:
            return None
        p = Path(self.latency.baseline_checkpoint).expanduser()
        if not p.is_absolute() and self.path is not None:
            p = self.path.parent / p
        if not p.is_file():
            raise RecipeError(f"{self._where()}: latency.baseline_checkpoint {str(p)!r} is not a file; fix the field")
        return p

    def to_dict(self) -> dict[str, Any]:
        """The recipe with every default filled in, in the file's schema (``load_recipe_dict`` reads it back)."""
        d = asdict(self)
        d.pop("path")
        d["input_shape"] = list(self.input_shape)
        d["export"] = {
            "portable": _form_dict(self.portable),
            "fuse_from": _form_dict(self.fuse_from),
            "opset": self.opset,
        }
        for k in ("portable", "fuse_from", "opset"):
            d.pop(k)
        d["precisions"] = {k: asdict(v) for k, v in self.precisions.items()}
        d["validate"]["batch_sizes"] = list(self.validate.batch_sizes)
        if self.dataset is not None:
            d["dataset"]["agreement"] = dict(self.dataset.agreement)
        else:
            d.pop("dataset")
        return d

    def _where(self) -> str:
        return f"recipe {self.path}" if self.path is not None else f"recipe {self.name!r}"


def _form_dict(f: ExportForm) -> dict[str, Any]:
    return {"form": f.form, "batch": "dynamic" if f.batch is None else f.batch}


# ---- reading and checking ------------------------------------------------------------------------------------


def bundled_recipe_path(name: str = BUNDLED_RECIPE) -> Path:
    path = RECIPES_DIR / f"{name}.json"
    if not path.is_file():
        raise RecipeError(f"no bundled recipe {path}; the bundled recipes live in the package's recipes/ folder")
    return path


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe file; raises :class:`RecipeError` naming the field on any problem."""
    from .graph import check_readable_file

    p = Path(path)
    hint = f"bundled: {bundled_recipe_path()}" if RECIPES_DIR.is_dir() else ""
    check_readable_file(p, RecipeError, "recipe", hint)  # missing, a directory, a broken link, unreadable: said so
    from .guards import loads_json

    try:
        data = loads_json(p.read_text(encoding="utf-8"), RecipeError, f"recipe {p}")
    except UnicodeDecodeError:
        raise RecipeError(f"recipe {p} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise RecipeError(f"recipe {p} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    return load_recipe_dict(data, path=p)


def load_recipe_dict(data: Any, path: Path | None = None) -> Recipe:
    """Check an already-parsed recipe (``path`` only names it in errors and anchors relative checkpoints)."""
    c = _Checker(f"recipe {path}" if path is not None else "recipe")
    top = c.obj(
        data,
        "",
        required=("checkpoint", "input_shape", "precisions"),
        optional=("name", "export", "profile", "validate", "dataset", "latency"),
    )

    checkpoint = c.string(top["checkpoint"], "checkpoint")
    if not checkpoint.strip():
        c.fail("checkpoint", "is empty; give a bundled checkpoint's name or a path")
    name = (
        c.string(top["name"], "name") if "name" in top else (path.stem if path is not None else Path(checkpoint).stem)
    )
    if not NAME_RE.match(name):
        shown = f"{name[:80]!r}{'...' if len(name) > 80 else ''}"
        c.fail(
            "name",
            f"is {shown}{'' if 'name' in top else ' (the file stem: the recipe has no name)'}: a recipe's name is its "
            "output folder (out/<name>) and its Triton model name, so it must be 1-64 letters, digits, '_', '-' or "
            "'.', starting with a letter or digit; fix 'name'",
        )
    shape = c.int_list(top["input_shape"], "input_shape", minimum=1)
    if len(shape) != 3:
        c.fail("input_shape", f"must be [C, H, W] (3 integers), got {len(shape)}")
    if math.prod(shape) > MAX_SAMPLE_VALUES:
        c.fail(
            "input_shape",
            f"{shape} is {math.prod(shape):,} values per sample ({math.prod(shape) * 4 / 1e9:.1f} GB as fp32); "
            f"the limit is {MAX_SAMPLE_VALUES:,} (e.g. [3, 4096, 4096]): give the size the model is deployed at",
        )

    exp = c.obj(top.get("export", {}), "export", optional=("portable", "fuse_from", "opset"))
    portable = _export_form(c, exp.get("portable", {"form": "feature", "batch": "dynamic"}), "export.portable")
    fuse_from = _export_form(c, exp.get("fuse_from", {"form": "kernel", "batch": 1}), "export.fuse_from")
    opset = c.integer(exp.get("opset", MIN_OPSET), "export.opset", minimum=MIN_OPSET)

    prof = c.obj(top.get("profile", {"min": 1, "opt": 8, "max": 8}), "profile", required=("min", "opt", "max"))
    pmin, popt, pmax = (c.integer(prof[k], f"profile.{k}", minimum=1) for k in ("min", "opt", "max"))
    for k, v in (("min", pmin), ("opt", popt), ("max", pmax)):
        if v > MAX_BATCH:
            c.fail(
                f"profile.{k}",
                f"is {v:,}, above the largest batch {MAX_BATCH:,} (TensorRT's profile and Triton's max_batch_size "
                "are 32-bit, and a batch this large would not fit in memory); give a smaller batch",
            )
    if pmin > popt:
        c.fail("profile", f"has min {pmin} > opt {popt}; TensorRT needs min <= opt <= max")
    if popt > pmax:
        c.fail("profile", f"has opt {popt} > max {pmax}; TensorRT needs min <= opt <= max")
    profile = BatchProfile(pmin, popt, pmax)

    precs_raw = c.obj(top["precisions"], "precisions", optional=PRECISIONS)
    if "fp32" not in precs_raw:
        c.fail("precisions", "needs 'fp32' (the precision every graph is checked in); fp16 is optional")
    precisions: dict[str, PrecisionSpec] = {}
    for prec, tol in precs_raw.items():
        t = c.obj(tol, f"precisions.{prec}", required=("max_abs", "rel"))
        precisions[prec] = PrecisionSpec(
            c.tolerance(t["max_abs"], f"precisions.{prec}.max_abs", upper=math.inf),
            c.tolerance(t["rel"], f"precisions.{prec}.rel", upper=1.0),
        )

    val = c.obj(top.get("validate", {}), "validate", optional=("batch_sizes", "seed"))
    batch_sizes = tuple(c.int_list(val.get("batch_sizes", [1, 4, 7]), "validate.batch_sizes", minimum=1))
    if not batch_sizes:
        c.fail("validate.batch_sizes", "is empty; give at least one batch size")
    validate = ValidateSpec(batch_sizes, c.integer(val.get("seed", 0), "validate.seed", minimum=0))

    dataset = None
    if "dataset" in top and top["dataset"] is not None:
        dataset = _dataset(c, top["dataset"], precisions)

    lat = c.obj(
        top.get("latency", {}),
        "latency",
        optional=("batch", "repeats", "warmup", "threads", "baseline", "baseline_checkpoint"),
    )
    baseline = lat.get("baseline")
    if baseline is not None:
        _bundled_name(c, baseline, "latency.baseline")
    base_path = lat.get("baseline_checkpoint")
    if base_path is not None and not c.string(base_path, "latency.baseline_checkpoint").strip():
        c.fail("latency.baseline_checkpoint", "is empty; give a checkpoint path (relative to the recipe) or drop it")
    if baseline is not None and base_path is not None:
        c.fail("latency", "has both 'baseline' and 'baseline_checkpoint'; keep one")
    latency = LatencySpec(
        batch=c.integer(lat.get("batch", 1), "latency.batch", minimum=1),
        repeats=c.integer(lat.get("repeats", 50), "latency.repeats", minimum=1),
        warmup=c.integer(lat.get("warmup", 5), "latency.warmup", minimum=0),
        threads=c.integer(lat.get("threads", 2), "latency.threads", minimum=1),
        baseline=baseline,
        baseline_checkpoint=base_path,
    )
    if not profile.min <= latency.batch <= profile.max:
        c.fail("latency.batch", f"is {latency.batch}, outside the profile's batch range {profile.min}..{profile.max}")
    outside = [b for b in batch_sizes if not profile.min <= b <= profile.max]
    if outside:
        c.fail(
            "validate.batch_sizes",
            f"{outside} lie outside the profile's batch range {profile.min}..{profile.max}; "
            "the engine could not run them",
        )

    return Recipe(
        name,
        checkpoint,
        (shape[0], shape[1], shape[2]),
        portable,
        fuse_from,
        opset,
        profile,
        precisions,
        validate,
        dataset,
        latency,
        path,
    )


def _bundled_name(c: "_Checker", v: Any, where: str) -> str:
    from .train import ASSETS_DIR

    s = c.string(v, where)
    known = sorted(q.name[: -len(".safetensors")] for q in ASSETS_DIR.glob("*.safetensors"))
    if s not in known:
        close = difflib.get_close_matches(s, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        c.fail(
            where,
            f"is {s!r}, not a bundled checkpoint ({', '.join(known) or 'none'}){hint}; for a checkpoint of your own "
            "use 'latency.baseline_checkpoint' (a path relative to the recipe)",
        )
    return s


def _export_form(c: "_Checker", raw: Any, where: str) -> ExportForm:
    d = c.obj(raw, where, required=("form",), optional=("batch",))
    form = c.choice(d["form"], f"{where}.form", FORMS)
    batch_raw = d.get("batch", "dynamic" if form == "feature" else 1)
    if batch_raw == "dynamic":
        batch = None
    elif isinstance(batch_raw, str):
        c.fail(f"{where}.batch", f'must be "dynamic" or an integer >= 1, got {batch_raw!r}')
    else:
        batch = c.integer(batch_raw, f"{where}.batch", minimum=1)
    if form == "kernel" and batch is None:
        c.fail(
            f"{where}.batch",
            'cannot be "dynamic" for the kernel form (batch-as-groups needs a fixed batch); '
            "give an integer, e.g. 1 ('fuse' makes the batch dynamic)",
        )
    return ExportForm(form, batch)


def _dataset(c: "_Checker", raw: Any, precisions: Mapping[str, PrecisionSpec]) -> DatasetSpec:
    from .data import DATASETS

    d = c.obj(raw, "dataset", required=("name",), optional=("split", "fallback", "limit", "batch", "agreement"))
    known = (*DATASETS, "auto")
    name = c.choice(d["name"], "dataset.name", known, what="data set")
    fallback = d.get("fallback")
    if fallback is not None:
        fallback = c.choice(fallback, "dataset.fallback", DATASETS, what="data set")
    limit = d.get("limit")
    if limit is not None:
        limit = c.integer(limit, "dataset.limit", minimum=1)
    agree_raw = c.obj(d.get("agreement", {"fp32": 1.0}), "dataset.agreement", optional=PRECISIONS)
    agreement = {}
    for prec, v in agree_raw.items():
        if prec not in precisions:
            c.fail(
                f"dataset.agreement.{prec}",
                f"names a precision the recipe does not list in 'precisions' ({', '.join(precisions)})",
            )
        f = c.number(v, f"dataset.agreement.{prec}")
        if not 0.0 < f <= 1.0:
            c.fail(f"dataset.agreement.{prec}", f"must be a fraction in (0, 1], got {v!r}")
        agreement[prec] = f
    return DatasetSpec(
        name=name,
        split=c.choice(d.get("split", "test"), "dataset.split", SPLITS),
        fallback=fallback,
        limit=limit,
        batch=c.integer(d.get("batch", 500), "dataset.batch", minimum=1),
        agreement=agreement,
    )


_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
    type(None): "null",
}


def _type_name(v: Any) -> str:
    return _TYPE_NAMES.get(type(v), type(v).__name__)


class _Checker:
    """Type and range checks that raise RecipeError with the field's dotted path."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field_path: str, message: str):
        at = f"field {field_path!r}" if field_path else "top level"
        raise RecipeError(f"{self.where}: {at} {message}")

    def obj(self, v: Any, path: str, required=(), optional=()) -> dict[str, Any]:
        if not isinstance(v, dict):
            self.fail(path, f"must be an object, got {_type_name(v)}")
        allowed = (*required, *optional)
        for key in v:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                full = f"{path}.{key}" if path else key
                raise RecipeError(f"{self.where}: unknown field {full!r}{hint} (known here: {', '.join(allowed)})")
        for key in required:
            if key not in v:
                full = f"{path}.{key}" if path else key
                raise RecipeError(f"{self.where}: missing required field {full!r}")
        return v

    def string(self, v: Any, path: str) -> str:
        if not isinstance(v, str):
            self.fail(path, f"must be a string, got {_type_name(v)} {v!r}")
        return v

    def integer(self, v: Any, path: str, minimum: int | None = None) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(path, f"must be an integer, got {_type_name(v)} {v!r}")
        if minimum is not None and v < minimum:
            self.fail(path, f"must be >= {minimum}, got {v}")
        return v

    def number(self, v: Any, path: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(path, f"must be a number, got {_type_name(v)} {v!r}")
        if not math.isfinite(v):
            self.fail(path, f"must be finite, got {v!r}")
        return float(v)

    def tolerance(self, v: Any, path: str, upper: float) -> float:
        f = self.number(v, path)
        if not 0.0 < f < upper:
            bound = "(0, 1)" if upper == 1.0 else "> 0"
            self.fail(path, f"must be a tolerance {bound}, got {v!r} (e.g. 1e-4)")
        return f

    def int_list(self, v: Any, path: str, minimum: int | None = None) -> list[int]:
        if not isinstance(v, list):
            self.fail(path, f"must be a list of integers, got {_type_name(v)} {v!r}")
        return [self.integer(x, f"{path}[{i}]", minimum) for i, x in enumerate(v)]

    def choice(self, v: Any, path: str, options, what: str = "value") -> str:
        s = self.string(v, path)
        if s not in options:
            close = difflib.get_close_matches(s, options, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            self.fail(path, f"is an unknown {what} {s!r}{hint} (known: {', '.join(options)})")
        return s


__all__: list[str] = [
    "BUNDLED_RECIPE",
    "BatchProfile",
    "DatasetSpec",
    "ExportForm",
    "LatencySpec",
    "PrecisionSpec",
    "Recipe",
    "ValidateSpec",
    "bundled_recipe_path",
    "load_recipe",
    "load_recipe_dict",
]
