"""What a backend is: the small protocol every runtime implements, and the data it hands to the stages.

A backend turns a fused graph (the DyNetDynamicConv2d ONNX) into the artifact it runs (the graph itself for
onnxruntime, an engine for TensorRT), opens a runner over that artifact (``run({name: array}) -> {name: array}``),
and says, without raising, whether it can run on this machine and why not. Stages (validate, bench, deploy, run,
doctor, triton) read backends only through :data:`dynet_deploy.backends.BACKENDS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class Availability:
    """Whether a backend (or one of its variants) runs here: ``detail`` is its version when it does, else why not."""

    ok: bool
    detail: str

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class BenchVariant:
    """One column of the benchmark: a backend run on one kind of graph.

    ``graph_kind``: "deploy" (the fastest standard-op CPU form), "portable" (the feature form, dynamic batch) or
    "fused" (the DyNetDynamicConv2d graph). ``options`` go to the backend's ``open_runner``.
    """

    name: str
    backend: str
    graph_kind: str
    options: Mapping[str, Any] = None  # type: ignore[assignment]

    def runner_options(self) -> dict[str, Any]:
        return dict(self.options or {})


@dataclass(frozen=True)
class DoctorCheck:
    """One line of ``dynet-deploy doctor``: what was looked for, whether it is there, and what its absence disables."""

    name: str
    ok: bool
    detail: str
    disables: str


class Runner(Protocol):
    """A backend's runner over one artifact."""

    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def check_inputs(self, feeds: Mapping[str, np.ndarray]) -> None: ...

    def bound_run(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], Any]: ...


class Backend(Protocol):
    """A runtime that runs deployed graphs. Add one as a package under ``backends/`` plus one registry line."""

    name: str
    # Triton's backend name for the artifact (``backend:`` in config.pbtxt).
    triton_backend: str
    # Whether its artifact is a graph file (onnxruntime) or something built from one (a TensorRT engine).
    artifact_is_graph: bool
    bench_variants: Sequence[BenchVariant]

    def availability(self, variant: BenchVariant | None = None) -> Availability: ...

    def require(self) -> None:
        """Raise :class:`~dynet_deploy.errors.MissingDependencyError` with what to do, where it cannot run."""

    def prepare(self, fused: Path, artifact: Path, *, batch: tuple[int, int, int], precision: str = "fp32") -> Path: ...

    def open_runner(self, artifact: str | Path, **options: Any) -> Runner: ...

    def uses_plugin(self, runner: Runner) -> bool: ...

    def describe(self, runner: Runner) -> str: ...

    def polygraphy_runner(self, runner: Runner) -> Any: ...

    def replay_args(self, uses_plugin: bool) -> tuple[list[str], str]:
        """``polygraphy run`` arguments that select this backend, and a note ("" when none) on what they replay.

        No arguments (``[]``) where Polygraphy cannot replay it here; the note then says why."""

    def doctor_checks(self) -> list[DoctorCheck]: ...
