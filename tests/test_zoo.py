"""The model zoo: torchvision-exact baselines, DyNet versions, segmentation, and the `dynet-deploy zoo` table."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from dynet_deploy.cli import main
from dynet_deploy.errors import ModelError
from dynet_deploy.models import create_model, list_models, model_info
from dynet_deploy.nn import (
    DynamicConv2d,
    DynamicConvBN,
    ODAttention,
    ODConv2d,
    ODConvBN,
    fold_batchnorms,
    set_dynamic_conv_mode,
)
from dynet_deploy.nn.deploy_forms import to_deploy_form

# torchvision's parameter counts at 1000 classes (fcn_resnet50: 21 classes as torchvision's, no aux head).
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
    "shufflenet_v2_x1_0": 2_278_604,
    "shufflenet_v2_x1_5": 3_503_624,
    "mobilenet_v3_large": 5_483_032,
    "mobilenet_v3_small": 2_542_856,
}
# A few state-dict keys torchvision's models have (checkpoint compatibility).
TORCHVISION_KEYS = {
    "mobilenet_v2": [
        "features.0.0.weight",
        "features.1.conv.0.0.weight",
        "features.1.conv.1.weight",
        "features.2.conv.3.running_var",
        "features.18.1.bias",
        "classifier.1.weight",
    ],
    "shufflenet_v2_x1_0": [
        "conv1.0.weight",
        "stage2.0.branch1.0.weight",
        "stage2.0.branch2.6.running_mean",
        "stage4.3.branch2.5.weight",
        "conv5.1.weight",
        "fc.bias",
    ],
    "mobilenet_v3_large": [
        "features.0.1.weight",
        "features.1.block.0.0.weight",
        "features.4.block.2.fc1.weight",
        "features.4.block.3.1.running_mean",
        "features.16.0.weight",
        "classifier.3.weight",
    ],
    "mobilenet_v3_small": ["features.1.block.1.fc2.bias", "features.12.0.weight", "classifier.0.weight"],
    "fcn_resnet50": [
        "backbone.conv1.weight",
        "backbone.layer4.2.conv3.weight",
        "classifier.0.weight",
        "classifier.1.running_var",
        "classifier.4.bias",
    ],
}


def _meta_model(name: str, **kw):
    with torch.device("meta"):
        return create_model(name, **kw)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    return (out - ref).abs().max().item(), ((out - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_baseline_parameter_counts_match_torchvision(name):
    assert _n_params(_meta_model(name)) == TORCHVISION_PARAMS[name]


def test_fcn_resnet50_matches_torchvision_layout():
    # torchvision's fcn_resnet50(num_classes=21, aux_loss=True) has 35,322,218 parameters.
    assert _n_params(_meta_model("fcn_resnet50", num_classes=21, aux_loss=True)) == 35_322_218
    keys = set(_meta_model("fcn_resnet50", num_classes=21, aux_loss=True).state_dict())
    assert "aux_classifier.4.weight" in keys
    assert not any(k.startswith(("backbone.fc", "fc.")) for k in keys)


@pytest.mark.parametrize("name", sorted(TORCHVISION_KEYS))
def test_torchvision_state_dict_keys(name):
    keys = set(_meta_model(name).state_dict())
    missing = [k for k in TORCHVISION_KEYS[name] if k not in keys]
    assert not missing, f"{name} lacks torchvision keys {missing}"


def test_registry_pairs_every_dy_model_with_a_registered_baseline():
    dynamic = list_models(dynamic=True)
    assert set(dynamic) >= {
        "dy_resnet18",
        "dy_resnet50",
        "dy_mobile",
        "dy_shufflenet_v2_x1_0",
        "dy_shufflenet_v2_x1_5",
        "dy_mobilenet_v3_small",
        "dy_mobilenet_v3_large",
        "dy_fcn_resnet50",
    }
    for name in dynamic:
        info = model_info(name)
        base = model_info(info.baseline)
        assert not base.dynamic and base.task == info.task
    assert set(list_models(task="segmentation")) == {"fcn_resnet50", "dy_fcn_resnet50"}


def test_paper_structure_of_dy_models():
    # Dy-mobile: no expansion, depthwise becomes a group conv with 6 channels per group.
    block = _meta_model("dy_mobile").features[3]
    conv2 = block.dyconv2.conv
    assert conv2.groups == conv2.in_channels // 6 and block.dyconv1.conv.out_channels == 24  # input 24, no x6
    # Dy-shuffle: 3:1 split in the basic unit, right branch dynamic.
    unit = _meta_model("dy_shufflenet_v2_x1_0").stage2[1]
    assert unit.right_channels == 116 // 4
    assert isinstance(unit.branch2.dyconv1.conv, DynamicConv2d) and unit.branch2.dyconv1.conv.in_channels == 29
    # Dy-MobileNetV3 keeps the baseline's widths.
    dy, base = _meta_model("dy_mobilenet_v3_large"), _meta_model("mobilenet_v3_large")
    assert dy.features[4].depthwise.conv.out_channels == base.features[4].block[1][0].out_channels


@pytest.mark.parametrize("name", [n for n in list_models()])
def test_every_model_runs_on_28x28_grey_and_segmentation_on_any_size(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1).eval()
    if model_info(name).task == "segmentation":
        x = torch.randn(1, 1, 37, 53)
        expected = (1, 10, 37, 53)
    else:
        x = torch.randn(1, 1, 28, 28)
        expected = (1, 10)
    with torch.no_grad():
        y = model(x)
    assert tuple(y.shape) == expected
    assert torch.isfinite(y).all()


def _randomise_bn(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("name", ["dy_mobile", "dy_shufflenet_v2_x1_0", "dy_mobilenet_v3_small"])
def test_dy_models_fold_bn_and_their_forward_paths_agree(name):
    torch.manual_seed(1)
    model = create_model(name, num_classes=10, in_chans=1).eval()
    _randomise_bn(model)
    x = torch.randn(3, 1, 28, 28)  # odd batch: per-sample coefficients must stay per sample
    with torch.no_grad():
        ref = model(x)
        set_dynamic_conv_mode(model, "feature")
        feature = model(x)
        set_dynamic_conv_mode(model, "kernel")
        fold_batchnorms(model)
        folded = model(x)
    tol = 1e-4  # fp32, a dozen layers deep
    for out in (feature, folded):
        max_abs, rel = _rel_err(out, ref)
        assert rel <= tol, f"relative error {rel:.2e} (max abs {max_abs:.2e}) above {tol}"
    assert all(m.folded for m in model.modules() if isinstance(m, DynamicConvBN))


@pytest.mark.parametrize("name,kernels,paper_params_m", [("od_resnet18", 1, 11.94), ("od_resnet18_4x", 4, 44.90)])
def test_od_resnet18_is_odconv_resnet18(name, kernels, paper_params_m):
    """ODConv replaces the 3x3 convs of every BasicBlock at the baseline's widths (reduction 1/16, squeeze width
    at least 16); the stem, the projection shortcuts and the classifier stay static; the parameters are the
    ODConv paper's ResNet18 figures."""
    model, base = _meta_model(name), _meta_model("resnet18")
    assert model_info(name).paper_params_m == paper_params_m
    assert round(_n_params(model) / 1e6, 2) == paper_params_m
    odconvs = [m for m in model.modules() if isinstance(m, ODConv2d)]
    assert len(odconvs) == 16 and all(isinstance(m.conv, DynamicConv2d) for m in odconvs)
    base_3x3 = [m for m in base.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    for od, conv in zip(odconvs, base_3x3):
        assert (od.in_channels, od.out_channels, od.conv.stride) == (conv.in_channels, conv.out_channels, conv.stride)
        assert od.kernel_num == kernels and od.conv.spatial and od.conv.coeff_mode == "expert"
        att = od.attention
        assert att.fc.out_features == max(od.in_channels // 16, 16)
        assert att.spatial_fc is not None and att.spatial_fc.out_features == 9 and att.filter_fc is not None
        assert (att.kernel_fc is None) == (kernels == 1)
    static = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and not _inside(model, m, ODAttention)]
    assert [m.kernel_size for m in static] == [(7, 7), (1, 1), (1, 1), (1, 1)]  # stem, three projections


def _inside(model, module, kind):
    return any(module is m for outer in model.modules() if isinstance(outer, kind) for m in outer.modules())


@pytest.mark.parametrize("name", ["od_resnet18", "od_resnet18_4x"])
def test_od_models_fold_bn_and_their_forward_paths_agree(name):
    """kernel fusion (batch-as-groups, what is exported), the per-sample loop, the BN-folded model and the deploy
    form (MatMul fusion) compute one function; the feature form is refused with the reason."""
    torch.manual_seed(2)
    model = create_model(name, num_classes=10, in_chans=1, width_mult=0.25).eval()
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        deploy = to_deploy_form(model)(x)
        set_dynamic_conv_mode(model, "loop")
        loop = model(x)
        set_dynamic_conv_mode(model, "kernel")
        fold_batchnorms(model)
        folded = model(x)
    for out in (deploy, loop, folded):
        max_abs, rel = _rel_err(out, ref)
        assert rel <= 1e-5, f"relative error {rel:.2e} (max abs {max_abs:.2e})"
    assert all(m.folded for m in model.modules() if isinstance(m, (ODConvBN, ODAttention)))
    with pytest.raises(ValueError, match="spatial attention"):
        set_dynamic_conv_mode(model, "feature")


def test_unknown_model_and_bad_arguments_raise_model_error():
    with pytest.raises(ModelError, match="did you mean dy_mobile"):
        create_model("dy_mobil")
    with pytest.raises(ModelError, match="bad arguments"):
        create_model("mobilenet_v2", no_such_option=1)


# -- the zoo table -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zoo_json():
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["zoo", "--json"])
    return rc, json.loads(buf.getvalue())


