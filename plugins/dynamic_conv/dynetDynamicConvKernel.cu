// CUDA kernels of DyNetDynamicConv2d (NCHW, fp32 and fp16 with fp32 accumulation).
//
// Three algorithms (DynetAlgo):
//   TWO_STEP   - fuseKernels: W~[n,t,:] = sum_k coeff[n,t|0,k] * weight[k,t,:] for the whole batch into the
//                workspace (a [N*C_c, K] x [K, C_out*R] product, R = C_in/groups*kH*kW), then one convolution
//                kernel that reads W~ like an ordinary per-sample weight.
//   ONE_KERNEL - the convolution kernel aggregates the kernel tile it needs itself; no workspace, one launch.
//   CUDNN      - fuseKernels writes the fused kernels and biases, then cuDNN runs one grouped convolution
//                (dynetDynamicConvCudnn.cpp); needs a plan (dynet_conv_cuda_plan_create).
// Every algorithm rounds the fused kernels and biases to the I/O dtype before convolving (a cuDNN convolution on
// fp16 kernels must), so the tactics TensorRT chooses between differ only in accumulation order.
// Op version 2 (README, "Versions"): spatial scales each fused kernel value in fp32 before its one rounding (in
// fuseKernelsKernel for TWO_STEP, CUDNN and the cuBLAS tactics, inline in fusedWeight for ONE_KERNEL); residual is
// added in each epilogue after the bias and before the activation (cuDNN: its z input, alpha2 = 1; cuBLAS: the
// bias + activation kernel); mean is one reduction kernel (planeMeanKernel) over the stored y after any tactic.
// Sizes, offsets and loop counters are 64-bit: validation allows tensors of up to 2^31-1 elements, where 32-bit
// grid-stride counters would wrap.
// Three convolution paths (ConvPath): direct (depthwise / small groups), pointwise GEMM, implicit GEMM.
// The fused bias sum_k coeff*bias_bank + bias is computed in the epilogue, together with the activation, so the
// workspace holds the fused kernels only. Nothing here allocates or synchronises: every launch goes on the
// caller's stream, so a call can be captured in a CUDA graph.
#include "dynetDynamicConvKernel.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <new>

namespace dynet
{
namespace
{

__device__ __forceinline__ float toFloat(float v)
{
    return v;
}
__device__ __forceinline__ float toFloat(__half v)
{
    return __half2float(v);
}
template <typename T>
__device__ __forceinline__ T fromFloat(float v);
template <>
__device__ __forceinline__ float fromFloat<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}
template <typename T>
__device__ __forceinline__ float load(T const* p)
{
    return toFloat(__ldg(p));
}

//! The value a fused kernel or bias element has once stored in T (identity for fp32).
template <typename T>
__device__ __forceinline__ float roundTo(float v)
{
    return toFloat(fromFloat<T>(v));
}

//! ReLU / ReLU6 that propagate NaN like PyTorch (fmaxf(NaN, 0) would return 0).
__device__ __forceinline__ float activate(float v, int32_t act)
{
    if (act == DYNET_ACT_RELU)
    {
        return v < 0.F ? 0.F : v;
    }
    if (act == DYNET_ACT_RELU6)
    {
        return v < 0.F ? 0.F : (v > 6.F ? 6.F : v);
    }
    return v;
}

//! Kernel-side copy of the call: derived sizes precomputed once on the host.
struct ConvArgs
{
    int32_t n, cIn, h, w, cOut, k, coeffChannels, kh, kw;
    int32_t strideH, strideW, padTop, padLeft, dilH, dilW;
    int32_t groups, cinG, coutG, act, hOut, wOut;
    int32_t khw;    // kH * kW (<= weight elements < 2^31)
    int64_t R;      // C_in/groups * kH * kW
    int64_t pixOut; // H_out * W_out
    int64_t pixIn;  // H * W
};

//! coeff row of (n, t): [K] values; the per-expert form (C_c = 1) shares row 0.
template <typename T>
__device__ __forceinline__ T const* coeffRow(ConvArgs const& a, T const* coeff, int64_t n, int32_t t)
{
    return coeff + (n * a.coeffChannels + (a.coeffChannels == 1 ? 0 : t)) * a.k;
}

//! bias(n, t) = bias[t] + sum_k coeff[n,t|0,k] * bias_bank[k,t]  (0 when both are absent).
template <typename T>
__device__ __forceinline__ float fusedBias(
    ConvArgs const& a, T const* coeff, T const* biasBank, T const* bias, int64_t n, int32_t t)
{
    float b = bias != nullptr ? load(bias + t) : 0.F;
    if (biasBank != nullptr)
    {
        T const* c = coeffRow(a, coeff, n, t);
        for (int32_t k = 0; k < a.k; ++k)
        {
            b = fmaf(load(c + k), load(biasBank + static_cast<int64_t>(k) * a.cOut + t), b);
        }
    }
    return b;
}

//! spatial[n, tap] (op version 2), tap = i*kW + j of a kernel element. Callers with a spatial input multiply the
//! fp32 sum by it before the one rounding to T.
template <typename T>
__device__ __forceinline__ float spatialScale(ConvArgs const& a, T const* spatial, int64_t n, int64_t tap)
{
    return load(spatial + n * a.khw + tap);
}

//! One element of the fused kernel, aggregated on the fly: spatial[n, r % (kH*kW)] * sum_k coeff[n,t|0,k] *
//! weight[k,t,r] (spatial NULL: unscaled), rounded to T.
template <typename T>
__device__ __forceinline__ float fusedWeight(ConvArgs const& a, T const* coeff, T const* weight, T const* spatial,
    int64_t n, int32_t t, int64_t r)
{
    T const* c = coeffRow(a, coeff, n, t);
    int64_t const plane = static_cast<int64_t>(a.cOut) * a.R;
    T const* w = weight + static_cast<int64_t>(t) * a.R + r;
    float acc = 0.F;
    for (int32_t k = 0; k < a.k; ++k)
    {
        acc = fmaf(load(c + k), load(w + k * plane), acc);
    }
    if (spatial != nullptr)
    {
        acc *= spatialScale(a, spatial, n, r % a.khw);
    }
    return roundTo<T>(acc);
}

// ---- step 1 of TWO_STEP: kernel fusion for the whole batch ------------------------------------------------------
// One thread per (t, r): its K basis values are loaded once into registers and reused for every sample, so the
// bank is read once per call; writes are coalesced along r. With spatial (op version 2) each sample's sum is scaled
// by its tap's value (r % (kH*kW), which equals i % (kH*kW) since R is a multiple of kH*kW) before the rounding.
constexpr int32_t kFuseRegK = 8;

template <typename T>
__global__ void fuseKernelsKernel(ConvArgs a, T const* __restrict__ coeff, T const* __restrict__ weight,
    T const* __restrict__ spatial, T* __restrict__ fused)
{
    int64_t const total = static_cast<int64_t>(a.cOut) * a.R;
    int64_t const plane = total;
    int64_t const stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride)
    {
        int32_t const t = static_cast<int32_t>(i / a.R);
        float wreg[kFuseRegK];
#pragma unroll
        for (int32_t k = 0; k < kFuseRegK; ++k)
        {
            wreg[k] = k < a.k ? load(weight + k * plane + i) : 0.F;
        }
        for (int32_t n = 0; n < a.n; ++n)
        {
            T const* c = coeffRow(a, coeff, n, t);
            float acc = 0.F;
#pragma unroll
            for (int32_t k = 0; k < kFuseRegK; ++k)
            {
                if (k < a.k)
                {
                    acc = fmaf(load(c + k), wreg[k], acc);
                }
            }
            for (int32_t k = kFuseRegK; k < a.k; ++k)
            {
                acc = fmaf(load(c + k), load(weight + k * plane + i), acc);
            }
            if (spatial != nullptr)
            {
                acc *= spatialScale(a, spatial, n, i % a.khw);
            }
            fused[n * plane + i] = fromFloat<T>(acc);
        }
    }
}

