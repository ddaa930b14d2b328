/*
 * DyNetDynamicConv2d: plain C ABI shared by the CPU reference, the CUDA kernels and the TensorRT plugin.
 *
 * w~[n,t]  = spatial[n] (.) sum_k coeff[n,t|0,k] * weight[k,t]      (spatial: op version 2, else 1)
 * y[n,t]   = act( conv(x[n], w~[n])[t] + sum_k coeff[n,t|0,k] * bias_bank[k,t] + bias[t] + residual[n,t] )
 * mean[n,t] = mean over (H_out, W_out) of y[n,t]                    (op version 2)
 *
 * Layouts (all dense, row-major, NCHW):
 *   x         [N, C_in, H, W]
 *   coeff     [N, C_c, K]                 C_c = C_out (per output channel, DyNet) or 1 (per expert, CondConv)
 *   weight    [K, C_out, C_in/groups, kH, kW]   in p->weight_dtype (version 2 may narrow it: a reduced-precision bank)
 *   bias_bank [K, C_out]                  optional (has_bias_bank)
 *   bias      [C_out]                     optional (has_bias)
 *   spatial   [N, kH*kW]                  optional (has_spatial, version 2): tap (i, j) at i*kW + j
 *   residual  [N, C_out, H_out, W_out]    optional (has_residual, version 2): added before the activation
 *   y         [N, C_out, H_out, W_out]    H_out = (H + pad_top + pad_bottom - dilation_h*(kH-1) - 1) / stride_h + 1
 *   mean      [N, C_out, 1, 1]            optional output (has_mean, version 2): GlobalAveragePool(y)
 *
 * Every function validates its arguments and returns a status code instead of crashing. The enqueueing entry points
 * (dynet_conv_cuda, dynet_conv_cuda_plan_run) neither allocate nor synchronise (graph-capturable); only
 * dynet_conv_cuda_plan_create / dynet_conv_cuda_context_prepare may allocate (library handles), and they are meant
 * to run outside any enqueue.
 * The full spec is plugins/dynamic_conv/README.md.
 */
#ifndef DYNET_DYNAMIC_CONV_H
#define DYNET_DYNAMIC_CONV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define DYNET_API __declspec(dllexport)
#else
#define DYNET_API __attribute__((visibility("default")))
#endif

#define DYNET_DYNAMIC_CONV_ABI_VERSION 2

/* The op versions this library implements (README, "Versions"). */
#define DYNET_OP_VERSION_MIN 1
#define DYNET_OP_VERSION_MAX 2

typedef enum DynetStatus
{
    DYNET_OK = 0,
    DYNET_ERR_NULL_POINTER = 1,     /* a required pointer is NULL */
    DYNET_ERR_INVALID_ARGUMENT = 2, /* shapes or attributes violate the op contract */
    DYNET_ERR_WORKSPACE = 3,        /* workspace missing or smaller than dynet_conv_cuda_workspace_size() */
    DYNET_ERR_CUDA = 4,             /* a CUDA launch failed (no device, bad pointer, ...) */
    DYNET_ERR_UNSUPPORTED = 5,      /* valid op, but this build/entry point does not support it (dtype, algo) */
    DYNET_ERR_LIMIT = 6             /* every attribute is in range, but a size derived from them (padded input,
                                       dilated kernel) exceeds the op's limits (README, "Limitations") */
} DynetStatus;

typedef enum DynetDataType
{
    DYNET_FLOAT32 = 0,
    DYNET_FLOAT16 = 1, /* IEEE binary16 storage; accumulation is fp32 */
    DYNET_BFLOAT16 = 2 /* bfloat16 storage (the weight bank only, op version 2); accumulation is fp32 */
} DynetDataType;

typedef enum DynetActivation
{
    DYNET_ACT_NONE = 0,
    DYNET_ACT_RELU = 1,
    DYNET_ACT_RELU6 = 2
} DynetActivation;