def test_zoo_json_lists_every_model(zoo_json):
    rc, data = zoo_json
    assert rc == 0
    names = [r["name"] for r in data["models"]]
    assert sorted(names) == sorted(list_models())
    # Each Dy model follows its baseline; segmentation comes last.
    for i, r in enumerate(data["models"]):
        if r["dynamic"]:
            assert r["baseline"] in names[:i]
    assert [r["task"] for r in data["models"]][-2:] == ["segmentation", "segmentation"]


def test_zoo_relative_differences_and_ratios_are_computed_right(zoo_json):
    _, data = zoo_json
    rows = {r["name"]: r for r in data["models"]}
    for r in rows.values():
        if r["paper_mflops"] is None:
            assert r["rel_diff"] is None and r["within_target"] is None
            continue
        # what the paper counts: conv+linear (DyNet's figures), or with the dynamic overhead (ODConv's)
        ours = r["mflops"] + (r["dy_overhead_mflops"] if r["paper_counts_overhead"] else 0.0)
        assert math.isclose(r["rel_diff"], (ours - r["paper_mflops"]) / r["paper_mflops"], rel_tol=1e-12)
        assert r["within_target"] == (abs(r["rel_diff"]) <= data["target_rel_diff"])
        if r["baseline"]:
            base = rows[r["baseline"]]
            assert math.isclose(r["ratio_vs_baseline"], ours / base["mflops"], rel_tol=1e-12)
            paper_base = model_info(r["name"]).paper_baseline_mflops or base["paper_mflops"]
            if paper_base:
                assert math.isclose(r["paper_ratio_vs_baseline"], r["paper_mflops"] / paper_base, rel_tol=1e-12)
    assert rows["resnet50"]["params"] == TORCHVISION_PARAMS["resnet50"]
    assert rows["dy_mobile"]["dy_overhead_mflops"] > 0 and rows["mobilenet_v2"]["dy_overhead_mflops"] == 0
    assert math.isclose(rows["dy_mobilenet_v3_small"]["ratio_vs_baseline"], 1.0)
    # OD-ResNet18 against the ODConv paper's own ResNet18 (1.814 G), not DyNet's
    assert math.isclose(rows["od_resnet18"]["paper_ratio_vs_baseline"], 1838 / 1814)
    assert rows["od_resnet18"]["paper_counts_overhead"] and not rows["dy_resnet18"]["paper_counts_overhead"]


