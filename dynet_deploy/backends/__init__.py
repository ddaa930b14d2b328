"""The runtimes that run a deployed graph, one package each, and the one registry every stage reads.

:data:`BACKENDS` maps a backend's name to its :class:`~.base.Backend` (``onnxruntime/``, ``tensorrt/``); the
PyTorch model is the reference they are compared with (:mod:`.torch_reference`). Adding a runtime is a package
here that implements :class:`~.base.Backend` plus one line in :data:`BACKENDS`: the CLI's ``--backend`` choices,
bench's columns, validate, deploy, run, doctor and the Triton writer follow from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import RuntimeBackendError
from .base import Availability, Backend, BenchVariant, DoctorCheck, Runner
from .onnxruntime import OnnxruntimeBackend
from .tensorrt import TensorRTBackend

BACKENDS: dict[str, Backend] = {
    "onnxruntime": OnnxruntimeBackend(),
    "tensorrt": TensorRTBackend(),
}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise RuntimeBackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}") from None


def require_backend(name: str) -> Backend:
    """The backend named ``name``; raises MissingDependencyError early, with the reason, where it cannot run here."""
    backend = get_backend(name)
    backend.require()
    return backend


def bench_variants() -> dict[str, BenchVariant]:
    """Every registered backend's benchmark columns, by name."""
    return {v.name: v for b in BACKENDS.values() for v in b.bench_variants}


class BackendSession:
    """One backend over one artifact: ``run(feeds) -> outputs`` and a Polygraphy runner for the comparator."""

    def __init__(self, backend: str, model_path: str | Path, threads: int | None = None, **options: Any) -> None:
        self.backend_impl = get_backend(backend)
        self.backend = backend
        self.model_path = Path(model_path)
        self._runner = self.backend_impl.open_runner(model_path, threads=threads, **options)
        self.uses_plugin = self.backend_impl.uses_plugin(self._runner)

    @property
    def runner(self) -> Runner:
        return self._runner

    @property
    def input_names(self) -> list[str]:
        return list(self._runner.input_names)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._runner.run(feeds)

    def check_inputs(self, feeds: Mapping[str, np.ndarray]) -> None:
        self._runner.check_inputs(feeds)

    def describe(self) -> str:
        return self.backend_impl.describe(self._runner)

    def polygraphy_runner(self):
        return self.backend_impl.polygraphy_runner(self._runner)


__all__ = [
    "BACKENDS",
    "Availability",
    "Backend",
    "BackendSession",
    "BenchVariant",
    "DoctorCheck",
    "Runner",
    "bench_variants",
    "get_backend",
    "require_backend",
]
