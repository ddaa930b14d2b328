"""The bad-input corpus: every command, fed what a new user (or a damaged disk) feeds it.

Each case runs the CLI in-process (``dynet_deploy.cli.main``) and asserts the exit code, exactly one
``error (stage): ...`` line on stderr and as its last line, no traceback, no ANSI colour codes, no file left
behind in the output folder (hidden temporaries included), and the shared inputs unchanged. Signals and
concurrent writers run the CLI in subprocesses.

Set ``CORPUS_REPORT=path.json`` to write each case's outcome (family, clean, traceback, leftovers).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from conftest import SMALL  # noqa: E402

from dynet_deploy.checkpoint import load_checkpoint, save_checkpoint
from dynet_deploy.cli import main
from dynet_deploy.models import create_model

ERROR_LINE = re.compile(r"^error \(([a-z-]+)\): \S.*$")
RESULTS: dict[str, dict] = {}
# Permission cases: root reads and writes every file whatever its mode, so they run for other users only.
NOT_ROOT = pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")


# ---- the shared inputs --------------------------------------------------------------------------------------


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(
                    torch.rand(t.shape, generator=g) + 0.5
                    if name.endswith("running_var")
                    else torch.randn(t.shape, generator=g) * 0.2
                )
    return model.eval()


def _tamper(src: Path, dst: Path, edit: Callable) -> None:
    import onnx

    proto = onnx.load(str(src))
    node = next(n for n in proto.graph.node if n.op_type == "DyNetDynamicConv2d")
    edit(proto, node)
    onnx.save(proto, str(dst))


def _set_attr(name: str, value: int):
    def edit(proto, node):
        for a in node.attribute:
            if a.name == name:
                a.i = value
                return
        raise AssertionError(f"no attribute {name}")

    return edit


def _flatten_weight(proto, node):
    from onnx import numpy_helper

    for i, init in enumerate(proto.graph.initializer):
        if init.name == node.input[2]:
            w = numpy_helper.to_array(init)
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(w.reshape(w.shape[0], -1), init.name))
            return
    raise AssertionError("weight initializer not found")


@pytest.fixture(scope="module")
def A(tmp_path_factory) -> Path:
    """Artifacts every case reads (never writes): checkpoints, graphs, input files, damaged files."""
    from dynet_deploy.export import export_onnx
    from dynet_deploy.fuse import fuse_dynamic_convs

    a = tmp_path_factory.mktemp("corpus-inputs")
    torch.manual_seed(0)
    model = _randomise(create_model("dy_resnet18", **SMALL), 0)
    meta = {"dataset": "digits", "input_size": [28, 28], "in_chans": 1}
    save_checkpoint(model, a / "m.safetensors", metadata=meta)
    export_onnx(model, a / "m.onnx", (1, 1, 28, 28), form="feature")
    fuse_dynamic_convs(a / "m.onnx", a / "m.plugin.onnx")
    export_onnx(model, a / "fixed.onnx", (2, 1, 28, 28), form="kernel", dynamic_batch=False)
    export_onnx(model, a / "m32.onnx", (1, 1, 32, 32), form="feature")
    rgb = _randomise(create_model("dy_resnet18", **{**SMALL, "in_chans": 3}), 1)
    export_onnx(rgb, a / "rgb.onnx", (1, 3, 28, 28), form="feature")
    nan = _randomise(create_model("dy_resnet18", **SMALL), 2)
    with torch.no_grad():
        next(nan.parameters()).fill_(float("nan"))
    save_checkpoint(nan, a / "nan.safetensors", metadata=meta)
    _tamper(a / "m.plugin.onnx", a / "t_stride0.onnx", _set_attr("stride_h", 0))
    _tamper(a / "m.plugin.onnx", a / "t_groups.onnx", _set_attr("groups", 3))
    _tamper(a / "m.plugin.onnx", a / "t_weight2d.onnx", _flatten_weight)
    _tamper(a / "m.plugin.onnx", a / "t_domain.onnx", lambda proto, node: setattr(node, "domain", "com.example"))

    rng = np.random.default_rng(0)
    np.save(a / "x.npy", rng.standard_normal((2, 1, 28, 28)).astype(np.float32))
    np.save(a / "x64.npy", rng.standard_normal((2, 1, 28, 28)))
    np.save(a / "x3d.npy", rng.standard_normal((1, 28, 28)).astype(np.float32))
    np.save(a / "xc3.npy", rng.standard_normal((1, 3, 28, 28)).astype(np.float32))
    np.save(a / "x0.npy", np.zeros((0, 1, 28, 28), np.float32))
    np.savez(a / "wrongname.npz", image=rng.standard_normal((1, 1, 28, 28)).astype(np.float32))
    np.savez(a / "x.npz", input=rng.standard_normal((1, 1, 28, 28)).astype(np.float32))
    np.save(a / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (a / "garbage.npy").write_bytes(rng.bytes(300))
    (a / "inputs.json").write_text('{"not": "polygraphy"}')
    (a / "inputs.txt").write_text("1 2 3\n")

    blob = (a / "m.safetensors").read_bytes()
    (a / "trunc.safetensors").write_bytes(blob[:1000])
    shutil.copy(a / "m.json", a / "trunc.json")
    (a / "random.safetensors").write_bytes(rng.bytes(4096))
    (a / "forged.safetensors").write_bytes((2**40).to_bytes(8, "little") + b'{"x": 1}')
    shutil.copy(a / "m.json", a / "forged.json")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    (a / "evil.pt").write_bytes(pickle.dumps({"conv.weight": Evil()}))
    (a / "bad_config.json").write_text("{not json")
    shutil.copy(a / "m.safetensors", a / "bad_config.safetensors")
    onnx_blob = (a / "m.onnx").read_bytes()
    (a / "trunc.onnx").write_bytes(onnx_blob[: len(onnx_blob) // 3])
    (a / "random.onnx").write_bytes(rng.bytes(5000))
    (a / "empty.onnx").write_bytes(b"")
    (a / "text.onnx").write_text("this is not a model\n")
    (a / "loop.onnx").symlink_to("loop.onnx")
    (a / "dangling.onnx").symlink_to("nowhere.onnx")
    (a / "adir.onnx").mkdir()
    (a / "adir.safetensors").mkdir()
    return a


def _snapshot(folder: Path) -> dict[str, tuple]:
    found = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink() or not p.is_file():
            found[str(p.relative_to(folder))] = ("link" if p.is_symlink() else "dir",)
            continue
        st = p.stat()
        found[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return found


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in-process with stdout/stderr captured; SystemExit (argparse) gives its code."""
    out, err = io.StringIO(), io.StringIO()
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    return rc, out.getvalue(), err.getvalue()