/* How the CUDA path runs the op (the CPU reference ignores this). */
typedef enum DynetAlgo
{
    DYNET_ALGO_AUTO = 0,       /* the default below, chosen from GPU measurements (README) */
    DYNET_ALGO_TWO_STEP = 1,   /* fuse the kernels of the whole batch into the workspace, then convolve */
    DYNET_ALGO_ONE_KERNEL = 2, /* aggregate the kernel inside the convolution kernel; needs no workspace */
    DYNET_ALGO_CUDNN = 3,      /* fuse kernels and biases of the batch into the workspace, then one cuDNN grouped
                                  convolution (groups = N*groups, x and y viewed as [1, N*C, H, W]) with bias and
                                  activation fused, tensor cores for fp16. Needs a plan (dynet_conv_cuda_plan_create)
                                  and a library built with cuDNN (dynet_conv_cuda_has_cudnn) */
    DYNET_ALGO_CUBLAS_GEMM = 4, /* pointwise layers (1x1, stride 1, no pads; any groups): kernel fusion as one cuBLAS
                                  GEMM per output channel (strided-batched; one GEMM for per-expert coefficients),
                                  then y[n,g] = W~[n,g] x[n,g] as one strided-batched GEMM over N*groups on the NCHW
                                  planes, then one bias + activation kernel. Needs a plan and cuBLAS at run time */
    DYNET_ALGO_CUBLAS_IM2COL = 5 /* any layer: the same fusion, then per chunk of samples an explicit im2col into the
                                  workspace and one strided-batched GEMM over (sample, group). Needs a plan */
} DynetAlgo;

/* The largest DynetAlgo value of this ABI. */
#define DYNET_ALGO_LAST DYNET_ALGO_CUBLAS_IM2COL

/* The libraries a tactic loads at run time (dlopen), for dynet_conv_cuda_library_status. */
#define DYNET_LIBRARY_CUDNN 1  /* libcudnn.so.9: DYNET_ALGO_CUDNN */
#define DYNET_LIBRARY_CUBLAS 2 /* libcublasLt.so.13 + libcublas.so.13: DYNET_ALGO_CUBLAS_* */

/* Every tensor of a call, the fused kernels of the batch included, has at most this many elements. The kernels
 * index with 64-bit integers; the limit is the op's contract (and TensorRT's per-tensor volume limit). */
#define DYNET_MAX_TENSOR_ELEMENTS 2147483647

/* The padded input extents (H + pad_top + pad_bottom, W + pad_left + pad_right) and the dilated kernel extents
 * (dilation * (k - 1) + 1) are at most this; larger ones are refused with DYNET_ERR_LIMIT. Every index a kernel forms
 * (an output position times the stride plus a tap times the dilation) then fits 64-bit arithmetic with room to spare. */
#define DYNET_MAX_EXTENT 2147483647

/* A backend's scratch memory beyond the fused kernels (padded input copies, unrolled im2col columns) is bounded by
 * this many elements: DYNET_SCRATCH_FACTOR times the elements of x, y, weight and the fused kernels, plus
 * DYNET_SCRATCH_FLOOR. A buffer that would exceed it is not allocated; the backend takes a path that needs less. */
#define DYNET_SCRATCH_FACTOR 8
#define DYNET_SCRATCH_FLOOR (16 * 1024 * 1024)

