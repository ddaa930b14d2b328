/*
 * Fast CPU kernel of DyNetDynamicConv2d (fp32 compute), used by the onnxruntime custom-op library.
 *
 * Two steps per call, each a parallel loop over independent tasks that the caller runs on its own thread pool
 * (onnxruntime's intra-op pool through KernelContext_ParallelFor), so the kernel never starts threads of its own:
 *
 *   1. kernel fusion: w~[n,t] = sum_k coeff[n,t|0,k] * bank[k,t] for the whole batch, streaming the bank once
 *      (a GEMV at batch 1, a GEMM above); the bank is packed once, when the weights are known, into the layout
 *      the convolution reads, so the fused kernels need no reorder;
 *   2. convolution of each sample with its fused kernels:
 *      - GEMM path (C_in/groups * kH * kW large): the input is unrolled (im2col) into column panels per pixel
 *        block and multiplied by 8-row panels of the fused kernels with an AVX-512, AVX2 or portable micro-kernel;
 *      - direct path (depthwise and small groups): one output row at a time, one tap at a time, vectorised along
 *        the row;
 *      - narrow groups (at most 8 input and 8 output channels per group, on the GEMM bank): each task fuses its
 *        group's kernels into L1 and computes lanes over the padded input flattened with its row pitch.
 *
 * The C++ reference (dynet_conv_cpu_f32) stays the oracle; the tests hold this kernel to it.
 */
#ifndef DYNET_DYNAMIC_CONV_CPU_KERNEL_H
#define DYNET_DYNAMIC_CONV_CPU_KERNEL_H

#include "dynetDynamicConv.h"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace dynet
{

// Runs fn(usr, i) for i in [0, total), possibly in parallel; the kernel's only threading hook.
struct ParallelFor
{
    void (*run)(void* runner, void (*fn)(void*, size_t), size_t total, void* usr) = nullptr;
    void* runner = nullptr;
    void operator()(size_t total, void (*fn)(void*, size_t), void* usr) const;
};

enum class CpuIsa : int32_t
{
    kGeneric = 0, // portable C++ (compiler-vectorised for the build's baseline)
    kAvx2 = 1,    // AVX2 + FMA
    kAvx512 = 2   // AVX-512F
};

// The best ISA this CPU supports, or the one named by the environment variable DYNET_CPU_ISA
// ("generic", "avx2", "avx512"; a request above what the CPU supports is lowered to what it supports).
CpuIsa selectedIsa();
char const* isaName(CpuIsa isa);

// The basis bank (weight, bias_bank, bias) re-laid out for one (C_out, C_in/groups, kH, kW, K, groups) and one path.
class PackedBank
{
public:
    // Pack from the op's layouts (weight [K, C_out, C_in/groups, kH, kW] in p.weight_dtype, bias_bank [K, C_out],
    // bias [C_out]); p must carry k, c_out, kh, kw, groups, has_bias_bank, has_bias, weight_dtype; cinPerGroup =
    // weight dim 2. A reduced-precision bank (DYNET_FLOAT16 / DYNET_BFLOAT16) stays in its 16-bit storage and is
    // widened where the kernels are fused. Returns DYNET_OK or DYNET_ERR_INVALID_ARGUMENT.
    int32_t pack(DynetConvParams const& p, int32_t cinPerGroup, void const* weight, float const* biasBank,
        float const* bias);

    // Same shapes and bias flags as p (the storage type is the bank's own: every type is computed the same way).
    bool matches(DynetConvParams const& p) const;
    bool gemmPath() const { return gemm_; }

    int32_t k = 0, cOut = 0, cinG = 0, kh = 0, kw = 0, groups = 1;
    int32_t coutG = 0;   // output channels per group
    int32_t panels = 0;  // 8-row panels per group (GEMM path)
    int64_t r = 0;       // elements of one output channel's kernel: cinG * kh * kw
    bool hasBiasBank = false;
    bool hasBias = false;
    int32_t dtype = DYNET_FLOAT32; // storage of the basis kernels: weight (fp32) or weight16 (fp16 / bf16 bits)
    // GEMM path: [groups][panels][K][R][8] (rows beyond coutG are zero); direct path: [C_out][K][R].
    std::vector<float> weight;
    std::vector<uint16_t> weight16; // the same layout, for a 16-bit bank
    std::vector<float> biasBank; // [C_out][K]
    std::vector<float> bias;     // [C_out]

private:
    bool gemm_ = false;
};

// True when the kernel takes the GEMM path for this layer (else the direct path).
bool usesGemmPath(int32_t cinPerGroup, int32_t coutPerGroup, int32_t kh, int32_t kw);

// The loop nest convForward takes for a layer: direct (depthwise, small groups), narrow groups (at most 8 input and
// 8 output channels per group, on the GEMM bank: kernels fused per task, lanes over the flattened padded input),
// GEMM with the kernels fused inside the tasks (at most 256 output pixels), implicit GEMM on the padded input (wide
// rows, or 1x1 stride 1 unpadded), GEMM on im2col panels (the rest). kInvalid when p's output size cannot be computed.
enum class CpuPath : int32_t
{
    kInvalid = -1,
    kDirect = 0,
    kGemmSmall = 1,
    kGemmImplicit = 2,
    kGemmIm2col = 3,
    kNarrow = 4
};
CpuPath cpuPath(DynetConvParams const& p);
// "direct", "gemm-small", "gemm-implicit", "gemm-im2col", "narrow", "invalid"
char const* cpuPathName(CpuPath path);

// Op version 2's optional tensors of a call (fp32): present exactly when p's has_spatial / has_residual / has_mean is 1.
struct ConvExtras
{
    float const* spatial = nullptr;  // [N, kH*kW]
    float const* residual = nullptr; // [N, C_out, H_out, W_out], added before the activation
    float* mean = nullptr;           // [N, C_out] (the op's [N, C_out, 1, 1]), mean of y over (H_out, W_out)
};

// y = DyNetDynamicConv2d(x, coeff; bank) in fp32. p must be valid (dynet_conv_validate) and match the bank.
int32_t convForward(DynetConvParams const& p, PackedBank const& bank, float const* x, float const* coeff,
    ConvExtras const& extras, float* y, ParallelFor const& parallel, CpuIsa isa);

} // namespace dynet

#endif // DYNET_DYNAMIC_CONV_CPU_KERNEL_H