//! The fused biases b~[n, t] of the batch, in T (the cuDNN tactic's bias tensor [1, N*C_out, 1, 1]).
template <typename T>
__global__ void fuseBiasKernel(ConvArgs a, T const* __restrict__ coeff, T const* __restrict__ biasBank,
    T const* __restrict__ bias, T* __restrict__ fusedBiasOut)
{
    int64_t const total = static_cast<int64_t>(a.n) * a.cOut;
    int64_t const stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride)
    {
        int64_t const n = i / a.cOut;
        int32_t const t = static_cast<int32_t>(i - n * a.cOut);
        fusedBiasOut[i] = fromFloat<T>(fusedBias(a, coeff, biasBank, bias, n, t));
    }
}

//! In place y = act(y) (the cuDNN tactic's ReLU6, which cuDNN's fused epilogue cannot express).
template <typename T>
__global__ void activateInPlaceKernel(T* __restrict__ y, int64_t count, int32_t act)
{
    int64_t const stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride)
    {
        y[i] = fromFloat<T>(activate(toFloat(y[i]), act));
    }
}

//! y[plane, :] = act(y[plane, :] + b~[plane] + residual[plane, :]) (the cuBLAS tactics' epilogue); fusedBias /
//! residual NULL: not added.
template <typename T>
__global__ void biasActivateKernel(T* __restrict__ y, T const* __restrict__ fusedBias, T const* __restrict__ residual,
    int64_t planes, int64_t pixels, int32_t act)
{
    int64_t const total = planes * pixels;
    int64_t const stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride)
    {
        float v = toFloat(y[i]);
        if (fusedBias != nullptr)
        {
            v += toFloat(fusedBias[i / pixels]);
        }
        if (residual != nullptr)
        {
            v += load(residual + i);
        }
        y[i] = fromFloat<T>(activate(v, act));
    }
}

//! mean[plane] = sum(y[plane, :]) / pixels (op version 2's output): one block per plane (grid-strided), fp32
//! partial sums per thread, then a fixed warp-shuffle and shared-memory tree, so the result does not depend on
//! scheduling. NaN and Inf in y reach the mean as they reach a sum.
constexpr int32_t kMeanThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kMeanThreads) planeMeanKernel(T const* __restrict__ y, T* __restrict__ mean,
    int64_t planes, int64_t pixels)
{
    __shared__ float partial[kMeanThreads / 32];
    int32_t const lane = static_cast<int32_t>(threadIdx.x) & 31;
    int32_t const warp = static_cast<int32_t>(threadIdx.x) >> 5;
    for (int64_t plane = blockIdx.x; plane < planes; plane += gridDim.x)
    {
        T const* yp = y + plane * pixels;
        float s = 0.F;
        for (int64_t p = threadIdx.x; p < pixels; p += blockDim.x)
        {
            s += toFloat(yp[p]);
        }
#pragma unroll
        for (int32_t offset = 16; offset > 0; offset >>= 1)
        {
            s += __shfl_down_sync(0xffffffffU, s, offset);
        }
        if (lane == 0)
        {
            partial[warp] = s;
        }
        __syncthreads();
        if (warp == 0)
        {
            s = lane < kMeanThreads / 32 ? partial[lane] : 0.F;
#pragma unroll
            for (int32_t offset = 16; offset > 0; offset >>= 1)
            {
                s += __shfl_down_sync(0xffffffffU, s, offset);
            }
            if (lane == 0)
            {
                mean[plane] = fromFloat<T>(s / static_cast<float>(pixels));
            }
        }
        __syncthreads(); // partial is reused by the next plane
    }
}

//! Explicit im2col of `samples` samples starting at n0: cols[s, ci*kH*kW + i*kW + j, p] (zero where the window is
//! in the padding). Row r of sample s is channel ci = r / (kH*kW), so group g's rows are [g*R, (g+1)*R).
template <typename T>
__global__ void im2colKernel(ConvArgs a, T const* __restrict__ x, int32_t n0, int32_t samples, T* __restrict__ cols)
{
    int64_t const rows = static_cast<int64_t>(a.cIn) * a.khw;
    int64_t const total = static_cast<int64_t>(samples) * rows * a.pixOut;
    int64_t const stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride)
    {
        int64_t const p = e % a.pixOut;
        int64_t const rest = e / a.pixOut;
        int64_t const r = rest % rows;
        int64_t const s = rest / rows;
        int64_t const ci = r / a.khw;
        int32_t const rem = static_cast<int32_t>(r - ci * a.khw);
        int32_t const i = rem / a.kw;
        int32_t const j = rem - i * a.kw;
        int64_t const oh = p / a.wOut;
        int64_t const ow = p - oh * a.wOut;
        int64_t const ih = oh * a.strideH - a.padTop + static_cast<int64_t>(i) * a.dilH;
        int64_t const iw = ow * a.strideW - a.padLeft + static_cast<int64_t>(j) * a.dilW;
        T v = fromFloat<T>(0.F);
        if (ih >= 0 && ih < a.h && iw >= 0 && iw < a.w)
        {
            v = x[((static_cast<int64_t>(n0) + s) * a.cIn + ci) * a.pixIn + ih * a.w + iw];
        }
        cols[e] = v;
    }
}

// ---- direct path: depthwise and small groups ---------------------------------------------------------------------
// Block = one (n, t) output plane (grid.x) times a strip of pixels (grid.y, grid-strided). The plane's fused
// kernel (R <= kDirectMaxKernelElements values) and bias are staged in shared memory once per block.
constexpr int32_t kDirectThreads = 256;

template <typename T, bool kOneKernel>
__global__ void __launch_bounds__(kDirectThreads) directConvKernel(ConvArgs a, T const* __restrict__ x,
    T const* __restrict__ coeff, T const* __restrict__ weight, T const* __restrict__ fused,
    T const* __restrict__ biasBank, T const* __restrict__ bias, T const* __restrict__ spatial,
    T const* __restrict__ residual, T* __restrict__ y)
{
    extern __shared__ float sKernel[]; // [R] then bias
    int64_t const plane = blockIdx.x;
    int64_t const n = plane / a.cOut;
    int32_t const t = static_cast<int32_t>(plane % a.cOut);
    for (int32_t r = threadIdx.x; r < a.R; r += blockDim.x)
    {
        sKernel[r] = kOneKernel ? fusedWeight(a, coeff, weight, spatial, n, t, r)
                                : load(fused + (n * a.cOut + t) * a.R + r);
    }
    if (threadIdx.x == 0)
    {
        sKernel[a.R] = roundTo<T>(fusedBias(a, coeff, biasBank, bias, n, t));
    }
    __syncthreads();

    int32_t const g = t / a.coutG;
    T const* xg = x + (n * a.cIn + static_cast<int64_t>(g) * a.cinG) * a.pixIn;
    T* yp = y + plane * a.pixOut;
    T const* rp = residual != nullptr ? residual + plane * a.pixOut : nullptr;
    float const b = sKernel[a.R];
    int64_t const pixStride = static_cast<int64_t>(gridDim.y) * blockDim.x;
    for (int64_t p = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; p < a.pixOut; p += pixStride)
    {
        int64_t const oh = p / a.wOut;
        int64_t const ow = p - oh * a.wOut;
        int64_t const ih0 = oh * a.strideH - a.padTop;
        int64_t const iw0 = ow * a.strideW - a.padLeft;
        float acc = b;
        for (int32_t ci = 0; ci < a.cinG; ++ci)
        {
            T const* xc = xg + static_cast<int64_t>(ci) * a.pixIn;
            float const* kc = sKernel + ci * a.khw;
            for (int32_t i = 0; i < a.kh; ++i)
            {
                int64_t const ih = ih0 + static_cast<int64_t>(i) * a.dilH;
                if (ih < 0 || ih >= a.h)
                {
                    continue;
                }
                T const* xr = xc + ih * a.w;
                for (int32_t j = 0; j < a.kw; ++j)
                {
                    int64_t const iw = iw0 + static_cast<int64_t>(j) * a.dilW;
                    if (iw >= 0 && iw < a.w)
                    {
                        acc = fmaf(kc[i * a.kw + j], load(xr + iw), acc);
                    }
                }
            }
        }
        if (rp != nullptr)
        {
            acc += load(rp + p);
        }
        yp[p] = fromFloat<T>(activate(acc, a.act));
    }
}

