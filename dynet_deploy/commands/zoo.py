"""``dynet-deploy zoo``: every zoo model's parameters and multiply-adds next to the DyNet paper's figures (the
ODConv paper's for the OD-ResNets, which count the attention and kernel aggregation: there the total is compared).

Models are built on PyTorch's ``meta`` device and counted with :func:`dynet_deploy.flops.count_flops`, so the
table costs shapes only; only the models asked for (and their baselines) are built. Rows come in pairs: each
static baseline, then the DyNet models compared with it.

Counts are a pure function of the model code, the counter and the torch release, so rows are kept in a cache
file named by a hash of exactly those (``$DYNET_DEPLOY_CACHE`` or ``~/.cache/dynet-deploy``): a later call
answers without importing torch, and any change to the code names a new cache. ``--no-cache`` recounts.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

CACHE_ENV = "DYNET_DEPLOY_CACHE"
CACHE_FORMAT = "dynet-deploy-zoo-cache"

# Where our count and the paper's figure follow different conventions, or the figure comes from
# elsewhere, the table says so next to the row.
CONVENTION_NOTES = {
    "resnet50": "torchvision's ResNet50 is v1.5 (stride on the 3x3 conv); the paper's Caffe ResNet-50 is v1 "
    "(stride on the first 1x1): moving the stride there gives 3858 M (-0.8 %)",
    "dy_resnet50": "v1.5 stride placement as its baseline; with v1's (stride on the first 1x1) it is 1069.6 M (-0.5 %)",
    "mobilenet_v3_large": "paper figure from the MobileNetV3 paper",
    "mobilenet_v3_small": "paper figure from the MobileNetV3 paper",
    "dy_mobilenet_v3_large": "DyNet keeps the baseline's cost: paper figure = baseline's",
    "dy_mobilenet_v3_small": "DyNet keeps the baseline's cost: paper figure = baseline's",
    "shufflenet_v2_x1_5": "paper figure from the ShuffleNetV2 paper",
    "dy_shufflenet_v2_x1_5": "no paper figure at 1.5x",
    "fcn_resnet50": "paper gives GMACs, no input size: 768x768 is where this baseline costs 310.8 G; 19 classes",
    "dy_fcn_resnet50": "768x768, 19 classes, as its baseline",
    "od_resnet18": "ODConv paper (Li et al., ICLR 2022), ResNet18 on ImageNet (figures as the authors list them in OSVAI/ODConv): 11.94 M params, 1.838 G MACs, "
    "baseline 1.814 G; "
    "compared: conv+linear + Dy ovh (attention FCs, kernel fusion with the spatial multiply; the channel and filter "
    "attentions' element-wise scales are not counted)",
    "od_resnet18_4x": "ODConv paper, ResNet18 on ImageNet: 44.90 M params, 1.916 G MACs; ours counts K multiply-adds plus one "
    "spatial multiply per fused kernel value (the op scales the sum), the paper's figure more",
}
TARGET_REL_DIFF = 0.10


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "zoo",
        help="list zoo models with parameters and MFLOPs next to the DyNet paper's figures",
        description="Print every zoo model (classification models with their baselines, and the segmentation "
        "pair) with parameters, conv+linear multiply-adds, DyNet's overhead (coefficient prediction, kernel "
        "fusion) and the paper's figure with the relative difference.",
    )
    p.add_argument("--model", action="append", metavar="NAME", help="only this model (repeatable)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of the table")
    p.add_argument("--no-cache", action="store_true", help="count again instead of reading the cache of earlier counts")
    p.set_defaults(func=run)


def _ordered_names(names: list[str] | None) -> list[str]:
    from ..models import list_models, model_info

    if names:
        for n in names:
            model_info(n)  # unknown names raise ModelError with suggestions
        return list(dict.fromkeys(names))
    ordered: list[str] = []
    # Classification first, then segmentation; registration order within each task.
    everything = list_models(task="classification") + list_models(task="segmentation")
    everything += [n for n in list_models() if n not in everything]
    for n in everything:
        info = model_info(n)
        if info.dynamic and info.baseline in everything:
            continue  # placed right after its baseline
        ordered.append(n)
        ordered += [d for d in everything if model_info(d).dynamic and model_info(d).baseline == n]
    return ordered


def _count(name: str, cache: dict[str, Any]) -> Any:
    import torch

    from ..flops import count_flops
    from ..models import create_model, model_info

    if name not in cache:
        info = model_info(name)
        with torch.device("meta"):
            model = create_model(name)
        cache[name] = count_flops(model, (1, 3, *info.input_size))
    return cache[name]


def _rel(ours: float, ref: float | None) -> float | None:
    return None if not ref else (ours - ref) / ref


def zoo_rows(names: list[str] | None = None) -> list[dict[str, Any]]:
    """One dict per model: sizes, MFLOPs, the paper's figure and the relative difference, Dy/baseline ratios."""
    from ..models import model_info

    cache: dict[str, Any] = {}
    rows = []
    for name in _ordered_names(names):
        info = model_info(name)
        rep = _count(name, cache)
        mflops = rep.conv_linear_macs / 1e6
        # what the paper's figure counts: conv+linear (DyNet), or everything (ODConv)
        compared = rep.total_macs / 1e6 if info.paper_counts_overhead else mflops
        row: dict[str, Any] = {
            "name": name,
            "task": info.task,
            "dynamic": info.dynamic,
            "baseline": info.baseline,
            "input_size": list(info.input_size),
            "params": rep.params,
            "params_m": rep.params / 1e6,
            "mflops": mflops,
            "dy_overhead_mflops": rep.dynamic_overhead_macs / 1e6,
            "cpm_mflops": rep.cpm_macs / 1e6,
            "fusion_mflops": rep.fusion_macs / 1e6,
            "paper_mflops": info.paper_mflops,
            "paper_counts_overhead": info.paper_counts_overhead,
            "paper_params_m": info.paper_params_m,
            "rel_diff": _rel(compared, info.paper_mflops),
            "ratio_vs_baseline": None,
            "paper_ratio_vs_baseline": None,
            "notes": CONVENTION_NOTES.get(name, info.notes),
        }
        row["within_target"] = None if row["rel_diff"] is None else abs(row["rel_diff"]) <= TARGET_REL_DIFF
        if info.baseline:
            base = model_info(info.baseline)
            row["ratio_vs_baseline"] = compared / (_count(info.baseline, cache).conv_linear_macs / 1e6)
            base_paper = info.paper_baseline_mflops or base.paper_mflops
            if info.paper_mflops and base_paper:
                row["paper_ratio_vs_baseline"] = info.paper_mflops / base_paper
        rows.append(row)
    return rows


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "model",
        "input",
        "params(M)",
        "MFLOPs",
        "Dy ovh",
        "paper",
        "vs paper",
        "Dy/base",
        "paper Dy/base",
        "note",
    ]
    lines_data = []
    notes: list[str] = []
    for r in rows:
        mark = ""
        if r["notes"]:
            notes.append(r["notes"])
            mark = f"[{len(notes)}]"
        lines_data.append(
            [
                r["name"],
                "x".join(str(s) for s in r["input_size"]),
                _fmt(r["params_m"], ".2f"),
                _fmt(r["mflops"], ".1f"),
                _fmt(r["dy_overhead_mflops"], ".1f") if r["dynamic"] else "-",
                _fmt(r["paper_mflops"], ".1f"),
                "-" if r["rel_diff"] is None else f"{100 * r['rel_diff']:+.1f}%",
                _fmt(r["ratio_vs_baseline"], ".3f"),
                _fmt(r["paper_ratio_vs_baseline"], ".3f"),
                mark,
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines_data)]
    left = {0, 1, 9}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [line(header), line(["-" * w for w in widths])] + [line(c) for c in lines_data]
    out.append("")
    out.append(
        "MFLOPs: multiply-adds of conv and linear layers, batch 1, 3 input channels; dynamic convs count as one conv "
        "at width C_out. Dy ovh: coefficient prediction (ODConv: attention) FCs + kernel fusion (K*C_out*C_in/g*kH*kW "
        "per layer, plus C_out*C_in/g*kH*kW for ODConv's spatial attention), GAP not counted. vs paper: (ours - paper) / paper, target within 10 % (MFLOPs + Dy ovh where the paper "
        "counts its overhead: the OD-ResNets). Dy/base: ratios of what is compared (paper Dy/base: the same "
        "paper's baseline)."
    )
    out += [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(out)


# ---- the cache of counted rows ---------------------------------------------------------------------------------


def _cache_key() -> str:
    """A hash of everything a row depends on: the model code, the counter, this table's code, torch's release."""
    from importlib import metadata

    from .. import __version__

    pkg = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(f"{CACHE_FORMAT} {__version__}".encode())
    try:
        h.update(metadata.version("torch").encode())
    except metadata.PackageNotFoundError:
        h.update(b"torch ?")
    files = sorted(
        [*(pkg / "models").glob("*.py"), *(pkg / "nn").glob("*.py"), pkg / "flops.py", Path(__file__).resolve()]
    )
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:20]


