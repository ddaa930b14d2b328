"""Deploy-time forms of the dynamic conv that standard ONNX runtimes execute fast on a CPU.

:mod:`dynet_deploy.export_onnx` writes the two textbook forms: feature-map fusion (``K`` times the conv
FLOPs) and kernel fusion through ``Einsum`` + the batch-as-groups Conv. Measured on onnxruntime 1.32 CPU,
``Einsum("nck,kcj->ncj")`` is the bottleneck of the kernel form: it transposes the whole basis bank on every
run, 4-7x slower than reading it once (a dy_resnet18 spends more time in the Einsums than in its convs).

:func:`to_deploy_form` swaps every :class:`DynamicConv2d` of a model for :class:`MatMulFusionConv2d`, which
computes the same function with the kernel fusion written as one batched ``MatMul`` against a basis bank
stored transposed at export (``[C_out, K, C_in/g*kH*kW]``): one GEMV per output channel that streams the
bank once, the lower bound of batch-1 kernel fusion. The convolution then runs once at width ``C_out``, its
weight computed at run time. The standard exporter writes the result with standard ops only; the batch is
fixed at export (``Conv.group`` bakes it in, as in the kernel form). Sigmoid coefficient predictors become
:class:`SigmoidOnceCoefficientPredictor` (one Sigmoid and one Split per predictor).

:func:`nchwc_dynamic_convs` then moves the run-time-weight convs of such a graph onto onnxruntime's blocked
NCHWc conv kernel (the ``matmul-nchwc`` form, onnxruntime CPU only): onnxruntime blocks constant-weight convs
itself but runs a conv whose weight is computed at run time through im2col + GEMM, 1.3-1.7x slower.
:func:`export_deploy_onnx` writes any of :data:`DY_FORMS`.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ExportError
from .nn import CoefficientPredictor, DynamicConv2d, fold_batchnorms

DEPLOY_FORMS = ("matmul",)
# Forms a Dy model can be exported in for timing: the two textbook forms of export_onnx, ours, and ours with
# onnxruntime's blocked-layout convolution (onnxruntime CPU only, block size of the machine that writes it).
DY_FORMS = ("feature", "kernel", "matmul", "matmul-nchwc")
META_DEPLOY_FORM = "dynet_deploy.deploy_form"
NCHWC_DOMAIN = "com.microsoft.nchwc"
# The NCHWc rewrite is kept when at least this share of a model's dynamic convs fit it. On Dy-mobile (grouped
# convs, widths like 30 and 162) only about a fifth fit, and the reorders around those isolated convs made the
# model slower (measured 1 thread: 25.8 ms against 20.7 ms in the matmul form).
NCHWC_MIN_SHARE = 0.5


class MatMulFusionConv2d(nn.Module):
    """A folded :class:`DynamicConv2d` whose kernel fusion is one batched MatMul (see module docstring).

    ``forward(x, coeff)`` takes the same inputs as the source layer and returns the same output. The basis
    bank is a buffer in the layout the MatMul reads: ``[C_out, K, J]`` per-channel (DyNet), or ``[K, C_out*J]``
    per-expert (CondConv / DY-CNN), with ``J = C_in/groups * kH * kW``.
    """

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
        w = conv.weight.detach().reshape(k, c_out, -1)
        if conv.coeff_mode == "channel":
            bank = w.transpose(0, 1).contiguous()  # [C_out, K, J]
        else:
            bank = w.reshape(k, -1).contiguous()  # [K, C_out*J]
        self.register_buffer("bank", bank)
        self.register_buffer("bias_bank", None if conv.bias_bank is None else conv.bias_bank.detach().t().contiguous().unsqueeze(-1))
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

    def forward(self, x: torch.Tensor, coeff: torch.Tensor) -> torch.Tensor:
        if coeff.dim() == 2:
            coeff = coeff.unsqueeze(1)
        n = x.shape[0]
        t, l, b, r = self.pads
        if (t, l) == (b, r):
            pad = (t, l)
        else:
            x, pad = F.pad(x, (l, r, t, b)), (0, 0)
        fused = self.fused_kernels(coeff, n).reshape(n * self.out_channels, -1, *self.kernel_shape)
        bias = self.aggregated_bias(coeff, n)
        if n == 1:
            return F.conv2d(x, fused, bias, self.stride, pad, self.dilation, self.groups)
        y = F.conv2d(x.reshape(1, -1, x.shape[-2], x.shape[-1]), fused, bias, self.stride, pad, self.dilation, self.groups * n)
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


# ---- onnxruntime's NCHWc convolution for the run-time weights -----------------------------------------------------
#
# onnxruntime's CPU provider runs a Conv with a *constant* weight in its blocked NCHWc layout (the NchwcTransformer
# reorders the weight once, at session start), and a Conv whose weight is computed at run time through the plain
# im2col + GEMM path: 1.3-1.7x slower for the 3x3 convs of a Dy-ResNet (measured, 1 thread). The NCHWc kernel
# itself (``com.microsoft.nchwc::Conv``) reads its weight from its input on every run; it only needs the weight
# already in the blocked layout ``[C_out/B, C_in/B, kH, kW, B_in, B_out]``. The kernel fusion can write that
# layout almost for free: the basis bank is permuted at export so that each output channel's row comes out in
# ``(C_in/B, kH, kW, B_in)`` order, and one Transpose of the fused kernels (``C_out * J`` floats, a sixth of the
# bank the MatMul streams) moves ``B_out`` innermost.


@functools.lru_cache(maxsize=1)
def nchwc_block_size() -> int | None:
    """onnxruntime's NCHWc channel block on this machine (8 with AVX2, 16 with AVX-512), or None if absent.

    Read from onnxruntime itself: ``ReorderInput`` pads 4 channels up to one block.
    """
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        node = helper.make_node("ReorderInput", ["x"], ["y"], domain=NCHWC_DOMAIN)
        graph = helper.make_graph(
            [node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, 1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(NCHWC_DOMAIN, 1)])
        so = ort.SessionOptions()
        so.log_severity_level = 4
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        out = sess.run(None, {"x": np.zeros((1, 4, 1, 1), np.float32)})[0]
        return int(out.shape[1])
    except Exception:  # no NCHWc kernels in this build (non-x86, or a minimal build)
        return None


def best_dy_form() -> str:
    """The fastest measured form for onnxruntime CPU on this machine."""
    return "matmul-nchwc" if nchwc_block_size() else "matmul"


def _producer(t):
    return t.inputs[0] if t.inputs else None


def _fusion_matmul(weight_t):
    """The MatMul(coeff, constant bank) behind a run-time conv weight, through Reshapes; else None."""
    import onnx_graphsurgeon as gs

    node = _producer(weight_t)
    chain = []
    while node is not None and node.op == "Reshape" and len(node.outputs[0].outputs) == 1:
        chain.append(node)
        node = _producer(node.inputs[0])
    if node is None or node.op != "MatMul" or len(node.outputs[0].outputs) != 1:
        return None, []
    bank = node.inputs[1]
    if not isinstance(bank, gs.Constant) or np.asarray(bank.values).ndim != 3:
        return None, []
    return node, chain


def _sole_activation(graph, t):
    """(activation name, params, node) when ``t``'s sole reader is a Relu or Clip(0, 6) that onnxruntime can fuse."""
    import onnx_graphsurgeon as gs

    readers = t.outputs
    if len(readers) != 1 or t in graph.outputs:
        return None
    act = readers[0]
    if act.op == "Relu":
        return "Relu", None, act
    if act.op == "Clip" and len(act.inputs) == 3 and all(isinstance(i, gs.Constant) for i in act.inputs[1:]):
        lo, hi = (float(np.asarray(i.values)) for i in act.inputs[1:])
        return "Clip", [lo, hi], act
    return None


