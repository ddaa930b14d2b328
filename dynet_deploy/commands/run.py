"""``dynet-deploy run MODEL --inputs FILE``: run any graph (portable or fused ONNX, or a TensorRT engine) on
inputs from files, print output shapes and timings, and optionally save the outputs.

What ``polygraphy run --load-inputs/--save-outputs`` and trtexec's ``--loadInputs`` give their users, through
this project's runners (:mod:`dynet_deploy.backends`), so fused graphs run with the DyNetDynamicConv2d op.

Inputs:

* ``FILE.npy``: one array, fed to the graph's only input;
* ``FILE.npz``: arrays named like the graph's inputs (a single unnamed ``arr_0`` feeds a one-input graph);
* ``FILE.json``: Polygraphy's input format (``polygraphy run --save-inputs``, ``dynet-deploy validate``'s
  ``inputs.json``): a list of feed dicts, each run in turn.

Arrays are read with ``allow_pickle=False``: a file holding Python objects is refused, never unpickled.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from ..backends import BACKENDS, get_backend
from ..graph import check_fused_nodes

INPUT_SUFFIXES = (".npy", ".npz", ".json")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a graph or engine on inputs from .npy/.npz/Polygraphy JSON files; print shapes, timings; save outputs",
        description="Runs MODEL (a portable or fused ONNX graph on onnxruntime, or a TensorRT engine) on the arrays of "
        "--inputs and prints each output's shape, dtype and range, and the median latency over --repeats runs. "
        "--inputs takes FILE.npy (the graph's only input), FILE.npz (arrays named like the inputs) or a Polygraphy "
        "inputs JSON (a list of feeds, run in turn). --save-outputs writes the outputs to an .npz (keys: output "
        "names; with several feeds, NAME.i for feed i).",
    )
    p.add_argument(
        "model", metavar="MODEL", help="ONNX graph (portable or fused), or with --backend tensorrt an engine"
    )
    p.add_argument("--inputs", required=True, metavar="FILE", help="FILE.npy, FILE.npz or Polygraphy's inputs.json")
    p.add_argument("--save-outputs", metavar="OUT.npz", help="write the outputs here (atomically)")
    p.add_argument(
        "--backend",
        choices=list(BACKENDS),
        default="onnxruntime",
        help="runtime that runs MODEL: onnxruntime (an ONNX graph) or tensorrt (an engine); default: onnxruntime",
    )
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: onnxruntime's)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per feed (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per feed first (default 2)")
    p.add_argument("--plugin-lib", metavar="PATH", help="TensorRT plugin library (default: the one in build/)")
    p.set_defaults(func=run)


def load_feeds(path: Path) -> list[dict[Any, Any]]:
    """The feeds in ``path`` (.npy, .npz or Polygraphy JSON) as a list of ``{name or None: array}``."""
    import numpy as np

    from ..errors import RunError

    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise RunError(
            f"--inputs {str(path)!r}: expected a .npy, .npz or Polygraphy .json file (got {path.suffix or 'no suffix'})"
        )
    if suffix == ".json":
        return _load_polygraphy_json(path)
    with path.open("rb") as f:
        head = f.read(6)
    magic = {".npy": b"\x93NUMPY", ".npz": b"PK"}[suffix]
    if not head.startswith(magic):
        what = "an empty file" if not head else f"no NumPy {suffix} file (it does not start like one)"
        raise RunError(f"--inputs {str(path)!r} is {what}; save arrays with numpy.save / numpy.savez")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise RunError(
                f"--inputs {str(path)!r} holds Python objects (pickled); only numeric arrays are read"
            ) from None
        raise RunError(f"--inputs {str(path)!r} is not a readable {suffix} file: {exc}") from None
    except (OSError, EOFError) as exc:
        raise RunError(
            f"--inputs {str(path)!r} is not a readable {suffix} file (truncated or not NumPy): {exc}"
        ) from None
    except Exception as exc:  # zipfile.BadZipFile and friends from a damaged .npz
        raise RunError(f"--inputs {str(path)!r} is not a readable {suffix} file: {type(exc).__name__}: {exc}") from None
    if isinstance(loaded, np.ndarray):
        if suffix != ".npy":
            raise RunError(f"--inputs {str(path)!r} holds a single .npy array; name it .npy")
        return [{None: loaded}]
    try:
        with loaded:
            feed = {name: loaded[name] for name in loaded.files}
    except ValueError:
        raise RunError(
            f"--inputs {str(path)!r}: an array holds Python objects (pickled); only numeric arrays are read"
        ) from None
    except Exception as exc:
        raise RunError(f"--inputs {str(path)!r} is a damaged .npz: {type(exc).__name__}: {exc}") from None
    if not feed:
        raise RunError(f"--inputs {str(path)!r} holds no arrays")
    return [feed]


def _load_polygraphy_json(path: Path) -> list[dict[str, Any]]:
    import numpy as np

    from ..errors import RunError, summarise

    try:
        from polygraphy.json import load_json
    except ImportError:
        raise RunError("reading a .json inputs file needs Polygraphy (pip install polygraphy)") from None
    try:
        data = load_json(str(path), description="input data")
    except Exception as exc:
        first = summarise(str(exc).strip().splitlines()[0], 200) if str(exc).strip() else type(exc).__name__
        raise RunError(f"--inputs {str(path)!r} is not a Polygraphy inputs JSON: {first}") from None
    feeds = [data] if isinstance(data, dict) else data
    if not isinstance(feeds, list) or not feeds or not all(isinstance(f, dict) for f in feeds):
        raise RunError(
            f"--inputs {str(path)!r} is not a Polygraphy inputs JSON: expected a list of {{input name: array}} feeds"
        )
    for i, feed in enumerate(feeds):
        for name, value in feed.items():
            if not isinstance(value, np.ndarray):
                raise RunError(
                    f"--inputs {str(path)!r} is not a Polygraphy inputs JSON: feed {i}, input {name!r} is a "
                    f"{type(value).__name__}, not an array (save inputs with 'polygraphy run --save-inputs')"
                )
    return [dict(f) for f in feeds]


def _bind_names(feed: dict, input_names: list[str], source: Path) -> dict:
    from ..errors import RunError

    if None in feed or (len(feed) == 1 and len(input_names) == 1 and list(feed) == ["arr_0"]):
        if len(input_names) != 1:
            raise RunError(
                f"--inputs {str(source)!r} holds one unnamed array but the graph takes {len(input_names)} inputs "
                f"({', '.join(input_names)}); give an .npz with one array per input name"
            )
        return {input_names[0]: next(iter(feed.values()))}
    return feed


def _check_values(args) -> None:
    from ..errors import RunError

    if args.repeats < 1:
        raise RunError(f"--repeats must be >= 1, got {args.repeats}")
    if args.warmup < 0:
        raise RunError(f"--warmup must be >= 0, got {args.warmup}")
    from ..guards import check_threads

    check_threads(args.threads, RunError)


def _describe(arr) -> str:
    import numpy as np

    text = f"{list(arr.shape)} {arr.dtype}"
    if arr.size and np.issubdtype(arr.dtype, np.number):
        finite = np.isfinite(arr) if np.issubdtype(arr.dtype, np.floating) else np.ones(arr.shape, bool)
        bad = int(arr.size - finite.sum())
        if finite.any():
            vals = arr[finite]
            text += f", min {vals.min():.4g}, max {vals.max():.4g}, mean {vals.astype(np.float64).mean():.4g}"
        if bad:
            text += f", {bad} NaN/Inf"
    return text


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..errors import RunError
    from ..fileio import atomic_path, check_output_path
    from ..graph import check_readable_file

    _check_values(args)
    model_path = check_readable_file(args.model, RunError, "model")
    inputs_path = check_readable_file(args.inputs, RunError, "--inputs")
    if args.save_outputs:
        check_output_path(
            args.save_outputs,
            RunError,
            inputs=[model_path, inputs_path, args.plugin_lib],
            suffixes=(".npz",),
            why="NumPy's archive of the outputs",
        )
    feeds = load_feeds(inputs_path)
    for i, feed in enumerate(feeds):
        for name, arr in feed.items():
            label = f"input {name!r}" if name is not None else "the input"
            if arr.size == 0:
                raise RunError(
                    f"{label}{f' of feed {i}' if len(feeds) > 1 else ''} has shape {list(arr.shape)}: "
                    f"a zero-size dimension (batch 0?); every dimension must be >= 1"
                )
            if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
                raise RunError(f"{label} has dtype {arr.dtype}; give numeric arrays")

    backend = get_backend(args.backend)
    if backend.artifact_is_graph:
        check_fused_nodes(model_path, RunError)
    options = {"plugin_library": args.plugin_lib} if not backend.artifact_is_graph else {"threads": args.threads}
    runner = backend.open_runner(model_path, **options)
    what = f"{model_path.name} on {backend.describe(runner)}"
    feeds = [_bind_names(f, list(runner.input_names), inputs_path) for f in feeds]
    for i, feed in enumerate(feeds):
        missing = [n for n in runner.input_names if n not in feed]
        unknown = [n for n in feed if n not in runner.input_names]
        if missing or unknown:
            raise RunError(
                f"--inputs {inputs_path.name}{f' (feed {i})' if len(feeds) > 1 else ''} holds arrays named {sorted(feed)}; "
                f"the graph takes {list(runner.input_names)}: name the arrays like the graph's inputs"
            )
    for feed in feeds:
        runner.check_inputs(feed)  # shape and dtype mismatches named before anything runs

    print(
        f"running {what}: {len(feeds)} feed{'s' if len(feeds) != 1 else ''} from {inputs_path.name}, "
        f"{args.warmup} warm-up + {args.repeats} timed runs each"
    )
    saved: dict[str, Any] = {}
    for i, feed in enumerate(feeds):
        label = f"feed {i}: " if len(feeds) > 1 else ""
        for name, arr in feed.items():
            print(f"  {label}input  {name}: {_describe(arr)}")
        outputs = None
        for _ in range(args.warmup):
            outputs = runner.run(feed)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            outputs = runner.run(feed)
            times.append((time.perf_counter() - t0) * 1e3)
        assert outputs is not None
        for name, arr in outputs.items():
            print(f"  {label}output {name}: {_describe(arr)}")
            saved[name if len(feeds) == 1 else f"{name}.{i}"] = arr
        print(
            f"  {label}latency median {statistics.median(times):.3f} ms, min {min(times):.3f} ms "
            f"over {len(times)} runs (wall clock, host arrays in and out)"
        )
    if args.save_outputs:
        with atomic_path(args.save_outputs, RunError) as tmp:
            with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the temporary name
                np.savez(f, **saved)
        print(f"wrote {args.save_outputs} ({', '.join(saved)})")
    return 0