// ---- GEMM paths: pointwise and implicit GEMM ------------------------------------------------------------------
// Per (sample, group) z: Y[coutG, pixOut] = W~[coutG, R] * B[R, pixOut], B the (implicit) im2col of x.
// 64x64 output tile per block, 16-deep K slices through shared memory, 4x4 outputs per thread, fp32 accumulation.
constexpr int32_t kTileM = 64;
constexpr int32_t kTileN = 64;
constexpr int32_t kTileK = 16;
constexpr int32_t kGemmThreads = 256;

template <typename T, bool kPointwise, bool kOneKernel>
__global__ void __launch_bounds__(kGemmThreads) gemmConvKernel(ConvArgs a, T const* __restrict__ x,
    T const* __restrict__ coeff, T const* __restrict__ weight, T const* __restrict__ fused,
    T const* __restrict__ biasBank, T const* __restrict__ bias, T const* __restrict__ spatial,
    T const* __restrict__ residual, T* __restrict__ y)
{
    // sA is transposed (sA[kk][m]) so the inner product reads float4 rows; the +4 padding keeps those reads
    // 16-byte aligned and spreads the column-wise stores over the banks.
    __shared__ __align__(16) float sA[kTileK][kTileM + 4];
    __shared__ __align__(16) float sB[kTileK][kTileN];

    int32_t const tid = threadIdx.x;
    int32_t const tx = tid % (kTileN / 4); // 16 column groups of 4
    int32_t const ty = tid / (kTileN / 4); // 16 row groups of 4
    int64_t const p0 = static_cast<int64_t>(blockIdx.x) * kTileN;
    int64_t const nz = static_cast<int64_t>(a.n) * a.groups;
    int64_t const mTiles = (static_cast<int64_t>(a.coutG) + kTileM - 1) / kTileM;

    // grid.y and grid.z are capped at 65535: both loops stride over what the grid does not cover.
    for (int64_t z = blockIdx.z; z < nz; z += gridDim.z)
    for (int64_t mTile = blockIdx.y; mTile < mTiles; mTile += gridDim.y)
    {
        int64_t const m0 = mTile * kTileM;
        int64_t const n = z / a.groups;
        int32_t const g = static_cast<int32_t>(z % a.groups);
        int64_t const tBase = static_cast<int64_t>(g) * a.coutG;
        T const* xg = x + (n * a.cIn + static_cast<int64_t>(g) * a.cinG) * a.pixIn;

        float acc[4][4];
#pragma unroll
        for (int32_t i = 0; i < 4; ++i)
        {
#pragma unroll
            for (int32_t j = 0; j < 4; ++j)
            {
                acc[i][j] = 0.F;
            }
        }

        for (int64_t r0 = 0; r0 < a.R; r0 += kTileK)
        {
            // A tile: 64 rows (output channels) x 16 reduction elements; consecutive threads walk r.
#pragma unroll
            for (int32_t l = 0; l < (kTileM * kTileK) / kGemmThreads; ++l)
            {
                int32_t const e = tid + l * kGemmThreads;
                int32_t const mm = e / kTileK;
                int32_t const kk = e % kTileK;
                int64_t const m = m0 + mm;
                int64_t const r = r0 + kk;
                float v = 0.F;
                if (m < a.coutG && r < a.R)
                {
                    int32_t const t = static_cast<int32_t>(tBase + m);
                    v = kOneKernel ? fusedWeight(a, coeff, weight, spatial, n, t, r)
                                   : load(fused + (n * a.cOut + t) * a.R + r);
                }
                sA[kk][mm] = v;
            }
            // B tile: 16 reduction elements x 64 output pixels; consecutive threads walk pixels.
#pragma unroll
            for (int32_t l = 0; l < (kTileK * kTileN) / kGemmThreads; ++l)
            {
                int32_t const e = tid + l * kGemmThreads;
                int32_t const kk = e / kTileN;
                int32_t const pp = e % kTileN;
                int64_t const r = r0 + kk;
                int64_t const p = p0 + pp;
                float v = 0.F;
                if (r < a.R && p < a.pixOut)
                {
                    if (kPointwise)
                    {
                        v = load(xg + r * a.pixIn + p);
                    }
                    else
                    {
                        int64_t const ci = r / a.khw;
                        int32_t const rem = static_cast<int32_t>(r - ci * a.khw);
                        int32_t const i = rem / a.kw;
                        int32_t const j = rem - i * a.kw;
                        int64_t const oh = p / a.wOut;
                        int64_t const ow = p - oh * a.wOut;
                        int64_t const ih = oh * a.strideH - a.padTop + static_cast<int64_t>(i) * a.dilH;
                        int64_t const iw = ow * a.strideW - a.padLeft + static_cast<int64_t>(j) * a.dilW;
                        if (ih >= 0 && ih < a.h && iw >= 0 && iw < a.w)
                        {
                            v = load(xg + ci * a.pixIn + ih * a.w + iw);
                        }
                    }
                }
                sB[kk][pp] = v;
            }
            __syncthreads();
#pragma unroll
            for (int32_t kk = 0; kk < kTileK; ++kk)
            {
                float4 const av = *reinterpret_cast<float4 const*>(&sA[kk][ty * 4]);
                float4 const bv = *reinterpret_cast<float4 const*>(&sB[kk][tx * 4]);
                float const ar[4] = {av.x, av.y, av.z, av.w};
                float const br[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
                for (int32_t i = 0; i < 4; ++i)
                {
#pragma unroll
                    for (int32_t j = 0; j < 4; ++j)
                    {
                        acc[i][j] = fmaf(ar[i], br[j], acc[i][j]);
                    }
                }
            }
            __syncthreads();
        }

        // Epilogue: fused bias (rounded to T like the stored kernels), residual, activation, store.
#pragma unroll
        for (int32_t i = 0; i < 4; ++i)
        {
            int64_t const m = m0 + ty * 4 + i;
            if (m >= a.coutG)
            {
                continue;
            }
            int32_t const t = static_cast<int32_t>(tBase + m);
            float const b = roundTo<T>(fusedBias(a, coeff, biasBank, bias, n, t));
            T* yr = y + (n * a.cOut + t) * a.pixOut;
            T const* rr = residual != nullptr ? residual + (n * a.cOut + t) * a.pixOut : nullptr;
#pragma unroll
            for (int32_t j = 0; j < 4; ++j)
            {
                int64_t const p = p0 + tx * 4 + j;
                if (p < a.pixOut)
                {
                    float v = acc[i][j] + b;
                    if (rr != nullptr)
                    {
                        v += load(rr + p);
                    }
                    yr[p] = fromFloat<T>(activate(v, a.act));
                }
            }
        }
    }
}

ConvArgs makeArgs(DynetConvParams const& p)
{
    ConvArgs a{};
    a.n = p.n;
    a.cIn = p.c_in;
    a.h = p.h;
    a.w = p.w;
    a.cOut = p.c_out;
    a.k = p.k;
    a.coeffChannels = p.coeff_channels;
    a.kh = p.kh;
    a.kw = p.kw;
    a.strideH = p.stride_h;
    a.strideW = p.stride_w;
    a.padTop = p.pad_top;
    a.padLeft = p.pad_left;
    a.dilH = p.dilation_h;
    a.dilW = p.dilation_w;
    a.groups = p.groups;
    a.cinG = p.c_in / p.groups;
    a.coutG = p.c_out / p.groups;
    a.act = p.activation;
    DynetConvSizes sizes; // p is validated by the caller: the output extents fit int32 (y has < 2^31 elements)
    dynet_conv_sizes(&p, &sizes, nullptr, 0);
    a.hOut = static_cast<int32_t>(sizes.h_out);
    a.wOut = static_cast<int32_t>(sizes.w_out);
    a.khw = p.kh * p.kw;
    a.R = static_cast<int64_t>(a.cinG) * a.khw;
    a.pixOut = static_cast<int64_t>(a.hOut) * a.wOut;
    a.pixIn = static_cast<int64_t>(p.h) * p.w;
    return a;
}

size_t align(size_t bytes)
{
    return (bytes + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment;
}

//! 1-D grid for a grid-stride loop over `total` elements.
unsigned blocksFor(int64_t total, int32_t threads)
{
    return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((total + threads - 1) / threads, 65535)));
}

