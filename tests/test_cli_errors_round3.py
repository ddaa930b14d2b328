"""The bad-input corpus, third round: harms (``--force``, ``bench --keep-onnx``, ``train`` over a checkpoint,
flags that do not apply), path escapes through a recipe's name and baseline, recipe fields a later stage needs,
``--threads`` bounds, what used to be internal errors, and leftovers.

Every case is held to :mod:`test_cli_errors`'s assertions: the exit code, one ``error (stage): ...`` line, last,
no traceback, nothing left behind or changed in the output folder (which holds each case's own inputs), and the
shared inputs unchanged. Cases that used to hang or crash also run in a subprocess and must exit by themselves,
with status 1, never by a signal.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from test_cli_errors import ERROR_LINE, NOT_ROOT, A, _snapshot, run_cli  # noqa: F401  (A: the shared inputs)

from dynet_deploy.fileio import OUTPUT_MARKER

CK = "m.safetensors"


@dataclass
class Case:
    id: str
    family: str  # harms, paths, recipe, threads, internal, leftovers
    argv: Callable[[Path, Path], list[str]]  # (shared inputs A, output folder O) -> argv
    stage: str
    match: str
    setup: Callable[[Path, Path], None] | None = None
    chdir: bool = False  # run in O rather than beside it (deploy's default output, out/<name>, is relative)
    marks: list = field(default_factory=list)


def _small_recipe(o: Path, folder: str = "", **changes) -> Path:
    """A recipe for the corpus's small checkpoint, in O/folder with the checkpoint beside it."""
    a_ck = Path(os.environ["ROUND3_A"]) / CK
    d = o / folder
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(a_ck, d / CK)
    shutil.copy(a_ck.with_suffix(".json"), d / "m.json")
    recipe = {
        "checkpoint": CK,
        "input_shape": [1, 28, 28],
        "precisions": {"fp32": {"max_abs": 1e-4, "rel": 1e-5}},
        "profile": {"min": 1, "opt": 1, "max": 2},
        "validate": {"batch_sizes": [1]},
        "latency": {"repeats": 1, "warmup": 0, "threads": 1},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    path = d / "r.json"
    path.write_text(json.dumps(recipe))
    return path


def recipe(folder: str = "", **changes):
    return lambda a, o: _small_recipe(o, folder, **changes) and None


def _raw(name: str, text: str):
    def setup(a: Path, o: Path) -> None:
        (o / name).write_text(text)

    return setup


def _both(*setups):
    def setup(a: Path, o: Path) -> None:
        for s in setups:
            s(a, o)

    return setup


def _deploy_folder_with_inputs(a: Path, o: Path) -> None:
    # An earlier deploy's folder (its marker and report) into which the user later copied the recipe's checkpoint.
    _small_recipe(o, "d")
    (o / "d" / OUTPUT_MARKER).write_text("written by dynet-deploy deploy\n")
    (o / "d" / "report.json").write_text("{}\n")


def _validate_folder(a: Path, o: Path) -> None:
    _small_recipe(o)
    (o / "v").mkdir()
    for name in ("inputs.json", "reference.json", "report.json", "report.txt"):
        (o / "v" / name).write_text("{}\n")


def _copy_pair(a: Path, o: Path) -> None:
    shutil.copy(a / CK, o / CK)
    shutil.copy(a / "m.json", o / "m.json")


def _keep_onnx_holding_input(a: Path, o: Path) -> None:
    (o / "keep").mkdir()
    shutil.copy(a / "m.onnx", o / "keep" / "m.portable.onnx")  # the name bench gives its own export of m


def _symlink_out(a: Path, o: Path) -> None:
    _small_recipe(o)
    (o / "real").mkdir()
    (o / "link").symlink_to(o / "real")


def _dangling_out(a: Path, o: Path) -> None:
    _small_recipe(o)
    (o / "dangling").symlink_to(o / "nowhere")


def _cwd_recipe_with_marker(a: Path, o: Path) -> None:
    _small_recipe(o)
    (o / OUTPUT_MARKER).write_text("written by dynet-deploy deploy\n")


def _read_only_parent(a: Path, o: Path) -> None:
    _small_recipe(o)
    (o / "ro").mkdir()
    os.chmod(o / "ro", 0o555)


def _deep(kind: str, depth: int) -> str:
    return "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth


def deploy(*extra: str, recipe_at: str = "r.json"):
    # "OUT" stands for a folder beside O that must never come into being
    return lambda a, o: ["deploy", str(o / recipe_at), *(str(o.parent / "OUT") if e == "OUT" else e for e in extra)]


def deploy_o(out: str, *extra: str):
    return lambda a, o: ["deploy", str(o / "r.json"), "-o", str(o / out), *extra]


TRAIN = ["train", "--dataset", "digits", "--epochs", "1", "--train-limit", "8", "--test-limit", "8"]

CASES = [
    # -- harms ---------------------------------------------------------------------------------------------------
    Case(
        "deploy-force-onto-folder-holding-checkpoint",
        "harms",
        lambda a, o: ["deploy", str(o / "d" / "r.json"), "-o", str(o / "d"), "--force"],
        "deploy",
        "holds the input",
        _deploy_folder_with_inputs,
    ),
    Case(
        "deploy-force-onto-folder-validate-wrote",
        "harms",
        deploy_o("v", "--force"),
        "deploy",
        f"was not written by dynet-deploy \\(no {re.escape(OUTPUT_MARKER)}",
        _validate_folder,
    ),
    Case(
        "deploy-force-onto-parent-of-recipe",
        "harms",
        lambda a, o: ["deploy", str(o / "sub" / "r.json"), "-o", str(o), "--force"],
        "deploy",
        "holds the input",
        _both(recipe("sub"), lambda a, o: (o / OUTPUT_MARKER).write_text("x\n")),
    ),
    Case(
        "bench-keep-onnx-holds-the-onnx-input",
        "harms",
        lambda a, o: [
            "bench",
            "--checkpoint",
            str(a / CK),
            "--onnx",
            str(o / "keep" / "m.portable.onnx"),
            "--keep-onnx",
            str(o / "keep"),
            "--backends",
            "onnxruntime",
            "--out-dir",
            str(o),
        ],
        "bench",
        "--keep-onnx .* holds the input",
        _keep_onnx_holding_input,
    ),
    Case(
        "train-over-existing-checkpoint",
        "harms",
        lambda a, o: [*TRAIN, "-o", str(o / CK)],
        "checkpoint",
        "already exist.*--force",
        _copy_pair,
    ),
    Case(
        "train-json-name-over-existing-checkpoint",
        "harms",
        lambda a, o: [*TRAIN, "-o", str(o / "m.json")],
        "checkpoint",
        "already exist.*--force",
        _copy_pair,
    ),
    Case(
        "deploy-dataset-on-recipe-without-one",
        "harms",
        deploy("-o", "OUT", "--dataset", "digits"),
        "recipe",
        "--dataset does not apply: .* names no data set",
        recipe(),
    ),
    Case(
        "deploy-limit-on-recipe-without-dataset",
        "harms",
        deploy("--limit", "10"),
        "recipe",
        "--limit does not apply",
        recipe(),
    ),
    Case(
        "validate-limit-without-dataset",
        "harms",
        lambda a, o: ["validate", str(a / CK), str(a / "m.onnx"), "--limit", "10", "--out-dir", str(o)],
        "validate",
        "--limit does not apply: it limits --dataset's check",
    ),
    Case(
        "deploy-op-library-dir-without-triton",
        "harms",
        deploy("--op-library-dir", "/opt/dynet/lib"),
        "recipe",
        "--op-library-dir does not apply: .* add --triton",
        recipe(),
    ),
    # -- path escapes through the recipe -------------------------------------------------------------------------
    *[
        Case(
            f"deploy-name-{label}",
            "paths",
            deploy(),
            "recipe",
            "field 'name' is .* must be 1-64 letters",
            recipe(name=name),
            chdir=True,
        )
        for label, name in (
            ("dotdot", "../../x"),
            ("absolute", "/tmp/dynet-deploy-escape"),
            ("empty", ""),
            ("nested", "a/b"),
            ("dot", "."),
            ("dotdot-only", ".."),
            ("space", "x y"),
            ("hidden", ".x"),
            ("5000-chars", "n" * 5000),
        )
    ],
    Case(
        "deploy-file-stem-not-a-name",
        "paths",
        deploy(recipe_at="my recipe.json"),
        "recipe",
        r"\(the file stem: the recipe has no name\)",
        lambda a, o: _small_recipe(o).rename(o / "my recipe.json"),
        chdir=True,
    ),
    *[
        Case(
            f"deploy-baseline-{label}",
            "paths",
            deploy("-o", "OUT"),
            "recipe",
            "latency.baseline' is .* not a bundled checkpoint.*baseline_checkpoint",
            recipe(latency={"baseline": value}),
        )
        for label, value in (("dotdot", "../assets/resnet18_fmnist"), ("absolute", "/etc/passwd"), ("empty", ""))
    ],
    Case(
        "deploy-baseline-checkpoint-missing",
        "paths",
        deploy("-o", "OUT"),
        "recipe",
        "latency.baseline_checkpoint .* is not a file",
        recipe(latency={"baseline_checkpoint": "none.safetensors"}),
    ),
    # -- recipe fields a later stage needs, checked when read ----------------------------------------------------
    Case(
        "deploy-profile-max-2p40",
        "recipe",
        deploy("--triton"),
        "recipe",
        "profile.max' is 1,099,511,627,776, above the largest batch",
        recipe(profile={"min": 1, "opt": 1, "max": 2**40}),
    ),
    Case(
        "deploy-input-shape-40gb",
        "recipe",
        deploy(),
        "recipe",
        r"input_shape' \[1, 100000, 100000\] is 10,000,000,000 values per sample \(40.0 GB",
        recipe(input_shape=[1, 100000, 100000]),
    ),
    Case(
        "deploy-op-library-dir-newline",
        "recipe",
        deploy("--triton", "--op-library-dir", "/opt/lib\nrm -rf x"),
        "recipe",
        r"--op-library-dir .* holds '\\n'",
        recipe(),
    ),
    Case(
        "deploy-op-library-dir-relative",
        "recipe",
        deploy("--triton", "--op-library-dir", "lib"),
        "recipe",
        "--op-library-dir 'lib' is relative",
        recipe(),
    ),
    Case(
        "deploy-plugin-dir-quote",
        "recipe",
        deploy("--triton", "--plugin-dir", '/opt/"lib'),
        "recipe",
        "--plugin-dir .* holds",
        recipe(),
    ),
    *[
        Case(
            f"deploy-recipe-nested-{kind}-{depth}",
            "internal",
            deploy(recipe_at="deep.json"),
            "recipe",
            "nested too deeply to read",
            _raw("deep.json", _deep(kind, depth)),
        )
        for kind, depth in (("list", 100_000), ("list", 200_000), ("object", 100_000))
    ],
    Case(
        "validate-recipe-nested",
        "internal",
        lambda a, o: [
            "validate",
            str(a / CK),
            str(a / "m.onnx"),
            "--recipe",
            str(o / "deep.json"),
            "--out-dir",
            str(o),
        ],
        "recipe",
        "nested too deeply to read",
        _raw("deep.json", _deep("list", 150_000)),
    ),
    # -- --threads -----------------------------------------------------------------------------------------------
    Case(
        "run-threads-100000",
        "threads",
        lambda a, o: ["run", str(a / "m.onnx"), "--inputs", str(a / "x.npy"), "--threads", "100000"],
        "run",
        "--threads 100000 is more than this machine can use",
    ),
    Case(
        "validate-threads-2000",
        "threads",
        lambda a, o: ["validate", str(a / CK), str(a / "m.onnx"), "--out-dir", str(o), "--threads", "2000"],
        "validate",
        "--threads 2000 is more than",
    ),
    Case("deploy-threads-2000", "threads", deploy("--threads", "2000"), "recipe", "--threads 2000 is more", recipe()),
    Case(
        "deploy-recipe-latency-threads-2000",
        "threads",
        deploy(),
        "recipe",
        r"r\.json: latency\.threads 2000 is more .*; give latency\.threads between 1 and \d+$",
        recipe(latency={"threads": 2000}),
    ),
    Case(
        "train-threads-2000",
        "threads",
        lambda a, o: [*TRAIN, "--threads", "2000", "-o", str(o / "t.safetensors")],
        "train",
        "--threads 2000 is more",
    ),
    Case(
        "bench-threads-2000",
        "threads",
        lambda a, o: ["bench", "--onnx", str(a / "m.onnx"), "--threads", "1", "2000", "--out-dir", str(o)],
        "bench",
        "--threads 2000 is more",
    ),
    Case(
        "demo-threads-2000",
        "threads",
        lambda a, o: ["demo", "--threads", "2000", "--out-dir", str(o / "d")],
        "demo",
        "--threads 2000 is more",
    ),
    # -- what were internal errors -------------------------------------------------------------------------------
    Case(
        "train-segmentation-model",
        "internal",
        lambda a, o: [*TRAIN, "--model", "fcn_resnet50", "-o", str(o / "t.safetensors")],
        "train",
        "fcn_resnet50 is a segmentation model; train fits classifiers",
    ),
    Case(
        "train-in-chans-3-on-grey",
        "internal",
        lambda a, o: [*TRAIN, "--model-args", '{"in_chans": 3}', "-o", str(o / "t.safetensors")],
        "train",
        "in_chans 3 does not match digits's images, which have 1 channel",
    ),
    Case(
        "deploy-o-dot-force",
        "internal",
        lambda a, o: ["deploy", str(o / "r.json"), "-o", ".", "--force"],
        "deploy",
        "is the current folder or holds it",
        _cwd_recipe_with_marker,
        chdir=True,
    ),
    Case(
        "deploy-o-dangling-symlink",
        "internal",
        deploy_o("dangling"),
        "deploy",
        "is a symbolic link",
        _dangling_out,
    ),
    Case(
        "deploy-o-name-too-long",
        "internal",
        deploy_o("n" * 300),
        "deploy",
        "the folder name is 300 bytes; file systems allow 255",
        recipe(),
    ),
    Case(
        "deploy-o-read-only-parent",
        "internal",
        deploy_o("ro/out"),
        "deploy",
        "is not writable",
        _read_only_parent,
        marks=[NOT_ROOT],
    ),
    # -- unclear messages ----------------------------------------------------------------------------------------
    Case(
        "inspect-text-pickle-is-not-a-text-file",
        "messages",
        lambda a, o: ["checkpoint", "inspect", str(o / "p0.safetensors")],
        "checkpoint",
        "a Python pickle in its text protocol .*it was not unpickled",
        lambda a, o: (o / "p0.safetensors").write_bytes(pickle.dumps({"w": [1, 2]}, protocol=0)),
    ),
    Case(
        "inspect-plain-pickle-names-it",
        "messages",
        lambda a, o: ["checkpoint", "inspect", str(o / "p2.pt")],
        "checkpoint",
        "it is a plain Python pickle, not a file torch.save wrote",
        lambda a, o: (o / "p2.pt").write_bytes(pickle.dumps({"w": [1, 2]}, protocol=2)),
    ),
    Case(
        "bench-checkpoint-without-config-suggests-no-missing-flag",
        "messages",
        lambda a, o: (
            ["bench", "--checkpoint", str(o / "solo.safetensors"), "--backends", "onnxruntime"] + ["--out-dir", str(o)]
        ),
        "checkpoint",
        r"copy the .json written with it beside it, or name the zoo model \(export and checkpoint take --model",
        lambda a, o: shutil.copy(a / CK, o / "solo.safetensors"),
    ),
    # -- leftovers -----------------------------------------------------------------------------------------------
    Case(
        "deploy-o-symlink-to-folder",
        "leftovers",
        deploy_o("link"),
        "deploy",
        "is a symbolic link; the output folder is replaced as a whole",
        _symlink_out,
    ),
    Case(
        "validate-synthetic-seg-on-classifier",
        "leftovers",
        lambda a, o: ["validate", str(a / CK), str(a / "m.onnx"), "--dataset", "synthetic-seg", "--out-dir", str(o)],
        "validate",
        "synthetic-seg scores segmentation models .* this model is a classifier",
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=f"{c.family}:{c.id}", marks=c.marks) for c in CASES])
def test_bad_input_round3(case: Case, A: Path, tmp_path: Path, monkeypatch):  # noqa: F811 (A: a fixture)
    monkeypatch.setenv("ROUND3_A", str(A))
    o = tmp_path / "out"
    o.mkdir()
    if case.setup:
        case.setup(A, o)
    monkeypatch.chdir(o if case.chdir else tmp_path)
    argv = case.argv(A, o)
    before_inputs, before_out = _snapshot(A), _snapshot(o)
    try:
        rc, out, err = run_cli(argv)
    finally:
        if (o / "ro").exists():
            os.chmod(o / "ro", 0o755)
    after_out = _snapshot(o)
    leftovers = sorted(set(after_out) - set(before_out))
    changed = sorted(k for k in before_out if after_out.get(k) != before_out[k])
    lines = [line for line in err.splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith("error (")]
    assert "Traceback (most recent call last)" not in err + out, err
    assert _snapshot(A) == before_inputs, "an input file changed"
    assert not leftovers and not changed, f"left behind or changed: {leftovers + changed}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "something was written beside the output folder"
    assert rc == 1, f"exit {rc}; stderr: {err[-2000:]}"
    assert len(error_lines) == 1 and lines[-1] == error_lines[0], (
        f"expected one error line, last; stderr: {err[-2000:]}"
    )
    m = ERROR_LINE.match(error_lines[0])
    assert m and m.group(1) == case.stage, error_lines[0]
    assert re.search(case.match, error_lines[0]), f"{case.match!r} not in {error_lines[0]!r}"


