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

//! Enqueue the fusion of kernels ([N*C_out, C_in/groups, kH, kW]) and biases ([N*C_out]) in dtype.
int32_t fuseForCudnn(DynetConvParams const& p, int32_t dtype, void const* coeff, void const* weight,
    void const* biasBank, void const* bias, void* fusedWeights, void* fusedBiases, cudaStream_t stream) noexcept;

//! Enqueue y = act(y) in place over `count` elements (NaN-propagating, like the kernels' epilogues).
int32_t activateInPlace(int32_t dtype, void* y, int64_t count, int32_t act, cudaStream_t stream) noexcept;

// ---- the cuDNN tactic (dynetDynamicConvCudnn.cpp; stubs returning DYNET_ERR_UNSUPPORTED without cuDNN) -----
#if defined(DYNET_HAVE_CUDNN)
constexpr bool kHaveCudnn = true;
#else
constexpr bool kHaveCudnn = false;
#endif

//! cuDNN handle, descriptors and algorithm of one shape.
struct CudnnPlan;

//! Make the cuDNN state for p (asymmetric pads: DYNET_ERR_UNSUPPORTED); *scratchBytes <= scratchLimit.
int32_t cudnnPlanCreate(DynetConvParams const& p, int32_t dtype, size_t scratchLimit, CudnnPlan** plan,
    size_t* scratchBytes, char* msg, size_t msgSize) noexcept;

//! Enqueue the grouped convolution with fused bias and activation on the fused kernels and biases.
int32_t cudnnPlanRun(CudnnPlan const* plan, void const* x, void const* fusedWeights, void const* fusedBiases, void* y,
    void* scratch, size_t scratchBytes, cudaStream_t stream) noexcept;

void cudnnPlanDestroy(CudnnPlan* plan) noexcept;

} // namespace dynet

#endif // DYNET_DYNAMIC_CONV_KERNEL_H