# ---- the cases -----------------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    family: str
    argv: Callable[[Path, Path], list[str]]  # (inputs folder A, output folder O) -> argv
    stage: str | None = None
    match: str = ""
    rc: int = 1
    setup: Callable[[Path, Path], None] | None = None
    post: Callable[[Path, Path], None] | None = None
    marks: list = field(default_factory=list)


def _copy(name: str, as_name: str | None = None):
    def setup(a: Path, o: Path) -> None:
        shutil.copy(a / name, o / (as_name or name))
        json_partner = (a / name).with_suffix(".json")
        if json_partner.exists() and (a / name).suffix == ".safetensors":
            shutil.copy(json_partner, (o / (as_name or name)).with_suffix(".json"))

    return setup


def _link(target: str, link: str, hard: bool = False):
    def setup(a: Path, o: Path) -> None:
        if hard:
            os.link(a / target, o / link)
        else:
            (o / link).symlink_to(a / target)

    return setup


def _recipe(name: str, **changes):
    """Setup: a copy of the bundled deployment recipe with ``changes`` written to O/name."""

    def setup(a: Path, o: Path) -> None:
        from dynet_deploy.recipe import bundled_recipe_path

        data = json.loads(bundled_recipe_path().read_text())
        data.update(changes)
        (o / name).write_text(json.dumps(data))

    return setup


def _recipe_and_busy_folder(a: Path, o: Path) -> None:
    _recipe("r.json")(a, o)
    (o / "d").mkdir()
    (o / "d" / "notes.txt").write_text("someone's files")


def _bundled_recipe() -> Path:
    from dynet_deploy.recipe import bundled_recipe_path

    return bundled_recipe_path()


def _pair_intact(a: Path, o: Path) -> None:
    # The checkpoint copied into O is still the checkpoint (not ONNX), and still loads.
    assert load_checkpoint(o / "m.safetensors") is not None


