// The cuDNN tactic of DyNetDynamicConv2d (DYNET_ALGO_CUDNN): after the fuse kernels have written the batch's
// per-sample kernels [N*C_out, C_in/groups, kH, kW] and biases [N*C_out], the whole batch is one grouped
// convolution with groups = N*groups: x viewed as [1, N*C_in, H, W] and y as [1, N*C_out, H_out, W_out] (the same
// bytes, no copy). cuDNN runs it with bias and activation fused (cudnnConvolutionBiasActivationForward), on tensor
// cores for fp16 (CUDNN_TENSOR_OP_MATH) and without TF32 for fp32 (CUDNN_FMA_MATH), so fp32 keeps fp32 accuracy.
//
// The handle is made once per context (cudnnHandleCreate, outside any enqueue) and borrowed by the plans; descriptors,
// algorithm choice and workspace query happen in cudnnPlanCreate; cudnnPlanRun only binds the stream and enqueues.
// Every cuDNN function is called through the table of dynetDynamicConvLibs.h (libcudnn is loaded, not linked).
//
// cuDNN's legacy fused call supports ReLU and identity; identity only with IMPLICIT_PRECOMP_GEMM. ReLU6 runs as
// identity followed by the library's NaN-propagating in-place activation kernel. NaN propagation through ReLU is
// requested with CUDNN_PROPAGATE_NAN. Op version 2's residual is the fused call's z input (y = act(conv + alpha2 * z +
// bias) with alpha2 = 1, z described like y), so it is added before the activation in the same call.
#include "dynetDynamicConvKernel.h"
#include "dynetDynamicConvLibs.h"

#include <cudnn.h>

#include <cstdio>
#include <new>

