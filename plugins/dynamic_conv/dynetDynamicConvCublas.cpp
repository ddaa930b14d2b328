// The cuBLAS tactics of DyNetDynamicConv2d (DYNET_ALGO_CUBLAS_GEMM, DYNET_ALGO_CUBLAS_IM2COL): the op as GEMMs on
// tensor cores, on the NCHW tensors as they are (column-major views, nothing transposed).
//
//   fusion   W~[n, t, :] = sum_k coeff[n, t|0, k] * weight[k, t, :]: per output channel t, [N, K] x [K, R]
//            (R = C_in/groups*kH*kW) as one strided-batched GEMM over t; per-expert coefficients (C_c = 1) make it one
//            GEMM [N, K] x [K, C_out*R]. Written in the I/O dtype (the other tactics round the same way).
//   biases   b~[n, t] in the I/O dtype ([N*C_out]), by the library's small fuse kernel.
//   GEMM     pointwise: y[n, g] = W~[n, g] x[n, g] ([C_out/g, C_in/g] x [C_in/g, H*W]) for every (n, g), one
//            strided-batched GEMM over N*groups (x, y and W~ are uniformly strided in (n, g));
//            im2col: per chunk of S samples, cols = im2col(x[n0:n0+S]) ([S*groups, R, H_out*W_out] in the workspace),
//            then y[n, g] = W~[n, g] cols[n, g], one strided-batched GEMM over S*groups.
//   epilogue y = act(y + b~) in one kernel (NaN kept through ReLU/ReLU6); skipped when there is neither bias nor
//            activation.
// fp16: tensor cores, fp32 accumulation (CUBLAS_COMPUTE_32F). fp32: CUBLAS_COMPUTE_32F with the handle's math mode
// CUBLAS_DEFAULT_MATH, so no TF32 (the op's fp32 tolerance is rel 1e-5).
// Handle: one per context (cublasHandleCreate, outside enqueue). Each run binds the stream and hands cuBLAS a
// kCublasScratchBytes slice of the workspace (cublasSetWorkspace): nothing is allocated in an enqueue.
#include "dynetDynamicConvKernel.h"
#include "dynetDynamicConvLibs.h"

#include <algorithm>
#include <cstdio>