/* Shapes and attributes of one call. Attribute names follow the ONNX node (README, "Attributes"). */
typedef struct DynetConvParams
{
    int32_t n, c_in, h, w;          /* x */
    int32_t c_out;                  /* weight dim 1 */
    int32_t k;                      /* number of basis kernels (experts), weight dim 0 */
    int32_t coeff_channels;         /* C_c: c_out or 1 */
    int32_t kh, kw;                 /* weight dims 3, 4 */
    int32_t stride_h, stride_w;
    int32_t pad_top, pad_left, pad_bottom, pad_right;
    int32_t dilation_h, dilation_w;
    int32_t groups;
    int32_t activation;             /* DynetActivation */
    int32_t has_bias_bank;          /* 0/1 */
    int32_t has_bias;               /* 0/1 */
    int32_t has_spatial;            /* 0/1, op version 2: input spatial [N, kH*kW] */
    int32_t has_residual;           /* 0/1, op version 2: input residual [N, C_out, H_out, W_out] */
    int32_t has_mean;               /* 0/1, op version 2: output mean [N, C_out, 1, 1] */
    /* Not an attribute: the storage type of weight (DynetDataType). DYNET_FLOAT32 by default; the CPU entry points
     * take DYNET_FLOAT16 / DYNET_BFLOAT16 too (op version 2's reduced-precision bank, widened exactly to fp32); the
     * CUDA entry points need it equal to the I/O dtype. */
    int32_t weight_dtype;
} DynetConvParams;

/*
 * Every tensor of a call, for the version-2 entry points. Pointers absent from the call (an optional input whose has_*
 * is 0, mean when has_mean is 0) must be NULL; present ones must not. Host pointers for the CPU entry points,
 * device pointers for CUDA; x, coeff, bias_bank, bias, spatial, residual, y, mean in the call's I/O dtype, weight in
 * p->weight_dtype.
 */
typedef struct DynetConvTensors
{
    const void* x;
    const void* coeff;
    const void* weight;
    const void* bias_bank;
    const void* bias;
    const void* spatial;
    const void* residual;
    void* y;
    void* mean;
} DynetConvTensors;

/* The lowest op version that expresses p: 2 when any of has_spatial, has_residual, has_mean is set or weight_dtype is
 * not DYNET_FLOAT32, else 1 (-1 for a NULL p). A version-1 consumer (plugin creator "1", onnxruntime op version 1)
 * refuses a p above 1. */
DYNET_API int32_t dynet_conv_op_version(const DynetConvParams* p);

/* ABI version of the loaded library (DYNET_DYNAMIC_CONV_ABI_VERSION at build time). */
DYNET_API int32_t dynet_conv_abi_version(void);

/* Fill p with the op's defaults (stride 1, pads 0, dilation 1, groups 1, no activation, no optional input or output,
 * weight_dtype DYNET_FLOAT32) and zero shapes. */
DYNET_API void dynet_conv_params_init(DynetConvParams* p);

/* Check p against the op contract. On failure, writes a one-line reason into msg (if msg != NULL, msg_size > 0). */
DYNET_API int32_t dynet_conv_validate(const DynetConvParams* p, char* msg, size_t msg_size);

/* Output spatial size; returns dynet_conv_validate's status when p is invalid. */
DYNET_API int32_t dynet_conv_output_hw(const DynetConvParams* p, int32_t* h_out, int32_t* w_out);

/* Every size a backend derives from a call, computed once, overflow-checked in 64 bits, by dynet_conv_sizes. */
typedef struct DynetConvSizes
{
    int64_t h_out, w_out;           /* output extents */
    int64_t h_padded, w_padded;     /* H + pad_top + pad_bottom, W + pad_left + pad_right (<= DYNET_MAX_EXTENT) */
    int64_t kh_dilated, kw_dilated; /* dilation * (k - 1) + 1 (<= DYNET_MAX_EXTENT) */
    int64_t x_elements, y_elements, weight_elements, coeff_elements;
    int64_t fused_elements;         /* the fused kernels of the batch: N * C_out * C_in/groups * kH * kW */
    int64_t kernel_elements;        /* R = C_in/groups * kH * kW, one output channel's kernel */
    int64_t im2col_elements;        /* the whole batch unrolled: N * groups * R * H_out * W_out (saturates at INT64_MAX) */
    int64_t scratch_budget;         /* elements of scratch a backend may allocate beyond the fused kernels */
} DynetConvSizes;

