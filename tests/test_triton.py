"""The Triton model repository: every config.pbtxt parses as Triton's inference.ModelConfig (the protobuf that the
tritonclient package ships) and says what the deployment needs: backend, batch, inputs and outputs of the graph,
the native op library in model_operations; the repository is written all or nothing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from triton_serving import other_user_command, serve_as_written, shared_folder
from zoo_exports import fused

from dynet_deploy.errors import TritonError
from dynet_deploy.op.native import ORT_LIBRARY, find_library, ort_library_filename, tensorrt_plugin_filename
from dynet_deploy.triton import (
    CONFIG_FILE,
    ONNX_MODEL_FILE,
    PLAN_MODEL_FILE,
    GraphIO,
    TensorSpec,
    TritonOptions,
    load_model_config_pb2,
    model_config,
    onnx_io,
    parse_config,
    write_model_repository,
)

pytest.importorskip("tritonclient", reason="tritonclient (the test extra) ships Triton's model_config protobuf")
pb2 = load_model_config_pb2()

IO = GraphIO((TensorSpec("input", "TYPE_FP32", (3, 32, 32)),), (TensorSpec("output", "TYPE_FP32", (10,)),), True)


def test_library_filenames():
    assert ort_library_filename() == "libdynet_dynamic_conv_ort.so"
    assert tensorrt_plugin_filename() == "libdynet_dynamic_conv_trt.so"


def test_onnxruntime_config_parses_with_op_library():
    params = {"dynet_deploy.mean": "[0.5]", "dynet_deploy.classes": '["a \\"b\\"", "c"]'}
    text = model_config(
        "m_onnxruntime", "onnxruntime", IO, 16, "KIND_CPU", ["/opt/lib/libdynet_dynamic_conv_ort.so"], parameters=params
    )
    cfg = parse_config(text)
    assert cfg.name == "m_onnxruntime" and cfg.backend == "onnxruntime"
    assert cfg.max_batch_size == 16
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("input", pb2.TYPE_FP32, [3, 32, 32])]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [("output", pb2.TYPE_FP32, [10])]
    assert list(cfg.model_operations.op_library_filename) == ["/opt/lib/libdynet_dynamic_conv_ort.so"]
    # Triton's documented defaults: dynamic_batching { } (no preferred_batch_size, which its docs advise against
    # for the onnxruntime backend, and no queue delay)
    assert cfg.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert (
        list(cfg.dynamic_batching.preferred_batch_size) == [] and cfg.dynamic_batching.max_queue_delay_microseconds == 0
    )
    assert cfg.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU and cfg.instance_group[0].count == 1
    assert {k: v.string_value for k, v in cfg.parameters.items()} == params
    assert not cfg.HasField("optimization")


def test_gpu_instances_with_onnxruntimes_tensorrt_accelerator():
    text = model_config(
        "m",
        "onnxruntime",
        IO,
        8,
        "KIND_GPU",
        ["/l/lib.so"],
        gpu_accelerator="tensorrt",
        accelerator_parameters={"trt_extra_plugin_lib_paths": "/l/libdynet_dynamic_conv_trt.so"},
    )
    cfg = parse_config(text)
    assert cfg.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
    (acc,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt" and dict(acc.parameters) == {
        "trt_extra_plugin_lib_paths": "/l/libdynet_dynamic_conv_trt.so"
    }
    # the CUDA execution provider is the backend's default on KIND_GPU: nothing to write
    cuda = parse_config(model_config("m", "onnxruntime", IO, 8, "KIND_GPU", ["/l/lib.so"], gpu_accelerator="cuda"))
    assert cuda.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU and not cuda.HasField("optimization")
    with pytest.raises(TritonError, match="runs on KIND_GPU"):
        model_config("m", "onnxruntime", IO, 8, "KIND_CPU", ["/l/lib.so"], gpu_accelerator="tensorrt")


def test_tensorrt_config_parses_without_model_operations():
    cfg = parse_config(model_config("m_tensorrt", "tensorrt", IO, 8, "KIND_GPU"))
    assert cfg.backend == "tensorrt" and cfg.max_batch_size == 8
    assert not cfg.HasField("model_operations")
    assert cfg.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU


def test_fixed_batch_graph_has_no_triton_batching():
    io = GraphIO((TensorSpec("x", "TYPE_FP16", (2, 3, 8, 8)),), (TensorSpec("y", "TYPE_FP16", (2, 4)),), False)
    cfg = parse_config(model_config("fixed", "onnxruntime", io, 8, "KIND_CPU"))
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [2, 3, 8, 8]
    assert cfg.input[0].data_type == pb2.TYPE_FP16
    assert cfg.WhichOneof("scheduling_choice") is None


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(name="bad name"), "may hold only"),
        (dict(backend="pytorch"), "unknown Triton backend"),
        (dict(instance_kind="KIND_TPU"), "instance kind"),
        (dict(max_batch_size=0), "max_batch_size must be >= 1"),
    ],
)
def test_config_arguments_are_checked(kw, words):
    args = dict(name="m", backend="onnxruntime", io=IO, max_batch_size=8, instance_kind="KIND_CPU") | kw
    with pytest.raises(TritonError, match=words):
        model_config(**args)


def test_a_broken_config_does_not_parse():
    with pytest.raises(TritonError, match="does not parse"):
        parse_config('name: "m"\nmax_batch_size: "eight"\n')
    with pytest.raises(TritonError, match="does not parse"):
        parse_config('name: "m"\nop_library: "x.so"\n')


def _tiny_onnx(path, batch):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3, 4, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [1], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_onnx_io_reads_dynamic_and_fixed_batch(tmp_path):
    dyn = onnx_io(_tiny_onnx(tmp_path / "d.onnx", "N"))
    assert dyn.batch_dynamic and dyn.inputs == (TensorSpec("x", "TYPE_FP32", (3, 4, 4)),)
    fixed = onnx_io(_tiny_onnx(tmp_path / "f.onnx", 2))
    assert not fixed.batch_dynamic and fixed.outputs == (TensorSpec("y", "TYPE_FP32", (2, 3, 4, 4)),)


@pytest.fixture(scope="module")
def fused_graph():
    path, report = fused("dy_resnet18", "feature")
    assert report.matched > 0
    return path


@pytest.fixture(scope="module")
def op_library():
    lib = find_library(ORT_LIBRARY)
    if lib is None:
        pytest.skip(f"{ORT_LIBRARY} was not built (make plugins): the repository's config names it")
    return lib.resolve()


@pytest.fixture(scope="module")
def shared():
    """A folder a server running as another user can enter; the repositories are written inside it."""
    folder = shared_folder("dynet-triton-tests-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _parse_all(root):
    configs = sorted(root.glob(f"*/{CONFIG_FILE}"))
    return {p.parent.name: parse_config(p.read_text()) for p in configs}


def _modes(root) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")]}


def test_repository_of_a_fused_graph(tmp_path, fused_graph, op_library):
    repo = write_model_repository(
        tmp_path / "triton", "dyr18", fused_graph, None, max_batch_size=8, engine_skipped_reason="no TensorRT here"
    )
    configs = _parse_all(tmp_path / "triton")
    assert list(configs) == ["dyr18_onnxruntime"] == list(repo.models)
    cfg = configs["dyr18_onnxruntime"]
    graph = onnx.load(str(fused_graph))
    assert [i.name for i in cfg.input] == [i.name for i in graph.graph.input]
    assert [o.name for o in cfg.output] == [o.name for o in graph.graph.output]
    assert cfg.max_batch_size == 8 and list(cfg.input[0].dims) == [3, 32, 32]
    # the library's absolute path on this machine: dlopen finds it whatever the server's folder and environment
    assert list(cfg.model_operations.op_library_filename) == [str(op_library)]
    assert list(cfg.dynamic_batching.preferred_batch_size) == []
    model_file = tmp_path / "triton" / "dyr18_onnxruntime" / "1" / ONNX_MODEL_FILE
    assert model_file.read_bytes() == fused_graph.read_bytes()
    assert any(n.op_type == "DyNetDynamicConv2d" for n in onnx.load(str(model_file)).graph.node)
    assert repo.skipped == {"dyr18_tensorrt": "no TensorRT here"}
    assert "tritonserver --model-repository=" in repo.launch_command and "LD_LIBRARY_PATH" not in repo.launch_command
    assert "tensorrt" not in repo.launch_command


def test_repository_with_install_dirs(tmp_path, fused_graph):
    repo = write_model_repository(tmp_path / "t", "m", fused_graph, max_batch_size=4, op_library_dir="/opt/dynet/lib/")
    cfg = _parse_all(tmp_path / "t")["m_onnxruntime"]
    assert list(cfg.model_operations.op_library_filename) == ["/opt/dynet/lib/libdynet_dynamic_conv_ort.so"]
    assert "LD_LIBRARY_PATH" not in repo.launch_command


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_repository_gets_the_umasks_permissions(fused_graph, op_library, shared, mask):
    """Folders 0777 and files 0666 (the copied library 0777) less the umask, as any the user creates: never
    mkdtemp's 0700, so a server running as another user can read what was written."""
    root = shared / f"perm{mask:o}"
    with umask(mask):
        write_model_repository(root, "m", fused_graph, max_batch_size=2, options=TritonOptions(copy_op_library=True))
    modes = _modes(root)
    lib = f"m_onnxruntime/{ORT_LIBRARY}"
    assert modes.pop(lib) == 0o777 & ~mask
    assert modes == {
        ".": 0o777 & ~mask,
        "m_onnxruntime": 0o777 & ~mask,
        "m_onnxruntime/1": 0o777 & ~mask,
        "m_onnxruntime/config.pbtxt": 0o666 & ~mask,
        "m_onnxruntime/1/model.onnx": 0o666 & ~mask,
    }


