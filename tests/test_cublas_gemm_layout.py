"""The cuBLAS tactics' GEMMs, checked on the CPU.

cuBLAS itself needs a GPU, but the GEMMs the tactics enqueue are host arithmetic in the library
(``dynet_conv_cuda_cublas_gemm``: sizes, leading dimensions, batch strides and offsets, exactly what the tactic
passes to ``cublasGemmStridedBatchedEx``). Here each descriptor is executed with numpy under cuBLAS's column-major
semantics (element (i, j) of operand X_b at ``x_offset + b * stride_x + i + j * ld_x``) on the real NCHW tensors,
every index bounds-checked and no two batches writing the same element, and the result compared with the op's
PyTorch reference (float64 inputs in float32 storage: rel <= 1e-5): the kernel fusion, the pointwise convolution
(groups included) and the im2col convolution in chunks of samples (the im2col layout built here from its documented
definition).
"""

from __future__ import annotations

import numpy as np
import pytest

from dynet_deploy.op import native
from dynet_deploy.op.reference import dynamic_conv_numpy

REL = 1e-5


@pytest.fixture(scope="module")
def cuda():
    native.ensure_built()
    if native.cuda_library_path() is None:
        pytest.skip("libdynet_dynamic_conv_cuda.so was not built (no nvcc)")
    return native.load_cuda_library()


