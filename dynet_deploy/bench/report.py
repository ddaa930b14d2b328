"""Views of a :class:`~.run.BenchResult`: the table, the JSON, the PNG chart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import BenchError
from ..fileio import atomic_path, check_output_path
from .run import BACKENDS, BenchResult
from .timing import BUSY_FOREIGN_SHARE, BUSY_LOAD_PER_CORE


def format_table(result: BenchResult) -> str:
    header = [
        "model",
        "backend",
        "measure",
        "batch",
        "thr",
        "median ms",
        "p90 ms",
        "img/s",
        "peak MB",
        "+MB",
        "MFLOPs",
        "roofline ms",
        "x roofline",
        "speedup",
        "FLOPs ratio",
        "load",
    ]
    data = []
    for r in result.rows:
        data.append(
            [
                r.model,
                r.backend,
                r.measure,
                str(r.batch),
                "def" if r.threads is None else str(r.threads),
                f"{r.latency['median_ms']:.2f}",
                f"{r.latency['p90_ms']:.2f}",
                f"{r.throughput_ips:.1f}",
                f"{r.peak_rss_mb:.0f}",
                f"{r.rss_delta_mb:.0f}",
                "-" if r.mflops is None else f"{r.mflops:.1f}",
                "-" if r.roofline_ms is None else f"{r.roofline_ms:.2f}",
                "-" if r.vs_roofline is None else f"{r.vs_roofline:.2f}x",
                "-" if r.speedup_vs_baseline is None else f"{r.speedup_vs_baseline:.2f}x",
                "-" if r.flops_ratio_vs_baseline is None else f"{r.flops_ratio_vs_baseline:.2f}x",
                _load_cell(r),
            ]
        )
    widths = [max(len(x) for x in col) for col in zip(header, *data)] if data else [len(h) for h in header]
    left = {0, 1, 2}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [line(header), line(["-" * w for w in widths])] + [line(c) for c in data]
    m = result.machine
    cfg = result.config
    measures = cfg.get("measures", ["interleaved"])
    threads = sorted({"def" if r.threads is None else str(r.threads) for r in result.rows}) or cfg["threads"]
    out.append("")
    out.append(
        f"{m.get('cpu')}, {m.get('logical_cores')} logical cores, {', '.join(map(str, threads))} thread(s); "
        f"onnxruntime {m.get('onnxruntime')}, torch {m.get('torch')}; input {cfg['input_size'][0]}x"
        f"{cfg['input_size'][1]}"
    )
    if "interleaved" in measures:
        out.append(
            f"measure 'interleaved': the pair in this process, {cfg['repeats']} alternating rounds after "
            f"{cfg['warmup']} warm-up runs, onnxruntime's idle workers "
            + ("spinning" if cfg.get("ort_spinning") else "not spinning")
            + "; median ms: median of the rounds"
        )
    if "process" in measures:
        out.append(
            f"measure 'process': each model alone in its own process with onnxruntime's defaults (idle workers "
            f"spinning; thr 'def': its default thread count), processes alternating static, Dy, static, ..., "
            f"{cfg.get('processes')} per model, each {cfg['warmup']} warm-up then {cfg['repeats']} timed runs; "
            "median ms: median of the process medians (p90 over all timed runs)"
        )
    out.append(
        "speedup: baseline median / Dy median, same backend, measure, batch and threads; FLOPs ratio: "
        "baseline / Dy conv+linear multiply-adds. peak MB: process RSS high-water mark while loading and warming up "
        "the model (process measure: median over its processes); +MB: that minus the RSS before loading."
    )
    for p in result.peaks:
        out.append(
            f"roofline, {p['threads']} thread(s): parameters / {p['bandwidth_gbs']:.1f} GB/s + batch x "
            f"multiply-adds / {p['peak_gmacs']:.1f} GMAC/s (both measured here with onnxruntime: a streaming read; the best of its GEMM and 3x3 conv kernels); x roofline: "
            "median / roofline"
        )
    out.append(
        "load: 1-minute load average before -> after each pair's measure; '*': a busy machine, so the row is not a "
        f"result (other processes used more than {BUSY_FOREIGN_SHARE:g} of the usable cores meanwhile; where that "
        f"is unknown, the load average reached {BUSY_LOAD_PER_CORE:g} per usable core)"
    )
    foreign = [r.foreign_cores for r in result.rows if r.foreign_cores is not None]
    if foreign:
        out.append(f"other processes' cores during the measures: {min(foreign):.2f} to {max(foreign):.2f}")
    if result.busy:
        out.append("THIS RUN WAS TAKEN ON A BUSY MACHINE: rows marked '*' must be re-measured on a quiet one.")
    load_start, load_end = m.get("load_average"), m.get("load_average_end")
    if load_start and load_end:
        out.append(f"load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f}")
    for s in result.skipped:
        measure = f", {s['measure']} measure" if s.get("measure") else ""
        out.append(f"skipped {s['backend']} ({s['models']}, batch {s['batch']}{measure}): {s['reason']}")
    return "\n".join(out)


def _load_cell(r) -> str:
    if r.load_before is None or r.load_after is None:
        return "-"
    return f"{r.load_before:.1f}->{r.load_after:.1f}" + ("*" if r.busy else "")


def write_json(result: BenchResult, path: str | Path) -> Path:
    path = check_output_path(path, BenchError)
    with atomic_path(path, BenchError) as tmp:
        Path(tmp).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return path


def plot_png(result: BenchResult, path: str | Path) -> Path:
    """Median latency per model (bars, p90 as error bar), one panel per batch size and thread count, backends side
    by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = check_output_path(path, BenchError)
    panels = sorted({(r.batch, r.threads) for r in result.rows}, key=lambda p: (p[0], p[1] or 0)) or [
        (1, result.config["threads"][0])
    ]
    # one series per backend and measure
    series = [
        (b, m)
        for m in ("interleaved", "process")
        for b in BACKENDS
        if any(r.backend == b and r.measure == m for r in result.rows)
    ]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(max(6.0, 1.3 * len({r.model for r in result.rows}) + 3), 3.6 * len(panels)),
        squeeze=False,
    )
    for ax, (batch, threads) in zip(axes[:, 0], panels):
        rows = [r for r in result.rows if r.batch == batch and r.threads == threads]
        models = list(dict.fromkeys(r.model for r in rows))
        width = 0.8 / max(1, len(series))
        for j, (backend, measure) in enumerate(series):
            xs, ys, errs, labels = [], [], [], []
            for i, m in enumerate(models):
                r = next((r for r in rows if r.model == m and r.backend == backend and r.measure == measure), None)
                if r is None:
                    continue
                xs.append(i + (j - (len(series) - 1) / 2) * width)
                ys.append(r.latency["median_ms"])
                errs.append(max(0.0, r.latency["p90_ms"] - r.latency["median_ms"]))
                labels.append("" if r.speedup_vs_baseline is None else f"{r.speedup_vs_baseline:.2f}x")
            label = backend if measure == "interleaved" else f"{backend} ({measure})"
            bars = ax.bar(xs, ys, width, yerr=[np.zeros(len(errs)), errs], label=label, capsize=2)
            for bar, err, speedup in zip(bars, errs, labels):
                if speedup:
                    ax.annotate(
                        speedup,
                        (bar.get_x() + bar.get_width() / 2, bar.get_height() + err),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                    )
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("median latency (ms)")
        what = "onnxruntime's default" if threads is None else str(threads)
        ax.set_title(f"batch {batch}, {what} thread(s) (label: speedup over baseline)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, BenchError) as tmp:
        fig.savefig(str(tmp), dpi=110, format="png")
    plt.close(fig)
    return path


def write_outputs(result: BenchResult, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create the output folder {out}: {exc}") from None
    table = out / "bench.txt"
    with atomic_path(table, BenchError) as tmp:
        Path(tmp).write_text(format_table(result) + "\n")
    return {"table": table, "json": write_json(result, out / "bench.json"), "png": plot_png(result, out / "bench.png")}