def _blocked_filter(w: np.ndarray, block: int) -> np.ndarray:
    """OIHW -> the NCHWc kernel's ``[O/B, I/B, kH, kW, B_in, B_out]``, stored in a tensor of the OIHW shape."""
    o, i, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(o // block, block, i // block, block, kh, kw).transpose(0, 2, 4, 5, 3, 1)).reshape(w.shape)


class _NchwcRewriter:
    """Moves convs onto onnxruntime's NCHWc kernel and keeps their outputs blocked while readers allow it.

    ``blocked`` maps a plain (NCHW) tensor to the blocked tensor holding the same values; the plain tensor stays
    available through a ReorderOutput for readers that need it, and ``cleanup`` drops the ReorderOutputs nobody
    reads. What is rewritten, in graph order:

    * a dynamic conv of the ``matmul`` form (group 1, channels divisible by the block): its kernel fusion writes
      the blocked weight (see the comment above);
    * a static conv (constant weight, group 1, channels divisible by the block) whose input is already blocked,
      e.g. a residual projection: its weight is blocked here, once;
    * ``Add(conv, other)`` (+ ``Relu``) after a rewritten conv: the residual sum and the activation move into the
      conv (its ``Sum`` input), as onnxruntime's own NCHWc transformer does for static ResNets;
    * ``GlobalAveragePool`` of a blocked tensor (a coefficient predictor), or ``ReduceMean`` over H and W (the
      deploy-form predictor): run on the blocked layout, whose ``[N, C, 1, 1]`` result is the NCHW one.
    """

    def __init__(self, graph, block: int) -> None:
        self.graph = graph
        self.block = block
        self.blocked: dict[str, Any] = {}
        self.convs: dict[str, Any] = {}  # blocked output name -> the NCHWc Conv node writing it
        self.channels: dict[str, int] = {}  # blocked output name -> channels
        self.dynamic = 0
        self.static = 0
        self.residual = 0

    @staticmethod
    def _var(name: str):
        import onnx_graphsurgeon as gs

        return gs.Variable(name, np.float32)

    def to_blocked(self, t):
        if t.name not in self.blocked:
            self.blocked[t.name] = self.graph.layer(
                op="ReorderInput", domain=NCHWC_DOMAIN, name=f"{t.name}_to_nchwc", inputs=[t], outputs=[self._var(f"{t.name}_nchwc")]
            )[0]
        return self.blocked[t.name]

    def _publish(self, blocked, plain, channels: int) -> None:
        """``plain`` becomes a ReorderOutput of ``blocked``; later readers of ``plain`` may use ``blocked``."""
        self.graph.layer(
            op="ReorderOutput", domain=NCHWC_DOMAIN, name=f"{plain.name}_from_nchwc", inputs=[blocked],
            attrs={"channels": channels}, outputs=[plain],
        )
        self.blocked[plain.name] = blocked
        self.channels[blocked.name] = channels

    def _take_activation(self, t, attrs: dict):
        """Fuse ``t``'s sole Relu/Clip reader into ``attrs``; returns the tensor the fused node now writes."""
        act = _sole_activation(self.graph, t)
        if act is None:
            return t
        attrs["activation"] = act[0]
        if act[1] is not None:
            attrs["activation_params"] = act[1]
        out = act[2].outputs[0]
        act[2].outputs.clear()
        act[2].inputs.clear()
        return out

    def _emit_conv(self, conv, weight, c_out: int) -> None:
        attrs = {a: conv.attrs[a] for a in ("kernel_shape", "strides", "pads", "dilations") if a in conv.attrs}
        attrs["group"] = 1
        out = self._take_activation(conv.outputs[0], attrs)
        inputs = [self.to_blocked(conv.inputs[0]), weight] + ([conv.inputs[2]] if len(conv.inputs) > 2 else [])
        y = self._var(f"{out.name}_nchwc")
        self.graph.layer(op="Conv", domain=NCHWC_DOMAIN, name=f"{conv.name}_nchwc", inputs=inputs, attrs=attrs, outputs=[y])
        node = y.inputs[0]
        conv.outputs.clear()
        conv.inputs.clear()
        self.convs[y.name] = node
        self._publish(y, out, c_out)

    def dynamic_conv(self, conv) -> bool:
        import onnx_graphsurgeon as gs

        if len(conv.inputs) < 2 or isinstance(conv.inputs[1], gs.Constant) or int(conv.attrs.get("group", 1)) != 1:
            return False
        if conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET") or len(conv.attrs.get("kernel_shape", ())) != 2:
            return False
        mm, chain = _fusion_matmul(conv.inputs[1])
        if mm is None:
            return False
        bank = np.asarray(mm.inputs[1].values)
        c_out, k, j = bank.shape
        kh, kw = (int(v) for v in conv.attrs["kernel_shape"])
        c_in = j // (kh * kw)
        block = self.block
        if c_out % block or c_in % block or c_in * kh * kw != j or mm.inputs[0].shape not in (None, [c_out, 1, k]):
            return False
        name = conv.name or f"dynamic_conv_{self.dynamic}"
        # Each row's J in (C_in/B, kH, kW, B_in) order; one Transpose then moves B_out innermost.
        permuted = bank.reshape(c_out, k, c_in // block, block, kh, kw).transpose(0, 1, 2, 4, 5, 3).reshape(c_out, k, j)
        mm.inputs[1] = gs.Constant(f"{mm.inputs[1].name}_nchwc", np.ascontiguousarray(permuted))
        g = self.graph
        rows = g.layer(op="Reshape", name=f"{name}_rows", inputs=[mm.outputs[0], gs.Constant(f"{name}_rows_shape", np.array([c_out // block, block, j], np.int64))], outputs=[self._var(f"{name}_rows")])[0]
        moved = g.layer(op="Transpose", name=f"{name}_block_out", inputs=[rows], attrs={"perm": [0, 2, 1]}, outputs=[self._var(f"{name}_block_out")])[0]
        weight = g.layer(op="Reshape", name=f"{name}_blocked_weight", inputs=[moved, gs.Constant(f"{name}_weight_shape", np.array([c_out, c_in, kh, kw], np.int64))], outputs=[self._var(f"{name}_blocked_weight")])[0]
        for node in chain:
            node.outputs.clear()
        self._emit_conv(conv, weight, c_out)
        self.dynamic += 1
        return True

    def static_conv(self, conv) -> bool:
        import onnx_graphsurgeon as gs

        if len(conv.inputs) < 2 or conv.inputs[0].name not in self.blocked or not isinstance(conv.inputs[1], gs.Constant):
            return False
        if len(conv.inputs) > 2 and not isinstance(conv.inputs[2], gs.Constant):
            return False
        w = np.asarray(conv.inputs[1].values)
        if w.ndim != 4 or w.dtype != np.float32 or int(conv.attrs.get("group", 1)) != 1 or w.shape[0] % self.block or w.shape[1] % self.block:
            return False
        if conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            return False
        conv.attrs.setdefault("kernel_shape", list(w.shape[2:]))
        self._emit_conv(conv, gs.Constant(f"{conv.inputs[1].name}_nchwc", _blocked_filter(w, self.block)), w.shape[0])
        self.static += 1
        return True

    def residual_add(self, add) -> bool:
        if len(add.inputs) != 2 or not any(t.name in self.blocked for t in add.inputs):
            return False
        for a, b in (add.inputs, add.inputs[::-1]):
            if a.name not in self.blocked or b.shape is not None and len(b.shape) != 4:
                continue
            conv_out = self.blocked[a.name]
            conv = self.convs.get(conv_out.name)
            # The conv may take the sum only if nothing else reads its own result, and it has a bias input
            # (Sum is the fourth input) and no activation yet (the activation applies after the sum).
            if conv is None or len(conv.inputs) != 3 or "activation" in conv.attrs or a.outputs != [add]:
                continue
            if [n.op for n in conv_out.outputs] != ["ReorderOutput"] or self.blocked.get(b.name) is conv_out:
                continue
            # The other operand (the identity branch) is reordered once if it is still plain: one ReorderInput
            # instead of an Add, a Relu and the ReorderOutput/ReorderInput pair around them.
            out = self._take_activation(add.outputs[0], conv.attrs)
            conv.inputs.append(self.to_blocked(b))
            conv_out.outputs[0].outputs.clear()  # the conv's own ReorderOutput: nothing reads it any more
            add.outputs.clear()
            add.inputs.clear()
            self._publish(conv_out, out, self.channels[conv_out.name])
            self.residual += 1
            return True
        return False

    def global_average_pool(self, pool) -> bool:
        t = pool.inputs[0]
        if t.name not in self.blocked:
            return False
        pooled = pool.outputs[0]
        pool.outputs.clear()
        pool.inputs.clear()
        self.graph.layer(op="GlobalAveragePool", domain=NCHWC_DOMAIN, name=f"{pooled.name}_nchwc", inputs=[self.blocked[t.name]], outputs=[pooled])
        return True

    def spatial_mean(self, mean) -> bool:
        """``ReduceMean`` over H and W without kept dims (a deploy-form predictor): the NCHWc pooling + Flatten."""
        import onnx_graphsurgeon as gs

        t = mean.inputs[0]
        if t.name not in self.blocked or int(mean.attrs.get("keepdims", 1)) != 0:
            return False
        axes = mean.attrs.get("axes")
        if axes is None and len(mean.inputs) > 1 and isinstance(mean.inputs[1], gs.Constant):
            axes = np.asarray(mean.inputs[1].values).tolist()
        if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
            return False
        pooled = mean.outputs[0]
        mean.outputs.clear()
        mean.inputs.clear()
        pooled4d = self.graph.layer(
            op="GlobalAveragePool", domain=NCHWC_DOMAIN, name=f"{pooled.name}_nchwc", inputs=[self.blocked[t.name]],
            outputs=[self._var(f"{pooled.name}_nchwc")],
        )[0]
        self.graph.layer(op="Flatten", name=f"{pooled.name}_flatten", inputs=[pooled4d], attrs={"axis": 1}, outputs=[pooled])
        return True

    def run(self) -> None:
        self.graph.toposort()
        for node in list(self.graph.nodes):
            if node.domain not in (None, "", "ai.onnx") or not node.outputs:
                continue
            if node.op == "Conv":
                self.dynamic_conv(node) or self.static_conv(node)
            elif node.op == "Add":
                self.residual_add(node)
            elif node.op == "GlobalAveragePool":
                self.global_average_pool(node)
            elif node.op == "ReduceMean":
                self.spatial_mean(node)


def nchwc_dynamic_convs(model_proto, block: int | None = None):
    """Rewrite a ``matmul``-form graph onto onnxruntime's NCHWc kernels (see :class:`_NchwcRewriter`).

    Only convs with ``group == 1`` and channel counts divisible by the block qualify; the others (the grouped
    convs of Dy-mobile, odd widths, the batch-as-groups conv of a batch > 1) stay as they are, and onnxruntime
    still blocks the static convs it can. Returns ``(model_proto, number of dynamic convs rewritten)``.
    """
    import onnx
    import onnx_graphsurgeon as gs

    block = block or nchwc_block_size()
    if not block:
        raise ExportError("this onnxruntime has no NCHWc kernels (x86 builds have them); use the 'matmul' form")
    graph = gs.import_onnx(model_proto)
    rewriter = _NchwcRewriter(graph, block)
    rewriter.run()
    graph.cleanup().toposort()
    out_proto = gs.export_onnx(graph)
    if not any(o.domain == NCHWC_DOMAIN for o in out_proto.opset_import):
        out_proto.opset_import.append(onnx.helper.make_opsetid(NCHWC_DOMAIN, 1))
    del out_proto.metadata_props[:]
    out_proto.metadata_props.extend(model_proto.metadata_props)
    return out_proto, rewriter.dynamic


# ---- export --------------------------------------------------------------------------------------------------------

def export_deploy_onnx(model: nn.Module, path, input_shape, form: str = "matmul", opset: int = 17):
    """Export ``model`` in ``form`` (one of :data:`DY_FORMS`) to ``path``; returns the export report.

    ``feature``/``kernel`` are :func:`export_onnx`'s forms; ``matmul`` is :func:`to_deploy_form` exported with the
    standard exporter (standard ops, fixed batch); ``matmul-nchwc`` is that graph after
    :func:`nchwc_dynamic_convs` (onnxruntime CPU only, for machines with this one's NCHWc block size), when at
    least :data:`NCHWC_MIN_SHARE` of the dynamic convs fit it (else the ``matmul`` graph; ``report.form`` says
    which was written).
    """
    import onnx

    from .export_onnx import export_onnx, get_metadata, set_metadata
    from .fileio import atomic_path

    if form not in DY_FORMS:
        raise ExportError(f"unknown deploy form {form!r}; choose one of {', '.join(DY_FORMS)}")
    if form in ("feature", "kernel"):
        return export_onnx(model, path, input_shape, form=form, dynamic_batch=False if form == "kernel" else None, opset=opset)
    name, args = getattr(model, "zoo_name", None), getattr(model, "zoo_kwargs", None)
    report = export_onnx(to_deploy_form(model), path, input_shape, form="kernel", dynamic_batch=False, opset=opset, model_name=name, model_args=args)
    proto = onnx.load(str(report.path))
    meta = {META_DEPLOY_FORM: form}
    if form == "matmul-nchwc":
        blocked, rewritten = nchwc_dynamic_convs(proto)
        total = _count_runtime_weight_convs(proto)
        if rewritten >= NCHWC_MIN_SHARE * total:
            proto = blocked
            meta["dynet_deploy.nchwc_block"] = str(nchwc_block_size())
            report.notes.append(f"{rewritten} of {total} dynamic convs on onnxruntime's NCHWc kernel (block {nchwc_block_size()})")
        else:
            form = meta[META_DEPLOY_FORM] = "matmul"
            report.notes.append(
                f"only {rewritten} of {total} dynamic convs fit onnxruntime's NCHWc kernel (grouped or odd widths): "
                "kept the matmul form, where isolated blocked convs cost more in layout changes than they save"
            )
    set_metadata(proto, {**get_metadata(proto), **meta})
    with atomic_path(report.path, ExportError) as tmp:
        onnx.save(proto, str(tmp))
    report.form = form
    return report


def _count_runtime_weight_convs(proto) -> int:
    constants = {t.name for t in proto.graph.initializer}
    constants |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    return sum(n.op_type == "Conv" and len(n.input) > 1 and n.input[1] not in constants for n in proto.graph.node)
