"""A Triton Inference Server model repository for a deployed model.

Two models, each a folder with a ``config.pbtxt`` and a version folder ``1/``:

- ``<name>_onnxruntime``: the fused ONNX (``DyNetDynamicConv2d`` nodes) on Triton's onnxruntime backend. The
  native onnxruntime op library is named in ``model_operations { op_library_filename }``; the backend hands that
  string to onnxruntime's ``RegisterCustomOpsLibrary``, i.e. to ``dlopen``: a bare file name is looked up on
  ``LD_LIBRARY_PATH``, an absolute path is used as is (``op_library_dir``).
- ``<name>_tensorrt`` (when an engine was built): the engine as ``model.plan`` on the tensorrt backend. The TensorRT
  backend has no model-config field for plugins; the plugin library is preloaded at server start, with
  ``--backend-config=tensorrt,plugins=PATH`` or ``LD_PRELOAD=PATH`` (:attr:`TritonRepository.launch_command`).

Both take the batch as Triton's batch dimension (``max_batch_size`` = the recipe profile's max, ``dims`` without
the batch) when the graph's batch is dynamic, and enable dynamic batching. Configs are written as protobuf text;
:func:`parse_config` reads one back with the ``model_config`` protobuf that the ``tritonclient`` package ships.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .errors import TritonError

CONFIG_FILE = "config.pbtxt"
ONNX_MODEL_FILE = "model.onnx"  # the onnxruntime backend's default_model_filename
PLAN_MODEL_FILE = "model.plan"  # the tensorrt backend's default_model_filename
VERSION = "1"
INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU", "KIND_AUTO")

# ONNX TensorProto element type -> Triton data type
_ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as Triton sees it: name, Triton data type, dims (-1 where dynamic)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class GraphIO:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch_dynamic: bool  # every input and output has a symbolic first dimension


@dataclass
class TritonRepository:
    root: Path
    models: dict[str, Path] = field(default_factory=dict)  # model name -> its folder
    skipped: dict[str, str] = field(default_factory=dict)  # model name -> why it was not written
    op_library: str = ""
    plugin_library: str = ""

    @property
    def launch_command(self) -> str:
        """How to start Triton on this repository (the libraries' folder goes where they are installed)."""
        q = shlex.quote
        parts = []
        if "/" not in self.op_library:
            parts.append("LD_LIBRARY_PATH=$DYNET_LIB_DIR:$LD_LIBRARY_PATH")
        parts.append(f"tritonserver --model-repository={q(str(self.root))}")
        if any(n.endswith("_tensorrt") for n in self.models):
            plugin = self.plugin_library if "/" in self.plugin_library else f"$DYNET_LIB_DIR/{self.plugin_library}"
            parts.append(f"--backend-config=tensorrt,plugins={plugin}")
        return " ".join(parts)


# ---- reading a graph's inputs and outputs -------------------------------------------------------------------


def onnx_io(model_or_path) -> GraphIO:
    """Inputs and outputs of an ONNX graph (initializers excluded) with Triton data types."""
    from .graph import load_onnx

    model = load_onnx(model_or_path, TritonError, external_data=False)
    onnx_path = model_or_path if not hasattr(model_or_path, "graph") else model.graph.name
    inits = {i.name for i in model.graph.initializer}

    def specs(values) -> list[tuple[str, str, list[int | None]]]:
        out = []
        for v in values:
            if v.name in inits:
                continue
            tt = v.type.tensor_type
            if tt.elem_type not in _ONNX_TO_TRITON:
                raise TritonError(
                    f"tensor {v.name!r} of {onnx_path} has ONNX element type {tt.elem_type}, which Triton cannot carry"
                )
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
            out.append((v.name, _ONNX_TO_TRITON[tt.elem_type], dims))
        return out

    ins, outs = specs(model.graph.input), specs(model.graph.output)
    if not ins or not outs:
        raise TritonError(f"{onnx_path} has no graph inputs or outputs")
    every = ins + outs
    batch_dynamic = all(dims and dims[0] is None for _, _, dims in every)

    def to_spec(name, dtype, dims) -> TensorSpec:
        kept = dims[1:] if batch_dynamic else dims
        return TensorSpec(name, dtype, tuple(-1 if d is None else int(d) for d in kept))

    return GraphIO(tuple(to_spec(*s) for s in ins), tuple(to_spec(*s) for s in outs), batch_dynamic)


# ---- config text --------------------------------------------------------------------------------------------


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tensors(key: str, specs: Sequence[TensorSpec]) -> list[str]:
    lines = [f"{key} ["]
    for i, t in enumerate(specs):
        lines += [
            "  {",
            f"    name: {_q(t.name)}",
            f"    data_type: {t.data_type}",
            f"    dims: [ {', '.join(str(d) for d in t.dims)} ]",
            "  }" + ("," if i < len(specs) - 1 else ""),
        ]
    lines.append("]")
    return lines


def model_config(
    name: str,
    backend: str,
    io: GraphIO,
    max_batch_size: int,
    instance_kind: str,
    op_libraries: Sequence[str] = (),
    preferred_batch_sizes: Sequence[int] = (),
    max_queue_delay_us: int = 100,
) -> str:
    """``config.pbtxt`` text for one model (``backend``: ``onnxruntime`` or ``tensorrt``)."""
    if not _NAME_RE.match(name):
        raise TritonError(f"Triton model name {name!r} may hold only letters, digits, '_', '-' and '.'")
    from .backends import BACKENDS

    if backend not in BACKENDS:
        raise TritonError(f"unknown Triton backend {backend!r}; this project writes {' and '.join(BACKENDS)} models")
    if instance_kind not in INSTANCE_KINDS:
        raise TritonError(f"instance kind {instance_kind!r} is not one of {', '.join(INSTANCE_KINDS)}")
    batched = io.batch_dynamic
    if batched and max_batch_size < 1:
        raise TritonError(f"max_batch_size must be >= 1 for a graph with a dynamic batch, got {max_batch_size}")
    lines = [
        f"name: {_q(name)}",
        f"backend: {_q(BACKENDS[backend].triton_backend)}",
        f"max_batch_size: {max_batch_size if batched else 0}",
        *_tensors("input", io.inputs),
        *_tensors("output", io.outputs),
        "instance_group [",
        "  {",
        "    count: 1",
        f"    kind: {instance_kind}",
        "  }",
        "]",
    ]
    if batched:
        lines.append("dynamic_batching {")
        prefs = [b for b in preferred_batch_sizes if 1 <= b <= max_batch_size]
        if prefs:
            lines.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in prefs)} ]")
        lines += [f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}", "}"]
    if op_libraries:
        lines.append("model_operations {")
        lines += [f"  op_library_filename: {_q(lib)}" for lib in op_libraries]
        lines.append("}")
    return "\n".join(lines) + "\n"