def cache_path() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dynet-deploy"
    )
    return Path(root) / f"zoo-{_cache_key()}.json"


def _read_cache(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("format") != CACHE_FORMAT
        or not isinstance(data.get("rows"), dict)
        or not isinstance(data.get("order"), list)
    ):
        return None
    return data


def _write_cache(path: Path, order: list[str], rows: dict[str, dict]) -> None:
    from ..errors import DynetDeployError
    from ..fileio import atomic_write_text

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"format": CACHE_FORMAT, "order": order, "rows": rows}) + "\n")
    except (OSError, DynetDeployError):
        pass  # a read-only home: the table is still right, only slower next time


def cached_zoo_rows(names: list[str] | None, use_cache: bool = True) -> list[dict[str, Any]]:
    """``zoo_rows(names)``, answered from the cache when it holds every row asked for."""
    from ..errors import ModelError

    path = cache_path() if use_cache else None
    cache = _read_cache(path) if path is not None else None
    if cache is not None:
        known = cache["order"]
        for n in names or []:
            if n not in known:
                close = difflib.get_close_matches(n, known, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ModelError(f"unknown model {n!r}{hint} (known: {', '.join(sorted(known))})")
        wanted = list(dict.fromkeys(names)) if names else known
        if all(n in cache["rows"] for n in wanted):
            return [cache["rows"][n] for n in wanted]
    rows = zoo_rows(names)
    if path is not None:
        from ..models import list_models

        merged = dict(cache["rows"]) if cache is not None else {}
        merged.update({r["name"]: r for r in rows})
        order = _ordered_names(None)
        assert set(order) == set(list_models())
        _write_cache(path, order, merged)
    return rows


def run(args: argparse.Namespace) -> int:
    rows = cached_zoo_rows(args.model, use_cache=not args.no_cache)
    if args.json:
        print(json.dumps({"target_rel_diff": TARGET_REL_DIFF, "models": rows}, indent=2))
    else:
        print(format_table(rows))
    return 0
