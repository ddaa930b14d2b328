"""The native libraries load where cuDNN and cuBLAS are absent, and carry no path of the machine that built them.

cuDNN and cuBLAS are loaded by the CUDA-carrying libraries only when a plan needs them (dlopen, by soname, then
in the folders of ``DYNET_CUDA_LIBRARY_PATH``), never linked. The checks:

- ``readelf -d``: no built library has a NEEDED entry for libcudnn / libcublas / libcuda (the CUDA runtime is
  static and loads the driver at its first call), nor an RUNPATH/RPATH other than ``$ORIGIN``;
- a real hide: each library is loaded in a subprocess under an ``LD_AUDIT`` module that refuses every file named
  libcudnn* / libcublas* wherever the dynamic linker looks for it (RUNPATH, LD_LIBRARY_PATH, ld.so.cache, a full
  path to dlopen). The subprocess first proves the hide (dlopen of the wheels' cuDNN fails), then loads the library
  with ctypes, asks it for cuDNN (a clear DYNET_ERR_UNSUPPORTED naming the soname, not a crash), and for the
  onnxruntime op registers it and runs a small fused graph on the CPU against numpy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dynet_deploy.op import native

AUDIT_SOURCE = r"""
#define _GNU_SOURCE
#include <link.h>
#include <stdint.h>
#include <string.h>

unsigned int la_version(unsigned int version) { return version < LAV_CURRENT ? version : LAV_CURRENT; }

/* Refuse every candidate file named libcudnn* or libcublas*, on every search step. */
char* la_objsearch(const char* name, uintptr_t* cookie, unsigned int flag)
{
    (void)cookie;
    (void)flag;
    const char* base = strrchr(name, '/');
    base = base != NULL ? base + 1 : name;
    if (strncmp(base, "libcudnn", 8) == 0 || strncmp(base, "libcublas", 9) == 0)
    {
        return NULL;
    }
    return (char*)name;
}
"""

HIDDEN_PREFIXES = ("libcudnn", "libcublas", "libcuda.so")


def built_libraries() -> list[Path]:
    libs = []
    for name in (native.CPU_LIBRARY, native.CUDA_LIBRARY, native.ORT_LIBRARY, native.TRT_LIBRARY):
        path = native.find_library(name)
        if path is not None:
            libs.append(path)
    build = native.REPO_ROOT / "build"
    for sub in ("trt_link_check",):
        libs.extend(sorted((build / sub).glob("*.so")) if (build / sub).is_dir() else [])
    if not libs:
        pytest.skip("no native library built (run 'make plugins')")
    return libs


def dynamic_section(path: Path) -> tuple[list[str], list[str]]:
    if shutil.which("readelf") is None:
        pytest.skip("readelf is not installed (binutils)")
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    needed, paths = [], []
    for line in out.splitlines():
        if "(NEEDED)" in line:
            needed.append(line.split("[", 1)[1].rstrip("]"))
        elif "(RUNPATH)" in line or "(RPATH)" in line:
            paths.extend(line.split("[", 1)[1].rstrip("]").split(":"))
    return needed, paths


def test_no_library_links_cudnn_cublas_or_the_driver():
    for lib in built_libraries():
        needed, _ = dynamic_section(lib)
        bad = [n for n in needed if n.startswith(HIDDEN_PREFIXES)]
        assert not bad, f"{lib.name} has NEEDED {bad}: cuDNN/cuBLAS must be dlopened, cudart static"


def test_no_library_carries_a_runpath_into_the_build_machine():
    for lib in built_libraries():
        _, paths = dynamic_section(lib)
        bad = [p for p in paths if p and not p.startswith("$ORIGIN")]
        assert not bad, f"{lib.name} carries RUNPATH/RPATH {bad}: a path of the machine that built it"


@pytest.fixture(scope="module")
def audit_module(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the LD_AUDIT module that hides cuDNN/cuBLAS")
    folder = tmp_path_factory.mktemp("hide")
    src = folder / "hide_cuda_libs.c"
    src.write_text(AUDIT_SOURCE)
    out = folder / "hide_cuda_libs.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out), str(src)], check=True, capture_output=True)
    return out


CHILD = r"""
import ctypes, glob, json, os, sys
result = {}
# The hide itself must hold: the wheels' cuDNN (when installed) cannot be opened even by full path.
wheel_cudnn = [p for d in sys.argv[3:] for p in glob.glob(os.path.join(d, "libcudnn.so.9"))]
if wheel_cudnn:
    try:
        ctypes.CDLL(wheel_cudnn[0])
        result["hide"] = "broken: " + wheel_cudnn[0] + " loaded"
    except OSError:
        result["hide"] = "ok"
try:
    ctypes.CDLL("libcudnn.so.9")
    result["soname"] = "loaded"
except OSError:
    result["soname"] = "hidden"
lib = ctypes.CDLL(sys.argv[1])
result["abi"] = lib.dynet_conv_abi_version()
if sys.argv[2] == "cuda":
    f = lib.dynet_conv_cuda_library_status
    f.restype = ctypes.c_int32
    f.argtypes = [ctypes.c_int32, ctypes.c_char_p, ctypes.c_size_t]
    for name, which in (("cudnn", 1), ("cublas", 2)):
        msg = ctypes.create_string_buffer(512)
        result[name] = [f(which, msg, 512), msg.value.decode()]
