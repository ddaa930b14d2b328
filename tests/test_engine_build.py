"""Engine building: the fp16 ONNX conversion (runs anywhere), the CLI without TensorRT, and TensorRT builds
(marked ``tensorrt``; skipped with the reason when ``import tensorrt`` fails or no GPU is present)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from dynet_deploy.backends.tensorrt import builder as engine_build
from dynet_deploy.errors import BuildError
from dynet_deploy.op import native as plugin_lib
from dynet_deploy.op import spec

PLUGIN_DOMAIN = spec.OP_DOMAIN


def plugin_model(c_in=8, c_out=12, k=6, bias_bank=True, bias=True, per_channel=True, seed=0):
    """A CPM (pool, FC, sigmoid) feeding one DyNetDynamicConv2d node, dynamic N/H/W, like 'dynet-deploy fuse' emits."""
    rng = np.random.default_rng(seed)
    c_c = c_out if per_channel else 1
    inits = [
        nh.from_array((rng.standard_normal((c_c * k, c_in)) * 0.3).astype(np.float32), "fc_w"),
        nh.from_array(rng.standard_normal((c_c * k,)).astype(np.float32), "fc_b"),
        nh.from_array(np.array([0, c_c, k], np.int64), "coeff_shape"),
        nh.from_array((rng.standard_normal((k, c_out, c_in, 3, 3)) * 0.2).astype(np.float32), "weight"),
    ]
    conv_inputs = ["x", "coeff", "weight"]
    if bias_bank:
        inits.append(nh.from_array(rng.standard_normal((k, c_out)).astype(np.float32), "bias_bank"))
        conv_inputs.append("bias_bank")
    if bias:
        inits.append(nh.from_array(rng.standard_normal((c_out,)).astype(np.float32), "bias"))
        conv_inputs.append("bias")
    nodes = [
        oh.make_node("GlobalAveragePool", ["x"], ["gap"]),
        oh.make_node("Flatten", ["gap"], ["flat"]),
        oh.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
        oh.make_node("Sigmoid", ["logits"], ["sig"]),
        oh.make_node("Reshape", ["sig", "coeff_shape"], ["coeff"]),
        spec.make_node(
            conv_inputs,
            ["y"],
            name="dynamic_conv_0",
            **spec.attributes(pads=(1, 1, 1, 1), activation="relu", has_bias_bank=bias_bank, has_bias=bias),
        ),
    ]
    graph = oh.make_graph(
        nodes,
        "dyconv",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c_in, "H", "W"])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c_out, "H", "W"])],
        inits,
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid(PLUGIN_DOMAIN, 1)])
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize(
    "bias_bank, bias, per_channel", [(True, True, True), (False, False, False), (True, False, True)]
)
def test_fp16_conversion_keeps_the_plugin_node(tmp_path, bias_bank, bias, per_channel):
    model = plugin_model(bias_bank=bias_bank, bias=bias, per_channel=per_channel)
    dst = tmp_path / "model.plugin.fp16.onnx"
    converted = engine_build.convert_onnx_to_fp16(model, dst)
    assert dst.is_file()
    reloaded = onnx.load(str(dst))
    onnx.checker.check_model(reloaded)
    nodes = [n for n in reloaded.graph.node if n.op_type == "DyNetDynamicConv2d"]
    assert len(nodes) == 1
    node = nodes[0]
    assert node.domain == PLUGIN_DOMAIN
    attrs = {a.name: oh.get_attribute_value(a) for a in node.attribute}
    assert attrs["has_bias_bank"] == int(bias_bank) and attrs["has_bias"] == int(bias) and attrs["activation"] == 1
    assert attrs["plugin_version"] == b"1"
    assert len(node.input) == 3 + int(bias_bank) + int(bias)  # positional optional inputs unchanged
    # Every input of the plugin node is fp16, weight/bias_bank/bias as fp16 initializers with the same values.
    types = engine_build.tensor_elem_types(reloaded)
    for name in node.input:
        assert types[name] == TensorProto.FLOAT16, name
    inits16 = {i.name: nh.to_array(i) for i in reloaded.graph.initializer}
    inits32 = {i.name: nh.to_array(i) for i in model.graph.initializer}
    w16 = inits16[node.input[2]]
    assert w16.dtype == np.float16
    np.testing.assert_allclose(w16.astype(np.float32), inits32["weight"], rtol=1e-3, atol=1e-4)
    # keep_io_types: callers still feed and read fp32.
    assert reloaded.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert reloaded.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert converted.graph.node  # the in-memory model is returned too


def test_fp16_check_rejects_a_mixed_dtype_plugin_node():
    model = plugin_model()
    converted = engine_build.convert_onnx_to_fp16(model)
    # Put one fp32 initializer back: the plugin takes one dtype for all inputs.
    for init in converted.graph.initializer:
        if init.name == "bias":
            init.CopyFrom(nh.from_array(np.zeros(12, np.float32), "bias"))
    with pytest.raises(BuildError, match="input 'bias' is FLOAT"):
        engine_build.check_plugin_inputs_fp16(converted)


def test_profile_shapes():
    p = engine_build.Profile(batch=(1, 8, 32), height=(64, 128, 256), width=(64, 256, 512))
    assert p.shapes_for("x", (-1, 3, -1, -1)) == ((1, 3, 64, 64), (8, 3, 128, 256), (32, 3, 256, 512))
    assert engine_build.Profile(batch=(1, 4, 8)).shapes_for("x", (-1, 3, 32, 32)) == (
        (1, 3, 32, 32),
        (4, 3, 32, 32),
        (8, 3, 32, 32),
    )
    with pytest.raises(BuildError, match="dynamic dim 2"):
        engine_build.Profile(batch=(1, 1, 1)).shapes_for("x", (-1, 3, -1, -1))
    with pytest.raises(BuildError, match="min <= opt <= max"):
        engine_build.Profile(batch=(4, 2, 8))


def _has_tensorrt() -> tuple[bool, str]:
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return False, str(exc)
    return True, ""


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dynet_deploy.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_build_without_tensorrt_says_so(tmp_path):
    present, _ = _has_tensorrt()
    if present:
        pytest.skip("TensorRT is installed here; this checks the message on machines without it")
    onnx_path = tmp_path / "model.plugin.onnx"
    onnx.save(plugin_model(), str(onnx_path))
    engine = tmp_path / "model.engine"
    proc = _cli("build", str(onnx_path), "-o", str(engine), "--max-batch", "4")
    assert proc.returncode == 1
    assert "TensorRT is not installed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not engine.exists()
    assert not list(tmp_path.glob(".model.engine.*"))  # nothing half-written


def test_cli_build_reports_a_missing_onnx(tmp_path):
    proc = _cli("build", str(tmp_path / "absent.onnx"))
    assert proc.returncode == 1
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_build_help_lists_the_profile_options():
    proc = _cli("build", "--help")
    assert proc.returncode == 0
    for opt in ("--min-batch", "--max-batch", "--max-hw", "--fp16", "--timing-cache", "--plugin-lib"):
        assert opt in proc.stdout


# ---- TensorRT (where installed, on a GPU) -------------------------------------------------------------------


@pytest.fixture
def trt_env():
    present, reason = _has_tensorrt()
    if not present:
        pytest.skip(f"TensorRT not installed (import tensorrt: {reason})")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("TensorRT is installed but no CUDA GPU is usable")
    if plugin_lib.tensorrt_plugin_path() is None:
        pytest.skip("the TensorRT plugin library was not built (configure CMake with -DTensorRT_ROOT=...)")


@pytest.mark.tensorrt
@pytest.mark.parametrize("fp16", [False, True])
def test_engine_matches_cpu_reference(trt_env, tmp_path, fp16):
    from dynet_deploy.backends.tensorrt import TensorRTRunner

    model = plugin_model()
    onnx_path = tmp_path / "model.plugin.onnx"
    onnx.save(model, str(onnx_path))
    engine = tmp_path / "model.engine"
    cache = tmp_path / "timing.cache"
    res = engine_build.build_engine(
        onnx_path,
        engine,
        profile=engine_build.Profile(batch=(1, 4, 5), height=(8, 16, 20), width=(8, 16, 20)),
        fp16=fp16,
        timing_cache=cache,
    )
    assert res.engine_path.is_file() and cache.is_file()
    runner = TensorRTRunner(engine)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 8, 13, 17)).astype(np.float32)
    y = runner.run({"x": x})["y"]
    # Reference: the CPM in numpy, the conv in the C++ reference.
    inits = {i.name: nh.to_array(i) for i in model.graph.initializer}
    logits = x.mean(axis=(2, 3)) @ inits["fc_w"].T + inits["fc_b"]
    coeff = (1 / (1 + np.exp(-logits))).reshape(3, 12, 6).astype(np.float32)
    ref = plugin_lib.cpu_reference_conv(
        x, coeff, inits["weight"], inits["bias_bank"], inits["bias"], pads=(1, 1, 1, 1), activation=1
    )
    rel = np.linalg.norm(y.astype(np.float64) - ref) / np.linalg.norm(ref)
    assert rel <= (1e-2 if fp16 else 1e-5), f"relative error {rel:.2e}"