/*
 * Validate p (dynet_conv_validate) and fill *sizes. Returns the validation status; *sizes is zeroed on failure.
 * Backends take their buffer sizes from here rather than multiplying the params themselves.
 */
DYNET_API int32_t dynet_conv_sizes(const DynetConvParams* p, DynetConvSizes* sizes, char* msg, size_t msg_size);

/*
 * The op's attributes, one table for every C/C++ caller (the TensorRT plugin, the onnxruntime op, the ctypes
 * binding): ONNX name, default and inclusive valid range, in the order the ONNX node and the plugin's fields list
 * them. Each attribute is a scalar int stored in the DynetConvParams field of the same name. The Python spec
 * (dynet_deploy/op/spec.py) is tested equal to this table, name by name.
 */
typedef struct DynetAttributeInfo
{
    const char* name;
    int32_t default_value;
    int32_t min_value;
    int32_t max_value;
    int32_t since_version; /* the op version that introduced it: 1, or 2 for has_spatial, has_residual, has_mean */
} DynetAttributeInfo;

/* Number of attributes (15 in ABI version 2: the 12 of op version 1 first, then version 2's three). */
DYNET_API int32_t dynet_conv_attribute_count(void);

/* The i-th attribute, or NULL when i is out of range. */
DYNET_API const DynetAttributeInfo* dynet_conv_attribute(int32_t i);

/* Index of the attribute called `name`, or -1. */
DYNET_API int32_t dynet_conv_attribute_index(const char* name);

/*
 * Set attribute `name` of p to `value` (an ONNX int64). Unknown names, values outside int32 and values outside the
 * attribute's range return DYNET_ERR_INVALID_ARGUMENT with a one-line reason in msg.
 */
DYNET_API int32_t dynet_conv_params_set_attribute(DynetConvParams* p, const char* name, int64_t value, char* msg,
    size_t msg_size);

/* Read attribute `name` of p into *value; DYNET_ERR_INVALID_ARGUMENT for an unknown name. */
DYNET_API int32_t dynet_conv_params_get_attribute(const DynetConvParams* p, const char* name, int32_t* value);

/*
 * Check only the attributes of p against their ranges (no shapes): what a kernel or plugin can check when it is
 * created, before any tensor is seen. dynet_conv_validate checks these and the shapes.
 */
DYNET_API int32_t dynet_conv_validate_attributes(const DynetConvParams* p, char* msg, size_t msg_size);

/*
 * Address of the i-th attribute's field inside *p (the table's order), or NULL when p is NULL or i is out of range:
 * what a caller needs to point a serialised field (e.g. a TensorRT PluginField) at the value without naming it.
 */
DYNET_API const int32_t* dynet_conv_params_attribute_data(const DynetConvParams* p, int32_t i);

/*
 * Fill the shape fields of p (n, c_in, h, w, c_out, k, coeff_channels, kh, kw) from the dims of the node's inputs
 * and check that they agree with each other and with p's attributes (groups, has_bias_bank, has_bias).
 *   nb_inputs  3 + has_bias_bank + has_bias + has_spatial + has_residual
 *              (x, coeff, weight[, bias_bank][, bias][, spatial][, residual])
 *   ranks      the rank of each input (4, 3, 5[, 2][, 1][, 2][, 4]); spatial must be [N, kH*kW] and residual
 *              [N, C_out, H_out, W_out] (checked once the dims they depend on are known)
 *   dims       every input's dims, concatenated (int64, as ONNX and TensorRT give them)
 * With allow_unknown != 0 a dim of -1 means "not known yet" (TensorRT's build-time dims): it is skipped by the
 * checks and its field is set to -1. Dims above INT32_MAX are refused. Does not call dynet_conv_validate: a caller
 * with every dim known validates the filled params (sizes, output extent) with it.
 */
DYNET_API int32_t dynet_conv_params_set_shapes(DynetConvParams* p, int32_t nb_inputs, const int32_t* ranks,
    const int64_t* dims, int32_t allow_unknown, char* msg, size_t msg_size);

