"""The one input-size rule (dynet_deploy.input_size): its order, its conflicts, and the commands that use it."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest
from conftest import SMALL

from dynet_deploy.checkpoint import save_checkpoint
from dynet_deploy.errors import BenchError, DynetDeployError, RecipeError, ValidationError
from dynet_deploy.input_size import GIVEN, GRAPH, resolve_input_size
from dynet_deploy.models import create_model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Three checkpoints of one 1-channel model: metadata input_size 32x40, data set fashion-mnist, nothing."""
    d = tmp_path_factory.mktemp("ckpts")
    model = create_model("dy_resnet18", **SMALL)
    return {
        "recorded": save_checkpoint(model, d / "recorded.safetensors", metadata={"input_size": [32, 40]}),
        "dataset": save_checkpoint(model, d / "dataset.safetensors", metadata={"dataset": "fashion-mnist"}),
        "bare": save_checkpoint(model, d / "bare.safetensors"),
    }


def test_order_given_graph_record_fallback_zoo_default(checkpoints):
    ck = checkpoints["recorded"]
    assert resolve_input_size((20, 24), checkpoint=ck).hw == (20, 24)
    assert resolve_input_size((20, 24), checkpoint=ck).source == GIVEN
    graph = ["N", 1, 36, 36]
    assert resolve_input_size(None, checkpoint=ck, graph_shape=graph).hw == (36, 36)
    assert resolve_input_size(None, checkpoint=ck, graph_shape=graph).source == GRAPH
    dynamic = ["N", 1, "H", "W"]
    size = resolve_input_size(None, checkpoint=ck, graph_shape=dynamic, fallback=(8, 8))
    assert size.hw == (32, 40) and size.recorded
    assert size.note() == "input size 32x40 from the checkpoint's metadata (input_size) (--input-size overrides)"
    ds = resolve_input_size(None, checkpoint=checkpoints["dataset"])
    assert ds.hw == (28, 28) and ds.source == "the checkpoint's data set (fashion-mnist)"
    bare = checkpoints["bare"]
    assert resolve_input_size(None, checkpoint=bare, fallback=(64, 96)).hw == (64, 96)
    assert resolve_input_size(None, checkpoint=bare).hw == (224, 224)  # the zoo entry of dy_resnet18
    assert resolve_input_size(None, model_name="fcn_resnet50").hw == (768, 768)
    assert resolve_input_size(None, model_name="fcn_resnet50", fallback=(64, 96)).hw == (64, 96)
    assert resolve_input_size().hw == (224, 224) and not resolve_input_size().note()


def test_channels_from_recipe_graph_or_checkpoint(checkpoints):
    bare = checkpoints["bare"]
    assert resolve_input_size(None, checkpoint=bare).channels == 1  # the checkpoint's model_args
    assert resolve_input_size(None, model_name="resnet18").channels == 3
    assert resolve_input_size(None, graph_shape=[1, 4, 8, 8]).shape(2) == (2, 4, 8, 8)
    assert resolve_input_size((1, 28, 28), checkpoint=bare).shape(5) == (5, 1, 28, 28)
    with pytest.raises(RecipeError, match="input_shape has 3 channels, the checkpoint's model takes 1; fix it"):
        resolve_input_size((3, 28, 28), checkpoint=bare, given_by="input_shape", error=RecipeError)
    with pytest.raises(ValidationError, match="the graph's input has 3 channels, the checkpoint's model takes 1"):
        resolve_input_size(None, checkpoint=bare, graph_shape=["N", 3, 28, 28], error=ValidationError)


def test_conflicts_and_bad_sizes_are_errors(checkpoints):
    with pytest.raises(ValidationError, match="fixed at 28x28; --input-size 32 32 does not fit"):
        resolve_input_size((32, 32), graph_shape=[1, 1, 28, 28], error=ValidationError)
    with pytest.raises(DynetDeployError, match="two positive sizes H W, got 0 5"):
        resolve_input_size((0, 5))
    with pytest.raises(DynetDeployError, match="rank 3"):
        resolve_input_size(None, graph_shape=[1, 28, 28])


def test_bench_takes_one_size_for_all_models(checkpoints):
    from dynet_deploy.commands.bench import bench_input_size

    args = argparse.Namespace(input_size=None)
    assert bench_input_size(args, ["resnet18", "dy_resnet18"], []) == (224, 224)
    assert bench_input_size(args, [], []) == (224, 224)
    decided = [resolve_input_size(None, checkpoint=checkpoints["recorded"])]
    assert bench_input_size(args, ["resnet18"], decided) == (32, 40)  # zoo models run at the user model's size
    with pytest.raises(BenchError, match="different input sizes"):
        bench_input_size(args, ["resnet18", "fcn_resnet50"], [])
    assert bench_input_size(argparse.Namespace(input_size=[64, 64]), ["resnet18", "fcn_resnet50"], []) == (64, 64)


COMMANDS = ["commands/export.py", "commands/validate.py", "commands/bench.py", "deploy.py"]


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_decides_the_size_through_the_rule(module):
    """Each of export, validate, bench and deploy calls resolve_input_size, and none reads a recorded size itself."""
    source = (Path(__file__).resolve().parents[1] / "dynet_deploy" / module).read_text(encoding="utf-8")
    calls = {
        node.func.id
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert "resolve_input_size" in calls
    assert '"input_size"' not in source and "info.input_size" not in source and "(224, 224)" not in source
