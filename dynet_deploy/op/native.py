"""Find and call the native DyNetDynamicConv2d libraries built from plugins/dynamic_conv/.

Three libraries, all optional at import time:

- ``libdynet_dynamic_conv_cpu.so``: the CPU reference (C ABI), always built by ``make plugins``;
- ``libdynet_dynamic_conv_cuda.so``: the CUDA kernels (same C ABI), built when nvcc is found;
- ``libdynet_dynamic_conv_trt.so``: the TensorRT plugin, built when TensorRT is found.

They are looked up in ``$DYNET_DEPLOY_PLUGIN_DIR`` first, then in the package's ``lib/`` (where an installed wheel
has them), then in ``build/`` at the repository root (a checkout built with ``make plugins``).
The ctypes mirror of ``DynetConvParams`` below must match ``plugins/dynamic_conv/dynetDynamicConv.h``: its
attribute fields are the spec's (:mod:`dynet_deploy.op.spec`), which a test holds equal to the C ABI's table.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import BuildError, MissingDependencyError
from .spec import ACTIVATIONS, ATTRIBUTE_NAMES

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_PLUGIN_DIR = "DYNET_DEPLOY_PLUGIN_DIR"

CPU_LIBRARY = "libdynet_dynamic_conv_cpu.so"
CUDA_LIBRARY = "libdynet_dynamic_conv_cuda.so"
TRT_LIBRARY = "libdynet_dynamic_conv_trt.so"
ORT_LIBRARY = "libdynet_dynamic_conv_ort.so"

ABI_VERSION = 2

# DynetStatus
OK = 0
ERR_NULL_POINTER = 1
ERR_INVALID_ARGUMENT = 2
ERR_WORKSPACE = 3
ERR_CUDA = 4
ERR_UNSUPPORTED = 5
ERR_LIMIT = 6  # a padded extent or dilated kernel beyond 2^31-1 (README, "Limitations")

# DynetDataType / DynetAlgo
FLOAT32 = 0
FLOAT16 = 1
BFLOAT16 = 2  # the weight bank only (op version 2, CPU entry points)
ALGO_AUTO = 0
ALGO_TWO_STEP = 1
ALGO_ONE_KERNEL = 2
ALGO_CUDNN = 3  # needs a plan (dynet_conv_cuda_plan_*), answered DYNET_ERR_UNSUPPORTED by dynet_conv_cuda
ALGO_CUBLAS_GEMM = 4  # pointwise layers only; needs a plan and libcublas at run time
ALGO_CUBLAS_IM2COL = 5  # any layer; needs a plan and libcublas at run time
ALGO_LAST = ALGO_CUBLAS_IM2COL

# DYNET_LIBRARY_* (dynet_conv_cuda_library_status)
LIBRARY_CUDNN = 1
LIBRARY_CUBLAS = 2

# The workspace formula's constants (dynetDynamicConv.h, dynet_conv_cuda_workspace_size).
WORKSPACE_ALIGNMENT = 256
CUBLAS_SCRATCH_BYTES = 32 << 20
IM2COL_CHUNK_BYTES = 256 << 20

# cuDNN and cuBLAS are dlopened by the CUDA-carrying libraries when a plan needs them: by soname first, then in the
# folders of this variable (':'-separated), which load_cuda_library / onnxruntime_lib.register set to the lib/
# folders of the installed nvidia-* wheels when it is unset.
ENV_CUDA_LIBRARY_PATH = "DYNET_CUDA_LIBRARY_PATH"

# DynetConvParams' shape fields, in struct order; the attribute fields follow in the spec's order, then the weight
# bank's storage type (not an attribute: DYNET_FLOAT32, or op version 2's DYNET_FLOAT16 / DYNET_BFLOAT16).
SHAPE_FIELDS = ("n", "c_in", "h", "w", "c_out", "k", "coeff_channels", "kh", "kw")
PARAM_FIELDS: tuple[str, ...] = (*SHAPE_FIELDS, *ATTRIBUTE_NAMES, "weight_dtype")  # every field, in struct order


class DynetConvParams(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int32) for name in PARAM_FIELDS]


class DynetAttributeInfo(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("default_value", ctypes.c_int32),
        ("min_value", ctypes.c_int32),
        ("max_value", ctypes.c_int32),
        ("since_version", ctypes.c_int32),
    ]


class DynetConvTensors(ctypes.Structure):
    """Every tensor of a call (``dynet_conv_cpu``, ``dynet_conv_cuda_v2``): absent ones are NULL."""

    _fields_ = [
        (name, ctypes.c_void_p)
        for name in ("x", "coeff", "weight", "bias_bank", "bias", "spatial", "residual", "y", "mean")
    ]


class DynamicConvCallError(ValueError):
    """The native library rejected a call; ``status`` is the DynetStatus code."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ---- locating the libraries -----------------------------------------------------------------------------------


