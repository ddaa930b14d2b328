"""Build a TensorRT engine from a plugin ONNX (one whose dynamic convs are DyNetDynamicConv2d nodes).

- The plugin library is loaded first, so TensorRT's ONNX parser finds the DyNetDynamicConv2d creator.
- One optimisation profile: min/opt/max batch, and min/opt/max H and W for inputs whose spatial dims are dynamic.
- fp16 comes from an fp16 ONNX (``convert_onnx_to_fp16``, which keeps the plugin node and feeds it fp16) built as a
  strongly typed network: TensorRT 11 removed the FP16 builder flag and is always strongly typed; on 10.x the network
  is created with the STRONGLY_TYPED flag. ``legacy_fp16_flag`` (10.x only) instead sets BuilderFlag.FP16 on the
  fp32 network and lets TensorRT choose precisions.
- An optional timing cache is loaded before and saved after the build; the engine is written atomically.

The fp16 conversion needs only onnx and onnxconverter-common; everything else needs TensorRT (``import tensorrt``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

from ...errors import BuildError
from ...fileio import atomic_path, atomic_write_bytes
from ...op.spec import OP_TYPE as PLUGIN_OP
from ...precision import check_op_inputs_fp16, convert_to_fp16
from ...precision import tensor_elem_types as tensor_elem_types  # re-exported: the fp16 tests read it here
from ...progress import get_logger
from .loader import import_tensorrt, load_plugin_library, trt_major

# ---- fp16 ONNX ------------------------------------------------------------------------------------------------


def convert_onnx_to_fp16(src, dst=None, keep_io_types: bool = True):
    """Convert a plugin ONNX to fp16, keeping every DyNetDynamicConv2d node (:func:`dynet_deploy.precision.convert_to_fp16`).

    The converter treats an op it does not know as fp16-capable: it casts the node's float inputs to fp16 and
    converts the constant weight, bias_bank and bias initializers, which is what the plugin's fp16 mode expects.
    With ``keep_io_types`` the graph's inputs and outputs stay fp32 (Casts are inserted), so callers feed the same
    arrays as for the fp32 model. Raises BuildError if a plugin node is lost or left with a non-fp16 input.
    """
    return convert_to_fp16(src, dst, keep_io_types=keep_io_types, error=BuildError)


def check_plugin_inputs_fp16(model) -> None:
    check_op_inputs_fp16(model, BuildError)


# ---- TensorRT -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Profile:
    """Optimisation profile: batch and (for dynamic spatial inputs) H and W as (min, opt, max)."""

    batch: tuple[int, int, int] = (1, 1, 1)
    height: tuple[int, int, int] | None = None
    width: tuple[int, int, int] | None = None

    def __post_init__(self):
        for name in ("batch", "height", "width"):
            v = getattr(self, name)
            if v is None:
                continue
            if len(v) != 3 or not all(int(x) >= 1 for x in v) or not (v[0] <= v[1] <= v[2]):
                raise BuildError(f"profile {name} must be min <= opt <= max, all >= 1; got {v}")

    def shapes_for(self, name: str, dims: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes for an input with ``dims`` (-1 where dynamic)."""
        out: tuple[list[int], list[int], list[int]] = ([], [], [])
        for axis, d in enumerate(dims):
            if d >= 0:
                for s in out:
                    s.append(int(d))
                continue
            if axis == 0:
                rng = self.batch
            elif axis == len(dims) - 2 and self.height is not None:
                rng = self.height
            elif axis == len(dims) - 1 and self.width is not None:
                rng = self.width
            else:
                raise BuildError(
                    f"input {name!r} has a dynamic dim {axis} in {tuple(dims)}; give its range "
                    "(--min-hw/--opt-hw/--max-hw for H and W of image inputs)"
                )
            for s, v in zip(out, rng):
                s.append(int(v))
        return tuple(out[0]), tuple(out[1]), tuple(out[2])


@dataclasses.dataclass
class EngineBuildResult:
    engine_path: Path
    tensorrt_version: str
    fp16: bool
    strongly_typed: bool
    plugin_library: Path
    timing_cache: Path | None