//! The launch error of the kernel just enqueued (cudaGetLastError also clears it).
int32_t launchStatus()
{
    return cudaGetLastError() == cudaSuccess ? DYNET_OK : DYNET_ERR_CUDA;
}

//! The tensors of one call in T (absent ones NULL) plus the fused kernels in the workspace (TWO_STEP).
template <typename T>
struct Tensors
{
    T const* x;
    T const* coeff;
    T const* weight;
    T const* biasBank;
    T const* bias;
    T const* spatial;
    T const* residual;
    T* y;
    T* mean;
};

template <typename T>
Tensors<T> typed(DynetConvParams const& p, DynetConvTensors const& t)
{
    return Tensors<T>{static_cast<T const*>(t.x), static_cast<T const*>(t.coeff), static_cast<T const*>(t.weight),
        p.has_bias_bank ? static_cast<T const*>(t.bias_bank) : nullptr,
        p.has_bias ? static_cast<T const*>(t.bias) : nullptr,
        p.has_spatial ? static_cast<T const*>(t.spatial) : nullptr,
        p.has_residual ? static_cast<T const*>(t.residual) : nullptr, static_cast<T*>(t.y),
        p.has_mean ? static_cast<T*>(t.mean) : nullptr};
}

template <typename T, bool kOneKernel>
int32_t launchConv(ConvPath path, ConvArgs const& a, Tensors<T> const& t, T const* fused, cudaStream_t stream)
{
    if (path == ConvPath::kDirect)
    {
        unsigned const planes = static_cast<unsigned>(static_cast<int64_t>(a.n) * a.cOut);
        unsigned const strips = static_cast<unsigned>(
            std::min<int64_t>((a.pixOut + kDirectThreads - 1) / kDirectThreads, 65535));
        size_t const smem = (static_cast<size_t>(a.R) + 1) * sizeof(float);
        directConvKernel<T, kOneKernel><<<dim3(planes, strips), kDirectThreads, smem, stream>>>(
            a, t.x, t.coeff, t.weight, fused, t.biasBank, t.bias, t.spatial, t.residual, t.y);
        return launchStatus();
    }
    dim3 const grid(static_cast<unsigned>((a.pixOut + kTileN - 1) / kTileN),
        static_cast<unsigned>(std::min<int64_t>((static_cast<int64_t>(a.coutG) + kTileM - 1) / kTileM, 65535)),
        static_cast<unsigned>(std::min<int64_t>(static_cast<int64_t>(a.n) * a.groups, 65535)));
    if (path == ConvPath::kPointwise)
    {
        gemmConvKernel<T, true, kOneKernel><<<grid, kGemmThreads, 0, stream>>>(
            a, t.x, t.coeff, t.weight, fused, t.biasBank, t.bias, t.spatial, t.residual, t.y);
    }
    else
    {
        gemmConvKernel<T, false, kOneKernel><<<grid, kGemmThreads, 0, stream>>>(
            a, t.x, t.coeff, t.weight, fused, t.biasBank, t.bias, t.spatial, t.residual, t.y);
    }
    return launchStatus();
}

template <typename T>
int32_t launchFuseKernels(ConvArgs const& a, T const* coeff, T const* weight, T const* spatial, T* fused,
    cudaStream_t stream)
{
    constexpr int32_t kThreads = 256;
    fuseKernelsKernel<T><<<blocksFor(static_cast<int64_t>(a.cOut) * a.R, kThreads), kThreads, 0, stream>>>(
        a, coeff, weight, spatial, fused);
    return launchStatus();
}

template <typename T>
int32_t planeMeanT(void const* y, void* mean, int64_t planes, int64_t pixels, cudaStream_t stream)
{
    // One block per plane up to 2^20 blocks (grid-strided beyond); planes >= 1 for a valid call.
    unsigned const blocks = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(planes, int64_t{1} << 20)));
    planeMeanKernel<T><<<blocks, kMeanThreads, 0, stream>>>(static_cast<T const*>(y), static_cast<T*>(mean), planes,
        pixels);
    return launchStatus();
}

template <typename T>
int32_t run(DynetConvParams const& p, int32_t algo, DynetConvTensors const& tensors, void* workspace,
    cudaStream_t stream)
{
    Tensors<T> const t = typed<T>(p, tensors);
    ConvArgs const a = makeArgs(p);
    ConvPath const path = selectPath(p);
    int32_t status = DYNET_OK;
    if (algo == DYNET_ALGO_ONE_KERNEL)
    {
        status = launchConv<T, true>(path, a, t, nullptr, stream);
    }
    else
    {
        auto* fused = static_cast<T*>(workspace);
        status = launchFuseKernels<T>(a, t.coeff, t.weight, t.spatial, fused, stream);
        if (status == DYNET_OK) // never launch the convolution on kernels that were not written
        {
            status = launchConv<T, false>(path, a, t, fused, stream);
        }
    }
    if (status == DYNET_OK && t.mean != nullptr)
    {
        status = planeMeanT<T>(t.y, t.mean, static_cast<int64_t>(a.n) * a.cOut, a.pixOut, stream);
    }
    return status;
}

template <typename T>
int32_t fuseKernelsT(DynetConvParams const& p, void const* coeff, void const* weight, void const* spatial,
    void* fused, cudaStream_t stream)
{
    return launchFuseKernels<T>(makeArgs(p), static_cast<T const*>(coeff), static_cast<T const*>(weight),
        p.has_spatial ? static_cast<T const*>(spatial) : nullptr, static_cast<T*>(fused), stream);
}

template <typename T>
int32_t fuseForCudnnT(DynetConvParams const& p, void const* coeffv, void const* weightv, void const* biasBankv,
    void const* biasv, void const* spatial, void* fusedWeights, void* fusedBiases, cudaStream_t stream)
{
    ConvArgs const a = makeArgs(p);
    auto const* coeff = static_cast<T const*>(coeffv);
    int32_t const status = fuseKernelsT<T>(p, coeffv, weightv, spatial, fusedWeights, stream);
    if (status != DYNET_OK)
    {
        return status;
    }
    constexpr int32_t kThreads = 256;
    fuseBiasKernel<T><<<blocksFor(static_cast<int64_t>(a.n) * a.cOut, kThreads), kThreads, 0, stream>>>(a, coeff,
        p.has_bias_bank ? static_cast<T const*>(biasBankv) : nullptr, p.has_bias ? static_cast<T const*>(biasv) : nullptr,
        static_cast<T*>(fusedBiases));
    return launchStatus();
}

template <typename T>
int32_t fuseBiasesT(DynetConvParams const& p, void const* coeff, void const* biasBank, void const* bias, void* out,
    cudaStream_t stream)
{
    ConvArgs const a = makeArgs(p);
    constexpr int32_t kThreads = 256;
    fuseBiasKernel<T><<<blocksFor(static_cast<int64_t>(a.n) * a.cOut, kThreads), kThreads, 0, stream>>>(a,
        static_cast<T const*>(coeff), p.has_bias_bank ? static_cast<T const*>(biasBank) : nullptr,
        p.has_bias ? static_cast<T const*>(bias) : nullptr, static_cast<T*>(out));
    return launchStatus();
}