namespace dynet
{

bool isPointwise(DynetConvParams const& p) noexcept
{
    return p.kh == 1 && p.kw == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_top == 0 && p.pad_left == 0
        && p.pad_bottom == 0 && p.pad_right == 0;
}

size_t im2colSampleBytes(DynetConvParams const& p, int32_t dtype) noexcept
{
    int32_t hOut = 0;
    int32_t wOut = 0;
    if (dynet_conv_output_hw(&p, &hOut, &wOut) != DYNET_OK)
    {
        return 0;
    }
    return static_cast<size_t>(p.c_in) * static_cast<size_t>(p.kh) * static_cast<size_t>(p.kw)
        * static_cast<size_t>(hOut) * static_cast<size_t>(wOut) * dtypeSize(dtype);
}

int32_t im2colSamplesPerChunk(DynetConvParams const& p, int32_t dtype, size_t columnBytes, bool mustFit) noexcept
{
    size_t const one = im2colSampleBytes(p, dtype);
    if (one == 0 || p.n <= 0)
    {
        return 0;
    }
    size_t const fit = columnBytes / one;
    if (fit == 0)
    {
        return mustFit ? 0 : 1;
    }
    return static_cast<int32_t>(std::min<size_t>(fit, static_cast<size_t>(p.n)));
}

size_t cublasWorkspaceBytes(DynetConvParams const& p, int32_t dtype, int32_t algo, int32_t samples) noexcept
{
    size_t const common = fusedKernelBytes(p, dtype) + fusedBiasBytes(p, dtype) + kCublasScratchBytes;
    if (algo == DYNET_ALGO_CUBLAS_GEMM)
    {
        return isPointwise(p) ? common : 0;
    }
    if (algo == DYNET_ALGO_CUBLAS_IM2COL && samples > 0)
    {
        return common + alignBytes(static_cast<size_t>(samples) * im2colSampleBytes(p, dtype));
    }
    return 0;
}

#if defined(DYNET_HAVE_CUBLAS)
namespace
{

int32_t failWith(char* msg, size_t size, char const* what, cublasStatus_t status)
{
    if (msg != nullptr && size > 0)
    {
        std::snprintf(msg, size, "cuBLAS: %s failed: %s", what, cublasApi().cublasGetStatusString(status));
    }
    return status == CUBLAS_STATUS_NOT_SUPPORTED ? DYNET_ERR_UNSUPPORTED : DYNET_ERR_CUDA;
}

int32_t statusOf(cublasStatus_t s)
{
    return s == CUBLAS_STATUS_SUCCESS ? DYNET_OK : s == CUBLAS_STATUS_NOT_SUPPORTED ? DYNET_ERR_UNSUPPORTED : DYNET_ERR_CUDA;
}

//! Column-major C[m, n] (batch b) = A[m, k] (batch b) * B[k, n] (batch b); I/O in dtype, fp32 accumulation.
int32_t gemmBatched(cublasHandle_t h, int32_t dtype, int64_t m, int64_t n, int64_t k, void const* a, int64_t lda,
    int64_t strideA, void const* b, int64_t ldb, int64_t strideB, void* c, int64_t ldc, int64_t strideC, int64_t batch)
{
    cudaDataType_t const type = dtype == DYNET_FLOAT16 ? CUDA_R_16F : CUDA_R_32F;
    float const one = 1.F;
    float const zero = 0.F;
    // Every extent fits int: each is bounded by a tensor's element count (< 2^31, dynet_conv_validate).
    return statusOf(cublasApi().cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(m),
        static_cast<int>(n), static_cast<int>(k), &one, a, type, static_cast<int>(lda), strideA, b, type,
        static_cast<int>(ldb), strideB, &zero, c, type, static_cast<int>(ldc), strideC, static_cast<int>(batch),
        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

int32_t gemm(cublasHandle_t h, int32_t dtype, int64_t m, int64_t n, int64_t k, void const* a, int64_t lda,
    void const* b, int64_t ldb, void* c, int64_t ldc)
{
    cudaDataType_t const type = dtype == DYNET_FLOAT16 ? CUDA_R_16F : CUDA_R_32F;
    float const one = 1.F;
    float const zero = 0.F;
    return statusOf(cublasApi().cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(m), static_cast<int>(n),
        static_cast<int>(k), &one, a, type, static_cast<int>(lda), b, type, static_cast<int>(ldb), &zero, c, type,
        static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

char* at(void* base, size_t bytes)
{
    return static_cast<char*>(base) + bytes;
}

void const* at(void const* base, int64_t elements, size_t elementBytes)
{
    return static_cast<char const*>(base) + static_cast<size_t>(elements) * elementBytes;
}

} // namespace

int32_t cublasHandleCreate(void** handle, char* msg, size_t msgSize) noexcept
{
    *handle = nullptr;
    int32_t const loaded = loadCudaLibrary(DYNET_LIBRARY_CUBLAS, msg, msgSize);
    if (loaded != DYNET_OK)
    {
        return loaded;
    }
    CublasApi const& api = cublasApi();
    cublasHandle_t h = nullptr;
    cublasStatus_t status = api.cublasCreate_v2(&h);
    if (status != CUBLAS_STATUS_SUCCESS)
    {
        return failWith(msg, msgSize, "cublasCreate", status);
    }
    // fp32 stays fp32 (no TF32); fp16 uses tensor cores whatever the math mode.
    status = api.cublasSetMathMode(h, CUBLAS_DEFAULT_MATH);
    if (status != CUBLAS_STATUS_SUCCESS)
    {
        api.cublasDestroy_v2(h);
        return failWith(msg, msgSize, "cublasSetMathMode", status);
    }
    *handle = h;
    return DYNET_OK;
}

void cublasHandleDestroy(void* handle) noexcept
{
    if (handle != nullptr)
    {
        cublasApi().cublasDestroy_v2(static_cast<cublasHandle_t>(handle));
    }
}

int32_t cublasRun(void* handle, DynetConvParams const& p, int32_t dtype, int32_t algo, int32_t samplesPerChunk,
    void const* x, void const* coeff, void const* weight, void const* biasBank, void const* bias, void* y,
    void* workspace, size_t workspaceBytes, cudaStream_t stream) noexcept
{
    if (handle == nullptr)
    {
        return DYNET_ERR_NULL_POINTER;
    }
    bool const im2colAlgo = algo == DYNET_ALGO_CUBLAS_IM2COL;
    if ((!im2colAlgo && !isPointwise(p)) || (im2colAlgo && samplesPerChunk <= 0))
    {
        return DYNET_ERR_UNSUPPORTED;
    }
    if (workspace == nullptr || workspaceBytes < cublasWorkspaceBytes(p, dtype, algo, samplesPerChunk))
    {
        return DYNET_ERR_WORKSPACE;
    }
    auto* h = static_cast<cublasHandle_t>(handle);
    CublasApi const& api = cublasApi();
    size_t const es = dtypeSize(dtype);
    size_t const fBytes = fusedKernelBytes(p, dtype);
    size_t const bBytes = fusedBiasBytes(p, dtype);
    void* fused = workspace;
    void* fusedB = at(workspace, fBytes);
    void* scratch = at(workspace, fBytes + bBytes);
    void* cols = at(workspace, fBytes + bBytes + kCublasScratchBytes);

    // cublasSetStream resets the workspace to cuBLAS's own pool: set the stream first, then our slice.
    if (api.cublasSetStream_v2(h, stream) != CUBLAS_STATUS_SUCCESS
        || api.cublasSetWorkspace_v2(h, scratch, kCublasScratchBytes) != CUBLAS_STATUS_SUCCESS)
    {
        return DYNET_ERR_CUDA;
    }

    int32_t hOut = 0;
    int32_t wOut = 0;
    dynet_conv_output_hw(&p, &hOut, &wOut);
    int64_t const cinG = p.c_in / p.groups;
    int64_t const coutG = p.c_out / p.groups;
    int64_t const R = cinG * p.kh * p.kw;
    int64_t const pixOut = static_cast<int64_t>(hOut) * wOut;
    int64_t const pixIn = static_cast<int64_t>(p.h) * p.w;
    int64_t const rowAll = static_cast<int64_t>(p.c_out) * R; // one sample's fused kernels, one basis kernel

    // 1. kernel fusion. Column-major: fused^T [R, N] = weight_t^T [R, K] * coeff_t^T [K, N], batched over t.
    int32_t status = DYNET_OK;
    if (p.coeff_channels == 1)
    {
        status = gemm(h, dtype, rowAll, p.n, p.k, weight, rowAll, coeff, p.k, fused, rowAll);
    }
    else
    {
        status = gemmBatched(h, dtype, R, p.n, p.k, weight, rowAll, R, coeff, static_cast<int64_t>(p.coeff_channels)
            * p.k, p.k, fused, rowAll, R, p.c_out);
    }
    if (status != DYNET_OK)
    {
        return status;
    }
    bool const anyBias = p.has_bias_bank != 0 || p.has_bias != 0;
    if (anyBias)
    {
        status = fuseBiases(p, dtype, coeff, biasBank, bias, fusedB, stream);
        if (status != DYNET_OK)
        {
            return status;
        }
    }

    // 2. the convolution as batched GEMMs. Column-major per (n, g): y^T [P, C_out/g] = cols^T [P, R] * W~^T [R, C_out/g].
    if (!im2colAlgo)
    {
        status = gemmBatched(h, dtype, pixIn, coutG, cinG, x, pixIn, cinG * pixIn, fused, cinG, coutG * cinG, y, pixIn,
            coutG * pixIn, static_cast<int64_t>(p.n) * p.groups);
    }
    else
    {
        for (int32_t n0 = 0; n0 < p.n && status == DYNET_OK; n0 += samplesPerChunk)
        {
            int32_t const s = std::min(samplesPerChunk, p.n - n0);
            status = im2col(p, dtype, x, n0, s, cols, stream);
            if (status != DYNET_OK)
            {
                break;
            }
            status = gemmBatched(h, dtype, pixOut, coutG, R, cols, pixOut, R * pixOut,
                at(fused, static_cast<int64_t>(n0) * rowAll, es), R, coutG * R,
                static_cast<char*>(y) + static_cast<size_t>(static_cast<int64_t>(n0) * p.c_out * pixOut) * es, pixOut,
                coutG * pixOut, static_cast<int64_t>(s) * p.groups);
        }
    }
    if (status != DYNET_OK)
    {
        return status;
    }

    // 3. bias + activation.
    if (anyBias || p.activation != DYNET_ACT_NONE)
    {
        return biasActivate(dtype, y, anyBias ? fusedB : nullptr, static_cast<int64_t>(p.n) * p.c_out, pixOut,
            p.activation, stream);
    }
    return DYNET_OK;
}

#else // built without cuBLAS: the tactics report themselves unsupported

int32_t cublasHandleCreate(void** handle, char* msg, size_t msgSize) noexcept
{
    *handle = nullptr;
    return loadCudaLibrary(DYNET_LIBRARY_CUBLAS, msg, msgSize);
}

void cublasHandleDestroy(void* /*handle*/) noexcept {}

int32_t cublasRun(void* /*handle*/, DynetConvParams const& /*p*/, int32_t /*dtype*/, int32_t /*algo*/,
    int32_t /*samplesPerChunk*/, void const* /*x*/, void const* /*coeff*/, void const* /*weight*/,
    void const* /*biasBank*/, void const* /*bias*/, void* /*y*/, void* /*workspace*/, size_t /*workspaceBytes*/,
    cudaStream_t /*stream*/) noexcept
{
    return DYNET_ERR_UNSUPPORTED;
}

#endif

} // namespace dynet