CK = "m.safetensors"
CASES = [
    # -- paths: inputs -------------------------------------------------------------------------------------------
    Case(
        "export-ckpt-missing",
        "paths",
        lambda a, o: ["export", str(a / "none.safetensors"), "-o", str(o / "x.onnx")],
        "checkpoint",
        "does not exist",
    ),
    Case(
        "export-ckpt-is-folder",
        "paths",
        lambda a, o: ["export", str(a / "adir.safetensors"), "-o", str(o / "x.onnx")],
        "checkpoint",
        "is a directory",
    ),
    Case(
        "export-ckpt-symlink-loop",
        "paths",
        lambda a, o: ["export", str(a / "loop.onnx"), "-o", str(o / "x.onnx")],
        "checkpoint",
        "is a symbolic link loop",
    ),
    Case(
        "export-ckpt-dangling-link",
        "paths",
        lambda a, o: ["export", str(a / "dangling.onnx"), "-o", str(o / "x.onnx")],
        "checkpoint",
        "broken symbolic link",
    ),
    Case(
        "fuse-model-missing",
        "paths",
        lambda a, o: ["fuse", str(a / "none.onnx"), "-o", str(o / "x.onnx")],
        "fuse",
        "does not exist",
    ),
    Case(
        "fuse-model-is-folder",
        "paths",
        lambda a, o: ["fuse", str(a / "adir.onnx"), "-o", str(o / "x.onnx")],
        "fuse",
        "is a directory",
    ),
    Case(
        "fuse-model-symlink-loop",
        "paths",
        lambda a, o: ["fuse", str(a / "loop.onnx"), "-o", str(o / "x.onnx")],
        "fuse",
        "symbolic link loop",
    ),
    Case(
        "fuse-model-dangling-link",
        "paths",
        lambda a, o: ["fuse", str(a / "dangling.onnx"), "-o", str(o / "x.onnx")],
        "fuse",
        "broken symbolic link",
    ),
    Case(
        "validate-model-missing",
        "paths",
        lambda a, o: ["validate", str(a / CK), str(a / "none.onnx"), "--out-dir", str(o)],
        "validate",
        "does not exist",
    ),
    Case(
        "validate-model-is-folder",
        "paths",
        lambda a, o: ["validate", str(a / CK), str(a / "adir.onnx"), "--out-dir", str(o)],
        "validate",
        "is a directory",
    ),
    Case(
        "validate-ckpt-missing",
        "paths",
        lambda a, o: ["validate", str(a / "none.safetensors"), str(a / "m.onnx"), "--out-dir", str(o)],
        "validate",
        "does not exist",
    ),
    Case(
        "run-model-missing",
        "paths",
        lambda a, o: ["run", str(a / "none.onnx"), "--inputs", str(a / "x.npy")],
        "run",
        "does not exist",
    ),
    Case(
        "run-model-symlink-loop",
        "paths",
        lambda a, o: ["run", str(a / "loop.onnx"), "--inputs", str(a / "x.npy")],
        "run",
        "is a symbolic link loop",
    ),
    Case(
        "run-inputs-missing",
        "paths",
        lambda a, o: ["run", str(a / "m.onnx"), "--inputs", str(a / "none.npy")],
        "run",
        "does not exist",
    ),
    Case(
        "run-inputs-is-folder",
        "paths",
        lambda a, o: ["run", str(a / "m.onnx"), "--inputs", str(a / "adir.onnx")],
        "run",
        "is a directory",
    ),
    Case(
        "inspect-missing",
        "paths",
        lambda a, o: ["checkpoint", "inspect", str(a / "none.safetensors")],
        "checkpoint",
        "does not exist",
    ),
    Case(
        "inspect-folder",
        "paths",
        lambda a, o: ["checkpoint", "inspect", str(a / "adir.safetensors")],
        "checkpoint",
        "is a directory",
    ),
    Case(
        "inspect-symlink-loop",
        "paths",
        lambda a, o: ["checkpoint", "inspect", str(a / "loop.onnx")],
        "checkpoint",
        "is a symbolic link loop",
    ),
    Case(
        "convert-src-missing",
        "paths",
        lambda a, o: [
            "checkpoint",
            "convert",
            str(a / "none.pt"),
            "--model",
            "resnet18",
            "-o",
            str(o / "c.safetensors"),
        ],
        "checkpoint",
        "does not exist",
    ),
    Case(
        "build-onnx-missing",
        "paths",
        lambda a, o: ["build", str(a / "none.onnx"), "-o", str(o / "x.engine")],
        "build",
        "does not exist",
    ),
    Case(
        "build-onnx-is-folder",
        "paths",
        lambda a, o: ["build", str(a / "adir.onnx"), "-o", str(o / "x.engine")],
        "build",
        "is a directory",
    ),
    Case(
        "train-data-root-missing",
        "paths",
        lambda a, o: [
            "train",
            "--dataset",
            "fashion-mnist",
            "--data-root",
            str(a / "nowhere"),
            "-o",
            str(o / "t.safetensors"),
        ],
        "data",
        "nowhere",
    ),
    Case(
        "fuse-model-unreadable",
        "paths",
        lambda a, o: ["fuse", str(o / "m.onnx"), "-o", str(o / "x.onnx")],
        "fuse",
        "not readable",
        setup=lambda a, o: (_copy("m.onnx")(a, o), os.chmod(o / "m.onnx", 0)),
        marks=[NOT_ROOT],
    ),
    # -- paths: outputs -------------------------------------------------------------------------------------------
    Case(
        "export-out-folder-missing",
        "paths",
        lambda a, o: ["export", str(a / CK), "-o", str(o / "no" / "x.onnx")],
        "export",
        "does not exist",
    ),
    Case(
        "export-out-is-folder",
        "paths",
        lambda a, o: ["export", str(a / CK), "-o", str(a / "adir.onnx")],
        "export",
        "is a directory",
    ),
    Case(
        "fuse-out-folder-missing",
        "paths",
        lambda a, o: ["fuse", str(a / "m.onnx"), "-o", str(o / "no" / "x.onnx")],
        "fuse",
        "does not exist",
    ),
    Case(
        "run-save-folder-missing",
        "paths",
        lambda a, o: [
            "run",
            str(a / "m.onnx"),
            "--inputs",
            str(a / "x.npy"),
            "--save-outputs",
            str(o / "no" / "y.npz"),
        ],
        "run",
        "does not exist",
    ),
    Case(
        "convert-out-folder-missing",
        "paths",
        lambda a, o: ["checkpoint", "convert", str(a / CK), "-o", str(o / "no" / "c.safetensors")],
        "checkpoint",
        "does not exist",
    ),
    Case(
        "train-out-folder-missing",
        "paths",
        lambda a, o: ["train", "--dataset", "digits", "-o", str(o / "no" / "t.safetensors")],
        "checkpoint",
        "does not exist",
    ),
    Case(
        "validate-out-dir-missing",
        "paths",
        lambda a, o: ["validate", str(a / CK), str(a / "m.onnx"), "--out-dir", str(o / "no")],
        "validate",
        "does not exist",
    ),
    Case(
        "validate-out-dir-is-file",
        "paths",
        lambda a, o: ["validate", str(a / CK), str(a / "m.onnx"), "--out-dir", str(a / "x.npy")],
        "validate",
        "not a folder",
    ),
    Case(
        "bench-out-dir-is-file",
        "paths",
        lambda a, o: ["bench", "--models", "resnet18", "--out-dir", str(a / "x.npy")],
        "bench",
        "is a file",
    ),
    Case(
        "demo-out-dir-under-a-file",
        "paths",
        lambda a, o: ["demo", "--out-dir", str(a / "x.npy" / "demo")],
        "demo",
        "is a file",
    ),
    Case(
        "export-out-folder-unwritable",
        "paths",
        lambda a, o: ["export", str(a / CK), "-o", str(o / "ro" / "x.onnx")],
        "export",
        "not writable",
        setup=lambda a, o: ((o / "ro").mkdir(), os.chmod(o / "ro", 0o555)),
        marks=[NOT_ROOT],
    ),
    # -- guards: outputs that would destroy an input, wrong output kinds -------------------------------------------
    Case(
        "export-onto-its-checkpoint",
        "guards",
        lambda a, o: ["export", str(o / CK), "-o", str(o / CK)],
        "export",
        "is the input",
        setup=_copy(CK),
        post=_pair_intact,
    ),
    Case(
        "export-onto-its-config",
        "guards",
        lambda a, o: ["export", str(o / CK), "-o", str(o / "m.json")],
        "export",
        "is the input",
        setup=_copy(CK),
        post=_pair_intact,
    ),
    Case(
        "export-onto-hard-link",
        "guards",
        lambda a, o: ["export", str(o / CK), "-o", str(o / "hard.onnx")],
        "export",
        "same file",
        setup=lambda a, o: (_copy(CK)(a, o), os.link(o / CK, o / "hard.onnx")),
        post=_pair_intact,
    ),
    Case(
        "export-onto-symlink",
        "guards",
        lambda a, o: ["export", str(o / CK), "-o", str(o / "sym.onnx")],
        "export",
        "same file",
        setup=lambda a, o: (_copy(CK)(a, o), (o / "sym.onnx").symlink_to(o / CK)),
        post=_pair_intact,
    ),
    Case(
        "export-wrong-suffix",
        "guards",
        lambda a, o: ["export", str(a / CK), "-o", str(o / "x.txt")],
        "export",
        r"should end in \.onnx",
    ),
    Case(
        "fuse-onto-its-input",
        "guards",
        lambda a, o: ["fuse", str(o / "m.onnx"), "-o", str(o / "m.onnx")],
        "fuse",
        "is the input",
        setup=_copy("m.onnx"),
    ),
    Case(
        "fuse-onto-hard-link",
        "guards",
        lambda a, o: ["fuse", str(o / "m.onnx"), "-o", str(o / "h.onnx")],
        "fuse",
        "same file",
        setup=lambda a, o: (_copy("m.onnx")(a, o), os.link(o / "m.onnx", o / "h.onnx")),
    ),
    Case(
        "fuse-onto-symlink",
        "guards",
        lambda a, o: ["fuse", str(a / "m.onnx"), "-o", str(o / "s.onnx")],
        "fuse",
        "same file",
        setup=_link("m.onnx", "s.onnx"),
    ),
    Case(
        "fuse-wrong-suffix",
        "guards",
        lambda a, o: ["fuse", str(a / "m.onnx"), "-o", str(o / "m.plugin")],
        "fuse",
        r"should end in \.onnx",
    ),
    Case(
        "convert-onto-itself",
        "guards",
        lambda a, o: ["checkpoint", "convert", str(o / CK), "-o", str(o / CK)],
        "checkpoint",
        "is the input",
        setup=_copy(CK),
        post=_pair_intact,
    ),
    Case(
        "convert-onto-its-config",
        "guards",
        lambda a, o: ["checkpoint", "convert", str(o / CK), "-o", str(o / "m.json")],
        "checkpoint",
        "is the input",
        setup=_copy(CK),
        post=_pair_intact,
    ),
    Case(
        "convert-wrong-suffix",
        "guards",
        lambda a, o: ["checkpoint", "convert", str(a / CK), "-o", str(o / "c.pt")],
        "checkpoint",
        r"should end in \.safetensors",
    ),
    Case(
        "train-wrong-suffix",
        "guards",
        lambda a, o: ["train", "--dataset", "digits", "-o", str(o / "t.pt")],
        "checkpoint",
        r"should end in \.safetensors",
    ),
    Case(
        "train-report-onto-config",
        "guards",
        lambda a, o: ["train", "--dataset", "digits", "-o", str(o / "t.safetensors"), "--report", str(o / "t.json")],
        "checkpoint",
        "is the input",
    ),
    Case(
        "run-save-onto-inputs",
        "guards",
        lambda a, o: ["run", str(a / "m.onnx"), "--inputs", str(o / "x.npz"), "--save-outputs", str(o / "x.npz")],
        "run",
        "is the input",
        setup=_copy("x.npz"),
    ),
    Case(
        "run-save-wrong-suffix",
        "guards",
        lambda a, o: ["run", str(a / "m.onnx"), "--inputs", str(a / "x.npy"), "--save-outputs", str(o / "y.npy")],
        "run",
        r"should end in \.npz",
    ),
    Case(
        "build-onto-its-onnx",
        "guards",
        lambda a, o: ["build", str(o / "m.onnx"), "-o", str(o / "m.onnx")],
        "build",
        "is the input",
        setup=_copy("m.onnx"),
    ),
    Case(
        "validate-report-onto-checkpoint",
        "guards",
        lambda a, o: ["validate", str(o / "report.safetensors"), str(a / "m.onnx"), "--out-dir", str(o)],
        "validate",
        "is the input",
        setup=_copy(CK, "report.safetensors"),
    ),
    # -- corrupt and forged files ---------------------------------------------------------------------------------
    Case(
        "export-truncated-safetensors",
        "corrupt",
        lambda a, o: ["export", str(a / "trunc.safetensors"), "-o", str(o / "x.onnx")],
        "checkpoint",
        "truncated",
    ),
    Case(
        "export-forged-header",
        "corrupt",
        lambda a, o: ["export", str(a / "forged.safetensors"), "-o", str(o / "x.onnx")],
        "checkpoint",
        "not a safetensors file",
    ),
    Case(
        "inspect-random-bytes",
        "corrupt",
        lambda a, o: ["checkpoint", "inspect", str(a / "random.safetensors"), "--model", "dy_resnet18"],
        "checkpoint",
        "not a checkpoint|not a valid",
    ),
    Case(
        "inspect-pickle-with-code",
        "corrupt",
        lambda a, o: ["checkpoint", "inspect", str(a / "evil.pt"), "--model", "resnet18"],
        "checkpoint",
        "refused",
    ),
    Case(
        "convert-pickle-with-code",
        "corrupt",
        lambda a, o: [
            "checkpoint",
            "convert",
            str(a / "evil.pt"),
            "--model",
            "resnet18",
            "-o",
            str(o / "c.safetensors"),
        ],
        "checkpoint",
        "refused",
    ),
    Case(
        "inspect-config-not-json",
        "corrupt",
        lambda a, o: ["checkpoint", "inspect", str(a / "bad_config.safetensors")],
        "checkpoint",
        "not valid JSON",
    ),
    Case(
        "fuse-random-bytes",
        "corrupt",
        lambda a, o: ["fuse", str(a / "random.onnx"), "-o", str(o / "x.onnx")],
        "fuse",
        "not an ONNX model",
    ),
    Case(
        "fuse-truncated",
        "corrupt",
        lambda a, o: ["fuse", str(a / "trunc.onnx"), "-o", str(o / "x.onnx")],
        "fuse",
        "ONNX",
    ),
    Case(
        "fuse-empty-file",
        "corrupt",
        lambda a, o: ["fuse", str(a / "empty.onnx"), "-o", str(o / "x.onnx")],
        "fuse",
        "ONNX",
    ),
    Case(
        "validate-model-is-text",
        "corrupt",
        lambda a, o: ["validate", str(a / CK), str(a / "text.onnx"), "--out-dir", str(o)],
        "validate",
        "not an ONNX model",
    ),
    Case(
        "validate-ckpt-is-onnx",
        "corrupt",
        lambda a, o: [
            "validate",
            str(a / "m.onnx"),
            str(a / "m.onnx"),
            "--model-name",
            "dy_resnet18",
            "--out-dir",
            str(o),
        ],
        "checkpoint",
        "ONNX model",
    ),
    Case(
        "run-truncated-onnx",
        "corrupt",
        lambda a, o: ["run", str(a / "trunc.onnx"), "--inputs", str(a / "x.npy")],
        "runtime",
        "ONNX",
    ),
    Case(
        "run-garbage-npy",
        "corrupt",
        lambda a, o: ["run", str(a / "m.onnx"), "--inputs", str(a / "garbage.npy")],
        "run",
        "no NumPy .npy file",
    ),
    Case(
        "run-pickled-npy",
        "corrupt",
        lambda a, o: ["run", str(a / "m.onnx"), "--inputs", str(a / "obj.npy")],
        "run",
        "Python objects",
    ),
    Case(
        "run-json-not-polygraphy",
        "corrupt",
        lambda a, o: ["run", str(a / "m.onnx"), "--inputs", str(a / "inputs.json")],
        "run",
        "Polygraphy",
    ),
    Case(
        "run-inputs-wrong-kind",
        "corrupt",
        lambda a, o: ["run", str(a / "m.onnx"), "--inputs", str(a / "inputs.txt")],
        "run",
        r"\.npy, \.npz",
    ),
    Case(
        "build-random-bytes",
        "corrupt",
        lambda a, o: ["build", str(a / "random.onnx"), "-o", str(o / "x.engine")],
        None,
        "",
    ),
    # -- tampered fused nodes ---------------------------------------------------------------------------------------
    Case(
        "run-fused-stride-0",
        "tampered",
        lambda a, o: ["run", str(a / "t_stride0.onnx"), "--inputs", str(a / "x.npy")],
        "run",
        "'stride_h' = 0",
    ),
    Case(
        "run-fused-groups-3",
        "tampered",
        lambda a, o: ["run", str(a / "t_groups.onnx"), "--inputs", str(a / "x.npy")],
        "run",
        "groups=3",
    ),
    Case(
        "run-fused-weight-2d",
        "tampered",
        lambda a, o: ["run", str(a / "t_weight2d.onnx"), "--inputs", str(a / "x.npy")],
        "run",
        "rank 5",
    ),
    Case(
        "run-fused-wrong-domain",
        "tampered",
        lambda a, o: ["run", str(a / "t_domain.onnx"), "--inputs", str(a / "x.npy")],
        "runtime",
        "domain",
    ),
    Case(
        "validate-fused-stride-0",
        "tampered",
        lambda a, o: ["validate", str(a / CK), str(a / "t_stride0.onnx"), "--out-dir", str(o)],
        "validate",
        "'stride_h' = 0",
    ),
    Case(
        "validate-fused-weight-2d",
        "tampered",
        lambda a, o: ["validate", str(a / CK), str(a / "t_weight2d.onnx"), "--out-dir", str(o)],
        "validate",
        "rank 5",
    ),
    Case(
        "fuse-tampered-fused-graph",
        "tampered",
        lambda a, o: ["fuse", str(a / "t_stride0.onnx"), "-o", str(o / "x.onnx"), "--verify"],
        "fuse",
        "'stride_h' = 0",
    ),
    # -- shapes and dtypes --------------------------------------------------------------------------------------------
    Case(
        "run-float64-input",
        "shapes",
        lambda a, o: ["run", str(a / "m.onnx"), "--inputs", str(a / "x64.npy")],
        "runtime",
        "float64",
    ),
    Case(
        "run-rank-3-input",
        "shapes",
        lambda a, o: ["run", str(a / "m.onnx"), "--inputs", str(a / "x3d.npy")],
        "runtime",
        "rank 3",
    ),
    Case(
        "run-3-channels-into-1",
        "shapes",
        lambda a, o: ["run", str(a / "m.onnx"), "--inputs", str(a / "xc3.npy")],
        "runtime",
        "channels 3",
    ),
    Case(
        "run-batch-0",
        "shapes",
        lambda a, o: ["run", str(a / "m.onnx"), "--inputs", str(a / "x0.npy")],
        "run",
        "zero-size",
    ),
    Case(
        "run-wrong-input-name",
        "shapes",
        lambda a, o: ["run", str(a / "m.onnx"), "--inputs", str(a / "wrongname.npz")],
        "run",
        "named \\['image'\\]",
    ),
    Case(
        "run-fixed-batch-graph-other-batch",
        "shapes",
        lambda a, o: ["run", str(a / "fixed.onnx"), "--inputs", str(a / "x.npz")],
        "runtime",
        "batch",
    ),
    Case(
        "validate-1ch-ckpt-3ch-graph",
        "shapes",
        lambda a, o: ["validate", str(a / CK), str(a / "rgb.onnx"), "--out-dir", str(o)],
        "validate",
        "3-channel",
    ),
    Case(
        "validate-fixed-batch-refuses",
        "shapes",
        lambda a, o: ["validate", str(a / CK), str(a / "fixed.onnx"), "--batch-sizes", "1", "4", "--out-dir", str(o)],
        "validate",
        "fixed batch of 2",
    ),
    Case(
        "validate-dataset-size-mismatch",
        "shapes",
        lambda a, o: [
            "validate",
            str(a / CK),
            str(a / "m32.onnx"),
            "--dataset",
            "digits",
            "--limit",
            "8",
            "--out-dir",
            str(o),
        ],
        "validate",
        "--input-size 28 28",
    ),
    # -- bad CLI values ---------------------------------------------------------------------------------------------------
    Case(
        "validate-input-size-negative",
        "values",
        lambda a, o: ["validate", str(a / CK), str(a / "m.onnx"), "--input-size", "-5", "0", "--out-dir", str(o)],
        "validate",
        "positive",
    ),
    Case(
        "validate-batch-0",
        "values",
        lambda a, o: ["validate", str(a / CK), str(a / "m.onnx"), "--batch-sizes", "0", "--out-dir", str(o)],
        "validate",
        ">= 1",
    ),
    Case(
        "validate-limit-0",
        "values",
        lambda a, o: ["validate", str(a / CK), str(a / "m.onnx"), "--limit", "0", "--out-dir", str(o)],
        "validate",
        ">= 1",
    ),
    Case(
        "export-input-size-0",
        "values",
        lambda a, o: ["export", str(a / CK), "--input-size", "0", "5", "-o", str(o / "x.onnx")],
        "export",
        "positive",
    ),
    Case(
        "export-batch-0",
        "values",
        lambda a, o: ["export", str(a / CK), "--batch", "0", "-o", str(o / "x.onnx")],
        "export",
        ">= 1",
    ),
    Case(
        "export-opset-99",
        "values",
        lambda a, o: ["export", str(a / CK), "--opset", "99", "-o", str(o / "x.onnx")],
        "export",
        "at most",
    ),
    Case(
        "export-opset-12",
        "values",
        lambda a, o: ["export", str(a / CK), "--opset", "12", "-o", str(o / "x.onnx")],
        "export",
        ">= 17",
    ),
    Case(
        "export-model-args-not-json",
        "values",
        lambda a, o: ["export", "--model", "resnet18", "--model-args", "{bad", "-o", str(o / "x.onnx")],
        "export",
        "not valid JSON",
    ),
    Case(
        "export-unknown-model",
        "values",
        lambda a, o: ["export", "--model", "resnet19", "-o", str(o / "x.onnx")],
        "model",
        "did you mean",
    ),
    Case(
        "export-nothing-to-export",
        "values",
        lambda a, o: ["export", "-o", str(o / "x.onnx")],
        "export",
        "give a checkpoint",
    ),
    Case(
        "export-bad-width",
        "values",
        lambda a, o: [
            "export",
            "--model",
            "dy_resnet18",
            "--model-args",
            '{"width_mult": -1}',
            "-o",
            str(o / "x.onnx"),
        ],
        "model",
        "width_mult must be a positive",
    ),
    Case(
        "train-batch-size-0",
        "values",
        lambda a, o: ["train", "--dataset", "digits", "--batch-size", "0", "-o", str(o / "t.safetensors")],
        "train",
        "--batch-size",
    ),
    Case(
        "train-lr-nan",
        "values",
        lambda a, o: ["train", "--dataset", "digits", "--lr", "nan", "-o", str(o / "t.safetensors")],
        "train",
        "--lr",
    ),
    Case(
        "train-lr-negative",
        "values",
        lambda a, o: ["train", "--dataset", "digits", "--lr", "-0.1", "-o", str(o / "t.safetensors")],
        "train",
        "--lr",
    ),
    Case(
        "train-threads-0",
        "values",
        lambda a, o: ["train", "--dataset", "digits", "--threads", "0", "-o", str(o / "t.safetensors")],
        "train",
        "--threads",
    ),
    Case(
        "train-test-limit-0",
        "values",
        lambda a, o: ["train", "--dataset", "digits", "--test-limit", "0", "-o", str(o / "t.safetensors")],
        "train",
        "--test-limit",
    ),
    Case("zoo-unknown-model", "values", lambda a, o: ["zoo", "--model", "dy_resnt18"], "model", "did you mean"),
    Case(
        "convert-metadata-not-object",
        "values",
        lambda a, o: ["checkpoint", "convert", str(a / CK), "--metadata", "[1]", "-o", str(o / "c.safetensors")],
        "checkpoint",
        "JSON object",
    ),
    Case(
        "inspect-model-args-bad",
        "values",
        lambda a, o: ["checkpoint", "inspect", str(a / CK), "--model-args", "{bad"],
        "checkpoint",
        "not valid JSON",
    ),
    Case(
        "run-repeats-0",
        "values",
        lambda a, o: ["run", str(a / "m.onnx"), "--inputs", str(a / "x.npy"), "--repeats", "0"],
        "run",
        "--repeats",
    ),
    Case(
        "run-tensorrt-absent-or-bad-engine",
        "values",
        lambda a, o: ["run", str(a / "m.onnx"), "--inputs", str(a / "x.npy"), "--backend", "tensorrt"],
        None,
        "",
    ),
    Case(
        "build-min-batch-0",
        "values",
        lambda a, o: ["build", str(a / "m.plugin.onnx"), "--min-batch", "0", "-o", str(o / "x.engine")],
        "build",
        "min-batch",
    ),
    Case(
        "bench-batch-0",
        "values",
        lambda a, o: ["bench", "--models", "resnet18", "--batch-sizes", "0", "--out-dir", str(o / "b")],
        "bench",
        "positive",
    ),
    Case(
        "bench-process-measure-too-few-processes",
        "values",
        lambda a, o: [
            "bench",
            "--models",
            "resnet18",
            "--measures",
            "process",
            "--processes",
            "2",
            "--out-dir",
            str(o / "b"),
        ],
        "bench",
        "at least 3 processes",
    ),
    Case(
        "bench-unknown-model",
        "values",
        lambda a, o: ["bench", "--models", "resnet19", "--out-dir", str(o / "b")],
        "model",
        "did you mean",
    ),
    Case(
        "bench-tensorrt-only-absent",
        "values",
        lambda a, o: ["bench", "--models", "resnet18", "--backends", "tensorrt", "--out-dir", str(o / "b")],
        None,
        "tensorrt|TensorRT",
    ),
    Case(
        "bench-checkpoint-missing",
        "paths",
        lambda a, o: ["bench", "--checkpoint", str(a / "none.safetensors"), "--out-dir", str(o / "b")],
        "bench",
        "does not exist",
    ),
    Case(
        "bench-onnx-random-bytes",
        "corrupt",
        lambda a, o: ["bench", "--onnx", str(a / "random.onnx"), "--out-dir", str(o / "b")],
        "bench",
        "not an ONNX model",
    ),
    Case(
        "bench-model-args-not-json",
        "values",
        lambda a, o: ["bench", "--checkpoint", str(a / CK), "--model-args", "{x", "--out-dir", str(o / "b")],
        "bench",
        "not valid JSON",
    ),
    Case(
        "bench-mixed-input-sizes",
        "shapes",
        lambda a, o: ["bench", "--onnx", str(a / "m.onnx"), "--onnx", str(a / "m32.onnx"), "--out-dir", str(o / "b")],
        "bench",
        "different input sizes",
    ),
    Case(
        "export-kernel-form-dynamic-batch",
        "values",
        lambda a, o: ["export", str(a / CK), "--form", "kernel", "--dynamic-batch", "-o", str(o / "x.onnx")],
        "export",
        "dynamic batch",
    ),
    Case(
        "validate-tensorrt-absent",
        "values",
        lambda a, o: ["validate", str(a / CK), str(a / "m.plugin.onnx"), "--backend", "tensorrt", "--out-dir", str(o)],
        None,
        "TensorRT|tensorrt",
    ),
    Case(
        "build-without-tensorrt-or-bad-profile",
        "values",
        lambda a, o: [
            "build",
            str(a / "m.plugin.onnx"),
            "--min-batch",
            "4",
            "--max-batch",
            "2",
            "-o",
            str(o / "x.engine"),
        ],
        "build",
        "min-batch",
    ),
    Case(
        "convert-model-contradicts-config",
        "values",
        lambda a, o: ["checkpoint", "convert", str(a / CK), "--model", "resnet18", "-o", str(o / "c.safetensors")],
        "checkpoint",
        "but model_name",
    ),
    Case(
        "export-config-names-unknown-model",
        "corrupt",
        lambda a, o: ["export", str(o / "u.safetensors"), "-o", str(o / "x.onnx")],
        "checkpoint",
        "unknown model",
        setup=lambda a, o: (
            shutil.copy(a / CK, o / "u.safetensors"),
            (o / "u.json").write_text((a / "m.json").read_text().replace('"dy_resnet18"', '"dy_resnet1000"')),
        ),
    ),
    Case(
        "export-weights-swapped-behind-config",
        "corrupt",
        lambda a, o: ["export", str(o / "s.safetensors"), "-o", str(o / "x.onnx")],
        "checkpoint",
        "SHA-256",
        setup=lambda a, o: (
            shutil.copy(a / "nan.safetensors", o / "s.safetensors"),
            shutil.copy(a / "m.json", o / "s.json"),
        ),
    ),
    Case(
        "train-corrupt-idx-files",
        "corrupt",
        lambda a, o: [
            "train",
            "--dataset",
            "fashion-mnist",
            "--data-root",
            str(o / "fm"),
            "-o",
            str(o / "t.safetensors"),
        ],
        "data",
        "",
        setup=lambda a, o: (
            (o / "fm").mkdir(),
            *[
                (o / "fm" / n).write_bytes(b"\x00\x00\x08\x03garbage")
                for n in (
                    "train-images-idx3-ubyte",
                    "train-labels-idx1-ubyte",
                    "t10k-images-idx3-ubyte",
                    "t10k-labels-idx1-ubyte",
                )
            ],
        ),
    ),
    Case(
        "run-json-float64-feed",
        "shapes",
        lambda a, o: ["run", str(a / "m.onnx"), "--inputs", str(o / "f.json")],
        "runtime",
        "float64",
        setup=lambda a, o: __import__("polygraphy.json", fromlist=["save_json"]).save_json(
            [{"input": np.zeros((1, 1, 28, 28))}], str(o / "f.json")
        ),
    ),
    Case(
        "deploy-recipe-missing",
        "paths",
        lambda a, o: ["deploy", str(a / "none.json"), "-o", str(o / "d")],
        "recipe",
        "does not exist",
    ),
    Case(
        "deploy-recipe-is-directory",
        "paths",
        lambda a, o: ["deploy", str(a / "adir.onnx"), "-o", str(o / "d")],
        "recipe",
        "is a directory",
    ),
    Case(
        "deploy-recipe-not-json",
        "corrupt",
        lambda a, o: ["deploy", str(a / "bad_config.json"), "-o", str(o / "d")],
        "recipe",
        "not valid JSON",
    ),
    Case(
        "deploy-recipe-is-a-checkpoint-config",
        "corrupt",
        lambda a, o: ["deploy", str(a / "m.json"), "-o", str(o / "d")],
        "recipe",
        "unknown field",
    ),
    Case(
        "deploy-limit-0",
        "values",
        lambda a, o: ["deploy", str(_bundled_recipe()), "--limit", "0", "-o", str(o / "d")],
        "recipe",
        "--limit",
    ),
    Case(
        "demo-threads-0",
        "values",
        lambda a, o: ["demo", "--threads", "0", "--out-dir", str(o / "d")],
        "demo",
        "--threads",
    ),
    Case("usage-export-no-output", "values", lambda a, o: ["export", str(a / CK)], "usage", "-o/--output", rc=2),
    Case(
        "usage-run-bad-backend",
        "values",
        lambda a, o: ["run", str(a / "m.onnx"), "--inputs", str(a / "x.npy"), "--backend", "cuda"],
        "usage",
        "invalid choice",
        rc=2,
    ),
    Case(
        "usage-train-epochs-word",
        "values",
        lambda a, o: ["train", "--epochs", "many", "-o", str(o / "t.safetensors")],
        "usage",
        "invalid int",
        rc=2,
    ),
    Case("usage-unknown-command", "values", lambda a, o: ["frobnicate"], "usage", "invalid choice", rc=2),
    Case(
        "deploy-recipe-is-folder",
        "paths",
        lambda a, o: ["deploy", str(a / "adir.safetensors"), "-o", str(o / "d")],
        "recipe",
        "is a directory",
    ),
    Case(
        "deploy-recipe-unknown-field",
        "values",
        lambda a, o: ["deploy", str(o / "r.json"), "-o", str(o / "d")],
        "recipe",
        "unknown field 'profil'",
        setup=_recipe("r.json", profil={"min": 1}),
    ),
    Case(
        "deploy-recipe-profile-order",
        "values",
        lambda a, o: ["deploy", str(o / "r.json"), "-o", str(o / "d")],
        "recipe",
        "min 4 > opt 2",
        setup=_recipe("r.json", profile={"min": 4, "opt": 2, "max": 8}),
    ),
    Case(
        "deploy-out-not-empty",
        "paths",
        lambda a, o: ["deploy", str(o / "r.json"), "-o", str(o / "d")],
        "deploy",
        "not empty",
        setup=_recipe_and_busy_folder,
    ),
    Case(
        "deploy-force-foreign-folder",
        "paths",
        lambda a, o: ["deploy", str(o / "r.json"), "-o", str(o / "d"), "--force"],
        "deploy",
        "was not written by dynet-deploy",
        setup=_recipe_and_busy_folder,
    ),
    # -- NaN and Inf ---------------------------------------------------------------------------------------------------------
    Case(
        "inspect-nan-weights",
        "nan",
        lambda a, o: ["checkpoint", "inspect", str(a / "nan.safetensors")],
        "checkpoint",
        "NaN",
    ),
    Case(
        "inspect-nan-weights-json",
        "nan",
        lambda a, o: ["checkpoint", "inspect", "--json", str(a / "nan.safetensors")],
        "checkpoint",
        "NaN",
    ),
    Case(
        "convert-nan-weights",
        "nan",
        lambda a, o: ["checkpoint", "convert", str(a / "nan.safetensors"), "-o", str(o / "c.safetensors")],
        "checkpoint",
        "NaN",
    ),
    Case(
        "export-nan-weights-check-fails",
        "nan",
        lambda a, o: ["export", str(a / "nan.safetensors"), "-o", str(o / "x.onnx")],
        "export",
        "non-finite",
    ),
    Case(
        "train-diverges",
        "nan",
        lambda a, o: [
            "train",
            "--dataset",
            "digits",
            "--model-args",
            '{"width_mult": 0.0625}',
            "--lr",
            "1e30",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--train-limit",
            "96",
            "--test-limit",
            "16",
            "--threads",
            "1",
            "-o",
            str(o / "t.safetensors"),
        ],
        "train",
        "diverged",
        marks=[pytest.mark.slow],
    ),
]


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    path = os.environ.get("CORPUS_REPORT")
    if path:
        Path(path).write_text(json.dumps(RESULTS, indent=1) + "\n")