template <typename T>
int32_t biasActivateT(void* y, void const* fusedBias, void const* residual, int64_t planes, int64_t pixels,
    int32_t act, cudaStream_t stream)
{
    constexpr int32_t kThreads = 256;
    biasActivateKernel<T><<<blocksFor(planes * pixels, kThreads), kThreads, 0, stream>>>(static_cast<T*>(y),
        static_cast<T const*>(fusedBias), static_cast<T const*>(residual), planes, pixels, act);
    return launchStatus();
}

template <typename T>
int32_t im2colT(DynetConvParams const& p, void const* x, int32_t n0, int32_t samples, void* cols, cudaStream_t stream)
{
    ConvArgs const a = makeArgs(p);
    constexpr int32_t kThreads = 256;
    int64_t const total = static_cast<int64_t>(samples) * a.cIn * a.khw * a.pixOut;
    im2colKernel<T><<<blocksFor(total, kThreads), kThreads, 0, stream>>>(a, static_cast<T const*>(x), n0, samples,
        static_cast<T*>(cols));
    return launchStatus();
}

template <typename T>
int32_t activateT(void* y, int64_t count, int32_t act, cudaStream_t stream)
{
    constexpr int32_t kThreads = 256;
    activateInPlaceKernel<T><<<blocksFor(count, kThreads), kThreads, 0, stream>>>(static_cast<T*>(y), count, act);
    return launchStatus();
}

} // namespace

ConvPath selectPath(DynetConvParams const& p) noexcept
{
    int32_t const cinG = p.c_in / p.groups;
    if (cinG <= kDirectMaxCinPerGroup && static_cast<int64_t>(cinG) * p.kh * p.kw <= kDirectMaxKernelElements)
    {
        return ConvPath::kDirect;
    }
    bool const pointwise = p.kh == 1 && p.kw == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_top == 0
        && p.pad_left == 0 && p.pad_bottom == 0 && p.pad_right == 0;
    return pointwise ? ConvPath::kPointwise : ConvPath::kImplicitGemm;
}

int32_t resolveAlgo(DynetConvParams const& p, int32_t algo) noexcept
{
    if (algo != DYNET_ALGO_AUTO)
    {
        return algo;
    }
    // The direct path stages each plane's kernel in shared memory anyway, so aggregating it there costs K*R FMAs
    // per block and saves a launch and the workspace; the GEMM paths re-read each kernel tile for every pixel
    // tile, where pre-fused kernels avoid K-fold weight traffic. Revisit with the GPU check's timings.
    return selectPath(p) == ConvPath::kDirect ? DYNET_ALGO_ONE_KERNEL : DYNET_ALGO_TWO_STEP;
}

size_t dtypeSize(int32_t dtype) noexcept
{
    return dtype == DYNET_FLOAT32 ? 4 : dtype == DYNET_FLOAT16 ? 2 : 0;
}

size_t fusedKernelBytes(DynetConvParams const& p, int32_t dtype) noexcept
{
    // The validator's checked count (at most 2^31-1 elements); 0 for params it refuses.
    DynetConvSizes sizes;
    if (dynet_conv_sizes(&p, &sizes, nullptr, 0) != DYNET_OK)
    {
        return 0;
    }
    return align(static_cast<size_t>(sizes.fused_elements) * dtypeSize(dtype));
}

size_t fusedBiasBytes(DynetConvParams const& p, int32_t dtype) noexcept
{
    return align(static_cast<size_t>(p.n) * static_cast<size_t>(p.c_out) * dtypeSize(dtype));
}

int32_t fuseKernels(DynetConvParams const& p, int32_t dtype, void const* coeff, void const* weight,
    void const* spatial, void* fusedWeights, cudaStream_t stream) noexcept
{
    if (dtype == DYNET_FLOAT32)
    {
        return fuseKernelsT<float>(p, coeff, weight, spatial, fusedWeights, stream);
    }
    return fuseKernelsT<__half>(p, coeff, weight, spatial, fusedWeights, stream);
}

int32_t fuseForCudnn(DynetConvParams const& p, int32_t dtype, void const* coeff, void const* weight,
    void const* biasBank, void const* bias, void const* spatial, void* fusedWeights, void* fusedBiases,
    cudaStream_t stream) noexcept
{
    if (dtype == DYNET_FLOAT32)
    {
        return fuseForCudnnT<float>(p, coeff, weight, biasBank, bias, spatial, fusedWeights, fusedBiases, stream);
    }
    return fuseForCudnnT<__half>(p, coeff, weight, biasBank, bias, spatial, fusedWeights, fusedBiases, stream);
}

int32_t activateInPlace(int32_t dtype, void* y, int64_t count, int32_t act, cudaStream_t stream) noexcept
{
    if (dtype == DYNET_FLOAT32)
    {
        return activateT<float>(y, count, act, stream);
    }
    return activateT<__half>(y, count, act, stream);
}

size_t alignBytes(size_t bytes) noexcept
{
    return align(bytes);
}

int32_t fuseBiases(DynetConvParams const& p, int32_t dtype, void const* coeff, void const* biasBank, void const* bias,
    void* fusedBiases, cudaStream_t stream) noexcept
{
    if (dtype == DYNET_FLOAT32)
    {
        return fuseBiasesT<float>(p, coeff, biasBank, bias, fusedBiases, stream);
    }
    return fuseBiasesT<__half>(p, coeff, biasBank, bias, fusedBiases, stream);
}

int32_t biasActivate(int32_t dtype, void* y, void const* fusedBiases, void const* residual, int64_t planes,
    int64_t pixels, int32_t act, cudaStream_t stream) noexcept
{
    if (dtype == DYNET_FLOAT32)
    {
        return biasActivateT<float>(y, fusedBiases, residual, planes, pixels, act, stream);
    }
    return biasActivateT<__half>(y, fusedBiases, residual, planes, pixels, act, stream);
}

int32_t planeMean(int32_t dtype, void const* y, void* mean, int64_t planes, int64_t pixels,
    cudaStream_t stream) noexcept
{
    if (dtype == DYNET_FLOAT32)
    {
        return planeMeanT<float>(y, mean, planes, pixels, stream);
    }
    return planeMeanT<__half>(y, mean, planes, pixels, stream);
}

int32_t im2col(DynetConvParams const& p, int32_t dtype, void const* x, int32_t n0, int32_t samples, void* cols,
    cudaStream_t stream) noexcept
{
    if (dtype == DYNET_FLOAT32)
    {
        return im2colT<float>(p, x, n0, samples, cols, stream);
    }
    return im2colT<__half>(p, x, n0, samples, cols, stream);
}

#if !defined(DYNET_HAVE_CUDNN)
// Built without cuDNN: the cuDNN tactic reports itself unsupported.
int32_t cudnnHandleCreate(void** handle, char* msg, size_t msgSize) noexcept
{
    *handle = nullptr;
    return dynet_conv_cuda_library_status(DYNET_LIBRARY_CUDNN, msg, msgSize);
}

void cudnnHandleDestroy(void* /*handle*/) noexcept {}

int32_t cudnnPlanCreate(void* /*handle*/, DynetConvParams const& /*p*/, int32_t /*dtype*/, size_t /*scratchLimit*/,
    CudnnPlan** plan, size_t* scratchBytes, char* msg, size_t msgSize) noexcept
{
    *plan = nullptr;
    *scratchBytes = 0;
    return dynet_conv_cuda_library_status(DYNET_LIBRARY_CUDNN, msg, msgSize);
}

int32_t cudnnPlanRun(CudnnPlan const* /*plan*/, void const* /*x*/, void const* /*fusedWeights*/,
    void const* /*fusedBiases*/, void const* /*residual*/, void* /*y*/, void* /*scratch*/, size_t /*scratchBytes*/,
    cudaStream_t /*stream*/) noexcept
{
    return DYNET_ERR_UNSUPPORTED;
}

void cudnnPlanDestroy(CudnnPlan* /*plan*/) noexcept {}
#endif

} // namespace dynet