namespace dynet
{

struct CudnnPlan
{
    cudnnHandle_t handle{nullptr}; // borrowed from the context
    cudnnTensorDescriptor_t xDesc{nullptr};
    cudnnTensorDescriptor_t yDesc{nullptr};
    cudnnTensorDescriptor_t biasDesc{nullptr};
    cudnnFilterDescriptor_t wDesc{nullptr};
    cudnnConvolutionDescriptor_t convDesc{nullptr};
    cudnnActivationDescriptor_t actDesc{nullptr};
    cudnnConvolutionFwdAlgo_t algo{CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM};
    size_t scratchBytes{0};
    int32_t dtype{DYNET_FLOAT32};
    int32_t activation{DYNET_ACT_NONE};
    int64_t yElements{0};
};

namespace
{

int32_t failWith(char* msg, size_t size, char const* what, cudnnStatus_t status)
{
    if (msg != nullptr && size > 0)
    {
        std::snprintf(msg, size, "cuDNN: %s failed: %s", what, cudnnApi().cudnnGetErrorString(status));
    }
    return status == CUDNN_STATUS_NOT_SUPPORTED ? DYNET_ERR_UNSUPPORTED : DYNET_ERR_CUDA;
}

#define DYNET_CUDNN_TRY(call, what)                                                                                    \
    do                                                                                                                 \
    {                                                                                                                  \
        cudnnStatus_t const status_ = (call);                                                                          \
        if (status_ != CUDNN_STATUS_SUCCESS)                                                                           \
        {                                                                                                              \
            cudnnPlanDestroy(plan);                                                                                    \
            return failWith(msg, msgSize, what, status_);                                                              \
        }                                                                                                              \
    } while (0)

bool isTensorOpMath(cudnnMathType_t m)
{
    return m == CUDNN_TENSOR_OP_MATH || m == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
}

} // namespace

int32_t cudnnHandleCreate(void** handle, char* msg, size_t msgSize) noexcept
{
    *handle = nullptr;
    int32_t const loaded = loadCudaLibrary(DYNET_LIBRARY_CUDNN, msg, msgSize);
    if (loaded != DYNET_OK)
    {
        return loaded;
    }
    cudnnHandle_t h = nullptr;
    cudnnStatus_t const status = cudnnApi().cudnnCreate(&h);
    if (status != CUDNN_STATUS_SUCCESS)
    {
        return failWith(msg, msgSize, "cudnnCreate", status);
    }
    *handle = h;
    return DYNET_OK;
}

void cudnnHandleDestroy(void* handle) noexcept
{
    if (handle != nullptr)
    {
        cudnnApi().cudnnDestroy(static_cast<cudnnHandle_t>(handle));
    }
}

int32_t cudnnPlanCreate(void* handle, DynetConvParams const& p, int32_t dtype, size_t scratchLimit, CudnnPlan** out,
    size_t* scratchBytes, char* msg, size_t msgSize) noexcept
{
    *out = nullptr;
    *scratchBytes = 0;
    if (handle == nullptr)
    {
        if (msg != nullptr && msgSize > 0)
        {
            std::snprintf(msg, msgSize, "cuDNN: no handle (prepare the context for the cuDNN tactic first)");
        }
        return DYNET_ERR_INVALID_ARGUMENT;
    }
    CudnnApi const& api = cudnnApi();
    if (p.pad_top != p.pad_bottom || p.pad_left != p.pad_right)
    {
        if (msg != nullptr && msgSize > 0)
        {
            std::snprintf(msg, msgSize, "cuDNN: asymmetric pads (%d,%d,%d,%d) cannot be expressed; use the two-step "
                "or one-kernel algorithm", p.pad_top, p.pad_left, p.pad_bottom, p.pad_right);
        }
        return DYNET_ERR_UNSUPPORTED;
    }
    // The validator's checked sizes: the padded extents and dilated kernel fit int32 (cuDNN's descriptor fields).
    DynetConvSizes sizes;
    if (int32_t const status = dynet_conv_sizes(&p, &sizes, msg, msgSize); status != DYNET_OK)
    {
        return status;
    }
    int32_t const hOut = static_cast<int32_t>(sizes.h_out);
    int32_t const wOut = static_cast<int32_t>(sizes.w_out);
    auto* plan = new (std::nothrow) CudnnPlan{};
    if (plan == nullptr)
    {
        return DYNET_ERR_UNSUPPORTED;
    }
    plan->dtype = dtype;
    plan->activation = p.activation;
    // N*C fits int32: x, y and the fused kernels have at most 2^31-1 elements (dynet_conv_validate).
    int const nc = p.n * p.c_in;
    int const nk = p.n * p.c_out;
    int const groups = p.n * p.groups;
    plan->yElements = static_cast<int64_t>(nk) * hOut * wOut;
    cudnnDataType_t const type = dtype == DYNET_FLOAT16 ? CUDNN_DATA_HALF : CUDNN_DATA_FLOAT;

    plan->handle = static_cast<cudnnHandle_t>(handle);
    DYNET_CUDNN_TRY(api.cudnnCreateTensorDescriptor(&plan->xDesc), "cudnnCreateTensorDescriptor");
    DYNET_CUDNN_TRY(api.cudnnCreateTensorDescriptor(&plan->yDesc), "cudnnCreateTensorDescriptor");
    DYNET_CUDNN_TRY(api.cudnnCreateTensorDescriptor(&plan->biasDesc), "cudnnCreateTensorDescriptor");
    DYNET_CUDNN_TRY(api.cudnnCreateFilterDescriptor(&plan->wDesc), "cudnnCreateFilterDescriptor");
    DYNET_CUDNN_TRY(api.cudnnCreateConvolutionDescriptor(&plan->convDesc), "cudnnCreateConvolutionDescriptor");
    DYNET_CUDNN_TRY(api.cudnnCreateActivationDescriptor(&plan->actDesc), "cudnnCreateActivationDescriptor");

    DYNET_CUDNN_TRY(api.cudnnSetTensor4dDescriptor(plan->xDesc, CUDNN_TENSOR_NCHW, type, 1, nc, p.h, p.w), "x descriptor");
    DYNET_CUDNN_TRY(api.cudnnSetTensor4dDescriptor(plan->yDesc, CUDNN_TENSOR_NCHW, type, 1, nk, hOut, wOut),
        "y descriptor");
    DYNET_CUDNN_TRY(api.cudnnSetTensor4dDescriptor(plan->biasDesc, CUDNN_TENSOR_NCHW, type, 1, nk, 1, 1),
        "bias descriptor");
    DYNET_CUDNN_TRY(api.cudnnSetFilter4dDescriptor(plan->wDesc, type, CUDNN_TENSOR_NCHW, nk, p.c_in / p.groups, p.kh, p.kw),
        "filter descriptor");
    DYNET_CUDNN_TRY(api.cudnnSetConvolution2dDescriptor(plan->convDesc, p.pad_top, p.pad_left, p.stride_h, p.stride_w,
                        p.dilation_h, p.dilation_w, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
        "convolution descriptor");
    DYNET_CUDNN_TRY(api.cudnnSetConvolutionGroupCount(plan->convDesc, groups), "cudnnSetConvolutionGroupCount");
    cudnnMathType_t const math = dtype == DYNET_FLOAT16 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH;
    DYNET_CUDNN_TRY(api.cudnnSetConvolutionMathType(plan->convDesc, math), "cudnnSetConvolutionMathType");
    bool const relu = p.activation == DYNET_ACT_RELU;
    DYNET_CUDNN_TRY(api.cudnnSetActivationDescriptor(plan->actDesc,
                        relu ? CUDNN_ACTIVATION_RELU : CUDNN_ACTIVATION_IDENTITY, CUDNN_PROPAGATE_NAN, 0.0),
        "activation descriptor");

    int dn = 0;
    int dc = 0;
    int dh = 0;
    int dw = 0;
    DYNET_CUDNN_TRY(api.cudnnGetConvolution2dForwardOutputDim(plan->convDesc, plan->xDesc, plan->wDesc, &dn, &dc, &dh, &dw),
        "cudnnGetConvolution2dForwardOutputDim");
    if (dn != 1 || dc != nk || dh != hOut || dw != wOut)
    {
        if (msg != nullptr && msgSize > 0)
        {
            std::snprintf(msg, msgSize, "cuDNN computes output [%d, %d, %d, %d], the op [1, %d, %d, %d]", dn, dc, dh, dw,
                nk, hOut, wOut);
        }
        cudnnPlanDestroy(plan);
        return DYNET_ERR_UNSUPPORTED;
    }

    bool found = false;
    if (relu)
    {
        // The heuristics' ranking, fastest first; keep the first that works within the scratch limit and, for fp32,
        // does not use TF32 tensor cores.
        constexpr int kMaxAlgos = CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
        cudnnConvolutionFwdAlgoPerf_t perf[kMaxAlgos];
        int returned = 0;
        DYNET_CUDNN_TRY(api.cudnnGetConvolutionForwardAlgorithm_v7(plan->handle, plan->xDesc, plan->wDesc, plan->convDesc,
                            plan->yDesc, kMaxAlgos, &returned, perf),
            "cudnnGetConvolutionForwardAlgorithm_v7");
        for (int i = 0; i < returned && !found; ++i)
        {
            if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].memory > scratchLimit
                || (dtype == DYNET_FLOAT32 && isTensorOpMath(perf[i].mathType)))
            {
                continue;
            }
            plan->algo = perf[i].algo;
            plan->scratchBytes = perf[i].memory;
            if (dtype == DYNET_FLOAT16)
            {
                DYNET_CUDNN_TRY(api.cudnnSetConvolutionMathType(plan->convDesc, perf[i].mathType),
                    "cudnnSetConvolutionMathType");
            }
            found = true;
        }
    }
    else
    {
        // Identity activation: cuDNN's fused call supports it with IMPLICIT_PRECOMP_GEMM only.
        plan->algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
        DYNET_CUDNN_TRY(api.cudnnGetConvolutionForwardWorkspaceSize(plan->handle, plan->xDesc, plan->wDesc, plan->convDesc,
                            plan->yDesc, plan->algo, &plan->scratchBytes),
            "cudnnGetConvolutionForwardWorkspaceSize");
        found = plan->scratchBytes <= scratchLimit;
    }
    if (!found)
    {
        if (msg != nullptr && msgSize > 0)
        {
            std::snprintf(msg, msgSize, "cuDNN has no forward algorithm for this shape within %zu bytes of scratch",
                scratchLimit);
        }
        cudnnPlanDestroy(plan);
        return DYNET_ERR_UNSUPPORTED;
    }
    *scratchBytes = plan->scratchBytes;
    *out = plan;
    return DYNET_OK;
}

