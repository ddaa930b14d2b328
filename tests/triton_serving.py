"""Load a Triton model the way Triton's onnxruntime backend does, as a user other than the one who wrote it.

The backend (triton-inference-server/onnxruntime_backend, src/onnxruntime.cc) parses config.pbtxt into
``inference.ModelConfig``, hands every ``model_operations.op_library_filename`` unchanged to onnxruntime's
``RegisterCustomOpsLibrary`` (dlopen in the server's process: no path is resolved against the repository), and
loads ``<model>/<version>/model.onnx`` (``default_model_filename`` when set). :func:`serve_as_written` does the
same in a child process that runs as ``nobody`` (``setpriv``), from ``/`` and with no library path set, so that a
repository which only works for its writer, from the writer's folder or with the writer's environment fails.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SERVER_USER = "nobody"

_CHILD = r"""
import io
import sys
import numpy as np
import onnxruntime as ort
from google.protobuf import text_format
from dynet_deploy.triton import load_model_config_pb2

folder, x_path = sys.argv[1], sys.argv[2]
with open(folder + "/config.pbtxt") as f:
    cfg = text_format.Parse(f.read(), load_model_config_pb2().ModelConfig())
so = ort.SessionOptions()
for lib in cfg.model_operations.op_library_filename:
    so.register_custom_ops_library(lib)  # as the backend does: the string as written, dlopen's rules
model = folder + "/1/" + (cfg.default_model_filename or "model.onnx")
providers = ["CPUExecutionProvider"]
if cfg.instance_group and cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
sess = ort.InferenceSession(model, so, providers=providers)
x = np.load(x_path)
(y,) = sess.run([cfg.output[0].name], {cfg.input[0].name: x})
sys.stderr.write("providers: " + ",".join(sess.get_providers()) + "\n")
buf = io.BytesIO()
np.save(buf, y)  # np.save cannot write to a pipe directly
sys.stdout.buffer.write(buf.getvalue())
"""


def other_user_command() -> tuple[list[str] | None, str]:
    """(the command prefix that runs a process as SERVER_USER, or None, and why not)."""
    if os.geteuid() != 0:
        return None, f"running as uid {os.geteuid()}, not root: cannot start a process as another user"
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        return None, f"no {SERVER_USER!r} user on this machine"
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={SERVER_USER}", "--regid=nogroup", "--clear-groups"], ""
    if shutil.which("runuser"):
        return ["runuser", "-u", SERVER_USER, "--"], ""
    return None, "neither setpriv nor runuser is installed"


def shared_folder(prefix: str) -> Path:
    """A new folder other users may enter (mkdtemp makes 0700): the place a server would read a repository from."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(folder, 0o755)
    return folder


def serve_as_written(model_folder: Path, x: np.ndarray) -> np.ndarray:
    """Run ``x`` through the model in ``model_folder`` as the onnxruntime backend would, as SERVER_USER.

    ``model_folder``'s parents must be enterable by that user; ``x`` is written beside the caller's repository in a
    world-readable file. Raises AssertionError with the child's stderr when it fails.
    """
    prefix, why = other_user_command()
    if prefix is None:
        raise RuntimeError(why)
    feed = Path(tempfile.mkdtemp(prefix="dynet-serve-input-"))
    try:
        os.chmod(feed, 0o755)
        np.save(feed / "x.npy", x)
        os.chmod(feed / "x.npy", 0o644)
        env = {"PATH": "/usr/bin:/bin", "HOME": "/", "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            [*prefix, sys.executable, "-c", _CHILD, str(model_folder), str(feed / "x.npy")],
            cwd="/",
            env=env,
            capture_output=True,
            timeout=300,
        )
    finally:
        shutil.rmtree(feed, ignore_errors=True)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, f"loading {model_folder} as {SERVER_USER} failed:\n{err[-3000:]}"
    import io

    return np.load(io.BytesIO(proc.stdout), allow_pickle=False)