def search_dirs() -> list[Path]:
    """Where the native libraries are looked for, in order: ``$DYNET_DEPLOY_PLUGIN_DIR``, the package's own
    ``lib/`` (what an installed wheel carries), then ``build/`` of the checkout the package runs from."""
    from ..resources import LIBRARY_DIR

    dirs = []
    env = os.environ.get(ENV_PLUGIN_DIR)
    if env:
        dirs.append(Path(env))
    dirs.append(LIBRARY_DIR)
    if (REPO_ROOT / "CMakeLists.txt").is_file():  # a checkout (an installed package has no build/ beside it)
        dirs.append(REPO_ROOT / "build")
    return dirs


def find_library(name: str) -> Path | None:
    for d in search_dirs():
        p = d / name
        if p.is_file():
            return p
    return None


def cuda_library_search_path() -> list[str]:
    """The lib/ folders of the nvidia-cudnn-cu13 / nvidia-cublas wheels importable here (cuDNN's, then cuBLAS's)."""
    import importlib.util

    dirs = []
    for package in ("nvidia.cudnn", "nvidia.cu13", "nvidia.cublas"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        for root in (spec.submodule_search_locations or []) if spec is not None else []:
            lib = Path(root) / "lib"
            if lib.is_dir() and str(lib) not in dirs:
                dirs.append(str(lib))
    return dirs


def ensure_cuda_library_path() -> str | None:
    """Set ``$DYNET_CUDA_LIBRARY_PATH`` to the wheels' folders when it is unset; return its value."""
    if not os.environ.get(ENV_CUDA_LIBRARY_PATH):
        dirs = cuda_library_search_path()
        if dirs:
            os.environ[ENV_CUDA_LIBRARY_PATH] = os.pathsep.join(dirs)
    return os.environ.get(ENV_CUDA_LIBRARY_PATH)


def cpu_library_path() -> Path | None:
    return find_library(CPU_LIBRARY)


def cuda_library_path() -> Path | None:
    return find_library(CUDA_LIBRARY)


def ort_library_filename() -> str:
    """File name of the native onnxruntime custom-op library (what Triton's model_operations names)."""
    return ORT_LIBRARY


def tensorrt_plugin_filename() -> str:
    """File name of the TensorRT plugin library (what Triton's TensorRT backend preloads)."""
    return TRT_LIBRARY


def tensorrt_plugin_path() -> Path | None:
    """Path of the built TensorRT plugin library, or None when it was not built (no TensorRT at build time)."""
    return find_library(TRT_LIBRARY)


def build_libraries(build_dir: str | os.PathLike | None = None, extra_args: Sequence[str] = (), jobs: int = 2) -> Path:
    """Configure and build plugins/ with CMake (what ``make plugins`` does); return the build folder."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise MissingDependencyError("cmake is not installed; install it (apt-get install cmake) to build the plugins")
    build = Path(build_dir) if build_dir is not None else REPO_ROOT / "build"
    steps = [
        [cmake, "-S", str(REPO_ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", *extra_args],
        [cmake, "--build", str(build), f"-j{jobs}"],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-4000:]
            raise BuildError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
    return build


def ort_include_dir() -> Path | None:
    """onnxruntime's C/C++ API headers for the op library: ``$ONNXRUNTIME_INCLUDE_DIR``, else the folder
    ``make ort-headers`` fetches them into (``.cache/onnxruntime/include`` in the checkout); None when absent."""
    for d in (os.environ.get("ONNXRUNTIME_INCLUDE_DIR"), REPO_ROOT / ".cache" / "onnxruntime" / "include"):
        if d and (Path(d) / "onnxruntime_cxx_api.h").is_file():
            return Path(d)
    return None


def ensure_built() -> Path:
    """Return the CPU reference library's path, building build/ with CMake first when a library this machine can
    build is missing: the CPU reference always, the onnxruntime op library where onnxruntime's headers are present."""
    headers = ort_include_dir()
    if cpu_library_path() is None or (headers is not None and find_library(ORT_LIBRARY) is None):
        build_libraries(extra_args=[f"-DONNXRUNTIME_INCLUDE_DIR={headers}"] if headers is not None else [])
    path = cpu_library_path()
    if path is None:
        raise BuildError(f"CMake finished but {CPU_LIBRARY} is not in {', '.join(map(str, search_dirs()))}")
    return path


# ---- ctypes bindings -----------------------------------------------------------------------------------------

_LOADED: dict[str, ctypes.CDLL] = {}


def _declare_common(lib: ctypes.CDLL) -> None:
    P = ctypes.POINTER(DynetConvParams)
    lib.dynet_conv_abi_version.restype = ctypes.c_int32
    lib.dynet_conv_abi_version.argtypes = []
    lib.dynet_conv_params_init.restype = None
    lib.dynet_conv_params_init.argtypes = [P]
    lib.dynet_conv_validate.restype = ctypes.c_int32
    lib.dynet_conv_validate.argtypes = [P, ctypes.c_char_p, ctypes.c_size_t]
    lib.dynet_conv_output_hw.restype = ctypes.c_int32
    lib.dynet_conv_output_hw.argtypes = [P, ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int32)]
    lib.dynet_status_string.restype = ctypes.c_char_p
    lib.dynet_status_string.argtypes = [ctypes.c_int32]
    lib.dynet_conv_attribute_count.restype = ctypes.c_int32
    lib.dynet_conv_attribute_count.argtypes = []
    lib.dynet_conv_attribute.restype = ctypes.POINTER(DynetAttributeInfo)
    lib.dynet_conv_attribute.argtypes = [ctypes.c_int32]
    lib.dynet_conv_op_version.restype = ctypes.c_int32
    lib.dynet_conv_op_version.argtypes = [P]
    version = lib.dynet_conv_abi_version()
    if version != ABI_VERSION:
        raise BuildError(
            f"{lib._name} has ABI version {version}, this package expects {ABI_VERSION}; rebuild (make plugins)"
        )