def load_model_config_pb2():
    """The ``model_config_pb2`` module that ``tritonclient`` ships (``pip install tritonclient``).

    It lives in ``tritonclient/grpc/``, whose package ``__init__`` needs grpcio; the generated module itself
    needs only protobuf, so it is loaded from its file without importing the gRPC client.
    """
    import importlib.util
    import sys

    cached = sys.modules.get("dynet_deploy._triton_model_config_pb2")
    if cached is not None:
        return cached
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise TritonError("the tritonclient package is not installed; 'pip install tritonclient' to parse configs")
    path = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        raise TritonError(f"tritonclient is installed but has no {path.name} (looked in {path.parent})")
    mod_spec = importlib.util.spec_from_file_location("dynet_deploy._triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    sys.modules[mod_spec.name] = module
    return module


def parse_config(text: str):
    """Parse ``config.pbtxt`` text into Triton's ``inference.ModelConfig`` message."""
    from google.protobuf import text_format

    pb2 = load_model_config_pb2()
    try:
        return text_format.Parse(text, pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise TritonError(f"config.pbtxt does not parse as inference.ModelConfig: {exc}") from None


# ---- the repository -----------------------------------------------------------------------------------------


def write_model_repository(
    out_dir: str | Path,
    name: str,
    fused_onnx: str | Path,
    engine: str | Path | None = None,
    *,
    max_batch_size: int,
    preferred_batch_sizes: Sequence[int] = (),
    engine_skipped_reason: str = "no TensorRT engine was built",
    op_library_dir: str | None = None,
    plugin_library_dir: str | None = None,
    onnx_instance_kind: str = "KIND_CPU",
) -> TritonRepository:
    """Write a Triton model repository at ``out_dir`` (which must not exist yet); all or nothing.

    ``op_library_dir`` / ``plugin_library_dir``: where the libraries will be installed on the serving machine;
    without them the configs and launch command name the bare file names (found on ``LD_LIBRARY_PATH``).
    """
    from .op.native import ort_library_filename, tensorrt_plugin_filename

    root = Path(out_dir)
    if root.exists():
        raise TritonError(f"{root} already exists; give a new folder for the model repository")
    if not root.parent.is_dir():
        raise TritonError(f"folder {root.parent} does not exist; create it first")
    fused_onnx = Path(fused_onnx)
    from .graph import load_onnx
    from .op.spec import OP_TYPE

    proto = load_onnx(fused_onnx, TritonError, external_data=False, hint="give the fused graph ('dynet-deploy fuse')")
    io = onnx_io(proto)
    if not any(n.op_type == OP_TYPE for n in proto.graph.node):
        raise TritonError(f"{fused_onnx} has no DyNetDynamicConv2d node; give the fused graph ('dynet-deploy fuse')")
    op_lib = ort_library_filename()
    if op_library_dir:
        op_lib = f"{op_library_dir.rstrip('/')}/{op_lib}"
    plugin_lib = tensorrt_plugin_filename()
    if plugin_library_dir:
        plugin_lib = f"{plugin_library_dir.rstrip('/')}/{plugin_lib}"
    repo = TritonRepository(root, op_library=op_lib, plugin_library=plugin_lib)

    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        onnx_name = f"{name}_onnxruntime"
        text = model_config(
            onnx_name, "onnxruntime", io, max_batch_size, onnx_instance_kind, [op_lib], preferred_batch_sizes
        )
        _write_model(tmp / onnx_name, text, fused_onnx, ONNX_MODEL_FILE)
        repo.models[onnx_name] = root / onnx_name
        trt_name = f"{name}_tensorrt"
        if engine is not None:
            engine = Path(engine)
            if not engine.is_file():
                raise TritonError(f"engine {engine} not found")
            text = model_config(trt_name, "tensorrt", io, max_batch_size, "KIND_GPU", (), preferred_batch_sizes)
            _write_model(tmp / trt_name, text, engine, PLAN_MODEL_FILE)
            repo.models[trt_name] = root / trt_name
        else:
            repo.skipped[trt_name] = engine_skipped_reason
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return repo


def _write_model(folder: Path, config_text: str, artifact: Path, filename: str) -> None:
    if _have_tritonclient():
        parse_config(config_text)  # a config that does not parse is never written
    (folder / VERSION).mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(config_text, encoding="utf-8")
    try:
        os.link(artifact, folder / VERSION / filename)  # same file system: no copy of a large graph
    except OSError:
        shutil.copyfile(artifact, folder / VERSION / filename)


def _have_tritonclient() -> bool:
    import importlib.util

    return importlib.util.find_spec("tritonclient") is not None


__all__ = [
    "GraphIO",
    "TensorSpec",
    "TritonRepository",
    "load_model_config_pb2",
    "model_config",
    "onnx_io",
    "parse_config",
    "write_model_repository",
]
