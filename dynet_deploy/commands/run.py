"""``dynet-deploy run MODEL --inputs FILE``: run any graph (portable or fused ONNX, or a TensorRT engine) on
inputs from files, print output shapes and timings, and optionally save the outputs.

What ``polygraphy run --load-inputs/--save-outputs`` and trtexec's ``--loadInputs`` give their users, through
this project's runners (:mod:`dynet_deploy.backends`), so fused graphs run with the DyNetDynamicConv2d op.

Inputs:

* ``FILE.npy``: one array, fed to the graph's only input;
* ``FILE.npz``: arrays named like the graph's inputs (a single unnamed ``arr_0`` feeds a one-input graph);
* ``FILE.json``: Polygraphy's input format (``polygraphy run --save-inputs``, ``dynet-deploy validate``'s
  ``inputs.json``): a list of feed dicts, each run in turn.

Outputs: ``--save-outputs FILE.npz`` (keys: output names; ``NAME.i`` for feed i of several) or ``FILE.json``:
Polygraphy's ``RunResults`` (what ``polygraphy run --save-outputs`` writes; ``polygraphy run --load-outputs`` reads
it). ``--load-outputs FILE`` compares the outputs with saved ones (Polygraphy's JSON, such as ``validate``'s
``reference.json``, or this command's ``.npz``) at ``--atol`` / ``--rtol`` and exits 1 on a mismatch: the check
``validate`` makes, replayed on this machine, fused graphs included (Polygraphy's ``--onnxrt`` cannot load the op).

Arrays are read with ``allow_pickle=False``: a file holding Python objects is refused, never unpickled.
"""

from __future__ import annotations

import argparse
import math
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
        "names; with several feeds, NAME.i for feed i) or, named .json, in Polygraphy's format. --load-outputs "
        "compares them with saved outputs (Polygraphy's JSON, e.g. validate's reference.json, or an .npz written "
        "here), prints max-abs and relative error per output and exits 1 on a mismatch.",
    )
    p.add_argument(
        "model", metavar="MODEL", help="ONNX graph (portable or fused), or with --backend tensorrt an engine"
    )
    p.add_argument("--inputs", required=True, metavar="FILE", help="FILE.npy, FILE.npz or Polygraphy's inputs.json")
    p.add_argument(
        "--save-outputs",
        metavar="OUT.npz|OUT.json",
        help="write the outputs here (atomically): .npz, or .json in Polygraphy's format (polygraphy run "
        "--load-outputs reads it)",
    )
    p.add_argument(
        "--load-outputs",
        metavar="REF.json|REF.npz",
        help="compare the outputs with these (Polygraphy's JSON as `polygraphy run --save-outputs` or validate's "
        "reference.json write, or an .npz from --save-outputs); exit 1 on a mismatch",
    )
    p.add_argument(
        "--atol",
        type=float,
        metavar="MAX_ABS",
        help="with --load-outputs: largest allowed |out - ref| (default: the graph's precision's, fp32 1e-4, fp16 5e-2)",
    )
    p.add_argument(
        "--rtol",
        type=float,
        metavar="REL",
        help="with --load-outputs: largest allowed relative error ||out - ref|| / ||ref|| per output, as validate "
        "measures it; not Polygraphy's element-wise rtol (default: fp32 1e-5, fp16 1e-2)",
    )
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

    from ..errors import RunError

    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise RunError(
            f"--inputs {str(path)!r}: expected a .npy, .npz or Polygraphy .json file (got {path.suffix or 'no suffix'})"
        )
    if suffix == ".json":
        return _load_polygraphy_json(path)
    return _read_numpy(path, "--inputs")


def _read_numpy(path: Path, flag: str) -> list[dict[Any, Any]]:
    """A .npy (``[{None: array}]``) or .npz (``[{name: array}]``) file, read without unpickling; ``flag`` names it."""
    import numpy as np

    from ..errors import RunError

    suffix = path.suffix.lower()
    with path.open("rb") as f:
        head = f.read(6)
    magic = {".npy": b"\x93NUMPY", ".npz": b"PK"}[suffix]
    if not head.startswith(magic):
        what = "an empty file" if not head else f"no NumPy {suffix} file (it does not start like one)"
        raise RunError(f"{flag} {str(path)!r} is {what}; save arrays with numpy.save / numpy.savez")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise RunError(
                f"{flag} {str(path)!r} holds Python objects (pickled); only numeric arrays are read"
            ) from None
        raise RunError(f"{flag} {str(path)!r} is not a readable {suffix} file: {exc}") from None
    except (OSError, EOFError) as exc:
        raise RunError(
            f"{flag} {str(path)!r} is not a readable {suffix} file (truncated or not NumPy): {exc}"
        ) from None
    except Exception as exc:  # zipfile.BadZipFile and friends from a damaged .npz
        raise RunError(f"{flag} {str(path)!r} is not a readable {suffix} file: {type(exc).__name__}: {exc}") from None
    if isinstance(loaded, np.ndarray):
        if suffix != ".npy":
            raise RunError(f"{flag} {str(path)!r} holds a single .npy array; name it .npy")
        return [{None: loaded}]
    try:
        with loaded:
            feed = {name: loaded[name] for name in loaded.files}
    except ValueError:
        raise RunError(
            f"{flag} {str(path)!r}: an array holds Python objects (pickled); only numeric arrays are read"
        ) from None
    except Exception as exc:
        raise RunError(f"{flag} {str(path)!r} is a damaged .npz: {type(exc).__name__}: {exc}") from None
    if not feed:
        raise RunError(f"{flag} {str(path)!r} holds no arrays")
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