def test_copy_op_library_names_the_copy(fused_graph, op_library, shared):
    root = shared / "copied"
    repo = write_model_repository(root, "m", fused_graph, max_batch_size=2, options=TritonOptions(copy_op_library=True))
    copy = root / "m_onnxruntime" / ORT_LIBRARY
    assert copy.read_bytes() == op_library.read_bytes()
    cfg = _parse_all(root)["m_onnxruntime"]
    assert list(cfg.model_operations.op_library_filename) == [str(copy)] == [repo.op_library]
    served = write_model_repository(
        shared / "copied2",
        "m",
        fused_graph,
        max_batch_size=2,
        options=TritonOptions(copy_op_library=True, served_path="/models"),
    )  # a server that mounts the repository at /models (docker -v ...:/models)
    cfg = _parse_all(shared / "copied2")["m_onnxruntime"]
    assert (
        list(cfg.model_operations.op_library_filename)
        == [f"/models/m_onnxruntime/{ORT_LIBRARY}"]
        == [served.op_library]
    )


@pytest.mark.parametrize(
    "options, words",
    [
        (TritonOptions(op_library_dir="lib"), "'lib' is relative; .* absolute folder .* e.g. /opt/dynet/lib"),
        (TritonOptions(op_library_dir="./build"), "is relative"),
        (TritonOptions(plugin_library_dir="plugins/"), "is relative"),
        (TritonOptions(copy_op_library=True, served_path="models"), "is relative"),
        (TritonOptions(copy_op_library=True, op_library_dir="/opt/lib"), "give one of them"),
        (TritonOptions(served_path="/models"), "only written with --copy-op-library"),
        (TritonOptions(instance_kind="tpu"), "instance kind 'tpu'"),
        (TritonOptions(gpu_accelerator="tensorrt"), "add --instance-kind gpu"),
    ],
)
def test_options_a_server_cannot_use_are_refused(tmp_path, fused_graph, options, words):
    with pytest.raises(TritonError, match=words):
        write_model_repository(tmp_path / "t", "m", fused_graph, max_batch_size=8, options=options)
    assert list(tmp_path.iterdir()) == []