def test_every_model_is_within_10_percent_of_the_paper(zoo_json):
    _, data = zoo_json
    off = {r["name"]: r["rel_diff"] for r in data["models"] if r["within_target"] is False}
    assert not off, f"outside 10 % of the paper: {off}"
    assert {r["name"] for r in data["models"] if r["paper_mflops"] is None} == {"dy_shufflenet_v2_x1_5"}


def test_zoo_cli_table(capsys):
    assert main(["zoo", "--model", "mobilenet_v2", "--model", "dy_mobile"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["model", "input", "params(M)", "MFLOPs"]
    assert [l.split()[0] for l in lines[2:4]] == ["mobilenet_v2", "dy_mobile"]
    assert "129.0" in lines[3].split()


def test_zoo_cli_unknown_model_exits_1_without_traceback(capsys):
    assert main(["zoo", "--model", "nope"]) == 1
    err = capsys.readouterr().err
    assert "unknown model 'nope'" in err and "Traceback" not in err


def test_zoo_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "dynet_deploy.cli", "zoo", "--json", "--model", "shufflenet_v2_x1_0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)["models"]
    assert row["name"] == "shufflenet_v2_x1_0" and row["params"] == TORCHVISION_PARAMS["shufflenet_v2_x1_0"]


def test_zoo_answers_from_its_cache_without_torch(tmp_path):
    """A second `zoo --model` reads the counted rows from the cache (named by a hash of the code) and does
    not import torch; what it prints equals a fresh count."""
    env = {**os.environ, "DYNET_DEPLOY_CACHE": str(tmp_path)}
    probe = (
        "import sys, time; t = time.perf_counter(); from dynet_deploy.cli import main; "
        "rc = main(['zoo', '--json', '--model', 'dy_resnet18']); "
        "print('TORCH', 'torch' in sys.modules, 'SECONDS', time.perf_counter() - t, file=sys.stderr); sys.exit(rc)"
    )
    first = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "TORCH True" in first.stderr  # cold: counted
    assert len(list(tmp_path.glob("zoo-*.json"))) == 1
    second = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "TORCH False" in second.stderr, second.stderr
    assert json.loads(second.stdout) == json.loads(first.stdout)
    seconds = float(second.stderr.split("SECONDS")[1])
    assert seconds < 2.0, f"cached zoo --model took {seconds:.2f} s"
    # An unknown name is still refused with suggestions from the cached list.
    bad = subprocess.run(
        [sys.executable, "-m", "dynet_deploy.cli", "zoo", "--model", "dy_resnt18"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 1 and "did you mean dy_resnet18" in bad.stderr and "Traceback" not in bad.stderr


def test_zoo_cache_matches_a_fresh_count(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DYNET_DEPLOY_CACHE", str(tmp_path))
    assert main(["zoo", "--json", "--model", "mobilenet_v2"]) == 0
    cached_first = json.loads(capsys.readouterr().out)
    assert main(["zoo", "--json", "--model", "mobilenet_v2"]) == 0
    cached = json.loads(capsys.readouterr().out)
    assert main(["zoo", "--json", "--no-cache", "--model", "mobilenet_v2"]) == 0
    fresh = json.loads(capsys.readouterr().out)
    assert cached == fresh == cached_first
