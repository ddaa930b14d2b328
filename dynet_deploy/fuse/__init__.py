"""The graph-surgeon pass: every dynamic-convolution subgraph -> one ``DyNetDynamicConv2d`` node.

Two shapes of subgraph are recognised, by structure, never by tensor or module names:

**Kernel form (batch-as-groups)**, what our ``--form kernel`` export and every public implementation
(timm's CondConv2d, DY-CNN, ODConv, ...) emit at a fixed batch ``B``: a ``Conv`` whose weight is computed at
run time, reading ``x`` reshaped from ``[B, C_in, H, W]`` to ``[1, B*C_in, H, W]`` (a zero ``Pad`` before or
after the reshape is absorbed into the pads) with ``group = B*g``; its output reshaped (and/or transposed
with only size-1 axes moving) back to ``[B, C_out, H', W']``. The weight's producers are walked back
through linear-algebra and shape ops (Gemm, MatMul, Einsum, Mul, ReduceSum, Reshape, Transpose, ...) to
the one run-time tensor they depend on: the coefficients. The aggregation is then *measured*, not
pattern-matched (:mod:`.probe`): the subgraph from the coefficients to the weight (and to a computed bias) is
run on onnxruntime with basis coefficients to read off the bank ``[K, C_out, C_in/g, kH, kW]`` (whatever the
exporter's permutation), and checked on fresh random coefficients to be exactly the linear map the op
computes, for each of three coefficient layouts (per expert ``[B, K]``, per channel ``[B, C_out, K]`` or
``[B, K, C_out]``). A subgraph that is not such a map is left untouched and reported. A second run-time tensor of
kH*kW values per sample (ODConv's spatial attention) is measured the same way and becomes the op's ``spatial``
input (op version 2); ODConv's filter attention after the conv folds into per-channel coefficients.

**Feature form** (our ``--form feature`` export): a ``Conv`` with a constant weight of ``K*C_out`` outputs,
a Reshape to ``[N, C_out, K, H', W']`` (or ``[N, K, C_out, ...]``), a Mul with the coefficients broadcast to
that shape and a ReduceSum over the K axis. The bank is the Conv weight, permuted.

After either, a bias added to the output (static, or aggregated from the same coefficients: a bias bank),
a BatchNormalization with constant statistics, and a Relu or Clip(0, 6) are folded into the node, each
only while the tensor before it has no other reader. Readers of the block input or of any intermediate
tensor outside the subgraph (a residual branch, the coefficient predictor) keep their tensors: the pass
re-points the subgraph's final tensor to the new node and lets ``cleanup`` drop what nothing reads.

When every batch-as-groups conv is fused, the batch becomes dynamic (:mod:`.dynamic_batch`): graph inputs and
outputs get a symbolic ``N`` and Reshape shape constants with the export batch baked in are rewritten
(``0`` = copy).

Modules: :mod:`.graph` (helpers), :mod:`.probe` (measuring an aggregation), :mod:`.matchers` (the two forms),
:mod:`.rewrite` (the node and the pass), :mod:`.dynamic_batch`.
"""

from .dynamic_batch import BATCH_DIM_NAME, make_batch_dynamic
from .graph import infer_shapes
from .rewrite import FusedConv, FuseReport, fuse_dynamic_convs

__all__ = ["BATCH_DIM_NAME", "FuseReport", "FusedConv", "fuse_dynamic_convs", "infer_shapes", "make_batch_dynamic"]
