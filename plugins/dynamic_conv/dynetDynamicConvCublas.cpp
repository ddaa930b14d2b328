// The cuBLAS tactics of DyNetDynamicConv2d (DYNET_ALGO_CUBLAS_GEMM, DYNET_ALGO_CUBLAS_IM2COL): the op as GEMMs on
// tensor cores, on the NCHW tensors as they are (column-major views, nothing transposed).
//
//   fusion   W~[n, t, :] = sum_k coeff[n, t|0, k] * weight[k, t, :]: per output channel t, [N, K] x [K, R]
//            (R = C_in/groups*kH*kW) as one strided-batched GEMM over t; per-expert coefficients (C_c = 1) make it one
//            GEMM [N, K] x [K, C_out*R]. Written in the I/O dtype (the other tactics round the same way). With
//            op version 2's spatial the library's fuse kernel writes the same [N, C_out, R] layout instead: it scales
//            each fp32 sum by its tap before the one rounding, which a GEMM writing fp16 could not.
//   biases   b~[n, t] in the I/O dtype ([N*C_out]), by the library's small fuse kernel.
//   GEMM     pointwise: y[n, g] = W~[n, g] x[n, g] ([C_out/g, C_in/g] x [C_in/g, H*W]) for every (n, g), one
//            strided-batched GEMM over N*groups (x, y and W~ are uniformly strided in (n, g));
//            im2col: per chunk of S samples, cols = im2col(x[n0:n0+S]) ([S*groups, R, H_out*W_out] in the workspace),
//            then y[n, g] = W~[n, g] cols[n, g], one strided-batched GEMM over S*groups.
//   epilogue y = act(y + b~ + residual) in one kernel (NaN kept through ReLU/ReLU6); skipped when there is no bias,
//            residual or activation. The mean output (op version 2) is the caller's reduction kernel after this.
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

GemmDesc fusionGemm(DynetConvParams const& p) noexcept
{
    int64_t const R = static_cast<int64_t>(p.c_in / p.groups) * p.kh * p.kw;
    int64_t const rowAll = static_cast<int64_t>(p.c_out) * R; // one sample's fused kernels, one basis kernel
    if (p.coeff_channels == 1)
    {
        // fused^T [C_out*R, N] = weight^T [C_out*R, K] * coeff^T [K, N]
        return GemmDesc{rowAll, p.n, p.k, 1, 0, rowAll, 0, 0, p.k, 0, 0, rowAll, 0};
    }
    // Per output channel t: fused_t^T [R, N] = weight_t^T [R, K] * coeff_t^T [K, N], batched over t.
    return GemmDesc{R, p.n, p.k, p.c_out, 0, rowAll, R, 0, static_cast<int64_t>(p.coeff_channels) * p.k, p.k, 0, rowAll,
        R};
}