def _params():
    return [pytest.param(c, id=f"{c.family}:{c.id}", marks=c.marks) for c in CASES]


@pytest.mark.parametrize("case", _params())
def test_bad_input(case: Case, A: Path, tmp_path: Path):
    o = tmp_path / "out"
    o.mkdir()
    if case.setup:
        case.setup(A, o)
    before_inputs, before_out = _snapshot(A), _snapshot(o)
    rc, out, err = run_cli(case.argv(A, o))
    if case.post and rc == case.rc:
        case.post(A, o)
    after_out = _snapshot(o)
    leftovers = sorted(set(after_out) - set(before_out))
    changed = sorted(k for k in before_out if after_out.get(k) != before_out[k])
    lines = [line for line in err.splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith("error (")]
    traceback = "Traceback (most recent call last)" in err + out
    RESULTS[case.id] = {
        "family": case.family,
        "rc": rc,
        "traceback": traceback,
        "leftovers": leftovers + changed,
        "last_line": lines[-1] if lines else "",
    }
    assert not traceback, err
    assert _snapshot(A) == before_inputs, "an input file changed"
    assert not leftovers and not changed, f"left behind or changed: {leftovers + changed}"
    assert "\x1b[" not in err, "ANSI colour codes on a non-terminal stderr"
    assert rc == case.rc, f"exit {rc}, expected {case.rc}; stderr: {err[-2000:]}"
    if case.rc == 0:
        RESULTS[case.id]["clean"] = True
        return
    assert len(error_lines) == 1 and lines[-1] == error_lines[0], (
        f"expected one error line, last; stderr: {err[-2000:]}"
    )
    m = ERROR_LINE.match(error_lines[0])
    assert m, error_lines[0]
    assert m.group(1) != "internal", error_lines[0]
    if case.stage:
        assert m.group(1) == case.stage, error_lines[0]
    assert re.search(case.match, error_lines[0]), f"{case.match!r} not in {error_lines[0]!r}"
    RESULTS[case.id]["clean"] = True