class _TrtLogger:
    """Collects TensorRT's error messages so a failed build can say why."""

    def __init__(self, trt, verbose: bool):
        class Logger(trt.ILogger):
            def __init__(inner):
                trt.ILogger.__init__(inner)
                inner.errors: list[str] = []

            def log(inner, severity, msg):
                sev = trt.ILogger.Severity
                if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                    inner.errors.append(msg)
                serious = severity in (sev.INTERNAL_ERROR, sev.ERROR, sev.WARNING)
                if verbose or serious:
                    get_logger(__name__).log(logging.WARNING if serious else logging.INFO, f"[TensorRT] {msg}")

        self.logger = Logger()


def build_engine(
    onnx_path,
    engine_path,
    *,
    profile: Profile,
    fp16: bool = False,
    legacy_fp16_flag: bool = False,
    plugin_library=None,
    timing_cache=None,
    workspace_mib: int | None = None,
    save_fp16_onnx=None,
    verbose: bool = False,
) -> EngineBuildResult:
    """Build and atomically write a TensorRT engine for a plugin ONNX. See the module docstring."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise BuildError(f"ONNX file {onnx_path} does not exist")
    if legacy_fp16_flag and not fp16:
        raise BuildError("legacy_fp16_flag only makes sense with fp16")
    from ...fuse.bank import refuse_narrowed_bank
    from ...graph import load_onnx

    refuse_narrowed_bank(load_onnx(onnx_path, BuildError, external_data=False), BuildError, "TensorRT's plugin")
    trt = import_tensorrt()
    major = trt_major(trt)
    if legacy_fp16_flag and major >= 11:
        raise BuildError(
            f"TensorRT {trt.__version__} has no FP16 builder flag (removed in 11); use the default fp16 path "
            "(an fp16 ONNX built strongly typed)"
        )
    lib_path = load_plugin_library(plugin_library)

    import onnx

    model_bytes = onnx_path.read_bytes()
    if fp16 and not legacy_fp16_flag:
        model16 = convert_onnx_to_fp16(onnx.load(str(onnx_path)), save_fp16_onnx)
        model_bytes = model16.SerializeToString()
    strongly_typed = major >= 11 or (fp16 and not legacy_fp16_flag)

    log = _TrtLogger(trt, verbose).logger
    builder = trt.Builder(log)
    flags = 0
    if major < 11 and strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    # Parsing from the file path lets the parser resolve external data stored beside the model.
    if fp16 and not legacy_fp16_flag:
        ok = parser.parse(model_bytes, str(onnx_path))
    else:
        ok = parser.parse_from_file(str(onnx_path))
    if not ok:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        hint = ""
        if "Plugin not found" in errors or PLUGIN_OP in errors:
            hint = f" (is {lib_path} the plugin built for this TensorRT? name {PLUGIN_OP!r}, version '1', namespace '')"
        raise BuildError(f"TensorRT could not parse {onnx_path}: {errors}{hint}")

    config = builder.create_builder_config()
    if workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if legacy_fp16_flag:
        config.set_flag(getattr(trt.BuilderFlag, "FP16"))
    opt_profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        mn, op, mx = profile.shapes_for(tensor.name, tuple(tensor.shape))
        opt_profile.set_shape(tensor.name, mn, op, mx)
    config.add_optimization_profile(opt_profile)

    cache_path = Path(timing_cache) if timing_cache is not None else None
    cache_blob = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError("TensorRT failed to build the engine: " + ("; ".join(log.errors) or "no error message"))
    with atomic_path(engine_path, BuildError) as tmp:
        with open(tmp, "wb") as f:
            f.write(memoryview(serialized))
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())), BuildError)
    return EngineBuildResult(Path(engine_path), str(trt.__version__), fp16, strongly_typed, lib_path, cache_path)


def default_engine_path(onnx_path) -> Path:
    p = Path(onnx_path)
    stem = p.name[: -len(".onnx")] if p.name.endswith(".onnx") else p.stem
    return p.with_name(stem + ".engine")