def test_tensorrt_accelerator_needs_the_plugins_absolute_path(tmp_path, fused_graph):
    from dynet_deploy.op.native import tensorrt_plugin_path

    if tensorrt_plugin_path() is not None:
        pytest.skip("the TensorRT plugin library is built here: the config names its absolute path")
    opts = TritonOptions(instance_kind="gpu", gpu_accelerator="tensorrt")
    with pytest.raises(TritonError, match="give --plugin-dir with the absolute folder"):
        write_model_repository(tmp_path / "t", "m", fused_graph, max_batch_size=8, options=opts)
    assert list(tmp_path.iterdir()) == []


def test_gpu_instances_name_the_tensorrt_plugin_for_onnxruntimes_tensorrt_accelerator(tmp_path, fused_graph):
    opts = TritonOptions(instance_kind="gpu", gpu_accelerator="tensorrt", plugin_library_dir="/opt/trt")
    write_model_repository(tmp_path / "t", "m", fused_graph, max_batch_size=8, options=opts)
    cfg = _parse_all(tmp_path / "t")["m_onnxruntime"]
    assert cfg.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
    (acc,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt"
    assert acc.parameters["trt_extra_plugin_lib_paths"] == f"/opt/trt/{tensorrt_plugin_filename()}"


def test_normalisation_and_classes_travel_in_the_config(tmp_path, fused_graph):
    from dynet_deploy.export import get_metadata, set_metadata
    from dynet_deploy.model_card import serving_metadata

    config = {
        "model_args": {"num_classes": 10, "in_chans": 3},
        "metadata": {"dataset": "fashion-mnist", "normalisation": {"mean": 0.286, "std": 0.353}},
    }
    meta = serving_metadata(config)
    assert json.loads(meta["dynet_deploy.mean"]) == [0.286] * 3 and json.loads(meta["dynet_deploy.std"]) == [0.353] * 3
    assert json.loads(meta["dynet_deploy.classes"])[0] == "T-shirt/top" and meta["dynet_deploy.num_classes"] == "10"
    proto = onnx.load(str(fused_graph))
    set_metadata(proto, {**get_metadata(proto), **meta})
    onnx.save(proto, str(tmp_path / "m.onnx"))
    repo = write_model_repository(tmp_path / "t", "m", tmp_path / "m.onnx", max_batch_size=8)
    cfg = _parse_all(tmp_path / "t")["m_onnxruntime"]
    assert {k: v.string_value for k, v in cfg.parameters.items()} == meta == repo.parameters
    served = onnx.load(str(tmp_path / "t" / "m_onnxruntime" / "1" / ONNX_MODEL_FILE))
    assert {k: v for k, v in get_metadata(served).items() if k in meta} == meta


def test_a_checkpoint_without_them_adds_nothing_guessed():
    from dynet_deploy.model_card import serving_metadata

    assert serving_metadata({"model_args": {"num_classes": 7}}) == {"dynet_deploy.num_classes": "7"}
    assert serving_metadata({}) == {}
    # classes that do not match the model's class count are left out
    odd = {"model_args": {"num_classes": 3}, "metadata": {"dataset": "digits"}}
    assert "dynet_deploy.classes" not in serving_metadata(odd)


def test_every_repository_serves_as_written_as_another_user(fused_graph, op_library, shared):
    """Each way of writing a repository, loaded as Triton's onnxruntime backend does (config parsed with
    tritonclient's model_config protobuf, each op_library_filename registered as written, 1/model.onnx run on a
    batch of max_batch_size) by a process running as another user, from /, with no library path: the result
    matches the PyTorch model."""
    import torch
    from zoo_exports import small_model

    prefix, why = other_user_command()
    if prefix is None:
        pytest.skip(f"cannot run the server's side as another user: {why}")
    installed = shared / "opt-dynet-lib"
    installed.mkdir(mode=0o755)
    shutil.copyfile(op_library, installed / ORT_LIBRARY)
    os.chmod(installed / ORT_LIBRARY, 0o755)
    variants = {
        "default": TritonOptions(),
        "copied": TritonOptions(copy_op_library=True),
        "installed": TritonOptions(op_library_dir=str(installed)),
        "gpu-cuda": TritonOptions(instance_kind="gpu"),
        "gpu-tensorrt": TritonOptions(instance_kind="gpu", gpu_accelerator="tensorrt", plugin_library_dir="/opt/trt"),
    }
    x = np.random.default_rng(5).standard_normal((4, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ref = small_model("dy_resnet18")(torch.from_numpy(x)).numpy()
    with umask(0o022):
        for label, opts in variants.items():
            root = shared / f"serve-{label}"
            write_model_repository(root, "m", fused_graph, max_batch_size=4, options=opts)
            cfg = _parse_all(root)["m_onnxruntime"]
            assert cfg.max_batch_size == 4
            y = serve_as_written(root / "m_onnxruntime", x)
            err = float(np.abs(y - ref).max())
            assert y.shape == ref.shape and err <= 1e-4, f"{label}: max-abs {err}"


@pytest.mark.tensorrt
def test_repository_with_a_real_engine(tmp_path, fused_graph):
    from dynet_deploy.backends.tensorrt import tensorrt_available

    ok, why = tensorrt_available()
    if not ok:
        pytest.skip(f"TensorRT is absent ({why}): no engine to put on Triton's tensorrt backend")
    from dynet_deploy.backends.tensorrt import Profile, build_engine
    from dynet_deploy.op.native import tensorrt_plugin_path

    if tensorrt_plugin_path() is None:
        pytest.skip("the TensorRT plugin library was not built")
    engine = tmp_path / "m.engine"
    build_engine(fused_graph, engine, profile=Profile(batch=(1, 4, 8)))
    repo = write_model_repository(tmp_path / "t", "m", fused_graph, engine, max_batch_size=8)
    cfg = _parse_all(tmp_path / "t")["m_tensorrt"]
    assert cfg.backend == "tensorrt" and cfg.max_batch_size == 8
    assert list(cfg.dynamic_batching.preferred_batch_size) == []  # one optimization profile: Triton's defaults
    assert (tmp_path / "t" / "m_tensorrt" / "1" / PLAN_MODEL_FILE).read_bytes() == engine.read_bytes()
    assert f"plugins={tensorrt_plugin_path().resolve()}" in repo.launch_command