def run_gemm(desc: dict, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    """Column-major strided-batched C_b = A_b @ B_b on flat arrays, as cuBLAS (CUBLAS_OP_N, alpha 1, beta 0)."""
    m, n, k = desc["m"], desc["n"], desc["k"]
    assert desc["lda"] >= m and desc["ldb"] >= k and desc["ldc"] >= m  # cuBLAS's own argument rules
    i_m, i_n, i_k = np.arange(m), np.arange(n), np.arange(k)
    written = np.zeros(c.size, np.int32)
    for batch in range(desc["batch"]):
        ia = desc["a_offset"] + batch * desc["stride_a"] + i_m[:, None] + i_k[None, :] * desc["lda"]
        ib = desc["b_offset"] + batch * desc["stride_b"] + i_k[:, None] + i_n[None, :] * desc["ldb"]
        ic = desc["c_offset"] + batch * desc["stride_c"] + i_m[:, None] + i_n[None, :] * desc["ldc"]
        for name, idx, arr in (("A", ia, a), ("B", ib, b), ("C", ic, c)):
            assert idx.min() >= 0 and idx.max() < arr.size, f"{name} of batch {batch} leaves its tensor"
        c[ic] = a[ia].astype(np.float64) @ b[ib].astype(np.float64)
        np.add.at(written, ic.ravel(), 1)
    assert written.max() <= 1, "two GEMM batches write the same element"


def im2col(x, n0, samples, kh, kw, stride, pads, dilation, h_out, w_out):
    """cols[s, ci*kH*kW + i*kW + j, oh*W_out + ow] = x[n0+s, ci, oh*sh - pt + i*dh, ow*sw - pl + j*dw] (0 outside)."""
    n, c_in, h, w = x.shape
    cols = np.zeros((samples, c_in * kh * kw, h_out * w_out), x.dtype)
    for i in range(kh):
        for j in range(kw):
            for oh in range(h_out):
                ih = oh * stride[0] - pads[0] + i * dilation[0]
                if not 0 <= ih < h:
                    continue
                for ow in range(w_out):
                    iw = ow * stride[1] - pads[1] + j * dilation[1]
                    if 0 <= iw < w:
                        cols[:, np.arange(c_in) * kh * kw + i * kw + j, oh * w_out + ow] = x[
                            n0 : n0 + samples, :, ih, iw
                        ]
    return cols


LAYERS = [
    # n, c_in, c_out, h, w, k, kh, kw, groups, per_channel, stride, pads, dilation
    (3, 8, 12, 5, 7, 4, 1, 1, 1, True, (1, 1), (0, 0, 0, 0), (1, 1)),
    (4, 12, 8, 6, 5, 3, 1, 1, 4, True, (1, 1), (0, 0, 0, 0), (1, 1)),
    (2, 6, 10, 4, 4, 5, 1, 1, 2, False, (1, 1), (0, 0, 0, 0), (1, 1)),
    (5, 6, 8, 9, 8, 4, 3, 3, 1, True, (1, 1), (1, 1, 1, 1), (1, 1)),
    (5, 8, 12, 11, 9, 2, 3, 2, 4, False, (2, 1), (1, 0, 2, 1), (1, 2)),
    (3, 4, 4, 10, 10, 3, 5, 5, 4, True, (2, 2), (2, 2, 2, 2), (1, 1)),
    (4, 6, 9, 7, 7, 3, 1, 1, 3, True, (2, 2), (0, 0, 0, 0), (1, 1)),  # 1x1 stride 2: im2col only
]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda v: "x".join(map(str, v[:9])) if isinstance(v, tuple) else v)
def test_cublas_tactic_gemms_compute_the_op(cuda, layer):
    n, c_in, c_out, h, w, k, kh, kw, groups, per_channel, stride, pads, dilation = layer
    rng = np.random.default_rng(abs(hash(layer)) % 2**32)
    x = rng.standard_normal((n, c_in, h, w)).astype(np.float32)
    coeff = rng.uniform(0.1, 1.0, (n, c_out if per_channel else 1, k)).astype(np.float32)
    weight = (rng.standard_normal((k, c_out, c_in // groups, kh, kw)) * 0.3).astype(np.float32)
    p = native.make_params(
        x.shape, coeff.shape, weight.shape, stride=stride, pads=pads, dilation=dilation, groups=groups
    )
    h_out, w_out = native.output_hw(p, cuda)
    attrs = dict(
        stride_h=stride[0],
        stride_w=stride[1],
        pad_top=pads[0],
        pad_left=pads[1],
        pad_bottom=pads[2],
        pad_right=pads[3],
        dilation_h=dilation[0],
        dilation_w=dilation[1],
        groups=groups,
    )
    ref = dynamic_conv_numpy(x, coeff, weight, **attrs).astype(np.float64)
    r = (c_in // groups) * kh * kw

    pointwise = kh == kw == 1 and stride == (1, 1) and not any(pads)
    algos = [native.ALGO_CUBLAS_IM2COL] + ([native.ALGO_CUBLAS_GEMM] if pointwise else [])
    if not pointwise:
        with pytest.raises(native.DynamicConvCallError) as err:
            native.cublas_gemm(p, native.ALGO_CUBLAS_GEMM, 1)
        assert err.value.status == native.ERR_UNSUPPORTED
    for algo in algos:
        # 1. kernel fusion into the fused-kernel buffer [N, C_out, R]
        fused = np.full(n * c_out * r, np.nan)
        run_gemm(native.cublas_gemm(p, algo, 0), weight.ravel(), coeff.ravel(), fused)
        expected = np.einsum("nck,kcr->ncr", np.broadcast_to(coeff, (n, c_out, k)), weight.reshape(k, c_out, r))
        assert np.allclose(fused.reshape(n, c_out, r), expected, rtol=1e-6, atol=1e-6)
        # 2. the convolution: pointwise on x itself; im2col in chunks of 2 samples (offsets of later chunks)
        y = np.full(n * c_out * h_out * w_out, np.nan)
        if algo == native.ALGO_CUBLAS_GEMM:
            run_gemm(native.cublas_gemm(p, algo, 1, 0, n), x.ravel(), fused, y)
        else:
            for n0 in range(0, n, 2):
                s = min(2, n - n0)
                cols = im2col(x, n0, s, kh, kw, stride, pads, dilation, h_out, w_out)
                run_gemm(native.cublas_gemm(p, algo, 1, n0, s), cols.ravel(), fused, y)
        assert not np.isnan(y).any(), f"algo {algo}: elements of y no GEMM wrote"
        rel = np.linalg.norm(y - ref.ravel()) / np.linalg.norm(ref)
        assert rel <= REL, (algo, rel, np.abs(y - ref.ravel()).max())


def test_gemm_descriptor_arguments_are_checked(cuda):
    p = native.make_params((2, 4, 3, 3), (2, 4, 2), (2, 4, 4, 1, 1))
    with pytest.raises(native.DynamicConvCallError) as err:
        native.cublas_gemm(p, native.ALGO_CUBLAS_GEMM, 1, 1, 2)  # samples beyond N
    assert err.value.status == native.ERR_INVALID_ARGUMENT
    with pytest.raises(native.DynamicConvCallError) as err:
        native.cublas_gemm(p, native.ALGO_TWO_STEP, 0)
    assert err.value.status == native.ERR_UNSUPPORTED
