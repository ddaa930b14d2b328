"""Deployment recipes: the bundled one loads and agrees with the stages' defaults; every kind of wrong field is a
RecipeError that names the field (and the CLI prints it as one line, exit 1)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from dynet_deploy.cli import main
from dynet_deploy.errors import RecipeError
from dynet_deploy.recipe import BatchProfile, bundled_recipe_path, load_recipe, load_recipe_dict

GOOD = {
    "checkpoint": "dy_resnet18_fmnist",
    "input_shape": [1, 28, 28],
    "profile": {"min": 1, "opt": 4, "max": 8},
    "precisions": {"fp32": {"max_abs": 1e-4, "rel": 1e-5}},
}


def _with(path: str, value, base=GOOD):
    """A copy of ``base`` with the dotted ``path`` set to ``value`` (``...`` deletes it)."""
    d = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node.setdefault(p, {})
    if value is ...:
        node.pop(last)
    else:
        node[last] = value
    return d


def _error(data) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe_dict(data)
    return str(info.value)


def test_bundled_recipe_loads_and_round_trips():
    r = load_recipe(bundled_recipe_path())
    assert r.name == "dy_resnet18_fmnist"
    assert r.checkpoint_path().is_file()
    assert r.input_shape == (1, 28, 28)
    assert r.portable.form == "feature" and r.portable.dynamic
    assert r.fuse_from.form == "kernel" and r.fuse_from.batch == 1
    assert r.tolerance("fp32").max_abs == 1e-4 and r.tolerance("fp32").rel == 1e-5
    assert r.agreement("fp32") == 1.0 and r.agreement("fp16") == 0.999
    assert r.dataset.name == "fashion-mnist" and r.dataset.fallback == "digits"
    again = load_recipe_dict(json.loads(json.dumps(r.to_dict())))
    assert again.to_dict() == r.to_dict()


def test_defaults_fill_optional_sections():
    r = load_recipe_dict(_with("profile", ...))
    assert r.profile == BatchProfile(1, 8, 8)
    assert r.dataset is None and r.validate.batch_sizes == (1, 4, 7) and r.latency.batch == 1
    assert r.name == "dy_resnet18_fmnist"


@pytest.mark.parametrize(
    "data, expected",
    [
        (_with("profil", {"min": 1}), "unknown field 'profil'; did you mean 'profile'?"),
        (_with("profile.mid", 2), "unknown field 'profile.mid'"),
        (
            _with("dataset", {"name": "digits", "agrement": {}}),
            "unknown field 'dataset.agrement'; did you mean 'agreement'?",
        ),
        (_with("checkpoint", ...), "missing required field 'checkpoint'"),
        (_with("profile.opt", ...), "missing required field 'profile.opt'"),
    ],
)
def test_unknown_and_missing_fields(data, expected):
    assert expected in _error(data)


@pytest.mark.parametrize(
    "data, field, kind",
    [
        (_with("profile.opt", "4"), "profile.opt", "must be an integer, got a string"),
        (_with("profile.max", 8.0), "profile.max", "must be an integer, got a number"),
        (_with("profile.min", True), "profile.min", "must be an integer, got a boolean"),
        (_with("input_shape", "1x28x28"), "input_shape", "must be a list of integers"),
        (_with("input_shape", [1, 28]), "input_shape", "must be [C, H, W]"),
        (_with("input_shape", [1, 0, 28]), "input_shape[1]", "must be >= 1"),
        (_with("checkpoint", 3), "checkpoint", "must be a string"),
        (_with("precisions", [1e-4, 1e-5]), "precisions", "must be an object, got a list"),
        (
            _with("export.portable.form", "features"),
            "export.portable.form",
            "unknown value 'features'; did you mean 'feature'?",
        ),
        (
            _with("export.fuse_from", {"form": "kernel", "batch": "dynamic"}),
            "export.fuse_from.batch",
            'cannot be "dynamic"',
        ),
        (_with("export.opset", 13), "export.opset", "must be >= 17"),
        (_with("validate.batch_sizes", [1, 16]), "validate.batch_sizes", "outside the profile's batch range 1..8"),
        (_with("latency.batch", 9), "latency.batch", "outside the profile's batch range"),
    ],
)
def test_wrong_types_and_ranges(data, field, kind):
    msg = _error(data)
    assert f"field {field!r}" in msg and kind in msg


@pytest.mark.parametrize(
    "profile, words",
    [
        ({"min": 4, "opt": 2, "max": 8}, "min 4 > opt 2"),
        ({"min": 1, "opt": 16, "max": 8}, "opt 16 > max 8"),
        ({"min": 0, "opt": 1, "max": 8}, "must be >= 1"),
    ],
)
def test_profile_order(profile, words):
    msg = _error(_with("profile", profile))
    assert "'profile" in msg and words in msg


@pytest.mark.parametrize("value", [0, -1e-4, math.nan, math.inf, "1e-4", None])
def test_bad_max_abs(value):
    assert "field 'precisions.fp32.max_abs'" in _error(_with("precisions.fp32.max_abs", value))


@pytest.mark.parametrize("value", [0, 1.0, 2.0, -1e-5])
def test_bad_relative_tolerance(value):
    assert "field 'precisions.fp32.rel'" in _error(_with("precisions.fp32.rel", value))


def test_precisions_need_fp32_and_known_names():
    assert "needs 'fp32'" in _error(_with("precisions", {"fp16": {"max_abs": 5e-2, "rel": 1e-2}}))
    assert "unknown field 'precisions.int8'" in _error(_with("precisions.int8", {"max_abs": 1, "rel": 0.1}))
    assert "missing required field 'precisions.fp32.rel'" in _error(_with("precisions.fp32", {"max_abs": 1e-4}))


def test_dataset_checks():
    msg = _error(_with("dataset", {"name": "imagenet"}))
    assert "field 'dataset.name'" in msg and "unknown data set 'imagenet'" in msg and "fashion-mnist" in msg
    assert "did you mean 'fashion-mnist'" in _error(_with("dataset", {"name": "fashion_mnist"}))
    assert "field 'dataset.fallback'" in _error(_with("dataset", {"name": "fashion-mnist", "fallback": "cifar10"}))
    assert "field 'dataset.split'" in _error(_with("dataset", {"name": "digits", "split": "val"}))
    assert "fraction in (0, 1]" in _error(_with("dataset", {"name": "digits", "agreement": {"fp32": 1.5}}))
    msg = _error(_with("dataset", {"name": "digits", "agreement": {"fp16": 0.99}}))
    assert "field 'dataset.agreement.fp16'" in msg and "does not list" in msg


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "none.json")
    with pytest.raises(RecipeError, match="is a directory"):
        load_recipe(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"checkpoint": "x",\n "input_shape": [1, 28, 28],,}')
    with pytest.raises(RecipeError, match=r"bad.json is not valid JSON: .* line 2"):
        load_recipe(bad)
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps(_with("profile.optt", 4)))
    with pytest.raises(RecipeError, match=r"recipe .*typo.json: unknown field 'profile.optt'; did you mean 'opt'\?"):
        load_recipe(typo)


def test_checkpoint_path_resolves_next_to_the_recipe(tmp_path):
    ckpt = tmp_path / "models" / "m.safetensors"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"")
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_with("checkpoint", "models/m.safetensors")))
    assert load_recipe(path).checkpoint_path() == ckpt
    path.write_text(json.dumps(_with("checkpoint", "models/missing.safetensors")))
    with pytest.raises(RecipeError, match="neither a bundled checkpoint"):
        load_recipe(path).checkpoint_path()


def test_cli_prints_one_line_error(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_with("profile", {"min": 8, "opt": 4, "max": 8})))
    assert main(["deploy", str(path), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error (recipe): ") and "min 8 > opt 4" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


# ---- build and validate take --recipe ----------------------------------------------------------------------


def _build_profile(*argv):
    from dynet_deploy.cli import build_parser
    from dynet_deploy.commands.build import profile_from_args

    return profile_from_args(build_parser().parse_args(["build", "m.plugin.onnx", *argv])).batch


def test_bundled_profile_is_builds_default():
    """``dynet-deploy build`` without flags builds the profile the bundled recipe states."""
    assert _build_profile() == load_recipe(bundled_recipe_path()).profile.as_tuple() == (1, 8, 8)


def test_build_takes_the_recipe_profile_and_flags_override_it(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_with("profile", {"min": 1, "opt": 4, "max": 16})))
    assert _build_profile("--recipe", str(path)) == (1, 4, 16)
    assert _build_profile("--recipe", str(path), "--opt-batch", "8") == (1, 8, 16)
    assert _build_profile("--recipe", str(path), "--max-batch", "32") == (1, 32, 32)
    assert _build_profile("--recipe", str(path), "--min-batch", "2") == (2, 4, 16)
    path.write_text(json.dumps(_with("profile", {"min": 2, "opt": 1, "max": 16})))
    with pytest.raises(RecipeError, match="min 2 > opt 1"):
        _build_profile("--recipe", str(path))


@pytest.fixture(scope="module")
def bundled_onnx(tmp_path_factory):
    from dynet_deploy.checkpoint import load_checkpoint
    from dynet_deploy.export import export_onnx

    recipe = load_recipe(bundled_recipe_path())
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(load_checkpoint(recipe.checkpoint_path()), path, (1, *recipe.input_shape))
    return recipe.checkpoint_path(), path


def test_validate_takes_the_recipe_tolerance(tmp_path, bundled_onnx, capsys):
    ckpt, onnx_path = bundled_onnx
    out = tmp_path / "v"
    out.mkdir()
    args = ["validate", str(ckpt), str(onnx_path), "--out-dir", str(out), "--json", "--recipe"]
    assert main([*args, str(bundled_recipe_path())]) == 0
    report = json.loads((out / "report.json").read_text())["random_inputs"]
    assert report["tolerance"] == {"max_abs": 1e-4, "rel": 1e-5} and report["batch_sizes"] == [1, 4, 7]
    tight = tmp_path / "tight.json"
    tight.write_text(json.dumps(_with("precisions.fp32", {"max_abs": 1e-12, "rel": 1e-12})))
    capsys.readouterr()
    assert main([*args, str(tight)]) == 1  # the same graph fails a tolerance it cannot meet
    report = json.loads((out / "report.json").read_text())["random_inputs"]
    assert report["tolerance"] == {"max_abs": 1e-12, "rel": 1e-12} and not report["passed"]


def test_bundled_recipes_and_assets_are_found_through_the_package():
    """What an installed wheel needs: the bundled recipe, its checkpoint and the native-library folder all resolve
    inside the imported package (no path into the checkout around it)."""
    import dynet_deploy
    from dynet_deploy.op import native
    from dynet_deploy.recipe import bundled_recipe_path, load_recipe

    package = Path(dynet_deploy.__file__).resolve().parent
    recipe_path = bundled_recipe_path()
    assert recipe_path.resolve().parent == package / "recipes"
    recipe = load_recipe(recipe_path)
    assert recipe.checkpoint_path().resolve().parent == package / "assets"
    dirs = native.search_dirs()
    assert package / "lib" in dirs
    assert dirs.index(package / "lib") < dirs.index(native.REPO_ROOT / "build")
