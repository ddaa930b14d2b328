// CUDA kernels of DyNetDynamicConv2d, kept apart from the TensorRT glue so they can be called and tested without
// TensorRT (through the C ABI in dynetDynamicConv.h). This header adds the C++ view the plugin uses.
#ifndef DYNET_DYNAMIC_CONV_KERNEL_H
#define DYNET_DYNAMIC_CONV_KERNEL_H

#include "dynetDynamicConv.h"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace dynet
{

//! Which convolution kernel a call runs (chosen from the shapes alone, so it is fixed per TensorRT profile shape).
enum class ConvPath : int32_t
{
    kDirect = 0,       //!< depthwise and small groups (C_in/groups <= kDirectMaxCinPerGroup): one thread per output
    kPointwise = 1,    //!< 1x1, stride 1, no padding: per-sample, per-group tiled GEMM on the NCHW planes
    kImplicitGemm = 2, //!< everything else: tiled implicit GEMM (im2col gathered into shared memory)
};

constexpr int32_t kDirectMaxCinPerGroup = 8;
constexpr int32_t kDirectMaxKernelElements = 2048; //!< C_in/groups * kH * kW staged in shared memory
constexpr int32_t kWorkspaceAlignment = 256;

//! The path a valid call takes.
ConvPath selectPath(DynetConvParams const& p) noexcept;

//! The algorithm DYNET_ALGO_AUTO resolves to for this call (DYNET_ALGO_TWO_STEP or DYNET_ALGO_ONE_KERNEL; AUTO
//! never picks cuDNN, which needs a plan).
int32_t resolveAlgo(DynetConvParams const& p, int32_t algo) noexcept;

//! Bytes of one element of a DynetDataType (0 when unknown).
size_t dtypeSize(int32_t dtype) noexcept;

//! align256(N * C_out * C_in/groups * kH * kW * sizeof(dtype)): the fused kernels of the batch.
size_t fusedKernelBytes(DynetConvParams const& p, int32_t dtype) noexcept;

//! align256(N * C_out * sizeof(dtype)): the fused biases of the batch (cuDNN tactic).
size_t fusedBiasBytes(DynetConvParams const& p, int32_t dtype) noexcept;

//! Round bytes up to kWorkspaceAlignment.
size_t alignBytes(size_t bytes) noexcept;

//! Enqueue the kernel fusion of the batch into fusedWeights ([N*C_out, C_in/groups, kH, kW], dtype): fp32
//! accumulation, each value scaled by spatial[n, i*kW + j] when spatial is not NULL (op version 2), then rounded to
//! dtype once.
int32_t fuseKernels(DynetConvParams const& p, int32_t dtype, void const* coeff, void const* weight,
    void const* spatial, void* fusedWeights, cudaStream_t stream) noexcept;

//! Enqueue the fusion of kernels ([N*C_out, C_in/groups, kH, kW], spatial-scaled as in fuseKernels) and biases
//! ([N*C_out]) in dtype.
int32_t fuseForCudnn(DynetConvParams const& p, int32_t dtype, void const* coeff, void const* weight,
    void const* biasBank, void const* bias, void const* spatial, void* fusedWeights, void* fusedBiases,
    cudaStream_t stream) noexcept;

//! Enqueue y = act(y) in place over `count` elements (NaN-propagating, like the kernels' epilogues).
int32_t activateInPlace(int32_t dtype, void* y, int64_t count, int32_t act, cudaStream_t stream) noexcept;

//! Enqueue the fused biases b~[n, t] ([N*C_out], dtype) alone.
int32_t fuseBiases(DynetConvParams const& p, int32_t dtype, void const* coeff, void const* biasBank, void const* bias,
    void* fusedBiases, cudaStream_t stream) noexcept;

//! Enqueue y[plane, :] = act(y[plane, :] + fusedBiases[plane] + residual[plane, :]) over `planes` planes of `pixels`
//! elements (fusedBiases / residual may be NULL: not added). NaN-propagating like the kernels' epilogues.
int32_t biasActivate(int32_t dtype, void* y, void const* fusedBiases, void const* residual, int64_t planes,
    int64_t pixels, int32_t act, cudaStream_t stream) noexcept;

//! Enqueue mean[plane] = mean of y[plane, :] over `pixels` elements for `planes` planes (op version 2's output),
//! accumulated in fp32 (one block per plane, a fixed reduction order), rounded to dtype once.
int32_t planeMean(int32_t dtype, void const* y, void* mean, int64_t planes, int64_t pixels,
    cudaStream_t stream) noexcept;

//! Enqueue the im2col of samples [n0, n0 + samples) of x into cols ([samples, C_in*kH*kW, H_out*W_out], dtype).
int32_t im2col(DynetConvParams const& p, int32_t dtype, void const* x, int32_t n0, int32_t samples, void* cols,
    cudaStream_t stream) noexcept;

// ---- the cuDNN tactic (dynetDynamicConvCudnn.cpp; stubs returning DYNET_ERR_UNSUPPORTED without cuDNN) -----
#if defined(DYNET_HAVE_CUDNN)
constexpr bool kHaveCudnn = true;
#else
constexpr bool kHaveCudnn = false;
#endif

//! cuDNN descriptors and algorithm of one shape (the handle is the context's).
struct CudnnPlan;

//! A cuDNN handle on the current device (loads libcudnn first); outside enqueue.
int32_t cudnnHandleCreate(void** handle, char* msg, size_t msgSize) noexcept;
void cudnnHandleDestroy(void* handle) noexcept;

//! Make the cuDNN state for p with `handle` (asymmetric pads: DYNET_ERR_UNSUPPORTED); *scratchBytes <= scratchLimit.
int32_t cudnnPlanCreate(void* handle, DynetConvParams const& p, int32_t dtype, size_t scratchLimit, CudnnPlan** plan,
    size_t* scratchBytes, char* msg, size_t msgSize) noexcept;

//! Enqueue the grouped convolution with fused bias, residual (cuDNN's z with alpha2 = 1; NULL: none) and activation
//! on the fused kernels and biases.
int32_t cudnnPlanRun(CudnnPlan const* plan, void const* x, void const* fusedWeights, void const* fusedBiases,
    void const* residual, void* y, void* scratch, size_t scratchBytes, cudaStream_t stream) noexcept;

void cudnnPlanDestroy(CudnnPlan* plan) noexcept;

// ---- the cuBLAS tactics (dynetDynamicConvCublas.cpp; stubs returning DYNET_ERR_UNSUPPORTED without cuBLAS) -------
#if defined(DYNET_HAVE_CUBLAS)
constexpr bool kHaveCublas = true;
#else
constexpr bool kHaveCublas = false;
#endif

//! cuBLAS's scratch inside the workspace (cublasSetWorkspace), so that it never allocates in an enqueue.
constexpr size_t kCublasScratchBytes = size_t{32} << 20;
//! The im2col columns of a chunk of samples take at most this much (unless one sample alone needs more).
constexpr size_t kIm2colChunkBytes = size_t{256} << 20;

//! DYNET_ALGO_CUBLAS_GEMM runs pointwise layers only: 1x1, stride 1, no pads.
bool isPointwise(DynetConvParams const& p) noexcept;

//! Bytes of the im2col columns of one sample: C_in * kH * kW * H_out * W_out * sizeof(dtype).
size_t im2colSampleBytes(DynetConvParams const& p, int32_t dtype) noexcept;

//! Samples per im2col chunk when the columns may take `columnBytes` (the formula's 256 MiB, or what a workspace limit
//! leaves): min(N, max(1, columnBytes / im2colSampleBytes)); 0 when not even one sample fits and columnBytes was a
//! limit (mustFit).
int32_t im2colSamplesPerChunk(DynetConvParams const& p, int32_t dtype, size_t columnBytes, bool mustFit) noexcept;

//! Workspace of a cuBLAS tactic with `samples` per im2col chunk (ignored by the GEMM tactic); 0 when it cannot run p.
size_t cublasWorkspaceBytes(DynetConvParams const& p, int32_t dtype, int32_t algo, int32_t samples) noexcept;

//! One column-major strided-batched GEMM of a cuBLAS tactic: C_b = A_b * B_b for b < batch, X_b starting at element
//! xOffset + b * strideX of its tensor with leading dimension ldX; A is m x k, B k x n, C m x n.
struct GemmDesc
{
    int64_t m, n, k, batch;
    int64_t aOffset, lda, strideA;
    int64_t bOffset, ldb, strideB;
    int64_t cOffset, ldc, strideC;
};

//! The kernel fusion as a GEMM: A = weight, B = coeff, C = the fused kernels (batch 1 for per-expert coefficients).
GemmDesc fusionGemm(DynetConvParams const& p) noexcept;

//! The convolution of samples [n0, n0 + samples) as a GEMM: A = x (CUBLAS_GEMM) or the chunk's im2col columns
//! (CUBLAS_IM2COL, offset 0), B = the fused kernels, C = y.
GemmDesc convGemm(DynetConvParams const& p, int32_t algo, int32_t n0, int32_t samples) noexcept;

//! A cuBLAS handle on the current device (loads libcublas first), fp32 math without TF32; outside enqueue.
int32_t cublasHandleCreate(void** handle, char* msg, size_t msgSize) noexcept;
void cublasHandleDestroy(void* handle) noexcept;

//! Enqueue a cuBLAS tactic: fusion GEMM (the fuse kernel instead when t.spatial is set, so each fused value is
//! scaled before its one rounding), fused biases, (im2col +) batched GEMM per chunk, then bias + residual +
//! activation. t.mean is not written here (the caller's reduction). The workspace holds
//! [fused kernels | fused biases | cuBLAS scratch | columns] (cublasWorkspaceBytes).
int32_t cublasRun(void* handle, DynetConvParams const& p, int32_t dtype, int32_t algo, int32_t samplesPerChunk,
    DynetConvTensors const& t, void* workspace, size_t workspaceBytes, cudaStream_t stream) noexcept;

} // namespace dynet

#endif // DYNET_DYNAMIC_CONV_KERNEL_H
