"""A Triton Inference Server model repository for a deployed model, written to serve as it is.

Two models, each a folder with a ``config.pbtxt`` and a version folder ``1/``:

- ``<name>_onnxruntime``: the fused ONNX (``DyNetDynamicConv2d`` nodes) on Triton's onnxruntime backend. The
  native onnxruntime op library is named in ``model_operations { op_library_filename }``; the backend hands that
  string unchanged to onnxruntime's ``RegisterCustomOpsLibrary``, i.e. to ``dlopen`` in the server's process: a
  relative path would be resolved against the server's working folder, so the config always names an absolute
  path: the library where it is built on this machine (the default), ``op_library_dir`` (where it is installed on
  the server), or, with ``copy_op_library``, a copy inside the model's folder (named at ``served_path``, where
  the server finds the repository; by default where it is written). ``instance_kind`` ``"cpu"`` runs it on the
  CPU execution provider (``KIND_CPU``); ``"gpu"`` on ``KIND_GPU``, where the backend uses onnxruntime's CUDA
  execution provider, or with ``gpu_accelerator="tensorrt"`` its TensorRT execution provider (``optimization {
  execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" } ] } }``), which builds the
  ``DyNetDynamicConv2d`` nodes (domain ``trt.plugins``) from the TensorRT plugin library named in
  ``trt_extra_plugin_lib_paths``.
- ``<name>_tensorrt`` (when an engine was built): the engine as ``model.plan`` on the tensorrt backend. The TensorRT
  backend has no model-config field for plugins; the plugin library is preloaded at server start, with
  ``--backend-config=tensorrt,plugins=PATH`` or ``LD_PRELOAD=PATH`` (:attr:`TritonRepository.launch_command`).

Both take the batch as Triton's batch dimension (``max_batch_size`` = the recipe profile's max, ``dims`` without
the batch) when the graph's batch is dynamic, with Triton's documented dynamic-batching defaults
(``dynamic_batching { }``: batches as large as the queue allows, no delay, no ``preferred_batch_size``, which
Triton's docs advise against except for TensorRT models with several optimization profiles). The normalisation
and classes the fused graph records (:mod:`dynet_deploy.model_card`) are copied into each config's
``parameters``; the onnxruntime backend reads only the parameter keys it knows, so these are for clients.

Folders and files get the permissions of any the user creates (the umask's), so a server running as another user
can read the repository. Configs are written as protobuf text; :func:`parse_config` reads one back with the
``model_config`` protobuf that the ``tritonclient`` package ships.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from .errors import TritonError

CONFIG_FILE = "config.pbtxt"
ONNX_MODEL_FILE = "model.onnx"  # the onnxruntime backend's default_model_filename
PLAN_MODEL_FILE = "model.plan"  # the tensorrt backend's default_model_filename
VERSION = "1"
INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU", "KIND_AUTO")
SERVING_INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}  # --instance-kind
GPU_ACCELERATORS = ("cuda", "tensorrt")  # onnxruntime's execution provider on a KIND_GPU instance

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


@dataclass(frozen=True)
class TritonOptions:
    """How the repository is served (module docstring); every path is one on the serving machine."""

    op_library_dir: str | None = None  # absolute folder holding the op library on the server
    plugin_library_dir: str | None = None  # absolute folder holding the TensorRT plugin library on the server
    copy_op_library: bool = False  # copy the op library into the onnxruntime model's folder
    served_path: str | None = None  # absolute path of the repository on the server (default: where it is written)
    instance_kind: str = "cpu"  # "cpu" | "gpu"
    gpu_accelerator: str = "cuda"  # with "gpu": "cuda" | "tensorrt"

    def check(self) -> None:
        """Raise TritonError on options the server could not use, naming the fix."""
        if self.instance_kind not in SERVING_INSTANCE_KINDS:
            raise TritonError(f"instance kind {self.instance_kind!r} is not one of {', '.join(SERVING_INSTANCE_KINDS)}")
        if self.gpu_accelerator not in GPU_ACCELERATORS:
            raise TritonError(f"GPU accelerator {self.gpu_accelerator!r} is not one of {', '.join(GPU_ACCELERATORS)}")
        if self.gpu_accelerator != "cuda" and self.instance_kind != "gpu":
            raise TritonError(f"the {self.gpu_accelerator} accelerator runs on GPU instances; add --instance-kind gpu")
        if self.copy_op_library and self.op_library_dir:
            raise TritonError(
                "--copy-op-library puts the op library inside the repository and --op-library-dir names where it is "
                "installed on the server: give one of them"
            )
        if self.gpu_accelerator == "tensorrt" and "/" not in _plugin_library(self):
            raise TritonError(
                f"onnxruntime's TensorRT accelerator loads the TensorRT plugin library, and {_plugin_library(self)} "
                "was not built here; give --plugin-dir with the absolute folder where it is installed on the server"
            )
        if self.served_path is not None and not self.copy_op_library:
            raise TritonError("the repository's path on the server is only written with --copy-op-library; add it")
        for value, flag in (
            (self.op_library_dir, "--op-library-dir"),
            (self.plugin_library_dir, "--plugin-dir"),
            (self.served_path, "the repository's path on the server"),
        ):
            if value is not None:
                check_server_path(value, flag)


def check_server_path(value: str, flag: str) -> str:
    """A path written into config.pbtxt for the server's dlopen: absolute and plain, or TritonError with the fix."""
    from .guards import check_library_dir

    check_library_dir(value, flag, TritonError)
    return value