// ---- contexts and plans ---------------------------------------------------------------------------------------

struct DynetConvCudaContext
{
    int device{-1};         // the device the handles were made on (-1: none yet)
    void* cudnn{nullptr};   // cudnnHandle_t
    void* cublas{nullptr};  // cublasHandle_t
};

struct DynetConvCudaPlan
{
    DynetConvParams params{};
    int32_t dtype{DYNET_FLOAT32};
    int32_t algo{DYNET_ALGO_TWO_STEP}; // resolved, never AUTO
    size_t workspaceBytes{0};
    DynetConvCudaContext* ownedContext{nullptr}; // dynet_conv_cuda_plan_create's private context
    DynetConvCudaContext* context{nullptr};      // the context whose handles the plan uses
    dynet::CudnnPlan* cudnn{nullptr};            // DYNET_ALGO_CUDNN only
    int32_t samplesPerChunk{0};                  // DYNET_ALGO_CUBLAS_IM2COL only
};

namespace
{

bool isCublasAlgo(int32_t algo)
{
    return algo == DYNET_ALGO_CUBLAS_GEMM || algo == DYNET_ALGO_CUBLAS_IM2COL;
}

int32_t checkCall(DynetConvParams const* p, int32_t dtype, int32_t algo)
{
    int32_t const status = dynet_conv_validate(p, nullptr, 0);
    if (status != DYNET_OK)
    {
        return status;
    }
    if (algo < DYNET_ALGO_AUTO || algo > DYNET_ALGO_LAST)
    {
        return DYNET_ERR_INVALID_ARGUMENT;
    }
    if (dynet::dtypeSize(dtype) == 0)
    {
        return DYNET_ERR_UNSUPPORTED;
    }
    return DYNET_OK;
}

void writeMsg(char* msg, size_t size, char const* text)
{
    if (msg != nullptr && size > 0)
    {
        std::snprintf(msg, size, "%s", text);
    }
}

char const* dtypeName(int32_t dtype)
{
    return dtype == DYNET_FLOAT32 ? "float32"
        : dtype == DYNET_FLOAT16  ? "float16"
        : dtype == DYNET_BFLOAT16 ? "bfloat16"
                                  : "an unknown type";
}

//! The CUDA kernels read weight in the I/O dtype. strict (the version-2 enqueues): p.weight_dtype must equal dtype.
//! Otherwise (workspace sizes, plans) the version-1 convention is accepted as well: weight_dtype left at its default
//! DYNET_FLOAT32 with an fp16 dtype is a version-1 caller whose weight is in dtype (dynet_conv_cuda_plan_run).
int32_t checkWeightType(DynetConvParams const& p, int32_t dtype, bool strict, char* msg, size_t size)
{
    if (p.weight_dtype == dtype || (!strict && p.weight_dtype == DYNET_FLOAT32))
    {
        return DYNET_OK;
    }
    if (msg != nullptr && size > 0)
    {
        std::snprintf(msg, size, "the CUDA kernels take the weight bank in the I/O dtype (%s), got weight_dtype %s: a "
            "reduced-precision bank runs on the onnxruntime CPU library only", dtypeName(dtype),
            dtypeName(p.weight_dtype));
    }
    return DYNET_ERR_UNSUPPORTED;
}

//! The tensors a version-1 entry point was given, as the version-2 struct (optional inputs taken only when present,
//! as dynet_conv_cuda always did).
DynetConvTensors tensorsV1(DynetConvParams const& p, void const* x, void const* coeff, void const* weight,
    void const* biasBank, void const* bias, void* y)
{
    return DynetConvTensors{x, coeff, weight, p.has_bias_bank ? biasBank : nullptr, p.has_bias ? bias : nullptr,
        nullptr, nullptr, y, nullptr};
}

//! Required pointers set, optional ones set exactly when p says the tensor is present (NULL_POINTER for a missing
//! one, INVALID_ARGUMENT for a pointer p says is absent: its has_* flag disagrees with the caller).
int32_t checkTensors(DynetConvParams const& p, DynetConvTensors const& t)
{
    if (t.x == nullptr || t.coeff == nullptr || t.weight == nullptr || t.y == nullptr)
    {
        return DYNET_ERR_NULL_POINTER;
    }
    void const* const optional[] = {t.bias_bank, t.bias, t.spatial, t.residual, t.mean};
    int32_t const present[] = {p.has_bias_bank, p.has_bias, p.has_spatial, p.has_residual, p.has_mean};
    for (size_t i = 0; i < sizeof(present) / sizeof(present[0]); ++i)
    {
        if (present[i] != 0 && optional[i] == nullptr)
        {
            return DYNET_ERR_NULL_POINTER;
        }
        if (present[i] == 0 && optional[i] != nullptr)
        {
            return DYNET_ERR_INVALID_ARGUMENT;
        }
    }
    return DYNET_OK;
}

int32_t runResolved(DynetConvParams const& p, int32_t dtype, int32_t resolved, DynetConvTensors const& t,
    void* workspace, cudaStream_t s)
{
    // A launch error left pending by earlier, unrelated work would otherwise be read back as this call's.
    static_cast<void>(cudaGetLastError());
    if (dtype == DYNET_FLOAT32)
    {
        return dynet::run<float>(p, resolved, t, workspace, s);
    }
    return dynet::run<__half>(p, resolved, t, workspace, s);
}

//! Whether the resolved algorithm can express p at all (checked before any library is loaded or handle made).
int32_t checkApplicable(DynetConvParams const& p, int32_t resolved, char* msg, size_t size)
{
    if (resolved == DYNET_ALGO_CUDNN && (p.pad_top != p.pad_bottom || p.pad_left != p.pad_right))
    {
        if (msg != nullptr && size > 0)
        {
            std::snprintf(msg, size, "cuDNN: asymmetric pads (%d,%d,%d,%d) cannot be expressed; use the two-step, "
                "one-kernel or cuBLAS im2col algorithm", p.pad_top, p.pad_left, p.pad_bottom, p.pad_right);
        }
        return DYNET_ERR_UNSUPPORTED;
    }
    if (resolved == DYNET_ALGO_CUBLAS_GEMM && !dynet::isPointwise(p))
    {
        writeMsg(msg, size, "the cuBLAS GEMM tactic runs pointwise layers only (1x1, stride 1, no pads); use "
            "the cuBLAS im2col tactic");
        return DYNET_ERR_UNSUPPORTED;
    }
    return DYNET_OK;
}

} // namespace

extern "C" {

size_t dynet_conv_cuda_workspace_size(DynetConvParams const* p, int32_t dtype, int32_t algo)
{
    if (checkCall(p, dtype, algo) != DYNET_OK || checkWeightType(*p, dtype, false, nullptr, 0) != DYNET_OK)
    {
        return 0;
    }
    int32_t const resolved = dynet::resolveAlgo(*p, algo);
    if (resolved == DYNET_ALGO_TWO_STEP)
    {
        return dynet::fusedKernelBytes(*p, dtype);
    }
    if (resolved == DYNET_ALGO_CUDNN)
    {
        return dynet::fusedKernelBytes(*p, dtype) + dynet::fusedBiasBytes(*p, dtype);
    }
    if (isCublasAlgo(resolved))
    {
        int32_t const samples = dynet::im2colSamplesPerChunk(*p, dtype, dynet::kIm2colChunkBytes, false);
        return dynet::cublasWorkspaceBytes(*p, dtype, resolved, samples);
    }
    return 0;
}

} // extern "C"