/*
 * Write "name=value;..." for every attribute of p, in the table's order, into buf (NUL-terminated, truncated to
 * size). A p of op version 1 (dynet_conv_op_version) writes op version 1's twelve attributes only: the text such a p
 * had before version 2 existed. Returns the length of the full text (excluding the NUL), like snprintf, or -1 when p
 * is NULL. Equal attributes give equal text; the TensorRT plugin's timing-cache ID is built from it.
 */
DYNET_API int32_t dynet_conv_attributes_key(const DynetConvParams* p, char* buf, size_t size);

/* Human-readable name of a status code (static string). */
DYNET_API const char* dynet_status_string(int32_t status);

/* CPU reference, float32, double accumulation. bias_bank / bias may be NULL iff the matching has_* is 0. Op version 1
 * only: a p with version-2 flags or a narrowed weight_dtype is DYNET_ERR_UNSUPPORTED (use dynet_conv_cpu). */
DYNET_API int32_t dynet_conv_cpu_f32(const DynetConvParams* p, const float* x, const float* coeff, const float* weight,
    const float* bias_bank, const float* bias, float* y);

/* CPU reference of every op version: fp32 I/O, weight in p->weight_dtype (widened exactly), double accumulation; the
 * kernel taps scaled by spatial (rounded to fp32 per fused kernel value, as every kernel does), residual added before
 * the activation, mean accumulated in double from the stored y. */
DYNET_API int32_t dynet_conv_cpu(const DynetConvParams* p, const DynetConvTensors* t);

/*
 * CUDA: bytes of workspace a call of this algorithm needs (0 when p is invalid, the algorithm cannot run p, or it
 * needs none). F = align256(N * C_out * (C_in/groups) * kH * kW * sizeof(dtype)) (the fused kernels),
 * B = align256(N * C_out * sizeof(dtype)) (the fused biases), S_cublas = 32 MiB (cuBLAS's scratch, handed to it with
 * cublasSetWorkspace so it never allocates):
 *   two-step: F; one-kernel: 0;
 *   cuDNN:    F + B; cuDNN's own scratch comes on top and is known only to a plan (dynet_conv_cuda_plan_workspace_size);
 *   cuBLAS GEMM:   F + B + S_cublas (pointwise layers only; 0 for others);
 *   cuBLAS im2col: F + B + align256(S * C_in * kH * kW * H_out * W_out * sizeof(dtype)) + S_cublas, S the samples per
 *             im2col chunk: N when the columns of the whole batch fit in 256 MiB, else max(1, floor(256 MiB / the
 *             columns of one sample)) (a plan with a smaller workspace limit takes fewer samples per chunk).
 *   algo = DYNET_ALGO_AUTO returns the size of the algorithm AUTO would pick, so a caller may size once with AUTO.
 * Pure host arithmetic in 64 bits (size_t): touches no device.
 */
DYNET_API size_t dynet_conv_cuda_workspace_size(const DynetConvParams* p, int32_t dtype, int32_t algo);

/*
 * CUDA: enqueue the op on `stream` (a cudaStream_t; NULL is the legacy default stream). All pointers are device
 * pointers of `dtype` (DynetDataType). No allocation, no synchronisation: safe inside CUDA graph capture.
 * workspace may be NULL only when the chosen algorithm needs none. DYNET_ALGO_CUDNN and DYNET_ALGO_CUBLAS_* need a
 * plan: this entry point returns DYNET_ERR_UNSUPPORTED for them (use dynet_conv_cuda_plan_*). Each launch is checked on its own and a failed
 * launch stops the call (DYNET_ERR_CUDA); a launch error left pending by earlier, unrelated work is cleared on entry
 * and not reported as this call's.
 * Every algorithm rounds the fused kernels and fused biases to `dtype` before the convolution (as a cuDNN
 * convolution on fused fp16 kernels must), so the tactics agree to accumulation order.
 */
