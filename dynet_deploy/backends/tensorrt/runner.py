"""Run a TensorRT engine on numpy inputs (every stage opens it through the tensorrt backend).

TensorRT is imported lazily; the DyNetDynamicConv2d plugin library is loaded before the engine is deserialised
(otherwise TensorRT reports "IPluginCreator not found in Plugin Registry"). Device memory comes from PyTorch's CUDA
allocator, so no extra CUDA Python package is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ...errors import MissingDependencyError, RuntimeBackendError
from .loader import import_tensorrt, load_plugin_library


def _torch_cuda():
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError("PyTorch is needed for TensorRT device buffers") from exc
    if not torch.cuda.is_available():
        raise MissingDependencyError(
            "TensorRT needs a CUDA GPU, and torch.cuda.is_available() is False on this machine "
            "(a CPU-only PyTorch build, or no NVIDIA driver)"
        )
    return torch


class TensorRTRunner:
    """Deserialise an engine once; ``run({name: array})`` returns ``{output_name: array}``.

    Input shapes may change between calls within the engine's optimisation profile.
    """

    def __init__(self, engine_path, plugin_library=None, device: int = 0, verbose: bool = False):
        self.trt = trt = import_tensorrt()
        self.torch = torch = _torch_cuda()
        engine_path = Path(engine_path)
        if not engine_path.is_file():
            raise RuntimeBackendError(f"engine {engine_path} does not exist; build it with 'dynet-deploy build'")
        self.plugin_library = load_plugin_library(plugin_library)
        self.device = torch.device("cuda", device)
        level = trt.Logger.VERBOSE if verbose else trt.Logger.WARNING
        self.logger = trt.Logger(level)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise RuntimeBackendError(
                f"TensorRT could not deserialise {engine_path}: built with another TensorRT version or GPU, "
                f"or the plugin library {self.plugin_library} does not match"
            )
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeBackendError("TensorRT could not create an execution context (out of GPU memory?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.stream = torch.cuda.Stream(device=self.device)

    def polygraphy_runner(self, name: str = "tensorrt"):
        """A Polygraphy TrtRunner over the same (already deserialised, plugin-loaded) engine."""
        from polygraphy.backend.trt import TrtRunner

        return TrtRunner(self.engine, name=name)

    def _torch_dtype(self, name: str):
        trt, torch = self.trt, self.torch
        mapping = {
            trt.float32: torch.float32,
            trt.float16: torch.float16,
            trt.int32: torch.int32,
            trt.int64: torch.int64,
            trt.int8: torch.int8,
            trt.bool: torch.bool,
        }
        if hasattr(trt, "bfloat16"):
            mapping[trt.bfloat16] = torch.bfloat16
        dtype = self.engine.get_tensor_dtype(name)
        if dtype not in mapping:
            raise RuntimeBackendError(f"tensor {name!r} has unsupported TensorRT dtype {dtype}")
        return mapping[dtype]

    def check_inputs(self, feeds: Mapping[str, np.ndarray]) -> None:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise RuntimeBackendError(f"missing engine inputs {missing}; the engine takes {self.input_names}")

    def bound_run(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        """A call that runs the engine on ``feeds`` (host arrays in and out), for timing loops."""
        self.check_inputs(feeds)
        return lambda: self.run(feeds)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        self.check_inputs(feeds)
        keep = []
        with torch.cuda.device(self.device):
            for name in self.input_names:
                arr = np.ascontiguousarray(feeds[name])
                t = torch.from_numpy(arr).to(self.device, dtype=self._torch_dtype(name)).contiguous()
                keep.append(t)
                if not self.context.set_input_shape(name, tuple(t.shape)):
                    raise RuntimeBackendError(
                        f"input {name!r} shape {tuple(t.shape)} is outside the engine's optimisation profile "
                        f"{self.engine.get_tensor_profile_shape(name, 0)}"
                    )
                self.context.set_tensor_address(name, t.data_ptr())
            out = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise RuntimeBackendError(f"output {name!r} shape {shape} is unresolved")
                t = torch.empty(shape, dtype=self._torch_dtype(name), device=self.device)
                out[name] = t
                self.context.set_tensor_address(name, t.data_ptr())
            # Inputs were copied on the current stream; make the engine's stream wait for them.
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeBackendError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
            self.stream.synchronize()
            return {name: t.cpu().numpy() for name, t in out.items()}
