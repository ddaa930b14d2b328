"""The Triton model repository: every config.pbtxt parses as Triton's inference.ModelConfig (the protobuf that the
tritonclient package ships) and says what the deployment needs: backend, batch, inputs and outputs of the graph,
the native op library in model_operations; the repository is written all or nothing."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper
from zoo_exports import fused

from dynet_deploy.errors import TritonError
from dynet_deploy.op.native import ort_library_filename, tensorrt_plugin_filename
from dynet_deploy.triton import (
    CONFIG_FILE,
    ONNX_MODEL_FILE,
    PLAN_MODEL_FILE,
    GraphIO,
    TensorSpec,
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
    text = model_config("m_onnxruntime", "onnxruntime", IO, 16, "KIND_CPU", [ort_library_filename()], (4, 16, 32))
    cfg = parse_config(text)
    assert cfg.name == "m_onnxruntime" and cfg.backend == "onnxruntime"
    assert cfg.max_batch_size == 16
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("input", pb2.TYPE_FP32, [3, 32, 32])]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [("output", pb2.TYPE_FP32, [10])]
    assert list(cfg.model_operations.op_library_filename) == ["libdynet_dynamic_conv_ort.so"]
    assert cfg.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 16]  # 32 > max_batch_size is dropped
    assert cfg.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU and cfg.instance_group[0].count == 1


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


def _parse_all(root):
    configs = sorted(root.glob(f"*/{CONFIG_FILE}"))
    return {p.parent.name: parse_config(p.read_text()) for p in configs}


def test_repository_of_a_fused_graph(tmp_path, fused_graph):
    repo = write_model_repository(
        tmp_path / "triton",
        "dyr18",
        fused_graph,
        None,
        max_batch_size=8,
        preferred_batch_sizes=(8,),
        engine_skipped_reason="no TensorRT here",
    )
    configs = _parse_all(tmp_path / "triton")
    assert list(configs) == ["dyr18_onnxruntime"] == list(repo.models)
    cfg = configs["dyr18_onnxruntime"]
    graph = onnx.load(str(fused_graph))
    assert [i.name for i in cfg.input] == [i.name for i in graph.graph.input]
    assert [o.name for o in cfg.output] == [o.name for o in graph.graph.output]
    assert cfg.max_batch_size == 8 and list(cfg.input[0].dims) == [3, 32, 32]
    assert list(cfg.model_operations.op_library_filename) == [ort_library_filename()]
    model_file = tmp_path / "triton" / "dyr18_onnxruntime" / "1" / ONNX_MODEL_FILE
    assert model_file.read_bytes() == fused_graph.read_bytes()
    assert any(n.op_type == "DyNetDynamicConv2d" for n in onnx.load(str(model_file)).graph.node)
    assert repo.skipped == {"dyr18_tensorrt": "no TensorRT here"}
    assert "tritonserver --model-repository=" in repo.launch_command and "LD_LIBRARY_PATH" in repo.launch_command
    assert "tensorrt" not in repo.launch_command


def test_repository_with_install_dirs(tmp_path, fused_graph):
    repo = write_model_repository(tmp_path / "t", "m", fused_graph, max_batch_size=4, op_library_dir="/opt/dynet/lib/")
    cfg = _parse_all(tmp_path / "t")["m_onnxruntime"]
    assert list(cfg.model_operations.op_library_filename) == ["/opt/dynet/lib/libdynet_dynamic_conv_ort.so"]
    assert "LD_LIBRARY_PATH" not in repo.launch_command


def test_repository_is_all_or_nothing(tmp_path, fused_graph):
    with pytest.raises(TritonError, match="engine .* not found"):
        write_model_repository(tmp_path / "t", "m", fused_graph, tmp_path / "missing.engine", max_batch_size=8)
    assert list(tmp_path.iterdir()) == []  # no repository, no staging folder
    (tmp_path / "t").mkdir()
    with pytest.raises(TritonError, match="already exists"):
        write_model_repository(tmp_path / "t", "m", fused_graph, max_batch_size=8)


def test_repository_needs_the_fused_graph(tmp_path):
    with pytest.raises(TritonError, match="no DyNetDynamicConv2d node"):
        write_model_repository(tmp_path / "t", "m", _tiny_onnx(tmp_path / "p.onnx", "N"), max_batch_size=8)
    assert not (tmp_path / "t").exists()


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
    assert (tmp_path / "t" / "m_tensorrt" / "1" / PLAN_MODEL_FILE).read_bytes() == engine.read_bytes()
    assert f"plugins=$DYNET_LIB_DIR/{tensorrt_plugin_filename()}" in repo.launch_command