def _load(name: str, path: Path | None, what: str) -> ctypes.CDLL:
    if name in _LOADED:
        return _LOADED[name]
    if path is None:
        raise MissingDependencyError(
            f"{what} library {name} not found in {', '.join(map(str, search_dirs()))}; "
            f"build it with 'make plugins' or set {ENV_PLUGIN_DIR}"
        )
    lib = ctypes.CDLL(str(path))
    _declare_common(lib)
    _LOADED[name] = lib
    return lib


def load_cpu_library() -> ctypes.CDLL:
    lib = _load(CPU_LIBRARY, cpu_library_path(), "the CPU reference")
    fp = ctypes.POINTER(ctypes.c_float)
    lib.dynet_conv_cpu_f32.restype = ctypes.c_int32
    lib.dynet_conv_cpu_f32.argtypes = [ctypes.POINTER(DynetConvParams), fp, fp, fp, fp, fp, fp]
    lib.dynet_conv_cpu.restype = ctypes.c_int32
    lib.dynet_conv_cpu.argtypes = [ctypes.POINTER(DynetConvParams), ctypes.POINTER(DynetConvTensors)]
    return lib


def load_cuda_library() -> ctypes.CDLL:
    ensure_cuda_library_path()
    lib = _load(CUDA_LIBRARY, cuda_library_path(), "the CUDA kernel")
    vp = ctypes.c_void_p
    lib.dynet_conv_cuda_workspace_size.restype = ctypes.c_size_t
    lib.dynet_conv_cuda_workspace_size.argtypes = [ctypes.POINTER(DynetConvParams), ctypes.c_int32, ctypes.c_int32]
    lib.dynet_conv_cuda.restype = ctypes.c_int32
    lib.dynet_conv_cuda.argtypes = [
        ctypes.POINTER(DynetConvParams),
        ctypes.c_int32,
        ctypes.c_int32,
        vp,
        vp,
        vp,
        vp,
        vp,
        vp,
        vp,
        ctypes.c_size_t,
        vp,
    ]
    # Plans (every algorithm, the cuDNN tactic included): made once per shape, run without allocating.
    lib.dynet_conv_cuda_has_cudnn.restype = ctypes.c_int32
    lib.dynet_conv_cuda_has_cudnn.argtypes = []
    lib.dynet_conv_cuda_plan_create.argtypes = [
        ctypes.POINTER(DynetConvParams),
        ctypes.c_int32,
        ctypes.c_int32,
        ctypes.c_size_t,
        ctypes.POINTER(vp),
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    lib.dynet_conv_cuda_plan_create.restype = ctypes.c_int32
    lib.dynet_conv_cuda_plan_workspace_size.argtypes = [vp]
    lib.dynet_conv_cuda_plan_workspace_size.restype = ctypes.c_size_t
    lib.dynet_conv_cuda_plan_algo.argtypes = [vp]
    lib.dynet_conv_cuda_plan_algo.restype = ctypes.c_int32
    lib.dynet_conv_cuda_plan_run.argtypes = [vp] + [vp] * 7 + [ctypes.c_size_t, vp]
    lib.dynet_conv_cuda_plan_run.restype = ctypes.c_int32
    lib.dynet_conv_cuda_plan_destroy.argtypes = [vp]
    lib.dynet_conv_cuda_plan_destroy.restype = None
    # Run-time libraries and contexts (handles made once, outside enqueue; plans made in a context borrow them).
    lib.dynet_conv_cuda_has_cublas.restype = ctypes.c_int32
    lib.dynet_conv_cuda_has_cublas.argtypes = []
    lib.dynet_conv_cuda_library_status.restype = ctypes.c_int32
    lib.dynet_conv_cuda_library_status.argtypes = [ctypes.c_int32, ctypes.c_char_p, ctypes.c_size_t]
    lib.dynet_conv_cuda_context_create.restype = ctypes.c_int32
    lib.dynet_conv_cuda_context_create.argtypes = [ctypes.POINTER(vp)]
    lib.dynet_conv_cuda_context_prepare.restype = ctypes.c_int32
    lib.dynet_conv_cuda_context_prepare.argtypes = [vp, ctypes.c_int32, ctypes.c_char_p, ctypes.c_size_t]
    lib.dynet_conv_cuda_context_ready.restype = ctypes.c_int32
    lib.dynet_conv_cuda_context_ready.argtypes = [vp, ctypes.c_int32]
    lib.dynet_conv_cuda_context_destroy.restype = None
    lib.dynet_conv_cuda_context_destroy.argtypes = [vp]
    lib.dynet_conv_cuda_plan_create_in.restype = ctypes.c_int32
    lib.dynet_conv_cuda_plan_create_in.argtypes = [
        vp,
        ctypes.POINTER(DynetConvParams),
        ctypes.c_int32,
        ctypes.c_int32,
        ctypes.c_size_t,
        ctypes.POINTER(vp),
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    lib.dynet_conv_cuda_cublas_gemm.restype = ctypes.c_int32
    lib.dynet_conv_cuda_cublas_gemm.argtypes = [
        ctypes.POINTER(DynetConvParams),
        ctypes.c_int32,
        ctypes.c_int32,
        ctypes.c_int32,
        ctypes.c_int32,
        ctypes.POINTER(ctypes.c_int64),
    ]
    return lib


GEMM_FIELDS = (
    "m",
    "n",
    "k",
    "batch",
    "a_offset",
    "lda",
    "stride_a",
    "b_offset",
    "ldb",
    "stride_b",
    "c_offset",
    "ldc",
    "stride_c",
)


def cublas_gemm(params: DynetConvParams, algo: int, which: int, n0: int = 0, samples: int | None = None) -> dict:
    """The column-major strided-batched GEMM a cuBLAS tactic enqueues (which 0: kernel fusion, 1: convolution of
    samples [n0, n0 + samples)), as :data:`GEMM_FIELDS`; host arithmetic only."""
    lib = load_cuda_library()
    out = (ctypes.c_int64 * len(GEMM_FIELDS))()
    count = params.n - n0 if samples is None else samples
    status = lib.dynet_conv_cuda_cublas_gemm(ctypes.byref(params), algo, which, n0, count, out)
    if status != OK:
        raise DynamicConvCallError(status, f"dynet_conv_cuda_cublas_gemm: {lib.dynet_status_string(status).decode()}")
    return dict(zip(GEMM_FIELDS, list(out)))


def cuda_library_status(library: int) -> tuple[int, str]:
    """(DynetStatus, message) of loading cuDNN (LIBRARY_CUDNN) or cuBLAS (LIBRARY_CUBLAS) in the CUDA library."""
    lib = load_cuda_library()
    msg = ctypes.create_string_buffer(1024)
    status = lib.dynet_conv_cuda_library_status(library, msg, len(msg))
    return status, msg.value.decode()


def make_params(
    x_shape,
    coeff_shape,
    weight_shape,
    *,
    has_bias_bank=False,
    has_bias=False,
    stride=(1, 1),
    pads=(0, 0, 0, 0),
    dilation=(1, 1),
    groups=1,
    activation=0,
    has_spatial=False,
    has_residual=False,
    has_mean=False,
    weight_dtype=FLOAT32,
) -> DynetConvParams:
    """Build DynetConvParams from tensor shapes and attributes (pads are top, left, bottom, right); ``weight_dtype``
    is the bank's storage type (FLOAT32, or op version 2's FLOAT16 / BFLOAT16)."""
    if len(x_shape) != 4 or len(coeff_shape) != 3 or len(weight_shape) != 5:
        raise ValueError(
            f"expected x [N, C_in, H, W], coeff [N, C_c, K], weight [K, C_out, C_in/groups, kH, kW]; "
            f"got {tuple(x_shape)}, {tuple(coeff_shape)}, {tuple(weight_shape)}"
        )
    n, c_in, h, w = (int(v) for v in x_shape)
    k, c_out, cin_g, kh, kw = (int(v) for v in weight_shape)
    if coeff_shape[0] != n or coeff_shape[2] != k:
        raise ValueError(f"coeff {tuple(coeff_shape)} does not match N={n} and K={k}")
    if groups > 0 and c_in % groups == 0 and cin_g != c_in // groups:
        raise ValueError(f"weight dim 2 is {cin_g}, expected C_in/groups = {c_in}/{groups}")
    if isinstance(activation, str):
        activation = ACTIVATIONS[activation]
    p = DynetConvParams()
    for name, value in zip(SHAPE_FIELDS, (n, c_in, h, w, c_out, k, int(coeff_shape[1]), kh, kw)):
        setattr(p, name, value)
    # Out-of-range values go to the library unchecked: its validator is the judge (and names the attribute).
    flags = (has_bias_bank, has_bias, has_spatial, has_residual, has_mean)
    values = (*stride, *pads, *dilation, groups, activation, *(bool(f) for f in flags))
    if len(values) != len(ATTRIBUTE_NAMES):
        raise ValueError(f"expected 2 strides, 4 pads and 2 dilations, got {stride}, {pads}, {dilation}")
    for name, value in zip(ATTRIBUTE_NAMES, values):
        setattr(p, name, int(value))
    p.weight_dtype = int(weight_dtype)
    return p


def attribute_table(lib: ctypes.CDLL | None = None) -> list[tuple[str, int, int, int, int]]:
    """The C ABI's attribute table as (name, default, min, max, since_version) rows, read from the loaded library."""
    lib = lib or load_cpu_library()
    rows = []
    for i in range(lib.dynet_conv_attribute_count()):
        info = lib.dynet_conv_attribute(i).contents
        rows.append((info.name.decode(), info.default_value, info.min_value, info.max_value, info.since_version))
    return rows


def _error(lib: ctypes.CDLL, status: int, params: DynetConvParams) -> DynamicConvCallError:
    buf = ctypes.create_string_buffer(512)
    lib.dynet_conv_validate(ctypes.byref(params), buf, len(buf))
    detail = buf.value.decode(errors="replace")
    text = lib.dynet_status_string(status).decode()
    return DynamicConvCallError(status, f"DyNetDynamicConv2d: {text}" + (f": {detail}" if detail else ""))


def output_hw(params: DynetConvParams, lib: ctypes.CDLL | None = None) -> tuple[int, int]:
    lib = lib or load_cpu_library()
    h, w = ctypes.c_int32(), ctypes.c_int32()
    status = lib.dynet_conv_output_hw(ctypes.byref(params), ctypes.byref(h), ctypes.byref(w))
    if status != OK:
        raise _error(lib, status, params)
    return h.value, w.value


def _f32(a, name: str) -> np.ndarray:
    arr = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


def bank_dtype(weight: np.ndarray) -> int:
    """The DynetDataType of a weight bank array: FLOAT16 for numpy's float16, BFLOAT16 for ``ml_dtypes.bfloat16``
    (what onnx reads a BFLOAT16 initializer as), FLOAT32 for everything else (converted)."""
    name = np.asarray(weight).dtype.name
    return {"float16": FLOAT16, "bfloat16": BFLOAT16}.get(name, FLOAT32)


def cpu_reference_conv(
    x,
    coeff,
    weight,
    bias_bank=None,
    bias=None,
    stride=(1, 1),
    pads=(0, 0, 0, 0),
    dilation=(1, 1),
    groups=1,
    activation=0,
    *,
    spatial=None,
    residual=None,
    mean: bool = False,
):
    """Run the C++ CPU reference of DyNetDynamicConv2d on float32 arrays; ``pads`` = (top, left, bottom, right).

    Op version 2: ``spatial`` [N, kH*kW] scales the fused kernels' taps, ``residual`` [N, C_out, H_out, W_out] is
    added before the activation, ``mean=True`` returns ``(y, mean)`` with mean [N, C_out, 1, 1], and ``weight`` may
    be a float16 or bfloat16 array (a narrowed bank, widened exactly). A version-1 call runs ``dynet_conv_cpu_f32``,
    a version-2 one ``dynet_conv_cpu`` (which rounds each fused kernel value to fp32, as the kernels do).

    Raises DynamicConvCallError (a ValueError) with the library's reason when the arguments break the op contract.
    """
    lib = load_cpu_library()
    x, coeff = _f32(x, "x"), _f32(coeff, "coeff")
    wdtype = bank_dtype(weight)
    if wdtype == FLOAT32:
        weight = _f32(weight, "weight")
    else:
        weight = np.ascontiguousarray(weight)
        if not np.isfinite(weight.astype(np.float32)).all():
            raise ValueError("weight contains NaN or Inf")
    params = make_params(
        x.shape,
        coeff.shape,
        weight.shape,
        has_bias_bank=bias_bank is not None,
        has_bias=bias is not None,
        stride=stride,
        pads=pads,
        dilation=dilation,
        groups=groups,
        activation=activation,
        has_spatial=spatial is not None,
        has_residual=residual is not None,
        has_mean=mean,
        weight_dtype=wdtype,
    )
    if bias_bank is not None:
        bias_bank = _f32(bias_bank, "bias_bank")
        if bias_bank.shape != (params.k, params.c_out):
            raise ValueError(f"bias_bank must be [K, C_out] = [{params.k}, {params.c_out}], got {bias_bank.shape}")
    if bias is not None:
        bias = _f32(bias, "bias")
        if bias.shape != (params.c_out,):
            raise ValueError(f"bias must be [C_out] = [{params.c_out}], got {bias.shape}")
    h_out, w_out = output_hw(params, lib)
    if spatial is not None:
        spatial = _f32(spatial, "spatial")
        if spatial.shape != (params.n, params.kh * params.kw):
            raise ValueError(
                f"spatial must be [N, kH*kW] = [{params.n}, {params.kh * params.kw}], got {list(spatial.shape)}"
            )
    if residual is not None:
        residual = _f32(residual, "residual")
        want = (params.n, params.c_out, h_out, w_out)
        if residual.shape != want:
            raise ValueError(f"residual must be [N, C_out, H_out, W_out] = {list(want)}, got {list(residual.shape)}")
    y = np.empty((params.n, params.c_out, h_out, w_out), dtype=np.float32)

    if lib.dynet_conv_op_version(ctypes.byref(params)) == 1:

        def ptr(a):
            return None if a is None else a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

        status = lib.dynet_conv_cpu_f32(
            ctypes.byref(params), ptr(x), ptr(coeff), ptr(weight), ptr(bias_bank), ptr(bias), ptr(y)
        )
        if status != OK:
            raise _error(lib, status, params)
        return y
    out_mean = np.empty((params.n, params.c_out, 1, 1), dtype=np.float32) if mean else None
    arrays = dict(
        x=x, coeff=coeff, weight=weight, bias_bank=bias_bank, bias=bias, spatial=spatial, residual=residual, y=y
    )
    tensors = DynetConvTensors(**{k: (None if a is None else a.ctypes.data) for k, a in arrays.items()})
    tensors.mean = None if out_mean is None else out_mean.ctypes.data
    status = lib.dynet_conv_cpu(ctypes.byref(params), ctypes.byref(tensors))
    if status != OK:
        raise _error(lib, status, params)
    return (y, out_mean) if mean else y


# ---- CUDA ABI ------------------------------------------------------------------------------------------------


def cuda_workspace_size(params: DynetConvParams, dtype: int = FLOAT32, algo: int = ALGO_AUTO) -> int:
    """Workspace bytes dynet_conv_cuda needs (host arithmetic only; no GPU needed)."""
    return int(load_cuda_library().dynet_conv_cuda_workspace_size(ctypes.byref(params), dtype, algo))
