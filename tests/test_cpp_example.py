"""examples/onnxruntime_cpp: the C++ program (onnxruntime's C++ API + the op library) built with CMake and run.

It runs a fused graph the package makes (a small Dy-ResNet18 exported and fused, dynamic batch) on fresh random
inputs, from .npy and from raw float32 files, and its output must match Python's onnxruntime with the same op
library, one intra-op thread on both sides: max-abs <= 1e-5 and relative ||out - ref|| / ||ref|| <= 1e-6 (the same
kernels; onnxruntime's C library and its Python module are the same release). PyTorch's output is the check that
the comparison is about the right numbers (fp32: relative <= 1e-5). Bad inputs exit 1 with the reason.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from zoo_exports import compare, fused, small_model

from dynet_deploy.op import onnxruntime_lib

ort = pytest.importorskip("onnxruntime")
# about 30 s on a loaded 2-core machine (CMake build of the example, a model export and fuse)
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "examples" / "onnxruntime_cpp"
MODEL = "dy_resnet18"
SAME_MAX_ABS, SAME_REL = 1e-5, 1e-6  # C++ vs Python onnxruntime, same library
TORCH_REL = 1e-5


def headers_dir() -> Path | None:
    """onnxruntime's headers: the Makefile's cache, else the folder the op library was configured with."""
    cached = REPO_ROOT / ".cache" / "onnxruntime" / "include"
    if (cached / "onnxruntime_cxx_api.h").is_file():
        return cached
    cache = REPO_ROOT / "build" / "CMakeCache.txt"
    if cache.is_file():
        m = re.search(r"^ONNXRUNTIME_INCLUDE_DIR:PATH=(.+)$", cache.read_text(), re.M)
        if m and (Path(m.group(1)) / "onnxruntime_cxx_api.h").is_file():
            return Path(m.group(1))
    return None


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """Path of the built dynet_ort_run."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    if onnxruntime_lib.library_path() is None:
        pytest.skip(f"{onnxruntime_lib.ORT_LIBRARY} not built (run 'make plugins')")
    include = headers_dir()
    if include is None:
        pytest.skip("onnxruntime's headers are not in .cache/onnxruntime/include (run 'make ort-headers')")
    build = tmp_path_factory.mktemp("onnxruntime_cpp")
    configure = [
        "cmake",
        "-S",
        str(EXAMPLE),
        "-B",
        str(build),
        f"-DPython3_EXECUTABLE={sys.executable}",
        f"-DONNXRUNTIME_INCLUDE_DIR={include}",
    ]
    for cmd in (configure, ["cmake", "--build", str(build), "-j2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    exe = build / "dynet_ort_run"
    assert exe.is_file()
    return exe


@pytest.fixture(scope="module")
def graph() -> Path:
    path, report = fused(MODEL, "feature")
    assert report.matched > 0, "the fused graph has no DyNetDynamicConv2d node"
    return path


def run_example(exe: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=120)


def python_onnxruntime(graph: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    onnxruntime_lib.register(so)
    session = ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def check_against_python(graph: Path, x: np.ndarray, out: np.ndarray) -> None:
    ref = python_onnxruntime(graph, x)
    assert out.shape == ref.shape and out.dtype == np.float32
    max_abs, rel = compare(out, ref)
    assert max_abs <= SAME_MAX_ABS and rel <= SAME_REL, (
        f"C++ vs Python onnxruntime: max-abs {max_abs:.3e} rel {rel:.3e}"
    )
    with torch.no_grad():
        expected = small_model(MODEL)(torch.from_numpy(x)).numpy()
    max_abs, rel = compare(out, expected)
    assert rel <= TORCH_REL, f"C++ vs PyTorch: max-abs {max_abs:.3e} rel {rel:.3e}"


def test_npy_input_and_output_match_python_onnxruntime(example, graph, tmp_path):
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = run_example(
        example, graph, onnxruntime_lib.require_library(), tmp_path / "x.npy", tmp_path / "y.npy", "--threads", 1
    )
    assert proc.returncode == 0, proc.stderr
    assert "[3, 10]" in proc.stdout
    check_against_python(graph, x, np.load(tmp_path / "y.npy"))


def test_raw_input_and_output_match_python_onnxruntime(example, graph, tmp_path):
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    x.tofile(tmp_path / "x.bin")
    proc = run_example(
        example,
        graph,
        onnxruntime_lib.require_library(),
        tmp_path / "x.bin",
        tmp_path / "y.bin",
        "--shape",
        "2,3,32,32",
        "--threads",
        1,
    )
    assert proc.returncode == 0, proc.stderr
    out = np.fromfile(tmp_path / "y.bin", dtype=np.float32).reshape(2, 10)
    check_against_python(graph, x, out)


def test_bad_inputs_exit_1_with_the_reason(example, graph, tmp_path):
    lib = onnxruntime_lib.require_library()
    np.save(tmp_path / "x.npy", np.zeros((1, 4, 32, 32), np.float32))  # 4 channels, the model takes 3
    proc = run_example(example, graph, lib, tmp_path / "x.npy", tmp_path / "y.npy")
    assert proc.returncode == 1 and "[1, 4, 32, 32]" in proc.stderr and "[?, 3, 32, 32]" in proc.stderr, proc.stderr
    np.save(tmp_path / "x64.npy", np.zeros((1, 3, 32, 32)))  # float64
    proc = run_example(example, graph, lib, tmp_path / "x64.npy", tmp_path / "y.npy")
    assert proc.returncode == 1 and "float32" in proc.stderr, proc.stderr
    (tmp_path / "x.bin").write_bytes(b"\0" * 12)
    proc = run_example(example, graph, lib, tmp_path / "x.bin", tmp_path / "y.bin")  # dynamic batch, no --shape
    assert proc.returncode == 2 and "--shape" in proc.stderr, proc.stderr
    proc = run_example(example, graph, tmp_path / "missing.so", tmp_path / "x.npy", tmp_path / "y.npy")
    assert proc.returncode == 1 and "missing.so" in proc.stderr, proc.stderr
    assert not (tmp_path / "y.npy").exists() and not (tmp_path / "y.bin").exists()