GemmDesc convGemm(DynetConvParams const& p, int32_t algo, int32_t n0, int32_t samples) noexcept
{
    int32_t hOut = 0;
    int32_t wOut = 0;
    dynet_conv_output_hw(&p, &hOut, &wOut);
    int64_t const cinG = p.c_in / p.groups;
    int64_t const coutG = p.c_out / p.groups;
    int64_t const R = cinG * p.kh * p.kw;
    int64_t const pixOut = static_cast<int64_t>(hOut) * wOut;
    int64_t const batch = static_cast<int64_t>(samples) * p.groups;
    int64_t const bOffset = static_cast<int64_t>(n0) * p.c_out * R;
    int64_t const cOffset = static_cast<int64_t>(n0) * p.c_out * pixOut;
    // Per (n, g): y^T [P, C_out/g] = A^T [P, R] * fused^T [R, C_out/g]; x (pointwise: R = C_in/g, P = H*W) and the
    // im2col columns are both [.., groups, R, P] per sample, so (n, g) is one uniform stride.
    int64_t const aOffset = algo == DYNET_ALGO_CUBLAS_GEMM ? static_cast<int64_t>(n0) * p.c_in * pixOut : 0;
    return GemmDesc{pixOut, coutG, R, batch, aOffset, pixOut, R * pixOut, bOffset, R, coutG * R, cOffset, pixOut,
        coutG * pixOut};
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

char const* at(void const* base, int64_t elements, size_t elementBytes)
{
    return static_cast<char const*>(base) + static_cast<size_t>(elements) * elementBytes;
}

char* at(void* base, size_t bytes)
{
    return static_cast<char*>(base) + bytes;
}

//! Enqueue one GemmDesc on tensors a, b, c (I/O in dtype, fp32 accumulation): one GEMM when batch is 1.
int32_t run(cublasHandle_t h, int32_t dtype, GemmDesc const& g, void const* a, void const* b, void* c, size_t es)
{
    cudaDataType_t const type = dtype == DYNET_FLOAT16 ? CUDA_R_16F : CUDA_R_32F;
    float const one = 1.F;
    float const zero = 0.F;
    void const* pa = at(a, g.aOffset, es);
    void const* pb = at(b, g.bOffset, es);
    void* pc = at(c, static_cast<size_t>(g.cOffset) * es);
    // Every extent fits int: each is bounded by a tensor's element count (< 2^31, dynet_conv_validate).
    auto const i = [](int64_t v) { return static_cast<int>(v); };
    CublasApi const& api = cublasApi();
    if (g.batch == 1)
    {
        return statusOf(api.cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, i(g.m), i(g.n), i(g.k), &one, pa, type, i(g.lda),
            pb, type, i(g.ldb), &zero, pc, type, i(g.ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    return statusOf(api.cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, i(g.m), i(g.n), i(g.k), &one, pa, type,
        i(g.lda), g.strideA, pb, type, i(g.ldb), g.strideB, &zero, pc, type, i(g.ldc), g.strideC, i(g.batch),
        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
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
    DynetConvTensors const& t, void* workspace, size_t workspaceBytes, cudaStream_t stream) noexcept
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
    int64_t const pixOut = static_cast<int64_t>(hOut) * wOut;

    // 1. kernel fusion (fusionGemm: per output channel, or one GEMM for per-expert coefficients; the fuse kernel with
    // spatial scaling).
    int32_t status = p.has_spatial ? fuseKernels(p, dtype, t.coeff, t.weight, t.spatial, fused, stream)
                                   : run(h, dtype, fusionGemm(p), t.weight, t.coeff, fused, es);
    if (status != DYNET_OK)
    {
        return status;
    }
    bool const anyBias = p.has_bias_bank != 0 || p.has_bias != 0;
    if (anyBias)
    {
        status = fuseBiases(p, dtype, t.coeff, t.bias_bank, t.bias, fusedB, stream);
        if (status != DYNET_OK)
        {
            return status;
        }
    }

    // 2. the convolution as batched GEMMs over (sample, group) (convGemm), per im2col chunk for the im2col tactic.
    if (!im2colAlgo)
    {
        status = run(h, dtype, convGemm(p, algo, 0, p.n), t.x, fused, t.y, es);
    }
    else
    {
        for (int32_t n0 = 0; n0 < p.n && status == DYNET_OK; n0 += samplesPerChunk)
        {
            int32_t const s = std::min(samplesPerChunk, p.n - n0);
            status = im2col(p, dtype, t.x, n0, s, cols, stream);
            if (status == DYNET_OK)
            {
                status = run(h, dtype, convGemm(p, algo, n0, s), cols, fused, t.y, es);
            }
        }
    }
    if (status != DYNET_OK)
    {
        return status;
    }

    // 3. bias + residual + activation.
    if (anyBias || p.has_residual || p.activation != DYNET_ACT_NONE)
    {
        return biasActivate(dtype, t.y, anyBias ? fusedB : nullptr, p.has_residual ? t.residual : nullptr,
            static_cast<int64_t>(p.n) * p.c_out, pixOut, p.activation, stream);
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
    int32_t /*samplesPerChunk*/, DynetConvTensors const& /*t*/, void* /*workspace*/, size_t /*workspaceBytes*/,
    cudaStream_t /*stream*/) noexcept
{
    return DYNET_ERR_UNSUPPORTED;
}

#endif

} // namespace dynet

extern "C" int32_t dynet_conv_cuda_cublas_gemm(DynetConvParams const* p, int32_t algo, int32_t which, int32_t n0,
    int32_t samples, int64_t* out)
{
    if (p == nullptr || out == nullptr)
    {
        return DYNET_ERR_NULL_POINTER;
    }
    if (dynet_conv_validate(p, nullptr, 0) != DYNET_OK || (which != 0 && which != 1) || n0 < 0 || samples < 1
        || samples > p->n - n0)
    {
        return DYNET_ERR_INVALID_ARGUMENT;
    }
    if ((algo != DYNET_ALGO_CUBLAS_GEMM && algo != DYNET_ALGO_CUBLAS_IM2COL)
        || (algo == DYNET_ALGO_CUBLAS_GEMM && !dynet::isPointwise(*p)))
    {
        return DYNET_ERR_UNSUPPORTED;
    }
    dynet::GemmDesc const g = which == 0 ? dynet::fusionGemm(*p) : dynet::convGemm(*p, algo, n0, samples);
    int64_t const values[13] = {g.m, g.n, g.k, g.batch, g.aOffset, g.lda, g.strideA, g.bOffset, g.ldb, g.strideB,
        g.cOffset, g.ldc, g.strideC};
    for (int32_t i = 0; i < 13; ++i)
    {
        out[i] = values[i];
    }
    return DYNET_OK;
}