namespace
{

//! dynet_conv_cuda / dynet_conv_cuda_v2 after their own checks (params valid, weight type and tensors checked).
int32_t enqueueUnplanned(DynetConvParams const* p, int32_t dtype, int32_t algo, DynetConvTensors const& t,
    void* workspace, size_t workspace_size, void* stream)
{
    int32_t const resolved = dynet::resolveAlgo(*p, algo);
    if (resolved == DYNET_ALGO_CUDNN || isCublasAlgo(resolved))
    {
        return DYNET_ERR_UNSUPPORTED; // needs a plan: dynet_conv_cuda_plan_create
    }
    if (resolved == DYNET_ALGO_TWO_STEP
        && (workspace == nullptr || workspace_size < dynet::fusedKernelBytes(*p, dtype)))
    {
        return DYNET_ERR_WORKSPACE;
    }
    return runResolved(*p, dtype, resolved, t, workspace, static_cast<cudaStream_t>(stream));
}

} // namespace

extern "C" {

int32_t dynet_conv_cuda(DynetConvParams const* p, int32_t dtype, int32_t algo, void const* x, void const* coeff,
    void const* weight, void const* bias_bank, void const* bias, void* y, void* workspace, size_t workspace_size,
    void* stream)
{
    int32_t const status = checkCall(p, dtype, algo);
    if (status != DYNET_OK)
    {
        return status;
    }
    if (dynet_conv_op_version(p) > 1)
    {
        return DYNET_ERR_INVALID_ARGUMENT; // spatial, residual, mean or a weight_dtype: dynet_conv_cuda_v2
    }
    DynetConvTensors const t = tensorsV1(*p, x, coeff, weight, bias_bank, bias, y);
    if (int32_t const pointers = checkTensors(*p, t); pointers != DYNET_OK)
    {
        return pointers;
    }
    return enqueueUnplanned(p, dtype, algo, t, workspace, workspace_size, stream);
}

int32_t dynet_conv_cuda_v2(DynetConvParams const* p, int32_t dtype, int32_t algo, DynetConvTensors const* t,
    void* workspace, size_t workspace_size, void* stream)
{
    if (t == nullptr)
    {
        return DYNET_ERR_NULL_POINTER;
    }
    int32_t status = checkCall(p, dtype, algo);
    if (status == DYNET_OK)
    {
        status = checkWeightType(*p, dtype, true, nullptr, 0);
    }
    if (status == DYNET_OK)
    {
        status = checkTensors(*p, *t);
    }
    if (status != DYNET_OK)
    {
        return status;
    }
    return enqueueUnplanned(p, dtype, algo, *t, workspace, workspace_size, stream);
}

int32_t dynet_conv_cuda_has_cudnn(void)
{
    return dynet::kHaveCudnn ? 1 : 0;
}

int32_t dynet_conv_cuda_has_cublas(void)
{
    return dynet::kHaveCublas ? 1 : 0;
}

int32_t dynet_conv_cuda_context_create(DynetConvCudaContext** ctx)
{
    if (ctx == nullptr)
    {
        return DYNET_ERR_NULL_POINTER;
    }
    *ctx = new (std::nothrow) DynetConvCudaContext{};
    return *ctx == nullptr ? DYNET_ERR_UNSUPPORTED : DYNET_OK;
}

int32_t dynet_conv_cuda_context_ready(DynetConvCudaContext const* ctx, int32_t algo)
{
    if (ctx == nullptr)
    {
        return 0;
    }
    if (algo == DYNET_ALGO_CUDNN)
    {
        return ctx->cudnn != nullptr ? 1 : 0;
    }
    if (isCublasAlgo(algo))
    {
        return ctx->cublas != nullptr ? 1 : 0;
    }
    return 1;
}

int32_t dynet_conv_cuda_context_prepare(DynetConvCudaContext* ctx, int32_t algo, char* msg, size_t msg_size)
{
    if (ctx == nullptr)
    {
        writeMsg(msg, msg_size, "context is NULL");
        return DYNET_ERR_NULL_POINTER;
    }
    writeMsg(msg, msg_size, "");
    bool const cudnn = algo == DYNET_ALGO_CUDNN;
    bool const cublas = isCublasAlgo(algo);
    if ((!cudnn && !cublas) || dynet_conv_cuda_context_ready(ctx, algo) != 0)
    {
        return DYNET_OK;
    }
    int device = -1;
    if (cudaGetDevice(&device) != cudaSuccess)
    {
        static_cast<void>(cudaGetLastError());
        writeMsg(msg, msg_size, "no CUDA device");
        return DYNET_ERR_CUDA;
    }
    if (ctx->device >= 0 && ctx->device != device)
    {
        writeMsg(msg, msg_size, "the context's handles were made on another device");
        return DYNET_ERR_INVALID_ARGUMENT;
    }
    void* handle = nullptr;
    int32_t const status = cudnn ? dynet::cudnnHandleCreate(&handle, msg, msg_size)
                                 : dynet::cublasHandleCreate(&handle, msg, msg_size);
    if (status != DYNET_OK)
    {
        return status;
    }
    (cudnn ? ctx->cudnn : ctx->cublas) = handle;
    ctx->device = device;
    return DYNET_OK;
}

void dynet_conv_cuda_context_destroy(DynetConvCudaContext* ctx)
{
    if (ctx != nullptr)
    {
        dynet::cudnnHandleDestroy(ctx->cudnn);
        dynet::cublasHandleDestroy(ctx->cublas);
        delete ctx;
    }
}

int32_t dynet_conv_cuda_plan_create_in(DynetConvCudaContext* ctx, DynetConvParams const* p, int32_t dtype,
    int32_t algo, size_t workspace_limit, DynetConvCudaPlan** plan, char* msg, size_t msg_size)
{
    if (plan == nullptr || ctx == nullptr)
    {
        writeMsg(msg, msg_size, plan == nullptr ? "plan pointer is NULL" : "context is NULL");
        return DYNET_ERR_NULL_POINTER;
    }
    *plan = nullptr;
    if (p != nullptr && dynet_conv_validate(p, msg, msg_size) != DYNET_OK)
    {
        return DYNET_ERR_INVALID_ARGUMENT;
    }
    int32_t const status = checkCall(p, dtype, algo);
    if (status != DYNET_OK)
    {
        writeMsg(msg, msg_size, status == DYNET_ERR_UNSUPPORTED ? "unsupported dtype" : "invalid params or algorithm");
        return status;
    }
    int32_t const weightType = checkWeightType(*p, dtype, false, msg, msg_size);
    if (weightType != DYNET_OK)
    {
        return weightType;
    }
    int32_t const resolved = dynet::resolveAlgo(*p, algo);
    int32_t const applicable = checkApplicable(*p, resolved, msg, msg_size);
    if (applicable != DYNET_OK)
    {
        return applicable;
    }
    if (dynet_conv_cuda_context_ready(ctx, resolved) == 0)
    {
        writeMsg(msg, msg_size, "the context has no handle for this algorithm: call dynet_conv_cuda_context_prepare "
            "first (outside enqueue)");
        return DYNET_ERR_INVALID_ARGUMENT;
    }
    auto* made = new (std::nothrow) DynetConvCudaPlan{};
    if (made == nullptr)
    {
        writeMsg(msg, msg_size, "out of host memory");
        return DYNET_ERR_UNSUPPORTED;
    }
    made->params = *p;
    made->dtype = dtype;
    made->algo = resolved;
    made->context = ctx;
    made->workspaceBytes = dynet_conv_cuda_workspace_size(p, dtype, made->algo);
    if (made->algo == DYNET_ALGO_CUDNN)
    {
        size_t const own = made->workspaceBytes;
        if (workspace_limit != 0 && workspace_limit < own)
        {
            writeMsg(msg, msg_size, "the workspace limit is smaller than the fused kernels and biases of the batch");
            delete made;
            return DYNET_ERR_WORKSPACE;
        }
        size_t const scratchLimit = workspace_limit == 0 ? SIZE_MAX : workspace_limit - own;
        size_t scratch = 0;
        int32_t const cs
            = dynet::cudnnPlanCreate(ctx->cudnn, *p, dtype, scratchLimit, &made->cudnn, &scratch, msg, msg_size);
        if (cs != DYNET_OK)
        {
            delete made;
            return cs;
        }
        made->workspaceBytes = own + scratch;
    }
    else if (made->algo == DYNET_ALGO_CUBLAS_IM2COL)
    {
        // The formula's chunk; under a smaller limit, as many samples per chunk as the limit leaves room for.
        made->samplesPerChunk = dynet::im2colSamplesPerChunk(*p, dtype, dynet::kIm2colChunkBytes, false);
        if (workspace_limit != 0 && made->workspaceBytes > workspace_limit)
        {
            size_t const fixed
                = dynet::fusedKernelBytes(*p, dtype) + dynet::fusedBiasBytes(*p, dtype) + dynet::kCublasScratchBytes;
            made->samplesPerChunk = workspace_limit > fixed
                ? dynet::im2colSamplesPerChunk(*p, dtype, (workspace_limit - fixed) / dynet::kWorkspaceAlignment
                    * dynet::kWorkspaceAlignment, true)
                : 0;
            if (made->samplesPerChunk == 0)
            {
                writeMsg(msg, msg_size, "the workspace limit leaves no room for the im2col columns of one sample");
                delete made;
                return DYNET_ERR_WORKSPACE;
            }
            made->workspaceBytes = dynet::cublasWorkspaceBytes(*p, dtype, made->algo, made->samplesPerChunk);
        }
    }
    else if (workspace_limit != 0 && made->workspaceBytes > workspace_limit)
    {
        writeMsg(msg, msg_size, "the workspace limit is smaller than what the algorithm needs for this shape");
        delete made;
        return DYNET_ERR_WORKSPACE;
    }
    *plan = made;
    writeMsg(msg, msg_size, "");
    return DYNET_OK;
}

int32_t dynet_conv_cuda_plan_create(DynetConvParams const* p, int32_t dtype, int32_t algo, size_t workspace_limit,
    DynetConvCudaPlan** plan, char* msg, size_t msg_size)
{
    if (plan == nullptr)
    {
        writeMsg(msg, msg_size, "plan pointer is NULL");
        return DYNET_ERR_NULL_POINTER;
    }
    *plan = nullptr;
    if (p != nullptr && dynet_conv_validate(p, msg, msg_size) != DYNET_OK)
    {
        return DYNET_ERR_INVALID_ARGUMENT;
    }
    int32_t status = checkCall(p, dtype, algo);
    if (status != DYNET_OK)
    {
        writeMsg(msg, msg_size, status == DYNET_ERR_UNSUPPORTED ? "unsupported dtype" : "invalid params or algorithm");
        return status;
    }
    status = checkWeightType(*p, dtype, false, msg, msg_size);
    if (status != DYNET_OK)
    {
        return status;
    }
    int32_t const resolved = dynet::resolveAlgo(*p, algo);
    status = checkApplicable(*p, resolved, msg, msg_size);
    if (status != DYNET_OK)
    {
        return status;
    }
    DynetConvCudaContext* ctx = nullptr;
    if (dynet_conv_cuda_context_create(&ctx) != DYNET_OK)
    {
        writeMsg(msg, msg_size, "out of host memory");
        return DYNET_ERR_UNSUPPORTED;
    }
    status = dynet_conv_cuda_context_prepare(ctx, resolved, msg, msg_size);
    if (status == DYNET_OK)
    {
        status = dynet_conv_cuda_plan_create_in(ctx, p, dtype, algo, workspace_limit, plan, msg, msg_size);
    }
    if (status != DYNET_OK)
    {
        dynet_conv_cuda_context_destroy(ctx);
        return status;
    }
    (*plan)->ownedContext = ctx;
    return DYNET_OK;
}

size_t dynet_conv_cuda_plan_workspace_size(DynetConvCudaPlan const* plan)
{
    return plan == nullptr ? 0 : plan->workspaceBytes;
}

int32_t dynet_conv_cuda_plan_algo(DynetConvCudaPlan const* plan)
{
    return plan == nullptr ? -1 : plan->algo;
}

} // extern "C"

