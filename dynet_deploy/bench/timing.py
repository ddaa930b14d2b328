"""Timing and memory primitives: interleaved rounds, latency statistics, peak resident memory, the machine."""

from __future__ import annotations

import gc
import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import BenchError

SEED = 0


def latency_stats(samples_s: Sequence[float]) -> dict[str, float]:
    """Milliseconds: median, p90 (linear interpolation between order statistics), mean, min, max, std, n."""
    x = np.asarray(samples_s, dtype=np.float64) * 1e3
    if x.size == 0:
        raise BenchError("no latency samples to summarise")
    return {
        "median_ms": float(np.median(x)),
        "p90_ms": float(np.percentile(x, 90)),
        "mean_ms": float(x.mean()),
        "min_ms": float(x.min()),
        "max_ms": float(x.max()),
        "std_ms": float(x.std()),
        "n": int(x.size),
    }


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: freed pages may stay resident, deltas read low
        pass


class PeakMemory:
    """Resident-set high-water mark of this process, resettable where Linux allows it (module docstring)."""

    def __init__(self) -> None:
        self.resettable = self._reset()
        self.method = (
            "per model: VmHWM after reset via /proc/self/clear_refs; delta = peak - RSS before loading"
            if self.resettable
            else "process-lifetime peak RSS (getrusage ru_maxrss); delta = peak - RSS before loading"
        )

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return _status_kib("VmHWM") is not None
        except OSError:
            return False

    def reset(self) -> None:
        """Return freed heap pages to the OS (else a new session reuses them and its RSS growth reads as ~0),
        then reset the high-water mark to the current RSS."""
        gc.collect()
        _malloc_trim()
        if self.resettable:
            self._reset()

    @staticmethod
    def current_mb() -> float:
        kib = _status_kib("VmRSS")
        if kib is not None:
            return kib / 1024
        import psutil

        return psutil.Process().memory_info().rss / 2**20

    def peak_mb(self) -> float:
        kib = _status_kib("VmHWM")
        if kib is not None:
            return kib / 1024
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if platform.system() == "Darwin" else peak / 1024


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    for mod in ("torch", "onnxruntime", "onnx"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        info["load_average"] = None
    return info


def interleaved_latency(calls: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each callable, timed in alternating rounds (order reversed every other round) so
    that machine noise hits all of them alike."""
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for i in range(repeats):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            t0 = time.perf_counter()
            calls[name]()
            samples[name].append(time.perf_counter() - t0)
    return samples


# The one busy-machine rule (:func:`busy_machine`), used by ``bench`` and ``deploy``. A measurement is marked busy
# when other processes used more than this share of the usable cores on average while it ran (a quarter of a core on
# a 2-core machine): the load average alone cannot tell, since it counts the measurement's own threads too. Only
# where that cannot be measured (no /proc/stat) does the load average decide: busy when it reached one per usable core.
BUSY_FOREIGN_SHARE = 0.125
BUSY_LOAD_PER_CORE = 1.0
# CPU time is counted in clock ticks (10 ms): over a shorter window than this the foreign-core figure's error
# (a tick per core and per reading) nears the busy threshold, so it is not reported and the load average decides.
MIN_FOREIGN_WALL_S = 0.5


@dataclass(frozen=True)
class BusyVerdict:
    """Whether figures were measured on a busy machine, and why (``reason`` is empty when quiet)."""

    busy: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.busy


def busy_machine(
    load_before: float | None,
    load_after: float | None,
    foreign_cores: float | None,
    usable: int | None = None,
) -> BusyVerdict:
    """The busy-machine rule shared by ``bench`` and ``deploy``.

    ``foreign_cores``: cores other processes used while the figures were measured (:class:`ForeignLoad`);
    ``load_before`` / ``load_after``: the 1-minute load average at both ends; ``usable``: the cores this process may
    run on (default: its CPU affinity). Busy when the foreign cores exceed ``BUSY_FOREIGN_SHARE`` of the usable cores;
    where they are unknown, when the higher load average reached ``BUSY_LOAD_PER_CORE`` per usable core; with neither
    known, not busy (nothing says so).
    """
    from ..guards import usable_cores

    cores = usable if usable is not None else usable_cores()
    if cores < 1:
        raise BenchError(f"usable cores must be >= 1, got {cores}")
    if foreign_cores is not None:
        limit = BUSY_FOREIGN_SHARE * cores
        if foreign_cores > limit:
            return BusyVerdict(
                True,
                f"other processes used {foreign_cores:.2f} cores meanwhile (more than {limit:.2f} of the {cores} "
                "usable)",
            )
        return BusyVerdict(False)
    loads = [v for v in (load_before, load_after) if v is not None]
    if loads and max(loads) >= BUSY_LOAD_PER_CORE * cores:
        return BusyVerdict(
            True, f"the 1-minute load average reached {max(loads):.2f} on {cores} usable cores (foreign CPU unknown)"
        )
    return BusyVerdict(False)


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes spent busy since boot (/proc/stat: user, nice, system, irq, softirq, steal)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:]]
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + (ticks[7] if len(ticks) > 7 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class ForeignLoad:
    """How busy the rest of the machine was during a measurement, in cores used by other processes.

    ``start()`` and ``stop()`` read the machine's busy CPU time (/proc/stat) and this process's own (os.times):
    the difference over the wall time is what other jobs took. Also records the 1-minute load average at both ends
    (which includes this benchmark's own threads). ``foreign_cores`` is None where /proc/stat is absent or the
    measurement was shorter than ``MIN_FOREIGN_WALL_S``; ``wall_s`` is its length.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.perf_counter,
        machine_cpu: Callable[[], float | None] = _busy_cpu_seconds,
        own_cpu: Callable[[], float] = _own_cpu_seconds,
    ) -> None:
        self.load_before: float | None = None
        self.load_after: float | None = None
        self.foreign_cores: float | None = None
        self.wall_s: float | None = None
        self._clock, self._machine_cpu, self._own_cpu = clock, machine_cpu, own_cpu
        self._t0 = self._busy0 = self._own0 = None

    @staticmethod
    def _load1() -> float | None:
        try:
            return round(os.getloadavg()[0], 2)
        except OSError:
            return None

    def start(self) -> "ForeignLoad":
        self.load_before = self._load1()
        self._t0, self._busy0, self._own0 = self._clock(), self._machine_cpu(), self._own_cpu()
        return self

    def stop(self) -> "ForeignLoad":
        wall = self.wall_s = self._clock() - self._t0
        busy = self._machine_cpu()
        if busy is not None and self._busy0 is not None and wall >= MIN_FOREIGN_WALL_S:
            own = self._own_cpu() - self._own0
            self.foreign_cores = round(max(0.0, (busy - self._busy0 - own) / wall), 3)
        self.load_after = self._load1()
        return self

    def verdict(self, usable: int | None = None) -> BusyVerdict:
        """:func:`busy_machine` on this measurement."""
        return busy_machine(self.load_before, self.load_after, self.foreign_cores, usable)

    @property
    def busy(self) -> bool:
        return self.verdict().busy