print(json.dumps(result))
"""

ORT_CHILD = r"""
import ctypes, json, sys
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
rng = np.random.default_rng(3)
n, c_in, c_out, k, h, w = 2, 6, 5, 3, 4, 3
x = rng.standard_normal((n, c_in, h, w)).astype(np.float32)
coeff = rng.uniform(0.1, 1.0, (n, c_out, k)).astype(np.float32)
weight = (rng.standard_normal((k, c_out, c_in, 1, 1)) * 0.3).astype(np.float32)
node = helper.make_node("DyNetDynamicConv2d", ["x", "coeff", "weight"], ["y"], domain="trt.plugins", activation=1,
    plugin_version="1", plugin_namespace="")
graph = helper.make_graph([node], "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape)),
     helper.make_tensor_value_info("coeff", TensorProto.FLOAT, list(coeff.shape))],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[numpy_helper.from_array(weight, "weight")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("trt.plugins", 1)])
so = ort.SessionOptions()
so.register_custom_ops_library(sys.argv[1])
sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
y = sess.run(None, {"x": x, "coeff": coeff})[0]
fused = np.einsum("nck,kcj->ncj", coeff.astype(np.float64), weight[:, :, :, 0, 0].astype(np.float64))
ref = np.maximum(np.einsum("ncj,njp->ncp", fused, x.reshape(n, c_in, -1).astype(np.float64)), 0).reshape(y.shape)
try:
    ctypes.CDLL("libcudnn.so.9")
    hidden = False
except OSError:
    hidden = True
print(json.dumps({"rel": float(np.linalg.norm(y - ref) / np.linalg.norm(ref)), "hidden": hidden}))
"""


def hidden_env(audit: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD", "DYNET_CUDA_LIBRARY_PATH")}
    env["LD_AUDIT"] = str(audit)
    return env


def wheel_lib_dirs() -> list[str]:
    dirs = []
    for sub in ("cudnn", "cu13", "cublas"):
        for base in sys.path:
            d = Path(base) / "nvidia" / sub / "lib"
            if d.is_dir():
                dirs.append(str(d))
    return dirs


def run_child(code: str, args: list[str], env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"the library did not load with cuDNN/cuBLAS hidden:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["cpu", "cuda"])
def test_c_abi_library_loads_with_cudnn_and_cublas_hidden(audit_module, kind):
    path = native.find_library(native.CPU_LIBRARY if kind == "cpu" else native.CUDA_LIBRARY)
    if path is None:
        pytest.skip(f"the {kind} library is not built (no CUDA compiler at build time)")
    out = run_child(CHILD, [str(path), kind, *wheel_lib_dirs()], hidden_env(audit_module))
    assert out.get("hide", "ok") == "ok", out
    assert out["soname"] == "hidden", out
    assert out["abi"] == native.ABI_VERSION
    if kind == "cuda":
        for name, soname in (("cudnn", "libcudnn.so.9"), ("cublas", "libcublas.so.13")):
            status, msg = out[name]
            # Built without the tactic's headers: unsupported as well, with a message saying so.
            assert status == native.ERR_UNSUPPORTED, out
            assert soname.split(".so")[0] in msg or "built without" in msg, out


def test_onnxruntime_op_loads_and_runs_on_cpu_with_cudnn_hidden(audit_module):
    pytest.importorskip("onnxruntime")
    path = native.find_library(native.ORT_LIBRARY)
    if path is None:
        pytest.skip("the onnxruntime op library is not built (run 'make plugins')")
    out = run_child(ORT_CHILD, [str(path)], hidden_env(audit_module))
    assert out["hidden"], out
    assert out["rel"] <= 1e-5, out


def test_cuda_library_finds_the_wheels_through_the_search_path_variable():
    """Without the hide, the loader finds cuDNN/cuBLAS in the folders of DYNET_CUDA_LIBRARY_PATH (the wheels')."""
    path = native.find_library(native.CUDA_LIBRARY)
    if path is None:
        pytest.skip("the CUDA library is not built (no CUDA compiler at build time)")
    dirs = native.cuda_library_search_path()
    if not dirs:
        pytest.skip("no nvidia-cudnn-cu13 / nvidia-cublas wheel installed in this Python")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD")}
    env["DYNET_CUDA_LIBRARY_PATH"] = os.pathsep.join(dirs)
    out = run_child(CHILD, [str(path), "cuda"], env)
    for name in ("cudnn", "cublas"):
        status, msg = out[name]
        built = {"cudnn": "has_cudnn", "cublas": "has_cublas"}[name]
        lib = native.load_cuda_library()
        if getattr(lib, f"dynet_conv_cuda_{built}")() == 0:
            assert status == native.ERR_UNSUPPORTED and "built without" in msg, out
        else:
            assert status == native.OK, out


TRT_DYNAMIC_CHILD = r"""
import ctypes, json, sys
lib = ctypes.CDLL(sys.argv[1])
get = lib.getCreators
get.restype = ctypes.c_void_p
get.argtypes = [ctypes.POINTER(ctypes.c_int32)]
count = ctypes.c_int32(0)
creators = get(ctypes.byref(count))
print(json.dumps({"count": count.value, "creators": bool(creators)}))
"""


def test_dynamic_tensorrt_library_loads_without_libnvinfer_and_cudnn(audit_module):
    """The getCreators library needs no libnvinfer symbol (it logs through setLoggerFinder): it loads with neither
    TensorRT nor cuDNN/cuBLAS present and hands out its creators (plugin versions "1" and "2")."""
    build = native.REPO_ROOT / "build"
    candidates = [
        build / "libdynet_dynamic_conv_trt_dynamic.so",
        build / "trt_link_check" / "libdynet_dynamic_conv_trt_dynamic.so",
    ]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        pytest.skip("build/ was configured without TensorRT headers (-DTensorRT_ROOT=...): no plugin library")
    out = run_child(TRT_DYNAMIC_CHILD, [str(path)], hidden_env(audit_module))
    assert out == {"count": 2, "creators": True}, out