def _quiet_polygraphy() -> None:
    """Polygraphy's own log (loading messages, the colour-module hint) stays out of this command's output."""
    try:
        from polygraphy.logger import G_LOGGER
    except ImportError:
        return
    G_LOGGER.module_severity = G_LOGGER.ERROR
    G_LOGGER.colors = False


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
    from ..guards import check_threads, refuse_unused_flags

    check_threads(args.threads, RunError)
    if args.load_outputs is None:
        refuse_unused_flags(
            (("--atol", args.atol is not None), ("--rtol", args.rtol is not None)),
            "they bound the comparison with saved outputs; add --load-outputs REF.json",
            RunError,
        )
    for flag, value in (("--atol", args.atol), ("--rtol", args.rtol)):
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise RunError(f"{flag} must be a finite number >= 0, got {value}")


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
    ref_path = check_readable_file(args.load_outputs, RunError, "--load-outputs") if args.load_outputs else None
    if args.save_outputs:
        check_output_path(
            args.save_outputs,
            RunError,
            inputs=[model_path, inputs_path, args.plugin_lib, ref_path],
            suffixes=(".npz", ".json"),
            why="NumPy's archive or Polygraphy's JSON of the outputs",
        )
    _quiet_polygraphy()
    feeds = load_feeds(inputs_path)
    reference = load_reference(ref_path, len(feeds)) if ref_path is not None else None
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
    results: list[tuple[dict[str, Any], float]] = []  # per feed: outputs, median seconds
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
        results.append((dict(outputs), statistics.median(times) / 1e3))
    if args.save_outputs:
        with atomic_path(args.save_outputs, RunError) as tmp:
            if Path(args.save_outputs).suffix.lower() == ".json":
                _polygraphy_results(results, f"dynet-deploy-{backend.name}").save(str(tmp))
            else:
                with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the temporary name
                    np.savez(f, **saved)
        if Path(args.save_outputs).suffix.lower() == ".json":
            print(
                f"wrote {args.save_outputs} (Polygraphy's RunResults: {len(results)} iteration(s) of {', '.join(results[0][0])})"
            )
        else:
            print(f"wrote {args.save_outputs} ({', '.join(saved)})")
    if reference is not None:
        assert ref_path is not None
        tol = _tolerance(args, model_path, backend.artifact_is_graph)
        passed, table = compare_outputs([r[0] for r in results], reference, tol, ref_path.name)
        print(table)
        print("PASSED" if passed else f"FAILED: the outputs do not match {ref_path.name}")
        return 0 if passed else 1
    return 0


# ---- saved outputs: Polygraphy's RunResults and this command's .npz ------------------------------------------


def _polygraphy_results(results: list[tuple[dict[str, Any], float]], runner_name: str):
    """Polygraphy's ``RunResults`` of one runner, one iteration per feed (runtime: the median, in seconds)."""
    from polygraphy.comparator import IterationResult, RunResults

    run_results = RunResults()
    run_results.append((runner_name, [IterationResult(o, t, runner_name) for o, t in results]))
    return run_results


def load_reference(path: Path, n_feeds: int) -> list[tuple[str, list[dict[str, Any]]]]:
    """Saved outputs as ``[(runner name, [outputs per feed])]``, each runner with one iteration per feed."""
    from ..errors import RunError

    suffix = path.suffix.lower()
    if suffix == ".npz":
        runs = [("npz", _npz_reference(path, n_feeds))]
    elif suffix == ".json":
        runs = _json_reference(path)
    else:
        raise RunError(
            f"--load-outputs {str(path)!r}: expected Polygraphy's .json (polygraphy run --save-outputs, validate's "
            f"reference.json) or an .npz from --save-outputs (got {path.suffix or 'no suffix'})"
        )
    for runner, iterations in runs:
        if len(iterations) != n_feeds:
            raise RunError(
                f"--load-outputs {path.name}: runner {runner!r} holds {len(iterations)} iteration"
                f"{'s' if len(iterations) != 1 else ''}, --inputs gives {n_feeds} feed{'s' if n_feeds != 1 else ''}; "
                f"give the inputs these outputs were computed from (validate's inputs.json beside its reference.json)"
            )
    return runs


