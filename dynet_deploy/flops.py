"""Multiply-adds (MACs) and parameters of conv and linear layers, DyNet's overheads apart.

Counting convention (the one the DyNet paper's FLOPs figures use: multiply-adds of conv and FC layers,
nothing else):

* ``nn.Conv2d``: ``C_out * H_out * W_out * C_in/groups * kH * kW`` per sample; ``nn.Linear``:
  ``in * out`` per row. Biases, BatchNorm, activations, pooling, the residual adds and upsampling are
  not counted.
* ``DynamicConv2d`` counts as one ordinary conv at width ``C_out`` per sample (the kernel-fusion inference
  form), in the conv+linear column.
* DyNet's own work goes in a separate column, ``dynamic_overhead_macs``:

  - coefficient prediction: the FC layers of every :class:`CoefficientPredictor` (the global average
    pool in front of them is an addition per input element, not a multiply-add, and is not counted,
    as the pooling before a classifier is not);
  - kernel fusion: ``K * C_out * C_in/groups * kH * kW`` per dynamic layer and sample, plus
    ``K * C_out`` for a bias bank, plus ``C_out * C_in/groups * kH * kW`` (one multiply per fused kernel value)
    for a spatial attention (ODConv's ``a_s``, op version 2);
  - ODConv's attention (:class:`~dynet_deploy.nn.ODAttention`): its FC layers, counted as coefficient
    prediction. Its channel and filter attentions scale feature maps element-wise and, like BatchNorm and
    activations, are not counted.

The counter runs the model once with forward hooks. Models built on the ``meta`` device are counted
without computing anything (``with torch.device("meta"): model = create_model(...)``), which is how the
zoo table counts the big segmentation models in a fraction of a second.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from torch import nn

from .nn import CoefficientPredictor, DynamicConv2d, ODAttention


@dataclass
class LayerFlops:
    name: str
    kind: str  # "conv", "linear", "dynamic_conv", "cpm_linear"
    macs: int  # conv+linear multiply-adds (0 for CPM layers)
    overhead_macs: int  # DyNet overhead: CPM FC layers, kernel fusion
    output_shape: tuple[int, ...]


@dataclass
class FlopsReport:
    input_size: tuple[int, ...]
    conv_linear_macs: int
    cpm_macs: int
    fusion_macs: int
    params: int
    per_layer: list[LayerFlops] = field(default_factory=list)

    @property
    def dynamic_overhead_macs(self) -> int:
        return self.cpm_macs + self.fusion_macs

    @property
    def total_macs(self) -> int:
        return self.conv_linear_macs + self.dynamic_overhead_macs

    def to_dict(self, per_layer: bool = False) -> dict:
        d = asdict(self)
        d["dynamic_overhead_macs"] = self.dynamic_overhead_macs
        d["total_macs"] = self.total_macs
        if not per_layer:
            d.pop("per_layer")
        return d


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_macs(out: torch.Tensor, in_channels: int, groups: int, kernel_size: Sequence[int]) -> int:
    n, c_out, h, w = out.shape
    kh, kw = kernel_size
    return int(n * c_out * h * w * (in_channels // groups) * kh * kw)


def count_flops(model: nn.Module, input_size: Sequence[int] = (1, 3, 224, 224)) -> FlopsReport:
    """Run ``model`` once on a random input of ``input_size`` and count its multiply-adds.

    The input lives on the device of the model's parameters (``meta`` counts shapes only). The model is
    run in eval mode and restored to its previous mode afterwards. Counts are for the whole batch.
    """
    input_size = tuple(int(s) for s in input_size)
    if len(input_size) != 4 or min(input_size) < 1:
        raise ValueError(f"input_size must be (N, C, H, W) with positive sizes, got {input_size}")
    cpm_linears = {
        id(m)
        for cpm in model.modules()
        if isinstance(cpm, (CoefficientPredictor, ODAttention))
        for m in cpm.modules()
        if isinstance(m, nn.Linear)
    }
    layers: list[LayerFlops] = []
    hooks = []

    def hook(name: str, module: nn.Module):
        def fn(mod: nn.Module, inputs, output) -> None:
            out = output
            if isinstance(mod, nn.Conv2d):
                layers.append(
                    LayerFlops(
                        name, "conv", _conv_macs(out, mod.in_channels, mod.groups, mod.kernel_size), 0, tuple(out.shape)
                    )
                )
            elif isinstance(mod, DynamicConv2d):
                n = out.shape[0]
                fusion = (
                    mod.num_bases
                    * mod.out_channels
                    * (mod.in_channels // mod.groups)
                    * mod.kernel_size[0]
                    * mod.kernel_size[1]
                )
                if mod.bias_bank is not None:
                    fusion += mod.num_bases * mod.out_channels
                if mod.spatial:  # each fused kernel value times its tap's spatial attention
                    fusion += (
                        mod.out_channels * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
                    )
                macs = _conv_macs(out, mod.in_channels, mod.groups, mod.kernel_size)
                layers.append(LayerFlops(name, "dynamic_conv", macs, int(n * fusion), tuple(out.shape)))
            elif isinstance(mod, nn.Linear):
                rows = out.numel() // mod.out_features
                macs = int(rows * mod.in_features * mod.out_features)
                if id(mod) in cpm_linears:
                    layers.append(LayerFlops(name, "cpm_linear", 0, macs, tuple(out.shape)))
                else:
                    layers.append(LayerFlops(name, "linear", macs, 0, tuple(out.shape)))

        return fn

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, DynamicConv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(hook(name, m)))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.randn(input_size, device=device, dtype=dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return FlopsReport(
        input_size=input_size,
        conv_linear_macs=sum(l.macs for l in layers),
        cpm_macs=sum(l.overhead_macs for l in layers if l.kind == "cpm_linear"),
        fusion_macs=sum(l.overhead_macs for l in layers if l.kind == "dynamic_conv"),
        params=count_params(model),
        per_layer=layers,
    )