DYNET_API int32_t dynet_conv_cuda(const DynetConvParams* p, int32_t dtype, int32_t algo, const void* x,
    const void* coeff, const void* weight, const void* bias_bank, const void* bias, void* y, void* workspace,
    size_t workspace_size, void* stream);

/* dynet_conv_cuda for every op version (spatial, residual, mean; p->weight_dtype must equal dtype). dynet_conv_cuda
 * answers DYNET_ERR_INVALID_ARGUMENT for a p above op version 1. */
DYNET_API int32_t dynet_conv_cuda_v2(const DynetConvParams* p, int32_t dtype, int32_t algo, const DynetConvTensors* t,
    void* workspace, size_t workspace_size, void* stream);

/*
 * CUDA plans: everything a call of one shape needs that must not happen inside an enqueue (descriptors, algorithm
 * choice, workspace layout), made once per shape. A plan works for every algorithm; for DYNET_ALGO_CUDNN it holds
 * the cuDNN descriptors, for the cuBLAS tactics the GEMM shapes, for the others only a copy of the params.
 * The library handles (cuDNN, cuBLAS) live in a context, made once per user (a TensorRT plugin instance, an
 * onnxruntime kernel) and device, outside any enqueue; plans made in a context borrow its handles.
 */
typedef struct DynetConvCudaPlan DynetConvCudaPlan;
typedef struct DynetConvCudaContext DynetConvCudaContext;

/* 1 when this library was built with the cuDNN tactic, else 0 (whether libcudnn loads: dynet_conv_cuda_library_status). */
DYNET_API int32_t dynet_conv_cuda_has_cudnn(void);

/* 1 when this library was built with the cuBLAS tactics, else 0. */
DYNET_API int32_t dynet_conv_cuda_has_cublas(void);

/*
 * Load `library` (DYNET_LIBRARY_CUDNN / DYNET_LIBRARY_CUBLAS) now if not yet loaded: DYNET_OK, or
 * DYNET_ERR_UNSUPPORTED with the reason in msg (absent: the sonames and folders tried; built without the tactic).
 * Looked up by soname, then in each folder of $DYNET_CUDA_LIBRARY_PATH (':'-separated). Touches no device.
 */
DYNET_API int32_t dynet_conv_cuda_library_status(int32_t library, char* msg, size_t msg_size);

/* An empty context (host memory only, no handle yet). */
DYNET_API int32_t dynet_conv_cuda_context_create(DynetConvCudaContext** ctx);

/*
 * Make the handles `algo` needs (cuDNN for DYNET_ALGO_CUDNN, cuBLAS for DYNET_ALGO_CUBLAS_*; none for the others) on
 * the current device, if the context has none yet: may load libraries, allocate and synchronise, so call it outside
 * enqueue and graph capture. DYNET_ERR_UNSUPPORTED (reason in msg) when the library is absent; DYNET_ERR_INVALID_ARGUMENT
 * when the context was prepared on another device.
 */
DYNET_API int32_t dynet_conv_cuda_context_prepare(DynetConvCudaContext* ctx, int32_t algo, char* msg, size_t msg_size);

/* 1 when ctx has the handles `algo` needs (dynet_conv_cuda_plan_create_in will not refuse for want of them). */
DYNET_API int32_t dynet_conv_cuda_context_ready(const DynetConvCudaContext* ctx, int32_t algo);

/* Destroy the context's handles and the context (NULL is a no-op); every plan made in it must be destroyed first. */
DYNET_API void dynet_conv_cuda_context_destroy(DynetConvCudaContext* ctx);

/*
 * Make a plan in ctx: like dynet_conv_cuda_plan_create, but creates no handle (pure host work plus the libraries'
 * descriptor and heuristic calls), so it may run where a shape changes. DYNET_ERR_INVALID_ARGUMENT (reason in msg)
 * when ctx was not prepared for the algorithm (dynet_conv_cuda_context_prepare).
 */