def test_corpus_is_large_and_covers_every_command():
    from dynet_deploy.cli import build_parser

    assert len(CASES) >= 60
    commands = {c.argv(Path("A"), Path("O"))[0] for c in CASES}
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    missing = set(sub.choices) - commands - {"doctor"}  # doctor takes no input beyond --json
    assert not missing, f"commands without a bad-input case: {missing}"
    assert len({c.id for c in CASES}) == len(CASES)


# ---- signals and concurrent writers (subprocesses) ----------------------------------------------------------------------

_WRITER = r"""
import sys, time
from dynet_deploy.fileio import atomic_path, install_termination_handler
install_termination_handler()
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"partial")
    print("writing", flush=True)
    time.sleep(120)  # longer than the wait below: a signal without effect finds the writer alive
"""


# Uncaught, Terminated ends the script with status 1; KeyboardInterrupt makes Python end itself by SIGINT (-2).
@pytest.mark.parametrize("sig, rc", [(signal.SIGTERM, 1), (signal.SIGINT, -signal.SIGINT)], ids=["SIGTERM", "SIGINT"])
def test_signal_during_a_write_leaves_no_temporary(tmp_path, sig, rc):
    target = tmp_path / "artifact.onnx"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "writing"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the temporary exists mid-write
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        # Say why the signal did nothing: blocked (SigBlk), ignored (SigIgn) or caught without effect (SigCgt).
        status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
        proc.kill()
        proc.communicate()
        pytest.fail(
            f"{signal.Signals(sig).name} did not end the writer: "
            + "; ".join(
                line
                for line in status
                if line.split(":")[0] in ("State", "Threads", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
            )
        )
    assert proc.returncode == rc, err  # the exception ended the script (Terminated / KeyboardInterrupt)
    assert list(tmp_path.iterdir()) == [], f"left behind: {list(tmp_path.iterdir())}"
    RESULTS[f"signal-{signal.Signals(sig).name}-atomic-write"] = {
        "family": "signals",
        "rc": proc.returncode,
        "traceback": False,
        "leftovers": [],
        "clean": True,
    }


@pytest.mark.slow
@pytest.mark.parametrize("sig, rc", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_during_cli_train_exits_cleanly(tmp_path, sig, rc):
    argv = [
        sys.executable,
        "-m",
        "dynet_deploy.cli",
        "train",
        "--dataset",
        "digits",
        "--model-args",
        '{"width_mult": 0.0625}',
        "--epochs",
        "50",
        "--batch-size",
        "32",
        "--threads",
        "1",
        "--log-every",
        "1",
        "-o",
        str(tmp_path / "t.safetensors"),
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert proc.stderr is not None
    for line in proc.stderr:  # the progress lines are on stderr
        if " step " in line:  # training is under way
            break
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    # after the progress lines still in the pipe: one line saying what happened
    lines = [line for line in err.splitlines() if line.strip() and not line.lstrip().startswith("epoch ")]
    clean = proc.returncode == rc and "Traceback" not in err and len(lines) == 1 and not list(tmp_path.iterdir())
    RESULTS[f"signal-{signal.Signals(sig).name}-train"] = {
        "family": "signals",
        "rc": proc.returncode,
        "traceback": "Traceback" in err,
        "leftovers": [p.name for p in tmp_path.iterdir()],
        "clean": clean,
    }
    assert proc.returncode == rc, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_concurrent_writers_leave_one_whole_checkpoint(A, tmp_path):
    """Two `checkpoint convert` runs onto one output at once: both finish, the result loads, no temporaries."""
    out = tmp_path / "c.safetensors"
    argv = [sys.executable, "-m", "dynet_deploy.cli", "checkpoint", "convert", str(A / CK), "-o", str(out)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=300) for p in procs]
    rcs = [p.returncode for p in procs]
    names = sorted(p.name for p in tmp_path.iterdir())
    RESULTS["concurrent-convert"] = {
        "family": "concurrent",
        "rc": rcs,
        "traceback": any("Traceback" in e for _, e in results),
        "leftovers": [n for n in names if n not in ("c.safetensors", "c.json")],
        "clean": rcs == [0, 0, 0],
    }
    assert rcs == [0, 0, 0], results
    assert names == ["c.json", "c.safetensors"]
    model = load_checkpoint(out)
    ref = load_checkpoint(A / CK)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


def test_atomic_writes_get_the_umask_permissions(tmp_path):
    from dynet_deploy.fileio import atomic_write_text

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644


def test_export_onto_its_own_checkpoint_is_refused_and_the_checkpoint_is_intact(A, tmp_path):
    shutil.copy(A / CK, tmp_path / CK)
    shutil.copy(A / "m.json", tmp_path / "m.json")
    digest = hashlib.sha256((tmp_path / CK).read_bytes()).hexdigest()
    rc, _, err = run_cli(["export", str(tmp_path / CK), "-o", str(tmp_path / CK)])
    assert rc == 1
    assert err.strip().startswith("error (export): output") and "is the input" in err
    assert hashlib.sha256((tmp_path / CK).read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", CK]


def test_fusing_a_fused_graph_says_it_is_already_fused(A, tmp_path):
    rc, out, err = run_cli(["fuse", str(A / "m.plugin.onnx"), "-o", str(tmp_path / "again.onnx")])
    assert rc == 0, err
    assert "the graph is already fused (" in out and "no dynamic convolution found" not in out


def test_validate_names_nan_as_nan(A, tmp_path):
    """A NaN checkpoint against a finite graph: exit 1, the table and the verdict say NaN, not 'inf'/'mismatch'."""
    rc, out, err = run_cli(
        ["validate", str(A / "nan.safetensors"), str(A / "m.onnx"), "--batch-sizes", "2", "--out-dir", str(tmp_path)]
    )
    assert rc == 1, err
    assert "Traceback" not in err
    assert "NaN/Inf in PyTorch's output" in out
    assert "FAILED: PyTorch's reference outputs NaN/Inf" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] is False and report["random_inputs"]["checks"][0]["reference_non_finite"] > 0