@dataclass
class TritonRepository:
    root: Path
    models: dict[str, Path] = field(default_factory=dict)  # model name -> its folder
    skipped: dict[str, str] = field(default_factory=dict)  # model name -> why it was not written
    op_library: str = ""  # as config.pbtxt names it
    plugin_library: str = ""
    op_library_copied: bool = False
    parameters: dict[str, str] = field(default_factory=dict)  # the configs' parameters (normalisation, classes)

    @property
    def launch_command(self) -> str:
        """How to start Triton on this repository (the libraries' folder goes where they are installed)."""
        q = shlex.quote
        parts = [f"tritonserver --model-repository={q(str(self.root))}"]  # the op library's path is in the config
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
    max_queue_delay_us: int = 0,
    parameters: Mapping[str, str] | None = None,
    gpu_accelerator: str | None = None,
    accelerator_parameters: Mapping[str, str] | None = None,
) -> str:
    """``config.pbtxt`` text for one model (``backend``: ``onnxruntime`` or ``tensorrt``).

    A dynamic-batch graph gets ``dynamic_batching { }`` (Triton's defaults; ``max_queue_delay_us`` > 0 adds a
    delay); ``parameters`` become string parameters; ``gpu_accelerator`` (``"tensorrt"``) an onnxruntime GPU
    execution accelerator with ``accelerator_parameters``.
    """
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
        if max_queue_delay_us > 0:
            lines.append(f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}")
        lines.append("}")
    if gpu_accelerator is not None and gpu_accelerator != "cuda":
        if instance_kind != "KIND_GPU":
            raise TritonError(f"the {gpu_accelerator} execution accelerator runs on KIND_GPU instances")
        lines += ["optimization {", "  execution_accelerators {", "    gpu_execution_accelerator [", "      {"]
        lines.append(f"        name: {_q(gpu_accelerator)}")
        for key, value in (accelerator_parameters or {}).items():
            lines.append(f"        parameters {{ key: {_q(key)} value: {_q(value)} }}")
        lines += ["      }", "    ]", "  }", "}"]
    for key, value in (parameters or {}).items():
        lines.append(f"parameters {{ key: {_q(key)} value {{ string_value: {_q(value)} }} }}")
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
    engine_skipped_reason: str = "no TensorRT engine was built",
    options: TritonOptions | None = None,
    op_library_dir: str | None = None,
    plugin_library_dir: str | None = None,
) -> TritonRepository:
    """Write a Triton model repository at ``out_dir`` (which must not exist yet); all or nothing.

    ``options`` (:class:`TritonOptions`) say where the libraries are on the server and which instances run the
    onnxruntime model; ``op_library_dir`` / ``plugin_library_dir`` are shorthands for its two folders.
    """
    from .graph import load_onnx
    from .model_card import read_serving_metadata
    from .op.spec import OP_TYPE

    opts = options or TritonOptions()
    if op_library_dir is not None or plugin_library_dir is not None:
        opts = dataclasses.replace(
            opts,
            op_library_dir=op_library_dir or opts.op_library_dir,
            plugin_library_dir=plugin_library_dir or opts.plugin_library_dir,
        )
    opts.check()
    root = Path(out_dir)
    if root.exists():
        raise TritonError(f"{root} already exists; give a new folder for the model repository")
    if not root.parent.is_dir():
        raise TritonError(f"folder {root.parent} does not exist; create it first")
    fused_onnx = Path(fused_onnx)
    proto = load_onnx(fused_onnx, TritonError, external_data=False, hint="give the fused graph ('dynet-deploy fuse')")
    io = onnx_io(proto)
    if not any(n.op_type == OP_TYPE for n in proto.graph.node):
        raise TritonError(f"{fused_onnx} has no DyNetDynamicConv2d node; give the fused graph ('dynet-deploy fuse')")
    onnx_name, trt_name = f"{name}_onnxruntime", f"{name}_tensorrt"
    served = Path(opts.served_path) if opts.served_path else Path(os.path.abspath(root))
    op_lib_file, op_lib = _op_library(opts, served / onnx_name)
    plugin_lib = _plugin_library(opts)
    params = read_serving_metadata(proto)
    repo = TritonRepository(
        root, op_library=op_lib, plugin_library=plugin_lib, op_library_copied=opts.copy_op_library, parameters=params
    )

    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would keep the server's user out
        accelerator = opts.gpu_accelerator if opts.instance_kind == "gpu" else None
        text = model_config(
            onnx_name,
            "onnxruntime",
            io,
            max_batch_size,
            SERVING_INSTANCE_KINDS[opts.instance_kind],
            [op_lib],
            parameters=params,
            gpu_accelerator=accelerator,
            accelerator_parameters={"trt_extra_plugin_lib_paths": plugin_lib} if accelerator == "tensorrt" else None,
        )
        _write_model(tmp / onnx_name, text, fused_onnx, ONNX_MODEL_FILE)
        if opts.copy_op_library:
            _copy_readable(op_lib_file, tmp / onnx_name / op_lib_file.name, executable=True)
        repo.models[onnx_name] = root / onnx_name
        if engine is not None:
            engine = Path(engine)
            if not engine.is_file():
                raise TritonError(f"engine {engine} not found")
            text = model_config(trt_name, "tensorrt", io, max_batch_size, "KIND_GPU", (), parameters=params)
            _write_model(tmp / trt_name, text, engine, PLAN_MODEL_FILE)
            repo.models[trt_name] = root / trt_name
        else:
            repo.skipped[trt_name] = engine_skipped_reason
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return repo