DYNET_API int32_t dynet_conv_cuda_plan_create_in(DynetConvCudaContext* ctx, const DynetConvParams* p, int32_t dtype,
    int32_t algo, size_t workspace_limit, DynetConvCudaPlan** plan, char* msg, size_t msg_size);

/*
 * Make a plan for p, dtype and algo (AUTO resolves as in dynet_conv_cuda). workspace_limit caps the workspace the
 * plan may need (cuDNN picks its fastest algorithm by heuristics among those that fit; the im2col tactic takes fewer
 * samples per chunk; 0 = no cap). The plan owns a context of its own: for DYNET_ALGO_CUDNN / DYNET_ALGO_CUBLAS_* this
 * creates a handle (on the current device) and may allocate; call it outside enqueue and graph capture (callers that
 * plan per shape use a shared context: dynet_conv_cuda_plan_create_in). Returns DYNET_ERR_UNSUPPORTED (with the
 * reason in msg) when the library is absent or cannot express the call (cuDNN: asymmetric pads; cuBLAS GEMM: a layer
 * that is not pointwise).
 */
DYNET_API int32_t dynet_conv_cuda_plan_create(const DynetConvParams* p, int32_t dtype, int32_t algo,
    size_t workspace_limit, DynetConvCudaPlan** plan, char* msg, size_t msg_size);

/* Bytes of workspace dynet_conv_cuda_plan_run needs (0 for a NULL plan). */
DYNET_API size_t dynet_conv_cuda_plan_workspace_size(const DynetConvCudaPlan* plan);

/* The algorithm the plan runs (never AUTO), or -1 for a NULL plan. */
DYNET_API int32_t dynet_conv_cuda_plan_algo(const DynetConvCudaPlan* plan);

/* Enqueue the planned call on stream: same contract as dynet_conv_cuda (no allocation, no synchronisation). A plan
 * made in a context uses its handles: plans of one context are run from one thread at a time. */
DYNET_API int32_t dynet_conv_cuda_plan_run(const DynetConvCudaPlan* plan, const void* x, const void* coeff,
    const void* weight, const void* bias_bank, const void* bias, void* y, void* workspace, size_t workspace_size,
    void* stream);

/* dynet_conv_cuda_plan_run for every op version (the plan's params decide which tensors t must carry). */
DYNET_API int32_t dynet_conv_cuda_plan_run_v2(const DynetConvCudaPlan* plan, const DynetConvTensors* t,
    void* workspace, size_t workspace_size, void* stream);

/* Free the plan (NULL is a no-op). */
DYNET_API void dynet_conv_cuda_plan_destroy(DynetConvCudaPlan* plan);

/*
 * The GEMMs a cuBLAS tactic enqueues, as host arithmetic (no device, no library): which = 0 the kernel fusion
 * (A = weight, B = coeff, C = the fused kernels), which = 1 the convolution of samples [n0, n0 + samples) (A = x for
 * DYNET_ALGO_CUBLAS_GEMM, the chunk's im2col columns [samples, C_in*kH*kW, H_out*W_out] for DYNET_ALGO_CUBLAS_IM2COL;
 * B = the fused kernels; C = y). Each is column-major C_b = A_b * B_b for b < batch, X_b starting at element
 * x_offset + b * stride_x of its tensor with leading dimension ld_x (A m x k, B k x n, C m x n). out receives 13
 * values: m, n, k, batch, a_offset, lda, stride_a, b_offset, ldb, stride_b, c_offset, ldc, stride_c.
 * DYNET_ERR_UNSUPPORTED when the algorithm cannot run p; for introspection and tests.
 */
DYNET_API int32_t dynet_conv_cuda_cublas_gemm(const DynetConvParams* p, int32_t algo, int32_t which, int32_t n0,
    int32_t samples, int64_t* out);

#ifdef __cplusplus
}
#endif

#endif /* DYNET_DYNAMIC_CONV_H */