def _json_reference(path: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    import numpy as np

    from ..errors import RunError, summarise

    try:
        from polygraphy.comparator import RunResults
    except ImportError:
        raise RunError("reading a .json outputs file needs Polygraphy (pip install polygraphy)") from None
    try:
        loaded = RunResults.load(str(path))
        runs = [(str(name), [dict(it.items()) for it in iterations]) for name, iterations in loaded.items()]
    except Exception as exc:  # Polygraphy raises its own exception type, json and OS errors pass through
        text = str(exc).strip()
        first = summarise(text.splitlines()[0], 200) if text else type(exc).__name__
        raise RunError(
            f"--load-outputs {str(path)!r} is not Polygraphy's outputs JSON (RunResults, as `polygraphy run "
            f"--save-outputs` and validate's reference.json write it): {first}"
        ) from None
    if not runs:
        raise RunError(f"--load-outputs {str(path)!r} holds no runner's outputs")
    for runner, iterations in runs:
        for i, outputs in enumerate(iterations):
            for name, value in outputs.items():
                if not isinstance(value, np.ndarray):
                    raise RunError(
                        f"--load-outputs {path.name}: runner {runner!r}, iteration {i}, output {name!r} is a "
                        f"{type(value).__name__}, not an array"
                    )
    return runs


def _npz_reference(path: Path, n_feeds: int) -> list[dict[str, Any]]:
    from ..errors import RunError

    (arrays,) = _read_numpy(path, "--load-outputs")
    if None in arrays:
        raise RunError(f"--load-outputs {path.name} holds a single .npy array; save outputs as .npz or .json")
    if n_feeds == 1:
        return [arrays]
    iterations: list[dict[str, Any]] = [{} for _ in range(n_feeds)]
    for key, arr in arrays.items():
        name, _, index = key.rpartition(".")
        if not name or not index.isdigit() or int(index) >= n_feeds:
            raise RunError(
                f"--load-outputs {path.name}: array {key!r} is not NAME.i for one of the {n_feeds} feeds "
                "(the keys --save-outputs writes for several feeds)"
            )
        iterations[int(index)][name] = arr
    return iterations


def _tolerance(args, model_path: Path, is_graph: bool):
    """--atol / --rtol over the graph's precision's tolerance (fp32's for an engine)."""
    from ..errors import RunError
    from ..graph import load_onnx
    from ..precision import graph_precision
    from ..tolerance import TOLERANCES, Tolerance

    precision = graph_precision(load_onnx(model_path, RunError, external_data=False)) if is_graph else "fp32"
    default = TOLERANCES[precision]
    return Tolerance(
        default.max_abs if args.atol is None else args.atol, default.rel if args.rtol is None else args.rtol
    )


def compare_outputs(
    outputs: list[dict[str, Any]], reference: list[tuple[str, list[dict[str, Any]]]], tol, source: str
) -> tuple[bool, str]:
    """Each output of each feed against every saved runner's: (all within ``tol``, the table)."""
    from ..tolerance import errors, non_finite_count

    w = max([9, *(len(r) for r, _ in reference)])
    rows = [f"{'reference':<{w}} {'feed':>4}  {'output':<16} {'shape':<16} {'max-abs':>10} {'rel':>10}  result"]
    passed = True
    for runner, iterations in reference:
        for i, (got, want) in enumerate(zip(outputs, iterations)):
            for name, ref in want.items():
                if name not in got:
                    rows.append(f"{runner:<{w}} {i:>4}  {name[:16]:<16} {'-':<16} {'-':>10} {'-':>10}  MISSING")
                    passed = False
                    continue
                out = got[name]
                if list(out.shape) != list(ref.shape):
                    rows.append(
                        f"{runner:<{w}} {i:>4}  {name[:16]:<16} {str(list(out.shape)):<16} {'-':>10} {'-':>10}  "
                        f"MISMATCH: shape, the reference's is {list(ref.shape)}"
                    )
                    passed = False
                    continue
                bad_out, bad_ref = non_finite_count(out), non_finite_count(ref)
                if bad_out or bad_ref:
                    max_abs_s = rel_s = "NaN"
                    verdict = f"MISMATCH: NaN/Inf ({bad_out} in the output, {bad_ref} in the reference)"
                    ok = False
                else:
                    max_abs, rel = errors(out, ref)
                    max_abs_s, rel_s = f"{max_abs:.3e}", f"{rel:.3e}"
                    ok = tol.allows(max_abs, rel)
                    verdict = "ok" if ok else "MISMATCH"
                passed &= ok
                rows.append(
                    f"{runner:<{w}} {i:>4}  {name[:16]:<16} {str(list(out.shape)):<16} {max_abs_s:>10} "
                    f"{rel_s:>10}  {verdict}"
                )
    rows.append(f"compared with {source}: tolerance max-abs <= {tol.max_abs:g}, rel <= {tol.rel:g}")
    return passed, "\n".join(rows)
