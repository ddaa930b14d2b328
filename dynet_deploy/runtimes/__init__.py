"""Runners, one per backend, each behind ``run({name: array}) -> {name: array}``; every stage opens backends here.

:data:`BACKENDS` is the one list of backends that run a deployed graph; :class:`BackendSession` opens one of them
over a graph (with a Polygraphy runner for the comparator) and :func:`require_backend` says early, with the reason,
when a backend cannot run on this machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import MissingDependencyError, RuntimeBackendError

# Backends that run a deployed graph (the PyTorch model is the reference, run by torch_runtime.TorchRunner).
BACKENDS = ("onnxruntime", "tensorrt")


class BackendSession:
    """One backend over one graph: ``run(feeds) -> outputs`` and a Polygraphy runner for the comparator."""

    def __init__(self, backend: str, model_path: str | Path, threads: int | None = None) -> None:
        if backend not in BACKENDS:
            raise RuntimeBackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.model_path = Path(model_path)
        if backend == "onnxruntime":
            from .onnxruntime_runtime import OnnxruntimeRunner

            self._runner = OnnxruntimeRunner(model_path, threads=threads)
            self.uses_plugin = self._runner.uses_custom_op
        else:
            from . import tensorrt_runtime

            self._runner = tensorrt_runtime.TensorRTRunner(model_path)
            self.uses_plugin = True

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._runner.run(feeds)

    def check_inputs(self, feeds: Mapping[str, np.ndarray]) -> None:
        check = getattr(self._runner, "check_inputs", None)
        if check is not None:
            check(feeds)

    def polygraphy_runner(self):
        if self.backend == "onnxruntime":
            from polygraphy.backend.onnxrt import OnnxrtRunner

            return OnnxrtRunner(self._runner.session, name="onnxruntime")
        return self._runner.polygraphy_runner()


def require_backend(backend: str) -> None:
    """Raise MissingDependencyError early where a backend cannot run here."""
    if backend == "tensorrt":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise MissingDependencyError(
                "the tensorrt backend needs TensorRT (the `tensorrt` Python package with its libraries) and a CUDA GPU; "
                "neither is installed here. Use --backend onnxruntime, or run `dynet-deploy doctor` on the GPU machine"
            ) from None
    elif backend != "onnxruntime":
        raise RuntimeBackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
