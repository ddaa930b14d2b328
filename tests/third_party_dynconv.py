"""Dynamic convs written the way public implementations write them (our own code, for the fuse tests).

Each runs the per-sample conv with the batch-as-groups trick, so it exports only at a fixed batch. None uses
dynet_deploy's modules, and their parameter and tensor names differ from ours, so the fuse pass can only
recognise them by structure:

* ``CondConvStyle``: timm's CondConv2d shape: routing weights ``[B, K]`` (sigmoid of a linear layer on the
  pooled input) times the expert bank ``[K, C_out*C_in/g*k*k]`` by matmul; x viewed as ``[1, B*C, H, W]``;
  conv with ``groups = B*g``; output permuted ``[1, B*C_out, ...] -> [B*C_out, 1, ...]`` and viewed back.
  Optional "same" padding done by an explicit F.pad of the reshaped input (timm's dynamic padding).
* ``DyCNNStyle``: Dynamic Convolution (Chen et al. 2020) reimplementations: softmax attention with a
  temperature over K kernels from a two-layer squeeze MLP, weight via ``torch.mm`` and bias via ``torch.mm``,
  passed to conv2d as its bias.
* ``ODConvStyle``: ODConv's kernel-attention aggregation ``sum(attn * bank, dim=1)`` (Mul + ReduceSum)
  over a ``[K, C_out, C_in/g, k, k]`` bank, the kernel attention alone.
* ``ODConvFull``: ODConv (Li et al., ICLR 2022) with its four attentions as the public module computes them: one
  squeeze (GAP, 1x1 conv, BN, ReLU) and four heads, channel ``a_c`` and filter ``a_f`` (sigmoid, ``[B, C, 1, 1]``;
  no filter head for a depthwise layer), spatial ``a_s`` (sigmoid, ``[B, 1, 1, 1, k, k]``; none for k = 1) and
  kernel ``a_w`` (softmax over K, ``[B, K, 1, 1, 1, 1]``; the constant 1.0 for K = 1); ``x * a_c``, the weight
  ``sum(a_s * a_w * bank, dim=1)``, the output times ``a_f``. Inference form: no temperature.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CondConvStyle(nn.Module):
    def __init__(
        self, in_ch, out_ch, k, stride=1, padding=0, dilation=1, groups=1, experts=4, bias=True, same_pad=False
    ):
        super().__init__()
        self.in_ch, self.out_ch, self.k, self.stride, self.padding = in_ch, out_ch, k, stride, padding
        self.dilation, self.groups, self.experts, self.same_pad = dilation, groups, experts, same_pad
        self.weight_shape = (out_ch, in_ch // groups, k, k)
        self.route = nn.Linear(in_ch, experts)
        self.weight = nn.Parameter(
            torch.randn(experts, math.prod(self.weight_shape)) / math.sqrt(in_ch // groups * k * k)
        )
        self.bias = nn.Parameter(torch.randn(experts, out_ch) * 0.1) if bias else None

    def forward(self, x):
        b, c, h, w = x.shape
        routing = torch.sigmoid(self.route(F.adaptive_avg_pool2d(x, 1).flatten(1)))
        weight = torch.matmul(routing, self.weight).view((b * self.out_ch,) + self.weight_shape[1:])
        bias = torch.matmul(routing, self.bias).view(b * self.out_ch) if self.bias is not None else None
        x = x.reshape(1, b * c, h, w)
        if self.same_pad:
            # timm-style "same" padding for stride 1 of an even kernel: the extra pixel goes bottom/right
            total = self.dilation * (self.k - 1)
            x = F.pad(x, [total // 2, total - total // 2, total // 2, total - total // 2])
            out = F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups * b)
        else:
            out = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups * b)
        return out.permute([1, 0, 2, 3]).view(b, self.out_ch, out.shape[-2], out.shape[-1])


class DyCNNStyle(nn.Module):
    def __init__(
        self, in_ch, out_ch, k, stride=1, padding=0, dilation=1, groups=1, K=4, temperature=30.0, bias=True, ratio=0.25
    ):
        super().__init__()
        hidden = max(4, int(in_ch * ratio))
        self.fc1 = nn.Conv2d(in_ch, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, K, 1)
        self.temperature = temperature
        self.in_ch, self.out_ch, self.k, self.K = in_ch, out_ch, k, K
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.weight = nn.Parameter(torch.randn(K, out_ch, in_ch // groups, k, k) / math.sqrt(in_ch // groups * k * k))
        self.bias = nn.Parameter(torch.randn(K, out_ch) * 0.1) if bias else None

    def attention(self, x):
        a = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))).view(x.size(0), -1)
        return F.softmax(a / self.temperature, 1)

    def forward(self, x):
        batch, _, h, w = x.size()
        att = self.attention(x)
        x = x.view(1, -1, h, w)
        agg_w = torch.mm(att, self.weight.view(self.K, -1)).view(-1, self.in_ch // self.groups, self.k, self.k)
        agg_b = torch.mm(att, self.bias).view(-1) if self.bias is not None else None
        out = F.conv2d(x, agg_w, agg_b, self.stride, self.padding, self.dilation, self.groups * batch)
        return out.view(batch, self.out_ch, out.size(-2), out.size(-1))


class ODConvStyle(nn.Module):
    def __init__(self, in_ch, out_ch, k, stride=1, padding=0, dilation=1, groups=1, kernel_num=4):
        super().__init__()
        self.in_ch, self.out_ch, self.k, self.kernel_num = in_ch, out_ch, k, kernel_num
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.fc = nn.Conv2d(in_ch, 8, 1, bias=False)
        self.kernel_fc = nn.Conv2d(8, kernel_num, 1)
        self.weight = nn.Parameter(
            torch.randn(kernel_num, out_ch, in_ch // groups, k, k) / math.sqrt(in_ch // groups * k * k)
        )

    def forward(self, x):
        b, c, h, w = x.size()
        z = F.relu(self.fc(F.adaptive_avg_pool2d(x, 1)))
        kernel_attention = F.softmax(self.kernel_fc(z).view(b, -1, 1, 1, 1, 1), dim=1)
        agg = torch.sum(kernel_attention * self.weight.unsqueeze(dim=0), dim=1)
        agg = agg.view([-1, self.in_ch // self.groups, self.k, self.k])
        out = F.conv2d(x.reshape(1, -1, h, w), agg, None, self.stride, self.padding, self.dilation, self.groups * b)
        return out.view(b, self.out_ch, out.size(-2), out.size(-1))


class ODConvFull(nn.Module):
    def __init__(
        self,
        in_ch,
        out_ch,
        k,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        kernel_num=4,
        reduction=0.0625,
        min_channel=16,
        transposed_taps=False,
    ):
        super().__init__()
        hidden = max(int(in_ch * reduction), min_channel)
        self.in_ch, self.out_ch, self.k, self.kernel_num = in_ch, out_ch, k, kernel_num
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.transposed_taps = transposed_taps  # the spatial head's values in (j, i) order, transposed back
        self.squeeze = nn.Conv2d(in_ch, hidden, 1, bias=False)
        self.squeeze_bn = nn.BatchNorm2d(hidden)
        self.channel_head = nn.Conv2d(hidden, in_ch, 1)
        self.filter_head = None if groups == in_ch == out_ch else nn.Conv2d(hidden, out_ch, 1)
        self.spatial_head = None if k == 1 else nn.Conv2d(hidden, k * k, 1)
        self.kernel_head = None if kernel_num == 1 else nn.Conv2d(hidden, kernel_num, 1)
        self.weight = nn.Parameter(
            torch.randn(kernel_num, out_ch, in_ch // groups, k, k) / math.sqrt(in_ch // groups * k * k)
        )

    def forward(self, x):
        b, c, h, w = x.size()
        z = F.relu(self.squeeze_bn(self.squeeze(F.adaptive_avg_pool2d(x, 1))))
        channel = torch.sigmoid(self.channel_head(z).view(b, -1, 1, 1))
        filt = torch.sigmoid(self.filter_head(z).view(b, -1, 1, 1)) if self.filter_head is not None else 1.0
        spatial = 1.0
        if self.spatial_head is not None:
            spatial = torch.sigmoid(self.spatial_head(z).view(b, 1, 1, 1, self.k, self.k))
            if self.transposed_taps:
                spatial = spatial.transpose(-1, -2)
        kernel = F.softmax(self.kernel_head(z).view(b, -1, 1, 1, 1, 1), dim=1) if self.kernel_head is not None else 1.0
        x = (x * channel).reshape(1, -1, h, w)
        weight = torch.sum(spatial * kernel * self.weight.unsqueeze(dim=0), dim=1)
        weight = weight.view([-1, self.in_ch // self.groups, self.k, self.k])
        out = F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups * b)
        return out.view(b, self.out_ch, out.size(-2), out.size(-1)) * filt


class ThirdPartyNet(nn.Module):
    """stem -> dyn conv + BN + ReLU -> dyn conv + BN (+ residual from the block input) -> ReLU6 dyn conv -> head.

    The block input feeds the coefficient branch, the conv and the residual, so the pass must keep its
    other readers; the second conv's output feeds the residual Add (folded with the ReLU after it into the node).
    """

    def __init__(self, style: str, ch: int = 8, groups: int = 1, **kw):
        super().__init__()
        cls = {"condconv": CondConvStyle, "dycnn": DyCNNStyle, "odconv": ODConvStyle}[style]
        self.stem = nn.Sequential(nn.Conv2d(3, ch, 3, padding=1), nn.BatchNorm2d(ch), nn.ReLU())
        self.conv1 = cls(ch, ch, 3, padding=1, groups=groups, **kw)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = cls(ch, ch, 3, padding=1, groups=groups, **kw)
        self.bn2 = nn.BatchNorm2d(ch)
        self.conv3 = cls(ch, 2 * ch, 3, stride=2, padding=1, **kw)
        self.head = nn.Linear(2 * ch, 5)

    def forward(self, x):
        x = self.stem(x)
        y = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(y)) + x)
        x = torch.clamp(self.conv3(x), 0.0, 6.0)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))
