"""Deploy-time layer forms that standard ONNX runtimes execute fast on a CPU.

The two textbook export forms are feature-map fusion (``K`` times the conv FLOPs) and kernel fusion through
``Einsum`` + the batch-as-groups Conv. Measured on onnxruntime 1.32 CPU, ``Einsum("nck,kcj->ncj")`` is the
bottleneck of the kernel form: it transposes the whole basis bank on every run, 4-7x slower than reading it once
(a dy_resnet18 spends more time in the Einsums than in its convs).

:func:`to_deploy_form` swaps every :class:`DynamicConv2d` of a model for :class:`MatMulFusionConv2d`, which
computes the same function with the kernel fusion written as one batched ``MatMul`` against a basis bank
stored transposed at export (``[C_out, K, C_in/g*kH*kW]``): one GEMV per output channel that streams the
bank once, the lower bound of batch-1 kernel fusion. The convolution then runs once at width ``C_out``, its
weight computed at run time. The standard exporter writes the result with standard ops only; the batch is
fixed at export (``Conv.group`` bakes it in, as in the kernel form). Sigmoid coefficient predictors become
:class:`SigmoidOnceCoefficientPredictor` (one Sigmoid and one Split per predictor)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .cpm import CoefficientPredictor
from .dynamic_conv import DynamicConv2d
from .fold import fold_batchnorms

DEPLOY_FORMS = ("matmul",)


class MatMulFusionConv2d(nn.Module):
    """A folded :class:`DynamicConv2d` whose kernel fusion is one batched MatMul (see module docstring).

    ``forward(x, coeff[, spatial])`` takes the same inputs as the source layer and returns the same output. The
    basis bank is a buffer in the layout the MatMul reads: ``[C_out, K, J]`` per-channel (DyNet), or
    ``[K, C_out*J]`` per-expert (CondConv / DY-CNN, ODConv), with ``J = C_in/groups * kH * kW``; a spatial attention
    (ODConv) scales the fused kernels' taps after the MatMul.
    """

    # buffers (registered in __init__)
    bank: torch.Tensor
    bias_bank: torch.Tensor | None
    bias: torch.Tensor | None

    def __init__(self, conv: DynamicConv2d) -> None:
        super().__init__()
        k, c_out = conv.num_bases, conv.out_channels
        self.num_bases = k
        self.out_channels = c_out
        self.in_channels = conv.in_channels
        self.kernel_shape = tuple(conv.weight.shape[3:])
        self.stride = conv.stride
        self.dilation = conv.dilation
        self.groups = conv.groups
        self.pads = conv.pads
        self.coeff_mode = conv.coeff_mode
        self.spatial = conv.spatial
        w = conv.weight.detach().reshape(k, c_out, -1)
        if conv.coeff_mode == "channel":
            bank = w.transpose(0, 1).contiguous()  # [C_out, K, J]
        else:
            bank = w.reshape(k, -1).contiguous()  # [K, C_out*J]
        self.register_buffer("bank", bank)
        self.register_buffer(
            "bias_bank", None if conv.bias_bank is None else conv.bias_bank.detach().t().contiguous().unsqueeze(-1)
        )
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_shape={self.kernel_shape}, stride={self.stride}, "
            f"pads={self.pads}, dilation={self.dilation}, groups={self.groups}, num_bases={self.num_bases}, "
            f"coeff_mode={self.coeff_mode}"
        )

    def _channel_major(self, coeff: torch.Tensor, n: int) -> torch.Tensor:
        """Per-channel coefficients as ``[C_out, N, K]``, the MatMul's batch of GEMVs.

        At N = 1 this is the memory of ``[1, C_out, K]``; a coefficient predictor in its deploy form already
        hands them over in this shape (see :class:`SigmoidOnceCoefficientPredictor`), so no Reshape is written.
        """
        if n == 1:
            shape = (self.out_channels, 1, self.num_bases)
            return coeff if tuple(coeff.shape) == shape else coeff.reshape(shape)
        return coeff.transpose(0, 1)

    def fused_kernels(self, coeff: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """``[N, C_out, J]`` from ``coeff`` ``[N, C_out|1, K]`` (or ``[C_out, 1, K]`` at ``n`` = 1)."""
        n = coeff.shape[0] if n is None else n
        if self.coeff_mode == "channel":
            # [C_out, N, K] @ [C_out, K, J] -> [C_out, N, J]; at N = 1 both reshapes are free.
            fused = torch.matmul(self._channel_major(coeff, n), self.bank)
            return fused.reshape(1, self.out_channels, -1) if n == 1 else fused.transpose(0, 1)
        return torch.matmul(coeff.reshape(n, self.num_bases), self.bank).reshape(n, self.out_channels, -1)

    def aggregated_bias(self, coeff: torch.Tensor, n: int | None = None) -> torch.Tensor | None:
        """``[N * C_out]`` (bias bank mixed by the coefficients, plus the static bias), or None."""
        n = coeff.shape[0] if n is None else n
        out = None
        if self.bias_bank is not None:
            if self.coeff_mode == "channel":
                out = torch.matmul(self._channel_major(coeff, n), self.bias_bank).reshape(self.out_channels, n).t()
            else:
                out = coeff.reshape(n, self.num_bases) @ self.bias_bank.reshape(self.out_channels, self.num_bases).t()
        if self.bias is not None:
            if out is None:
                # A constant in the graph: repeat() of a buffer folds away at export, expand() leaves shape ops.
                return self.bias if n == 1 else self.bias.repeat(n)
            out = out + self.bias
        return None if out is None else out.reshape(-1)

    def forward(self, x: torch.Tensor, coeff: torch.Tensor, spatial: torch.Tensor | None = None) -> torch.Tensor:
        if coeff.dim() == 2:
            coeff = coeff.unsqueeze(1)
        if (spatial is not None) != self.spatial:
            raise ValueError(f"this layer {'takes' if self.spatial else 'has no'} spatial attention")
        n = x.shape[0]
        t, l, b, r = self.pads
        if (t, l) == (b, r):
            pad = (t, l)
        else:
            x, pad = F.pad(x, (l, r, t, b)), (0, 0)
        fused = self.fused_kernels(coeff, n)
        if spatial is not None:
            taps = self.kernel_shape[0] * self.kernel_shape[1]
            fused = fused.reshape(n, self.out_channels, -1, taps) * spatial.reshape(n, 1, 1, taps)
        fused = fused.reshape(n * self.out_channels, -1, *self.kernel_shape)
        bias = self.aggregated_bias(coeff, n)
        if n == 1:
            return F.conv2d(x, fused, bias, self.stride, pad, self.dilation, self.groups)
        y = F.conv2d(
            x.reshape(1, -1, x.shape[-2], x.shape[-1]), fused, bias, self.stride, pad, self.dilation, self.groups * n
        )
        return y.reshape(n, self.out_channels, y.shape[-2], y.shape[-1])


class SigmoidOnceCoefficientPredictor(nn.Module):
    """A :class:`CoefficientPredictor` with the sigmoid applied once to the whole FC output, then split.

    The exported original slices the FC output per fed layer and applies one sigmoid per slice (a full-range
    Slice even when it feeds one layer); this form is one Sigmoid and, for several layers, one Split. The
    sigmoid is element-wise, so the values are the same. Softmax predictors are kept as they are.

    Node count matters on a small model (Dy-mobile: 17 predictors feeding 51 layers), so two more ops go:
    the pooling is a mean over H and W (one ``ReduceMean``, which onnxruntime also runs 2x faster than
    ``GlobalAveragePool`` + ``Flatten`` at 2 threads), and at batch 1 the FC output is reshaped once to
    ``[sum C, 1, K]`` and split along the channels, so each layer receives ``[C, 1, K]`` (the memory of
    ``[1, C, K]``), the shape :class:`MatMulFusionConv2d`'s MatMul reads, instead of one Reshape per layer.
    """

    def __init__(self, cpm: CoefficientPredictor) -> None:
        super().__init__()
        if cpm.activation != "sigmoid":
            raise ValueError("only sigmoid predictors have a sigmoid-once form")
        self.fc1, self.fc2 = cpm.fc1, cpm.fc2
        self.targets = list(cpm.targets)
        self.num_bases = cpm.num_bases

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = x.mean((2, 3))
        z = self.fc1(z)
        if self.fc2 is not None:
            z = self.fc2(F.relu(z))
        z = torch.sigmoid(z)
        if z.shape[0] == 1:
            z = z.reshape(sum(self.targets), 1, self.num_bases)
            return [z] if len(self.targets) == 1 else list(torch.split(z, self.targets, dim=0))
        parts = [z] if len(self.targets) == 1 else torch.split(z, [t * self.num_bases for t in self.targets], dim=1)
        return [p.reshape(-1, rows, self.num_bases) for p, rows in zip(parts, self.targets)]


def _replace_dynamic_layers(module: nn.Module, form: str) -> int:
    count = 0
    for name, child in module.named_children():
        if isinstance(child, DynamicConv2d):
            setattr(module, name, MatMulFusionConv2d(child))
            count += 1
        elif isinstance(child, CoefficientPredictor) and child.activation == "sigmoid":
            setattr(module, name, SigmoidOnceCoefficientPredictor(child))
        else:
            count += _replace_dynamic_layers(child, form)
    return count


@torch.no_grad()
def to_deploy_form(model: nn.Module, form: str = "matmul") -> nn.Module:
    """An eval-mode deep copy of ``model`` with BatchNorms folded, every DynamicConv2d in ``form`` and every
    sigmoid coefficient predictor in its sigmoid-once form.

    The copy computes the same function (up to float rounding) and exports with the standard exporter
    (``export_onnx(..., form="kernel", dynamic_batch=False)``: the batch is fixed, as in the kernel form).
    """
    if form not in DEPLOY_FORMS:
        raise ValueError(f"unknown deploy form {form!r}; choose one of {', '.join(DEPLOY_FORMS)}")
    model = copy.deepcopy(model).eval()
    fold_batchnorms(model)  # before the swap: folding rewrites the basis kernels the new layers copy
    _replace_dynamic_layers(model, form)
    return model