int32_t cudnnPlanRun(CudnnPlan const* plan, void const* x, void const* fusedWeights, void const* fusedBiases,
    void const* residual, void* y, void* scratch, size_t scratchBytes, cudaStream_t stream) noexcept
{
    if (plan == nullptr || scratchBytes < plan->scratchBytes)
    {
        return plan == nullptr ? DYNET_ERR_NULL_POINTER : DYNET_ERR_WORKSPACE;
    }
    CudnnApi const& api = cudnnApi();
    if (api.cudnnSetStream(plan->handle, stream) != CUDNN_STATUS_SUCCESS)
    {
        return DYNET_ERR_CUDA;
    }
    float const one = 1.F;
    float const zero = 0.F;
    // z = the residual with alpha2 = 1 (it has y's shape: yDesc); without one alpha2 = 0 and z = y contributes nothing
    // (cuDNN still needs a descriptor and a pointer for it).
    cudnnStatus_t const status = api.cudnnConvolutionBiasActivationForward(plan->handle, &one, plan->xDesc, x, plan->wDesc,
        fusedWeights, plan->convDesc, plan->algo, plan->scratchBytes > 0 ? scratch : nullptr, plan->scratchBytes,
        residual != nullptr ? &one : &zero, plan->yDesc, residual != nullptr ? residual : y, plan->biasDesc, fusedBiases,
        plan->actDesc, plan->yDesc, y);
    if (status != CUDNN_STATUS_SUCCESS)
    {
        return status == CUDNN_STATUS_NOT_SUPPORTED ? DYNET_ERR_UNSUPPORTED : DYNET_ERR_CUDA;
    }
    if (plan->activation == DYNET_ACT_RELU6)
    {
        return activateInPlace(plan->dtype, y, plan->yElements, plan->activation, stream);
    }
    return DYNET_OK;
}

void cudnnPlanDestroy(CudnnPlan* plan) noexcept
{
    if (plan == nullptr)
    {
        return;
    }
    CudnnApi const& api = cudnnApi();
    // Destroying a NULL descriptor is not an error in cuDNN, but skip them to keep the intent plain.
    if (plan->actDesc != nullptr)
    {
        api.cudnnDestroyActivationDescriptor(plan->actDesc);
    }
    if (plan->convDesc != nullptr)
    {
        api.cudnnDestroyConvolutionDescriptor(plan->convDesc);
    }
    if (plan->wDesc != nullptr)
    {
        api.cudnnDestroyFilterDescriptor(plan->wDesc);
    }
    if (plan->biasDesc != nullptr)
    {
        api.cudnnDestroyTensorDescriptor(plan->biasDesc);
    }
    if (plan->yDesc != nullptr)
    {
        api.cudnnDestroyTensorDescriptor(plan->yDesc);
    }
    if (plan->xDesc != nullptr)
    {
        api.cudnnDestroyTensorDescriptor(plan->xDesc);
    }
    delete plan; // the handle is the context's
}

} // namespace dynet
