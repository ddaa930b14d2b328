/*
 * DyNetDynamicConv2d: plain C ABI shared by the CPU reference, the CUDA kernels and the TensorRT plugin.
 *
 * y[n,t] = act( conv(x[n], sum_k coeff[n,t|0,k] * weight[k,t]) + sum_k coeff[n,t|0,k] * bias_bank[k,t] + bias[t] )
 *
 * Layouts (all dense, row-major, NCHW):
 *   x         [N, C_in, H, W]
 *   coeff     [N, C_c, K]                 C_c = C_out (per output channel, DyNet) or 1 (per expert, CondConv)
 *   weight    [K, C_out, C_in/groups, kH, kW]
 *   bias_bank [K, C_out]                  optional (has_bias_bank)
 *   bias      [C_out]                     optional (has_bias)
 *   y         [N, C_out, H_out, W_out]    H_out = (H + pad_top + pad_bottom - dilation_h*(kH-1) - 1) / stride_h + 1
 *
 * Every function validates its arguments and returns a status code instead of crashing; no function allocates
 * memory on the device, and the CUDA entry point neither allocates nor synchronises (graph-capturable).
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

#define DYNET_DYNAMIC_CONV_ABI_VERSION 1

typedef enum DynetStatus
{
    DYNET_OK = 0,
    DYNET_ERR_NULL_POINTER = 1,     /* a required pointer is NULL */
    DYNET_ERR_INVALID_ARGUMENT = 2, /* shapes or attributes violate the op contract */
    DYNET_ERR_WORKSPACE = 3,        /* workspace missing or smaller than dynet_conv_cuda_workspace_size() */
    DYNET_ERR_CUDA = 4,             /* a CUDA launch failed (no device, bad pointer, ...) */
    DYNET_ERR_UNSUPPORTED = 5       /* valid op, but this build/entry point does not support it (dtype, algo) */
} DynetStatus;

typedef enum DynetDataType
{
    DYNET_FLOAT32 = 0,
    DYNET_FLOAT16 = 1 /* IEEE binary16 storage; accumulation is fp32 */
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
    DYNET_ALGO_ONE_KERNEL = 2  /* aggregate the kernel inside the convolution kernel; needs no workspace */
} DynetAlgo;

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
} DynetConvParams;

/* ABI version of the loaded library (DYNET_DYNAMIC_CONV_ABI_VERSION at build time). */
DYNET_API int32_t dynet_conv_abi_version(void);

/* Fill p with the op's defaults (stride 1, pads 0, dilation 1, groups 1, no activation, no biases) and zero shapes. */
DYNET_API void dynet_conv_params_init(DynetConvParams* p);

/* Check p against the op contract. On failure, writes a one-line reason into msg (if msg != NULL, msg_size > 0). */
DYNET_API int32_t dynet_conv_validate(const DynetConvParams* p, char* msg, size_t msg_size);

/* Output spatial size; returns DYNET_ERR_INVALID_ARGUMENT when p is invalid. */
DYNET_API int32_t dynet_conv_output_hw(const DynetConvParams* p, int32_t* h_out, int32_t* w_out);

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
} DynetAttributeInfo;

/* Number of attributes (12 in ABI version 1). */
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

/* Human-readable name of a status code (static string). */
DYNET_API const char* dynet_status_string(int32_t status);

/* CPU reference, float32, double accumulation. bias_bank / bias may be NULL iff the matching has_* is 0. */
DYNET_API int32_t dynet_conv_cpu_f32(const DynetConvParams* p, const float* x, const float* coeff, const float* weight,
    const float* bias_bank, const float* bias, float* y);

/*
 * CUDA: bytes of workspace dynet_conv_cuda() needs for this call (0 when p is invalid or needs none).
 *   two-step: align256(N * C_out * (C_in/groups) * kH * kW * sizeof(dtype)); one-kernel: 0.
 *   algo = DYNET_ALGO_AUTO returns the size of the algorithm AUTO would pick, so a caller may size once with AUTO.
 * Pure host arithmetic: touches no device.
 */
DYNET_API size_t dynet_conv_cuda_workspace_size(const DynetConvParams* p, int32_t dtype, int32_t algo);

/*
 * CUDA: enqueue the op on `stream` (a cudaStream_t; NULL is the legacy default stream). All pointers are device
 * pointers of `dtype` (DynetDataType). No allocation, no synchronisation: safe inside CUDA graph capture.
 * workspace may be NULL only when the chosen algorithm needs none.
 */
DYNET_API int32_t dynet_conv_cuda(const DynetConvParams* p, int32_t dtype, int32_t algo, const void* x,
    const void* coeff, const void* weight, const void* bias_bank, const void* bias, void* y, void* workspace,
    size_t workspace_size, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* DYNET_DYNAMIC_CONV_H */