def test_round3_covers_every_family():
    families = {c.family for c in CASES}
    assert families == {"harms", "paths", "recipe", "threads", "internal", "leftovers", "messages"}
    assert len({c.id for c in CASES}) == len(CASES)


def _limited_nproc(limit: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))

    return preexec


@pytest.mark.parametrize("threads", [400, 2000, 100000])
def test_run_with_threads_over_the_process_limit_exits_by_itself(A, threads):  # noqa: F811
    # Under a 300-thread process limit, onnxruntime asked for more threads hangs rather than fails: the command must
    # refuse before it starts, and exit with status 1 (not be killed by the timeout or a signal).
    proc = subprocess.run(
        [sys.executable, "-m", "dynet_deploy.cli", "run", str(A / "m.onnx"), "--inputs", str(A / "x.npy")]
        + ["--threads", str(threads)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limited_nproc(300),
    )
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode}"
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error (run): --threads") and "between 1 and" in last, last


def test_thread_bound_follows_the_process_limit(monkeypatch):
    from dynet_deploy import guards
    from dynet_deploy.errors import RunError

    monkeypatch.setattr(guards, "usable_cores", lambda: 64)
    monkeypatch.setattr(guards, "_thread_limit_room", lambda: None)
    limited = _limited_nproc(100)
    code = (
        "from dynet_deploy import guards; guards.usable_cores = lambda: 64; "
        "print(guards.max_threads()); guards.check_threads(90)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, preexec_fn=limited)
    bound = int(proc.stdout.split()[0])
    assert 1 <= bound < 100 - guards.THREAD_LIMIT_MARGIN
    assert "ulimit -u" in proc.stderr and "between 1 and" in proc.stderr
    with pytest.raises(RunError, match="between 1 and"):
        guards.check_threads(guards.THREADS_PER_CORE * 64 + 1, RunError)
    assert guards.check_threads(1, RunError) == 1


def test_other_libraries_text_is_summarised_at_a_sentence_or_word():
    from dynet_deploy.errors import summarise

    text = "Weights only load failed. This file can still be loaded, to do so you have two options. " * 3
    short = summarise(text, 120)
    assert short.endswith(". (...)") and len(short) <= 127 and "weights_only=False" not in short
    assert summarise("word " * 100, 50).endswith("word (...)")
    assert summarise("one line\n  two", 100) == "one line two"


def test_force_replaces_a_deploy_folder_from_before_the_marker(A, tmp_path, monkeypatch):  # noqa: F811
    # A folder an earlier version of deploy wrote has no marker, but its report.json is a deploy report.
    monkeypatch.setenv("ROUND3_A", str(A))
    recipe_path = _small_recipe(tmp_path, "in")
    old = tmp_path / "old"
    old.mkdir()
    (old / "report.json").write_text(json.dumps({"recipe": {}, "steps": [], "artifacts": [], "out_dir": str(old)}))
    (old / "model.onnx").write_bytes(b"stale")
    rc, out, err = run_cli(["deploy", str(recipe_path), "-o", str(old), "--force"])
    assert rc == 0, err[-2000:]
    assert (old / OUTPUT_MARKER).is_file() and (old / "model.onnx").read_bytes() != b"stale"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "old"]  # nothing hidden left beside it
