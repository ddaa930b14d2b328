// CUDA kernels of DyNetDynamicConv2d, kept apart from the TensorRT glue so they can be called and tested without
// TensorRT (through the C ABI in dynetDynamicConv.h). This header adds the C++ view the plugin uses.
#ifndef DYNET_DYNAMIC_CONV_KERNEL_H
#define DYNET_DYNAMIC_CONV_KERNEL_H

#include "dynetDynamicConv.h"

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

//! The algorithm DYNET_ALGO_AUTO resolves to for this call (DYNET_ALGO_TWO_STEP or DYNET_ALGO_ONE_KERNEL).
int32_t resolveAlgo(DynetConvParams const& p, int32_t algo) noexcept;

//! Bytes of one element of a DynetDataType (0 when unknown).
size_t dtypeSize(int32_t dtype) noexcept;

} // namespace dynet

#endif // DYNET_DYNAMIC_CONV_KERNEL_H
