// Argument checks shared by the CPU reference, the CUDA entry point and the TensorRT plugin: one place decides
// what the op contract allows, so every backend rejects the same inputs with the same message.
#include "dynet_dynamic_conv.h"

#include <cstdarg>
#include <cstdint>
#include <cstdio>

namespace
{
// Tensor sizes are bounded so that kernels may index elements with int32 and products below never overflow int64.
constexpr int64_t kMaxElements = (int64_t{1} << 31) - 1;

int32_t fail(char* msg, size_t msg_size, char const* fmt, ...)
{
    if (msg != nullptr && msg_size > 0)
    {
        va_list args;
        va_start(args, fmt);
        std::vsnprintf(msg, msg_size, fmt, args);
        va_end(args);
    }
    return DYNET_ERR_INVALID_ARGUMENT;
}

int64_t outSize(int64_t in, int64_t padA, int64_t padB, int64_t dil, int64_t kernel, int64_t stride)
{
    int64_t const span = dil * (kernel - 1) + 1;
    int64_t const padded = in + padA + padB;
    if (padded < span)
    {
        return 0;
    }
    return (padded - span) / stride + 1;
}
} // namespace

extern "C" {

int32_t dynet_conv_abi_version(void)
{
    return DYNET_DYNAMIC_CONV_ABI_VERSION;
}

void dynet_conv_params_init(DynetConvParams* p)
{
    if (p == nullptr)
    {
        return;
    }
    *p = DynetConvParams{};
    p->stride_h = p->stride_w = 1;
    p->dilation_h = p->dilation_w = 1;
    p->groups = 1;
}

char const* dynet_status_string(int32_t status)
{
    switch (status)
    {
    case DYNET_OK: return "ok";
    case DYNET_ERR_NULL_POINTER: return "a required pointer is NULL";
    case DYNET_ERR_INVALID_ARGUMENT: return "invalid argument (shapes or attributes violate the op contract)";
    case DYNET_ERR_WORKSPACE: return "workspace missing or too small";
    case DYNET_ERR_CUDA: return "CUDA error";
    case DYNET_ERR_UNSUPPORTED: return "unsupported by this build or entry point";
    default: return "unknown status";
    }
}

int32_t dynet_conv_validate(DynetConvParams const* p, char* msg, size_t msg_size)
{
    if (p == nullptr)
    {
        fail(msg, msg_size, "params pointer is NULL");
        return DYNET_ERR_NULL_POINTER;
    }
    if (p->n < 1 || p->c_in < 1 || p->h < 1 || p->w < 1)
    {
        return fail(msg, msg_size, "x must be [N, C_in, H, W] with every dim >= 1, got [%d, %d, %d, %d]", p->n,
            p->c_in, p->h, p->w);
    }
    if (p->k < 1 || p->c_out < 1 || p->kh < 1 || p->kw < 1)
    {
        return fail(msg, msg_size, "weight must be [K, C_out, C_in/groups, kH, kW] with every dim >= 1, got K=%d "
            "C_out=%d kH=%d kW=%d", p->k, p->c_out, p->kh, p->kw);
    }
    if (p->stride_h < 1 || p->stride_w < 1)
    {
        return fail(msg, msg_size, "stride_h/stride_w must be >= 1, got %d/%d", p->stride_h, p->stride_w);
    }
    if (p->dilation_h < 1 || p->dilation_w < 1)
    {
        return fail(msg, msg_size, "dilation_h/dilation_w must be >= 1, got %d/%d", p->dilation_h, p->dilation_w);
    }
    if (p->pad_top < 0 || p->pad_left < 0 || p->pad_bottom < 0 || p->pad_right < 0)
    {
        return fail(msg, msg_size, "pads must be >= 0, got top=%d left=%d bottom=%d right=%d", p->pad_top,
            p->pad_left, p->pad_bottom, p->pad_right);
    }
    if (p->groups < 1)
    {
        return fail(msg, msg_size, "groups must be >= 1, got %d", p->groups);
    }
    if (p->c_in % p->groups != 0 || p->c_out % p->groups != 0)
    {
        return fail(msg, msg_size, "groups=%d must divide C_in=%d and C_out=%d", p->groups, p->c_in, p->c_out);
    }
    if (p->coeff_channels != p->c_out && p->coeff_channels != 1)
    {
        return fail(msg, msg_size, "coeff must be [N, C_out, K] or [N, 1, K]: C_c=%d, C_out=%d", p->coeff_channels,
            p->c_out);
    }
    if (p->activation < DYNET_ACT_NONE || p->activation > DYNET_ACT_RELU6)
    {
        return fail(msg, msg_size, "activation must be 0 (none), 1 (relu) or 2 (relu6), got %d", p->activation);
    }
    if ((p->has_bias_bank != 0 && p->has_bias_bank != 1) || (p->has_bias != 0 && p->has_bias != 1))
    {
        return fail(msg, msg_size, "has_bias_bank/has_bias must be 0 or 1, got %d/%d", p->has_bias_bank, p->has_bias);
    }
    int64_t const hOut = outSize(p->h, p->pad_top, p->pad_bottom, p->dilation_h, p->kh, p->stride_h);
    int64_t const wOut = outSize(p->w, p->pad_left, p->pad_right, p->dilation_w, p->kw, p->stride_w);
    if (hOut < 1 || wOut < 1)
    {
        return fail(msg, msg_size, "empty output: input %dx%d with pads (%d,%d,%d,%d) is smaller than the dilated "
            "kernel %dx%d", p->h, p->w, p->pad_top, p->pad_left, p->pad_bottom, p->pad_right,
            (p->kh - 1) * p->dilation_h + 1, (p->kw - 1) * p->dilation_w + 1);
    }
    int64_t const cinG = p->c_in / p->groups;
    int64_t const sizes[] = {
        int64_t{p->n} * p->c_in * p->h * p->w,                 // x
        int64_t{p->n} * p->c_out * hOut * wOut,                // y
        int64_t{p->k} * p->c_out * cinG * p->kh * p->kw,       // weight
        int64_t{p->n} * p->c_out * cinG * p->kh * p->kw,       // fused kernels of the batch (workspace)
        int64_t{p->n} * p->coeff_channels * p->k,              // coeff
    };
    for (int64_t s : sizes)
    {
        if (s > kMaxElements)
        {
            return fail(msg, msg_size, "a tensor of this call has %lld elements; the limit is 2^31-1",
                static_cast<long long>(s));
        }
    }
    if (msg != nullptr && msg_size > 0)
    {
        msg[0] = '\0';
    }
    return DYNET_OK;
}

int32_t dynet_conv_output_hw(DynetConvParams const* p, int32_t* h_out, int32_t* w_out)
{
    int32_t const status = dynet_conv_validate(p, nullptr, 0);
    if (status != DYNET_OK)
    {
        return status;
    }
    if (h_out == nullptr || w_out == nullptr)
    {
        return DYNET_ERR_NULL_POINTER;
    }
    *h_out = static_cast<int32_t>(outSize(p->h, p->pad_top, p->pad_bottom, p->dilation_h, p->kh, p->stride_h));
    *w_out = static_cast<int32_t>(outSize(p->w, p->pad_left, p->pad_right, p->dilation_w, p->kw, p->stride_w));
    return DYNET_OK;
}

} // extern "C"