def _op_library(opts: TritonOptions, model_folder_on_server: Path) -> tuple[Path, str]:
    """(the library file here, the absolute path config.pbtxt names for the server)."""
    from .op.native import ENV_PLUGIN_DIR, ORT_LIBRARY, find_library, search_dirs

    if opts.op_library_dir:
        return Path(opts.op_library_dir) / ORT_LIBRARY, f"{opts.op_library_dir.rstrip('/')}/{ORT_LIBRARY}"
    here = find_library(ORT_LIBRARY)
    if here is None:
        raise TritonError(
            f"the onnxruntime op library {ORT_LIBRARY} is not in {', '.join(map(str, search_dirs()))}; build it "
            f"('make plugins') or set {ENV_PLUGIN_DIR}, or give --op-library-dir with the absolute folder where it "
            "is installed on the server"
        )
    here = here.resolve()
    if opts.copy_op_library:
        return here, str(model_folder_on_server / ORT_LIBRARY)
    return here, str(here)


def _plugin_library(opts: TritonOptions) -> str:
    """The TensorRT plugin library as the launch command (and onnxruntime's TensorRT accelerator) names it."""
    from .op.native import tensorrt_plugin_filename, tensorrt_plugin_path

    if opts.plugin_library_dir:
        return f"{opts.plugin_library_dir.rstrip('/')}/{tensorrt_plugin_filename()}"
    here = tensorrt_plugin_path()
    return str(here.resolve()) if here is not None else tensorrt_plugin_filename()


def _umask() -> int:
    from .fileio import _umask as umask

    return umask()


def _copy_readable(src: Path, dst: Path, executable: bool = False) -> None:
    """Copy ``src`` to ``dst`` with the umask's permissions (0666, or 0777 for a library, less the umask)."""
    shutil.copyfile(src, dst)
    os.chmod(dst, (0o777 if executable else 0o666) & ~_umask())


def _write_model(folder: Path, config_text: str, artifact: Path, filename: str) -> None:
    if _have_tritonclient():
        parse_config(config_text)  # a config that does not parse is never written
    (folder / VERSION).mkdir(parents=True)  # mkdir's mode is 0777 less the umask
    (folder / CONFIG_FILE).write_text(config_text, encoding="utf-8")
    target = folder / VERSION / filename
    # A hard link avoids copying a large graph, but shares the source's mode: only when that is the umask's.
    wanted = 0o666 & ~_umask()
    try:
        if (artifact.stat().st_mode & 0o777) != wanted:
            raise OSError("mode differs")
        os.link(artifact, target)
    except OSError:
        _copy_readable(artifact, target)


def _have_tritonclient() -> bool:
    import importlib.util

    return importlib.util.find_spec("tritonclient") is not None


__all__ = [
    "GPU_ACCELERATORS",
    "SERVING_INSTANCE_KINDS",
    "GraphIO",
    "TritonOptions",
    "TensorSpec",
    "TritonRepository",
    "load_model_config_pb2",
    "model_config",
    "onnx_io",
    "parse_config",
    "write_model_repository",
]
