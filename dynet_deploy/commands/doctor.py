"""``dynet-deploy doctor``: what is installed and built, and what each missing piece disables."""

from __future__ import annotations

import argparse
import dataclasses

from ..backends import BACKENDS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="report which optional pieces (CUDA, TensorRT, plugin libraries, ...) are present and what is disabled",
        description="Checks Python packages, compilers, GPUs and the built DyNetDynamicConv2d libraries. Exits 1 only "
        "when a base dependency the package needs everywhere is missing; optional pieces are reported, not required.",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str
    disables: str  # what is unavailable while this is missing
    required: bool = False


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _tool(cmd: str, version_args=("--version",)) -> tuple[bool, str]:
    import shutil
    import subprocess

    path = shutil.which(cmd)
    if path is None:
        return False, "not on PATH"
    try:
        out = subprocess.run([path, *version_args], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return True, f"{path} (version unknown: {exc})"
    lines = [line for line in out.splitlines() if line.strip()]
    version = next((line for line in lines if "release" in line or "version" in line), lines[0] if lines else "")
    return True, f"{path} ({version.strip()})"


def collect() -> list[Check]:
    from ..op import native as plugin_lib

    checks: list[Check] = []

    def package(dist: str, disables: str, required: bool = False) -> str | None:
        v = _version(dist)
        checks.append(Check(dist, v is not None, v or "not installed", disables, required))
        return v

    # PyTorch and CUDA as PyTorch sees it.
    if package("torch", "everything: models, export, reference outputs", required=True):
        try:
            import torch

            cuda_ok = torch.cuda.is_available()
            if cuda_ok:
                names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
                detail = f"CUDA {torch.version.cuda}: {names}"
            else:
                detail = (
                    "CPU-only PyTorch build"
                    if torch.version.cuda is None
                    else f"built for CUDA {torch.version.cuda}, but no usable GPU/driver"
                )
            checks.append(
                Check(
                    "CUDA GPU (torch.cuda)",
                    cuda_ok,
                    detail,
                    "GPU runs: scripts/gpu_check.sh, the CUDA kernels, TensorRT engines",
                )
            )
        except Exception as exc:  # a broken torch install should be reported, not crash the doctor
            checks.append(Check("CUDA GPU (torch.cuda)", False, f"torch import failed: {exc}", "GPU runs"))
    package("onnx", "export, fuse, fp16 conversion", required=True)
    if package("onnxruntime", "running ONNX graphs on the CPU (validate/bench --backend onnxruntime)", required=True):
        checks += [Check(c.name, c.ok, c.detail, c.disables) for c in BACKENDS["onnxruntime"].doctor_checks()]
    package("onnx-graphsurgeon", "fuse (DyNetDynamicConv2d rewrite)")
    package("polygraphy", "validate (Polygraphy comparison)")
    package("onnxconverter-common", "fp16 engines (fp16 ONNX conversion)")

    # Native toolchain.
    ok, detail = _tool("cmake")
    checks.append(Check("cmake", ok, detail, "building plugins/ (CPU reference, CUDA kernels, TensorRT plugin)"))
    ok, detail = _tool("c++")
    checks.append(Check("C++ compiler", ok, detail, "building the CPU reference and the TensorRT plugin"))
    ok, detail = _tool("nvcc")
    checks.append(Check("nvcc", ok, detail, "compiling the CUDA kernels and the TensorRT plugin"))

    # Built libraries.
    where = ", ".join(map(str, plugin_lib.search_dirs()))
    for label, path, disables in (
        ("CPU reference library", plugin_lib.cpu_library_path(), "the C++ reference checks (run 'make plugins')"),
        ("CUDA kernel library", plugin_lib.cuda_library_path(), "CUDA kernel checks and timings (needs nvcc)"),
        (
            "onnxruntime op library",
            plugin_lib.find_library("libdynet_dynamic_conv_ort.so"),
            "running fused (DyNetDynamicConv2d) graphs on onnxruntime (needs onnxruntime's headers at build time: "
            "'make plugins' fetches them)",
        ),
        (
            "TensorRT plugin library",
            plugin_lib.tensorrt_plugin_path(),
            "building and running engines with DyNetDynamicConv2d (needs TensorRT at build time: -DTensorRT_ROOT=...)",
        ),
    ):
        checks.append(Check(label, path is not None, str(path) if path else f"not built (looked in {where})", disables))

    # Every other backend's own components (TensorRT's Python bindings, ...).
    for backend in BACKENDS.values():
        if backend.name != "onnxruntime":
            checks += [Check(c.name, c.ok, c.detail, c.disables) for c in backend.doctor_checks()]
    return checks


def format_report(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = ["dynet-deploy doctor", ""]
    for c in checks:
        mark = "ok     " if c.ok else ("MISSING" if c.required else "absent ")
        lines.append(f"  {mark}  {c.name:<{width}}  {c.detail}")
    missing = [c for c in checks if not c.ok]
    if missing:
        lines += ["", "What the missing pieces disable:"]
        lines += [f"  - {c.name}: {c.disables}" for c in missing]
    else:
        lines += ["", "Everything is present."]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json

    checks = collect()
    if args.json:
        print(json.dumps([dataclasses.asdict(c) for c in checks], indent=2))
    else:
        print(format_report(checks))
    return 1 if any(c.required and not c.ok for c in checks) else 0