namespace
{

//! dynet_conv_cuda_plan_run / _v2 after their own checks (tensors checked against the plan's params).
int32_t enqueuePlanned(DynetConvCudaPlan const& plan, DynetConvTensors const& t, void* workspace,
    size_t workspace_size, cudaStream_t s)
{
    DynetConvParams const& p = plan.params;
    if (plan.workspaceBytes > 0 && (workspace == nullptr || workspace_size < plan.workspaceBytes))
    {
        return DYNET_ERR_WORKSPACE;
    }
    if (plan.algo != DYNET_ALGO_CUDNN && !isCublasAlgo(plan.algo))
    {
        return runResolved(p, plan.dtype, plan.algo, t, workspace, s); // the mean included
    }
    static_cast<void>(cudaGetLastError()); // see runResolved
    int32_t status = DYNET_OK;
    if (isCublasAlgo(plan.algo))
    {
        status = dynet::cublasRun(plan.context->cublas, p, plan.dtype, plan.algo, plan.samplesPerChunk, t, workspace,
            plan.workspaceBytes, s);
    }
    else
    {
        auto* base = static_cast<char*>(workspace);
        size_t const wBytes = dynet::fusedKernelBytes(p, plan.dtype);
        size_t const bBytes = dynet::fusedBiasBytes(p, plan.dtype);
        status = dynet::fuseForCudnn(p, plan.dtype, t.coeff, t.weight, t.bias_bank, t.bias, t.spatial, base,
            base + wBytes, s);
        if (status == DYNET_OK)
        {
            status = dynet::cudnnPlanRun(plan.cudnn, t.x, base, base + wBytes, p.has_residual ? t.residual : nullptr,
                t.y, base + wBytes + bBytes, plan.workspaceBytes - wBytes - bBytes, s);
        }
    }
    if (status == DYNET_OK && p.has_mean)
    {
        DynetConvSizes sizes; // valid params: the plan was made from them
        dynet_conv_sizes(&p, &sizes, nullptr, 0);
        status = dynet::planeMean(plan.dtype, t.y, t.mean, static_cast<int64_t>(p.n) * p.c_out,
            sizes.h_out * sizes.w_out, s);
    }
    return status;
}

} // namespace

extern "C" {

int32_t dynet_conv_cuda_plan_run(DynetConvCudaPlan const* plan, void const* x, void const* coeff, void const* weight,
    void const* bias_bank, void const* bias, void* y, void* workspace, size_t workspace_size, void* stream)
{
    if (plan == nullptr)
    {
        return DYNET_ERR_NULL_POINTER;
    }
    DynetConvParams const& p = plan->params;
    if (dynet_conv_op_version(&p) > 1)
    {
        return DYNET_ERR_INVALID_ARGUMENT; // spatial, residual, mean or a weight_dtype: dynet_conv_cuda_plan_run_v2
    }
    DynetConvTensors const t = tensorsV1(p, x, coeff, weight, bias_bank, bias, y);
    if (int32_t const pointers = checkTensors(p, t); pointers != DYNET_OK)
    {
        return pointers;
    }
    return enqueuePlanned(*plan, t, workspace, workspace_size, static_cast<cudaStream_t>(stream));
}

int32_t dynet_conv_cuda_plan_run_v2(DynetConvCudaPlan const* plan, DynetConvTensors const* t, void* workspace,
    size_t workspace_size, void* stream)
{
    if (plan == nullptr || t == nullptr)
    {
        return DYNET_ERR_NULL_POINTER;
    }
    int32_t status = checkWeightType(plan->params, plan->dtype, true, nullptr, 0);
    if (status == DYNET_OK)
    {
        status = checkTensors(plan->params, *t);
    }
    if (status != DYNET_OK)
    {
        return status;
    }
    return enqueuePlanned(*plan, *t, workspace, workspace_size, static_cast<cudaStream_t>(stream));
}

void dynet_conv_cuda_plan_destroy(DynetConvCudaPlan* plan)
{
    if (plan != nullptr)
    {
        dynet::cudnnPlanDestroy(plan->cudnn);
        dynet_conv_cuda_context_destroy(plan->ownedContext);
        delete plan;
    }
}

} // extern "C"
