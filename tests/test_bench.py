"""dynet-deploy bench: statistics, pairing, memory, and the table / JSON / PNG it writes (tiny models, few runs).

These tests assert what the benchmark reports and how, never how fast anything is.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest

from dynet_deploy.bench import (
    BenchConfig,
    PeakMemory,
    busy_machine,
    format_table,
    latency_stats,
    plan_units,
    process_order,
    process_stats,
    run_bench,
    write_outputs,
)
from dynet_deploy.bench.run import run_worker
from dynet_deploy.bench.timing import ForeignLoad
from dynet_deploy.cli import main
from dynet_deploy.errors import BenchError, ModelError

TINY = dict(width_mult=0.25, num_classes=10, small_input=True)


def test_latency_stats_on_known_numbers():
    s = latency_stats([k / 1000 for k in (4, 1, 10, 3, 2, 7, 5, 9, 6, 8)])  # seconds in, milliseconds out
    assert s["n"] == 10
    assert s["median_ms"] == pytest.approx(5.5)
    assert s["p90_ms"] == pytest.approx(9.1)  # linear interpolation: 9 + 0.1 * (10 - 9)
    assert s["mean_ms"] == pytest.approx(5.5)
    assert (s["min_ms"], s["max_ms"]) == pytest.approx((1.0, 10.0))
    assert s["std_ms"] == pytest.approx(np.std(np.arange(1, 11)))
    odd = latency_stats([0.003, 0.001, 0.002])
    assert odd["median_ms"] == pytest.approx(2.0) and odd["p90_ms"] == pytest.approx(2.8)
    with pytest.raises(BenchError):
        latency_stats([])


def test_units_pair_each_dy_model_with_its_baseline_once():
    assert plan_units(["dy_resnet18"]) == [["dy_resnet18", "resnet18"]]
    assert plan_units(["resnet18", "dy_resnet18", "mobilenet_v2"]) == [["dy_resnet18", "resnet18"], ["mobilenet_v2"]]
    assert plan_units(["dy_mobile", "dy_resnet50", "resnet50"]) == [
        ["dy_mobile", "mobilenet_v2"],
        ["dy_resnet50", "resnet50"],
    ]


def test_peak_memory_sees_an_allocation():
    mem = PeakMemory()
    mem.reset()  # hands freed memory back first, so the baseline is the RSS the allocation grows from
    before = mem.current_mb()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    peak = mem.peak_mb()
    del block
    assert peak - before >= 48, (mem.method, before, peak)


def test_config_rejects_bad_input():
    with pytest.raises(ModelError, match="unknown model"):
        BenchConfig(models=["resnet19"]).validate()
    with pytest.raises(BenchError, match="backend"):
        BenchConfig(backends=["onnxruntime-gpu"]).validate()
    with pytest.raises(BenchError, match="batch"):
        BenchConfig(batch_sizes=[0]).validate()
    with pytest.raises(BenchError, match="dy-form"):
        BenchConfig(dy_form="winograd").validate()
    with pytest.raises(BenchError, match="bank dtype"):
        BenchConfig(bank_dtype="fp8").validate()


def test_fused_graph_takes_the_fuse_options(tmp_path, ort_op_library):
    """--bank-dtype and --no-fold reach the fuse pass of the fused backend, and the rows name them."""
    import onnx

    cfg = BenchConfig(
        models=["dy_resnet18"],
        batch_sizes=[1],
        threads=[1],
        backends=["onnxruntime-fused"],
        input_size=(32, 32),
        repeats=2,
        warmup=1,
        model_kwargs={"dy_resnet18": TINY, "resnet18": TINY},
        keep_onnx_dir=str(tmp_path),
        fold=False,
        bank_dtype="bf16",
    )
    cfg.validate()
    result = run_bench(cfg)
    dy = next(r for r in result.rows if r.model == "dy_resnet18")
    assert "epilogues not folded, bf16 bank" in dy.graph, dy.graph
    fused = onnx.load(str(tmp_path / "dy_resnet18.fused.onnx"))
    banks = {n.input[2] for n in fused.graph.node if n.op_type == "DyNetDynamicConv2d"}
    assert banks and {t.data_type for t in fused.graph.initializer if t.name in banks} == {onnx.TensorProto.BFLOAT16}
    assert any(n.op_type == "Add" for n in fused.graph.node)  # the residual Adds are kept


@pytest.mark.slow
def test_bench_times_pairs_interleaved_and_writes_table_json_png(tmp_path, caplog):
    cfg = BenchConfig(
        models=["dy_resnet18"],
        batch_sizes=[1, 2],
        threads=[1],
        backends=["torch", "onnxruntime", "onnxruntime-portable", "onnxruntime-cuda", "tensorrt"],
        input_size=(32, 32),
        repeats=3,
        warmup=1,
        model_kwargs={"dy_resnet18": TINY, "resnet18": TINY},
    )
    with caplog.at_level(logging.INFO, logger="dynet_deploy.bench"):
        result = run_bench(cfg)
    logs = [r.getMessage() for r in caplog.records]

    timed = {r.backend for r in result.rows}
    assert {"torch", "onnxruntime", "onnxruntime-portable"} <= timed
    # Absent backends are skipped with a reason (present ones would be timed instead).
    for backend in ("onnxruntime-cuda", "tensorrt"):
        skips = [s for s in result.skipped if s["backend"] == backend]
        assert (backend in timed) != bool(skips)
        assert all(s["reason"] for s in skips)

    for backend in timed:
        for batch in (1, 2):
            rows = {r.model: r for r in result.rows if r.backend == backend and r.batch == batch}
            assert set(rows) == {"dy_resnet18", "resnet18"}
            dy, base = rows["dy_resnet18"], rows["resnet18"]
            for r in (dy, base):
                lat = r.latency
                assert lat["n"] == 3
                assert 0 < lat["min_ms"] <= lat["median_ms"] <= lat["p90_ms"] <= lat["max_ms"]
                assert r.throughput_ips == pytest.approx(batch / (lat["median_ms"] / 1e3))
                assert r.peak_rss_mb > 0 and r.mflops > 0
            assert dy.baseline == "resnet18" and base.baseline is None and base.speedup_vs_baseline is None
            assert dy.speedup_vs_baseline == pytest.approx(base.latency["median_ms"] / dy.latency["median_ms"])
            assert dy.flops_ratio_vs_baseline == pytest.approx(base.mflops / dy.mflops)
            assert dy.flops_ratio_vs_baseline > 1.5  # Dy-ResNet18 is the cheaper model
            for r in (dy, base):
                assert r.threads == 1 and r.param_mb > 0
                assert r.busy == busy_machine(r.load_before, r.load_after, r.foreign_cores).busy
                if backend == "torch":
                    assert r.roofline_ms is None
                else:  # the bound: parameters over bandwidth plus batch x multiply-adds over the GEMM peak
                    (p,) = result.peaks
                    want = 1e3 * (
                        r.param_mb * 1e6 / (p["bandwidth_gbs"] * 1e9)
                        + batch * r.mflops_with_overhead * 1e6 / (p["peak_gmacs"] * 1e9)
                    )
                    assert r.roofline_ms == pytest.approx(want)
                    assert r.vs_roofline == pytest.approx(r.latency["median_ms"] / r.roofline_ms)

    # onnxruntime sessions are made without idle-worker spinning unless asked (interleaved pools compete)
    assert all("spinning off" in r.graph for r in result.rows if r.backend.startswith("onnxruntime"))

    paths = write_outputs(result, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert {"machine", "config", "results", "skipped", "memory_method"} <= set(data)
    assert data["machine"]["cpu"] and data["machine"]["onnxruntime"]
    assert data["config"]["threads"] == [1] and data["config"]["batch_sizes"] == [1, 2]
    assert data["peaks"][0]["threads"] == 1 and data["peaks"][0]["bandwidth_gbs"] > 0 and data["busy"] == result.busy
    assert data["config"]["ort_spinning"] is False
    first = data["results"][0]
    assert {
        "model",
        "backend",
        "batch",
        "graph",
        "latency",
        "throughput_ips",
        "peak_rss_mb",
        "rss_delta_mb",
        "mflops",
        "speedup_vs_baseline",
        "flops_ratio_vs_baseline",
    } <= set(first)
    assert {"median_ms", "p90_ms"} <= set(first["latency"])
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = paths["table"].read_text()
    assert table == format_table(result) + "\n"
    header = table.splitlines()[0]
    for column in (
        "model",
        "backend",
        "thr",
        "median ms",
        "p90 ms",
        "img/s",
        "peak MB",
        "MFLOPs",
        "roofline ms",
        "x roofline",
        "speedup",
        "FLOPs ratio",
        "load",
    ):
        assert column in header
    assert sum(line.startswith("dy_resnet18") for line in table.splitlines()) == 2 * len(timed)
    assert any(line.startswith("timing dy_resnet18 vs resnet18") for line in logs)


def test_bench_runs_an_od_model_from_its_kernel_form():
    """ODConv's layers have no feature form: the portable graph is the kernel form at each batch, the fused graph
    (made from it, any batch) runs on the native op, the deploy form is the MatMul form with the spatial scale."""
    cfg = BenchConfig(
        models=["od_resnet18"],
        batch_sizes=[1, 2],
        threads=[1],
        backends=["onnxruntime", "onnxruntime-portable", "onnxruntime-fused"],
        input_size=(32, 32),
        repeats=2,
        warmup=1,
        model_kwargs={"od_resnet18": TINY, "resnet18": TINY},
    )
    result = run_bench(cfg)
    rows = {(r.model, r.backend, r.batch): r for r in result.rows}
    assert set(rows) == {
        (m, b, n) for m in ("od_resnet18", "resnet18") for b in cfg.backends for n in cfg.batch_sizes
    }, result.skipped
    for batch in (1, 2):
        assert f"kernel form, batch {batch}" in rows["od_resnet18", "onnxruntime-portable", batch].graph
        fused = rows["od_resnet18", "onnxruntime-fused", batch].graph
        assert "DyNetDynamicConv2d graph" in fused and "native DyNetDynamicConv2d library" in fused
        assert "deploy form 'matmul" in rows["od_resnet18", "onnxruntime", batch].graph
        assert rows["od_resnet18", "onnxruntime", batch].baseline == "resnet18"


def test_cli_reports_bad_arguments(capsys):
    assert main(["bench", "--models", "resnet19", "--out-dir", "unused"]) == 1
    assert "unknown model" in capsys.readouterr().err
    assert main(["bench", "--models", "resnet18", "--batch-sizes", "0"]) == 1
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--backends", "onnxruntime-gpu"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_each_thread_count_is_a_pass_of_its_own():
    cfg = BenchConfig(
        models=["dy_resnet18"],
        batch_sizes=[1],
        threads=[2, 1],
        backends=["onnxruntime-portable"],
        input_size=(32, 32),
        repeats=2,
        warmup=1,
        model_kwargs={"dy_resnet18": TINY, "resnet18": TINY},
    )
    result = run_bench(cfg)
    assert [(r.model, r.threads) for r in result.rows] == [
        ("resnet18", 2),
        ("dy_resnet18", 2),
        ("resnet18", 1),
        ("dy_resnet18", 1),
    ]
    assert sorted(p["threads"] for p in result.peaks) == [1, 2]


def test_foreign_load_is_machine_cpu_minus_own_cpu_over_wall_time():
    readings = {"clock": iter([10.0, 12.0]), "machine": iter([100.0, 104.0]), "own": iter([5.0, 6.5])}
    load = (
        ForeignLoad(
            clock=lambda: next(readings["clock"]),
            machine_cpu=lambda: next(readings["machine"]),
            own_cpu=lambda: next(readings["own"]),
        )
        .start()
        .stop()
    )
    # 4 CPU-seconds busy machine-wide over 2 s, 1.5 of them this process's: others used 1.25 cores
    assert load.foreign_cores == pytest.approx(1.25) and load.busy
    quiet = (
        ForeignLoad(
            clock=iter([0.0, 1.0]).__next__, machine_cpu=iter([50.0, 51.1]).__next__, own_cpu=iter([3.0, 4.0]).__next__
        )
        .start()
        .stop()
    )
    assert quiet.foreign_cores == pytest.approx(0.1) and not quiet.busy
    assert ForeignLoad(machine_cpu=lambda: None).start().stop().foreign_cores is None


def test_foreign_load_on_this_machine_excludes_this_process():
    t0 = time.perf_counter()
    load = ForeignLoad().start()
    while time.perf_counter() - t0 < 0.6:  # this process keeps one core busy: none of it is foreign
        pass
    load.stop()
    if load.foreign_cores is None:
        if not Path("/proc/stat").exists():
            pytest.skip("/proc/stat is not available here")
        pytest.fail(f"no foreign-core figure over {load.wall_s:.2f} s (long enough to be measured)")
    assert load.foreign_cores >= 0 and load.load_before is not None and load.load_after is not None


def test_busy_machine_is_one_rule_from_foreign_cores_else_the_load_average():
    # foreign cores decide where measured: more than an eighth of the usable cores (a quarter of a core on 2)
    assert busy_machine(0.2, 0.3, 0.3, usable=2).busy
    assert not busy_machine(0.2, 0.3, 0.25, usable=2).busy
    assert not busy_machine(0.2, 0.3, 0.3, usable=4)  # half a core allowed on 4
    assert busy_machine(None, None, 0.6, usable=4)
    # a high load average with few foreign cores is this measurement's own threads: not busy
    assert not busy_machine(3.5, 4.0, 0.1, usable=2).busy
    # unknown foreign cores: the higher load average against one per usable core
    assert busy_machine(0.5, 2.0, None, usable=2).busy
    assert busy_machine(2.1, None, None, usable=2).busy
    assert not busy_machine(1.9, 1.2, None, usable=2).busy
    assert not busy_machine(None, None, None, usable=2).busy
    verdict = busy_machine(0.2, 0.3, 1.25, usable=2)
    assert "1.25 cores" in verdict.reason and "2 usable" in verdict.reason
    assert busy_machine(0.2, 0.3, 0.0, usable=2).reason == ""
    with pytest.raises(BenchError, match="usable cores"):
        busy_machine(0.1, 0.1, 0.1, usable=0)


def test_foreign_load_over_too_short_a_window_is_unknown():
    # 0.2 s at 10 ms clock ticks: the figure's error nears the threshold, so the load average decides
    load = ForeignLoad(
        clock=iter([0.0, 0.2]).__next__, machine_cpu=iter([50.0, 50.3]).__next__, own_cpu=iter([3.0, 3.0]).__next__
    )
    load.start().stop()
    assert load.foreign_cores is None and load.wall_s == pytest.approx(0.2)
    assert load.verdict(usable=2).busy == busy_machine(load.load_before, load.load_after, None, usable=2).busy


def test_process_stats_take_the_median_of_the_process_medians():
    # seconds per run, three processes: medians 2, 25 and 5 ms
    procs = [[0.001, 0.002, 0.003], [0.010, 0.020, 0.030, 0.040], [0.005, 0.005, 0.006]]
    s = process_stats(procs)
    assert s["median_ms"] == pytest.approx(5.0)  # not the pooled median (5.5)
    pooled = latency_stats([t for p in procs for t in p])
    for key in ("p90_ms", "mean_ms", "min_ms", "max_ms", "std_ms", "n"):
        assert s[key] == pytest.approx(pooled[key])
    assert s["processes"] == 3 and s["n"] == 10
    with pytest.raises(BenchError, match="every process"):
        process_stats([[0.001], []])
    # static first, then alternating
    assert process_order(["dy_resnet18", "resnet18"], 3) == ["resnet18", "dy_resnet18"] * 3
    assert process_order(["mine"], 3) == ["mine"] * 3


def test_process_measure_config_is_checked(capsys):
    with pytest.raises(BenchError, match="at least 3 processes"):
        BenchConfig(measures=["process"], processes=2).validate()
    BenchConfig(measures=["interleaved"], processes=2).validate()  # unused: not checked
    with pytest.raises(BenchError, match="measure"):
        BenchConfig(measures=["spinning"]).validate()
    assert main(["bench", "--models", "resnet18", "--measures", "process", "--processes", "1"]) == 1
    assert "at least 3 processes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--measures", "alone"])
    assert exc.value.code == 2


def test_a_failing_worker_is_a_clear_error(tmp_path):
    with pytest.raises(BenchError, match=r"worker on missing.onnx exited 1: error: .*missing.onnx"):
        run_worker(tmp_path / "missing.onnx", (1, 3, 8, 8), "onnxruntime-portable", None, 0, 1)


@pytest.mark.slow
def test_process_measure_runs_each_model_alone_alternating_and_reports_both_measures(tmp_path):
    import os

    cfg = BenchConfig(
        models=["dy_resnet18"],
        batch_sizes=[1],
        threads=[1],
        backends=["onnxruntime-fused", "torch"],
        input_size=(32, 32),
        repeats=2,
        warmup=1,
        model_kwargs={"dy_resnet18": TINY, "resnet18": TINY},
        measures=["interleaved", "process"],
        processes=3,
        process_threads=[1],
    )
    result = run_bench(cfg)
    proc = {r.model: r for r in result.rows if r.measure == "process"}
    assert set(proc) == {"dy_resnet18", "resnet18"}
    assert {(r.model, r.backend) for r in result.rows if r.measure == "interleaved"} == {
        (m, b) for m in ("dy_resnet18", "resnet18") for b in ("onnxruntime-fused", "torch")
    }
    # torch has no process measure: skipped with the reason
    assert [s["backend"] for s in result.skipped if s["measure"] == "process"] == ["torch"]
    dy, base = proc["dy_resnet18"], proc["resnet18"]
    # alternating processes, static first, each model in processes of its own
    assert [p["index"] for p in base.processes] == [0, 2, 4] and [p["index"] for p in dy.processes] == [1, 3, 5]
    pids = [p["pid"] for r in (dy, base) for p in r.processes]
    assert len(set(pids)) == 6 and os.getpid() not in pids
    for r in (dy, base):
        assert r.backend == "onnxruntime-fused" and r.threads == 1 and "spinning on" in r.graph
        # each worker's session, read back: the threads asked for, spinning left at onnxruntime's default (on)
        assert all(p["threads"] == 1 and p["spinning"] is None and len(p["samples_ms"]) == 2 for p in r.processes)
        assert all(p["median_ms"] == pytest.approx(np.median(p["samples_ms"])) for p in r.processes)
        assert r.latency["median_ms"] == pytest.approx(np.median([p["median_ms"] for p in r.processes]))
        assert r.latency["n"] == 6 and r.latency["processes"] == 3
        assert r.throughput_ips == pytest.approx(1 / (r.latency["median_ms"] / 1e3))
        assert r.peak_rss_mb > 0 and r.load_before is not None and r.load_after is not None
        assert r.busy == busy_machine(r.load_before, r.load_after, r.foreign_cores).busy
    assert dy.processes[0]["uses_plugin"] and "native DyNetDynamicConv2d library" in dy.graph
    # the ratio is the one of the measured process medians
    assert dy.speedup_vs_baseline == pytest.approx(base.latency["median_ms"] / dy.latency["median_ms"])
    assert dy.baseline == "resnet18" and base.speedup_vs_baseline is None

    paths = write_outputs(result, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["config"]["measures"] == ["interleaved", "process"] and data["config"]["processes"] == 3
    rows = [r for r in data["results"] if r["measure"] == "process"]
    assert {"load_before", "load_after", "foreign_cores", "busy", "processes"} <= set(rows[0])
    table = paths["table"].read_text()
    assert "measure" in table.splitlines()[0]
    assert any(" process " in line for line in table.splitlines()[2:])
    assert "measure 'process'" in table and "measure 'interleaved'" in table


@pytest.mark.slow
def test_cli_process_measure_without_threads_uses_onnxruntimes_default(tmp_path):
    import torch

    from dynet_deploy.checkpoint import save_checkpoint
    from dynet_deploy.models import create_model

    torch.manual_seed(0)
    ckpt = save_checkpoint(
        create_model("dy_resnet18", **TINY), tmp_path / "dy.safetensors", model_name="dy_resnet18", model_args=TINY
    )
    out = tmp_path / "out"
    argv = ["bench", "--checkpoint", str(ckpt), "--backends", "onnxruntime-portable", "--batch-sizes", "1"]
    argv += ["--input-size", "32", "32", "--repeats", "2", "--warmup", "1", "--measures", "process", "interleaved"]
    assert main(argv + ["--out-dir", str(out)]) == 0
    data = json.loads((out / "bench.json").read_text())
    threads = {(r["measure"], r["threads"]) for r in data["results"]}
    assert threads == {("interleaved", 2), ("interleaved", 1), ("process", None)}
    proc = [r for r in data["results"] if r["measure"] == "process"]
    assert all(p["threads"] is None and p["spinning"] is None for r in proc for p in r["processes"])
    dy = next(r for r in proc if r["speedup_vs_baseline"] is not None)
    base = next(r for r in proc if r["model"] == dy["baseline"])
    assert dy["speedup_vs_baseline"] == pytest.approx(base["latency"]["median_ms"] / dy["latency"]["median_ms"])
    assert " def " in (out / "bench.txt").read_text()
