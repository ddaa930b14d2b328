"""DyNet's coefficient prediction module (CPM) and a self-routed dynamic conv built on it.

The CPM maps a feature map to per-sample coefficients: global average pool, one FC (or, as in the
ResNets of the paper, FC to ``C_in/4``, ReLU, FC), then a **sigmoid**; the paper uses no softmax and no
temperature. The per-expert form (CondConv uses a sigmoid, DY-CNN a softmax with temperature) is the
same module with one coefficient per basis kernel instead of one per output channel and basis kernel.

One CPM can feed several dynamic layers of a block (Dy-mobile, Dy-shuffle): ``targets`` lists the
coefficient width (``C_out`` or 1) of each layer it feeds, and ``forward`` returns one tensor per layer.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .dynamic_conv import DynamicConv2d


class CoefficientPredictor(nn.Module):
    """Global average pool -> FC [-> ReLU -> FC] -> sigmoid (or softmax over bases), per fed layer.

    Args:
        in_channels: channels of the feature map the coefficients are predicted from.
        targets: coefficient rows per fed layer: ``C_out`` for DyNet's per-channel form, 1 per-expert.
        num_bases: ``K``.
        hidden: None for one FC layer; an int for the two-FC form (the ResNets use ``in_channels // 4``).
        activation: ``"sigmoid"`` (DyNet, CondConv) or ``"softmax"`` over the K bases (DY-CNN).
        temperature: softmax temperature (DY-CNN); ignored by the sigmoid.
    """

    def __init__(
        self,
        in_channels: int,
        targets: Sequence[int],
        num_bases: int = 6,
        hidden: int | None = None,
        activation: str = "sigmoid",
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if activation not in ("sigmoid", "softmax"):
            raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")
        self.targets = [int(t) for t in targets]
        if not self.targets or min(self.targets) < 1:
            raise ValueError(f"targets must be positive channel counts, got {targets}")
        self.num_bases = num_bases
        self.activation = activation
        self.temperature = float(temperature)
        total = sum(self.targets) * num_bases
        if hidden is None:
            self.fc1 = nn.Linear(in_channels, total)
            self.fc2 = None
        else:
            self.fc1 = nn.Linear(in_channels, hidden)
            self.fc2 = nn.Linear(hidden, total)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = F.adaptive_avg_pool2d(x, 1).flatten(1)
        z = self.fc1(z)
        if self.fc2 is not None:
            z = self.fc2(F.relu(z))
        outs = []
        start = 0
        for rows in self.targets:
            width = rows * self.num_bases
            c = z[:, start : start + width].reshape(-1, rows, self.num_bases)
            start += width
            if self.activation == "sigmoid":
                c = torch.sigmoid(c)
            else:
                c = torch.softmax(c / self.temperature, dim=-1)
            outs.append(c)
        return outs


class DyConv2d(nn.Module):
    """A dynamic conv with its own coefficient predictor: ``y = conv(x, cpm(x))``.

    The single-layer building block (and the unit the export/fuse tests push around). ``conv`` holds
    all the :class:`DynamicConv2d` options; ``cpm_hidden`` selects the two-FC CPM form.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        num_bases: int = 6,
        coeff_mode: str = "channel",
        bias_bank: bool = False,
        bias: bool = False,
        cpm_hidden: int | None = None,
        cpm_activation: str = "sigmoid",
        temperature: float = 1.0,
        mode: str = "kernel",
    ) -> None:
        super().__init__()
        self.conv = DynamicConv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            num_bases,
            coeff_mode,
            bias_bank,
            bias,
            mode,
        )
        self.cpm = CoefficientPredictor(
            in_channels, [self.conv.coeff_channels], num_bases, cpm_hidden, cpm_activation, temperature
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (coeff,) = self.cpm(x)
        return self.conv(x, coeff)
