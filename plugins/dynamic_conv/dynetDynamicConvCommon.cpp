// Argument checks shared by the CPU reference, the CUDA entry point and the TensorRT plugin: one place decides
// what the op contract allows, so every backend rejects the same inputs with the same message.
#include "dynetDynamicConv.h"

#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <string>

namespace
{
// Every tensor of a call is bounded (the op contract); the kernels index with int64 regardless.
constexpr int64_t kMaxElements = DYNET_MAX_TENSOR_ELEMENTS;

//! a*b for non-negative a, b, saturating at INT64_MAX instead of overflowing.
int64_t satMul(int64_t a, int64_t b)
{
    if (a != 0 && b > INT64_MAX / a)
    {
        return INT64_MAX;
    }
    return a * b;
}

int64_t volume(std::initializer_list<int64_t> dims)
{
    int64_t v = 1;
    for (int64_t d : dims)
    {
        v = satMul(v, d);
    }
    return v;
}

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

struct AttributeSlot
{
    DynetAttributeInfo info;
    size_t offset; // of the int32_t field in DynetConvParams
};

constexpr int32_t kIntMax = 2147483647;

// The attribute table: the one place in C/C++ that names the op's attributes, their defaults and ranges.
// Op version 1's twelve attributes first, then version 2's three (README, "Versions").
#define DYNET_ATTR(field, def, lo, hi, since) {{#field, def, lo, hi, since}, offsetof(DynetConvParams, field)}
AttributeSlot const kAttributes[] = {
    DYNET_ATTR(stride_h, 1, 1, kIntMax, 1),
    DYNET_ATTR(stride_w, 1, 1, kIntMax, 1),
    DYNET_ATTR(pad_top, 0, 0, kIntMax, 1),
    DYNET_ATTR(pad_left, 0, 0, kIntMax, 1),
    DYNET_ATTR(pad_bottom, 0, 0, kIntMax, 1),
    DYNET_ATTR(pad_right, 0, 0, kIntMax, 1),
    DYNET_ATTR(dilation_h, 1, 1, kIntMax, 1),
    DYNET_ATTR(dilation_w, 1, 1, kIntMax, 1),
    DYNET_ATTR(groups, 1, 1, kIntMax, 1),
    DYNET_ATTR(activation, DYNET_ACT_NONE, DYNET_ACT_NONE, DYNET_ACT_RELU6, 1),
    DYNET_ATTR(has_bias_bank, 0, 0, 1, 1),
    DYNET_ATTR(has_bias, 0, 0, 1, 1),
    DYNET_ATTR(has_spatial, 0, 0, 1, 2),
    DYNET_ATTR(has_residual, 0, 0, 1, 2),
    DYNET_ATTR(has_mean, 0, 0, 1, 2),
};
#undef DYNET_ATTR
constexpr int32_t kNbAttributes = static_cast<int32_t>(sizeof(kAttributes) / sizeof(kAttributes[0]));

int32_t& field(DynetConvParams& p, AttributeSlot const& s)
{
    return *reinterpret_cast<int32_t*>(reinterpret_cast<char*>(&p) + s.offset);
}

int32_t field(DynetConvParams const& p, AttributeSlot const& s)
{
    return *reinterpret_cast<int32_t const*>(reinterpret_cast<char const*>(&p) + s.offset);
}

AttributeSlot const* findSlot(char const* name)
{
    if (name == nullptr)
    {
        return nullptr;
    }
    for (AttributeSlot const& s : kAttributes)
    {
        if (std::strcmp(s.info.name, name) == 0)
        {
            return &s;
        }
    }
    return nullptr;
}

char const* rangeText(AttributeSlot const& s, char* buf, size_t size)
{
    if (s.info.max_value == kIntMax)
    {
        std::snprintf(buf, size, "must be >= %d", s.info.min_value);
    }
    else if (s.info.max_value - s.info.min_value == 1)
    {
        std::snprintf(buf, size, "must be %d or %d", s.info.min_value, s.info.max_value);
    }
    else
    {
        std::snprintf(buf, size, "must be in [%d, %d]", s.info.min_value, s.info.max_value);
    }
    return buf;
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
    for (AttributeSlot const& s : kAttributes)
    {
        field(*p, s) = s.info.default_value;
    }
    p->weight_dtype = DYNET_FLOAT32;
}

int32_t dynet_conv_op_version(DynetConvParams const* p)
{
    if (p == nullptr)
    {
        return -1;
    }
    return (p->has_spatial != 0 || p->has_residual != 0 || p->has_mean != 0 || p->weight_dtype != DYNET_FLOAT32)
        ? 2
        : 1;
}

int32_t dynet_conv_attribute_count(void)
{
    return kNbAttributes;
}

DynetAttributeInfo const* dynet_conv_attribute(int32_t i)
{
    return (i >= 0 && i < kNbAttributes) ? &kAttributes[i].info : nullptr;
}

int32_t dynet_conv_attribute_index(char const* name)
{
    AttributeSlot const* s = findSlot(name);
    return s == nullptr ? -1 : static_cast<int32_t>(s - kAttributes);
}

int32_t dynet_conv_params_set_attribute(DynetConvParams* p, char const* name, int64_t value, char* msg,
    size_t msg_size)
{
    if (p == nullptr || name == nullptr)
    {
        fail(msg, msg_size, "params or name pointer is NULL");
        return DYNET_ERR_NULL_POINTER;
    }
    AttributeSlot const* s = findSlot(name);
    if (s == nullptr)
    {
        return fail(msg, msg_size, "unknown attribute '%s'", name);
    }
    if (value < s->info.min_value || value > s->info.max_value)
    {
        char range[64];
        return fail(msg, msg_size, "attribute '%s' = %lld: %s", name, static_cast<long long>(value),
            rangeText(*s, range, sizeof(range)));
    }
    field(*p, *s) = static_cast<int32_t>(value);
    return DYNET_OK;
}

int32_t dynet_conv_params_get_attribute(DynetConvParams const* p, char const* name, int32_t* value)
{
    if (p == nullptr || value == nullptr)
    {
        return DYNET_ERR_NULL_POINTER;
    }
    AttributeSlot const* s = findSlot(name);
    if (s == nullptr)
    {
        return DYNET_ERR_INVALID_ARGUMENT;
    }
    *value = field(*p, *s);
    return DYNET_OK;
}

int32_t dynet_conv_validate_attributes(DynetConvParams const* p, char* msg, size_t msg_size)
{
    if (p == nullptr)
    {
        fail(msg, msg_size, "params pointer is NULL");
        return DYNET_ERR_NULL_POINTER;
    }
    for (AttributeSlot const& s : kAttributes)
    {
        int32_t const v = field(*p, s);
        if (v < s.info.min_value || v > s.info.max_value)
        {
            char range[64];
            return fail(msg, msg_size, "attribute '%s' = %d: %s", s.info.name, v, rangeText(s, range, sizeof(range)));
        }
    }
    if (p->weight_dtype != DYNET_FLOAT32 && p->weight_dtype != DYNET_FLOAT16 && p->weight_dtype != DYNET_BFLOAT16)
    {
        return fail(msg, msg_size, "weight_dtype = %d: must be %d (float32), %d (float16) or %d (bfloat16)",
            p->weight_dtype, DYNET_FLOAT32, DYNET_FLOAT16, DYNET_BFLOAT16);
    }
    if (msg != nullptr && msg_size > 0)
    {
        msg[0] = '\0';
    }
    return DYNET_OK;
}

int32_t const* dynet_conv_params_attribute_data(DynetConvParams const* p, int32_t i)
{
    if (p == nullptr || i < 0 || i >= kNbAttributes)
    {
        return nullptr;
    }
    return reinterpret_cast<int32_t const*>(reinterpret_cast<char const*>(p) + kAttributes[i].offset);
}

int32_t dynet_conv_attributes_key(DynetConvParams const* p, char* buf, size_t size)
{
    if (p == nullptr)
    {
        return -1;
    }
    // A version-1 param set writes op version 1's attributes only, so its text (a TensorRT timing-cache ID) is the
    // one it had before version 2 existed; a version-2 one writes every attribute.
    int32_t const version = dynet_conv_op_version(p);
    std::string key;
    for (AttributeSlot const& s : kAttributes)
    {
        if (s.info.since_version > version)
        {
            continue;
        }
        key += s.info.name;
        key += '=';
        key += std::to_string(field(*p, s));
        key += ';';
    }
    if (buf != nullptr && size > 0)
    {
        size_t const n = key.size() < size - 1 ? key.size() : size - 1;
        std::memcpy(buf, key.data(), n);
        buf[n] = '\0';
    }
    return static_cast<int32_t>(key.size());
}

int32_t dynet_conv_params_set_shapes(DynetConvParams* p, int32_t nb_inputs, int32_t const* ranks,
    int64_t const* dims, int32_t allow_unknown, char* msg, size_t msg_size)
{
    if (p == nullptr || ranks == nullptr || dims == nullptr)
    {
        fail(msg, msg_size, "params, ranks or dims pointer is NULL");
        return DYNET_ERR_NULL_POINTER;
    }
    int32_t const attrStatus = dynet_conv_validate_attributes(p, msg, msg_size);
    if (attrStatus != DYNET_OK)
    {
        return attrStatus;
    }
    int32_t const expected = 3 + p->has_bias_bank + p->has_bias + p->has_spatial + p->has_residual;
    if (nb_inputs != expected)
    {
        return fail(msg, msg_size, "expected %d inputs (x, coeff, weight%s%s%s%s), got %d", expected,
            p->has_bias_bank ? ", bias_bank" : "", p->has_bias ? ", bias" : "", p->has_spatial ? ", spatial" : "",
            p->has_residual ? ", residual" : "", nb_inputs);
    }
    constexpr int32_t kMaxInputs = 7;
    int32_t wantRanks[kMaxInputs] = {4, 3, 5, 0, 0, 0, 0};
    char const* names[kMaxInputs] = {"x [N, C_in, H, W]", "coeff [N, C_c, K]",
        "weight [K, C_out, C_in/groups, kH, kW]", nullptr, nullptr, nullptr, nullptr};
    int32_t idx = 3;
    int32_t bankIdx = -1;
    int32_t biasIdx = -1;
    int32_t spatialIdx = -1;
    int32_t residualIdx = -1;
    if (p->has_bias_bank)
    {
        bankIdx = idx;
        wantRanks[idx] = 2;
        names[idx++] = "bias_bank [K, C_out]";
    }
    if (p->has_bias)
    {
        biasIdx = idx;
        wantRanks[idx] = 1;
        names[idx++] = "bias [C_out]";
    }
    if (p->has_spatial)
    {
        spatialIdx = idx;
        wantRanks[idx] = 2;
        names[idx++] = "spatial [N, kH*kW]";
    }
    if (p->has_residual)
    {
        residualIdx = idx;
        wantRanks[idx] = 4;
        names[idx++] = "residual [N, C_out, H_out, W_out]";
    }
    int64_t const* d[kMaxInputs] = {};
    int64_t const* cursor = dims;
    for (int32_t i = 0; i < nb_inputs; ++i)
    {
        if (ranks[i] != wantRanks[i])
        {
            return fail(msg, msg_size, "input %d must be %d-D %s, got rank %d", i, wantRanks[i], names[i], ranks[i]);
        }
        d[i] = cursor;
        for (int32_t j = 0; j < ranks[i]; ++j)
        {
            int64_t const v = cursor[j];
            bool const unknown = allow_unknown != 0 && v == -1;
            if (!unknown && (v < 1 || v > INT32_MAX))
            {
                return fail(msg, msg_size, "input %d (%s) has dim %d = %lld; dims must be in [1, 2^31-1]", i,
                    names[i], j, static_cast<long long>(v));
            }
        }
        cursor += ranks[i];
    }
    auto known = [](int64_t v) { return v != -1; };
    int64_t const n = d[0][0];
    int64_t const cIn = d[0][1];
    int64_t const K = d[2][0];
    int64_t const cOut = d[2][1];
    int64_t const cinG = d[2][2];
    if (known(cIn) && cIn % p->groups != 0)
    {
        return fail(msg, msg_size, "groups=%d does not divide C_in=%lld", p->groups, static_cast<long long>(cIn));
    }
    if (known(cOut) && cOut % p->groups != 0)
    {
        return fail(msg, msg_size, "groups=%d does not divide C_out=%lld", p->groups, static_cast<long long>(cOut));
    }
    if (known(cIn) && known(cinG) && cinG * p->groups != cIn)
    {
        if (cinG > 0 && cIn % cinG == 0)
        {
            // The usual cause: a grouped layer whose node lacks its groups attribute (absent means 1).
            return fail(msg, msg_size,
                "weight dim 2 is %lld but must be C_in/groups = %lld/%d; a grouped layer with these shapes needs "
                "groups=%lld (the node's groups is %d%s)",
                static_cast<long long>(cinG), static_cast<long long>(cIn), p->groups,
                static_cast<long long>(cIn / cinG), p->groups, p->groups == 1 ? ", the default" : "");
        }
        return fail(msg, msg_size, "weight dim 2 is %lld but must be C_in/groups = %lld/%d",
            static_cast<long long>(cinG), static_cast<long long>(cIn), p->groups);
    }
    if (known(cOut) && known(d[1][1]) && d[1][1] != cOut && d[1][1] != 1)
    {
        return fail(msg, msg_size, "coeff dim 1 is %lld; it must be C_out=%lld or 1", static_cast<long long>(d[1][1]),
            static_cast<long long>(cOut));
    }
    if (known(K) && known(d[1][2]) && d[1][2] != K)
    {
        return fail(msg, msg_size, "coeff has K=%lld, weight has K=%lld", static_cast<long long>(d[1][2]),
            static_cast<long long>(K));
    }
    if (known(n) && known(d[1][0]) && d[1][0] != n)
    {
        return fail(msg, msg_size, "x and coeff disagree on the batch: %lld vs %lld", static_cast<long long>(n),
            static_cast<long long>(d[1][0]));
    }
    if (bankIdx >= 0
        && ((known(d[bankIdx][0]) && known(K) && d[bankIdx][0] != K)
            || (known(d[bankIdx][1]) && known(cOut) && d[bankIdx][1] != cOut)))
    {
        return fail(msg, msg_size, "bias_bank must be [K, C_out] = [%lld, %lld], got [%lld, %lld]",
            static_cast<long long>(K), static_cast<long long>(cOut), static_cast<long long>(d[bankIdx][0]),
            static_cast<long long>(d[bankIdx][1]));
    }
    if (biasIdx >= 0 && known(d[biasIdx][0]) && known(cOut) && d[biasIdx][0] != cOut)
    {
        return fail(msg, msg_size, "bias must be [C_out] = [%lld], got [%lld]", static_cast<long long>(cOut),
            static_cast<long long>(d[biasIdx][0]));
    }
    auto dimsText = [](int64_t const* dd, int32_t rank, char* buf, size_t size) {
        size_t used = 0;
        buf[0] = '\0';
        for (int32_t j = 0; j < rank && used < size; ++j)
        {
            int const wrote = std::snprintf(buf + used, size - used, "%s%lld", j ? ", " : "",
                static_cast<long long>(dd[j]));
            used += wrote > 0 ? static_cast<size_t>(wrote) : 0;
        }
        return buf;
    };
    int64_t const kH = d[2][3];
    int64_t const kW = d[2][4];
    if (spatialIdx >= 0)
    {
        int64_t const* s = d[spatialIdx];
        int64_t const taps = known(kH) && known(kW) ? kH * kW : -1;
        if ((known(s[0]) && known(n) && s[0] != n) || (known(s[1]) && known(taps) && s[1] != taps))
        {
            char got[96];
            return fail(msg, msg_size, "spatial must be [N, kH*kW] = [%lld, %lld], got [%s]",
                static_cast<long long>(n), static_cast<long long>(taps), dimsText(s, 2, got, sizeof(got)));
        }
    }
    if (residualIdx >= 0)
    {
        // H_out and W_out as the validator computes them; an extent whose inputs are unknown, or whose padded
        // input is smaller than the dilated kernel (the validator's "empty output"), is not checked here.
        auto extent = [&](int64_t in, int64_t padA, int64_t padB, int64_t dil, int64_t kernel, int64_t stride) {
            if (!known(in) || !known(kernel))
            {
                return int64_t{-1};
            }
            int64_t const out = outSize(in, padA, padB, dil, kernel, stride);
            return out >= 1 ? out : int64_t{-1};
        };
        int64_t const hOut = extent(d[0][2], p->pad_top, p->pad_bottom, p->dilation_h, kH, p->stride_h);
        int64_t const wOut = extent(d[0][3], p->pad_left, p->pad_right, p->dilation_w, kW, p->stride_w);
        int64_t const want[4] = {n, cOut, hOut, wOut};
        int64_t const* r = d[residualIdx];
        for (int32_t j = 0; j < 4; ++j)
        {
            if (known(r[j]) && known(want[j]) && r[j] != want[j])
            {
                char got[128];
                return fail(msg, msg_size,
                    "residual must be [N, C_out, H_out, W_out] = [%lld, %lld, %lld, %lld] (y's shape), got [%s]",
                    static_cast<long long>(want[0]), static_cast<long long>(want[1]),
                    static_cast<long long>(want[2]), static_cast<long long>(want[3]),
                    dimsText(r, 4, got, sizeof(got)));
            }
        }
    }
    p->n = static_cast<int32_t>(n);
    p->c_in = static_cast<int32_t>(cIn);
    p->h = static_cast<int32_t>(d[0][2]);
    p->w = static_cast<int32_t>(d[0][3]);
    p->coeff_channels = static_cast<int32_t>(d[1][1]);
    p->k = static_cast<int32_t>(K);
    p->c_out = static_cast<int32_t>(cOut);
    p->kh = static_cast<int32_t>(d[2][3]);
    p->kw = static_cast<int32_t>(d[2][4]);
    if (msg != nullptr && msg_size > 0)
    {
        msg[0] = '\0';
    }
    return DYNET_OK;
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
    case DYNET_ERR_LIMIT: return "a derived size (padded input or dilated kernel) exceeds the op's limits";
    default: return "unknown status";
    }
}

int32_t dynet_conv_validate(DynetConvParams const* p, char* msg, size_t msg_size)
{
    DynetConvSizes sizes;
    return dynet_conv_sizes(p, &sizes, msg, msg_size);
}

int32_t dynet_conv_sizes(DynetConvParams const* p, DynetConvSizes* sizes, char* msg, size_t msg_size)
{
    if (sizes != nullptr)
    {
        *sizes = DynetConvSizes{};
    }
    if (p == nullptr || sizes == nullptr)
    {
        fail(msg, msg_size, "params or sizes pointer is NULL");
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
    int32_t const attrStatus = dynet_conv_validate_attributes(p, msg, msg_size);
    if (attrStatus != DYNET_OK)
    {
        return attrStatus;
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
    // Every operand below is at most 2^31-1, so each sum of three and each product of two fits int64.
    constexpr int64_t kMaxExtent = DYNET_MAX_EXTENT;
    int64_t const hPadded = int64_t{p->h} + p->pad_top + p->pad_bottom;
    int64_t const wPadded = int64_t{p->w} + p->pad_left + p->pad_right;
    int64_t const khDilated = int64_t{p->dilation_h} * (p->kh - 1) + 1;
    int64_t const kwDilated = int64_t{p->dilation_w} * (p->kw - 1) + 1;
    if (hPadded > kMaxExtent)
    {
        fail(msg, msg_size, "pad_top=%d + pad_bottom=%d on an input of height %d give a padded height of %lld; the "
            "limit is 2^31-1 (lower pad_top or pad_bottom)", p->pad_top, p->pad_bottom, p->h,
            static_cast<long long>(hPadded));
        return DYNET_ERR_LIMIT;
    }
    if (wPadded > kMaxExtent)
    {
        fail(msg, msg_size, "pad_left=%d + pad_right=%d on an input of width %d give a padded width of %lld; the "
            "limit is 2^31-1 (lower pad_left or pad_right)", p->pad_left, p->pad_right, p->w,
            static_cast<long long>(wPadded));
        return DYNET_ERR_LIMIT;
    }
    if (khDilated > kMaxExtent)
    {
        fail(msg, msg_size, "dilation_h=%d with kH=%d spans %lld rows; the limit is 2^31-1 (lower dilation_h)",
            p->dilation_h, p->kh, static_cast<long long>(khDilated));
        return DYNET_ERR_LIMIT;
    }
    if (kwDilated > kMaxExtent)
    {
        fail(msg, msg_size, "dilation_w=%d with kW=%d spans %lld columns; the limit is 2^31-1 (lower dilation_w)",
            p->dilation_w, p->kw, static_cast<long long>(kwDilated));
        return DYNET_ERR_LIMIT;
    }
    int64_t const hOut = outSize(p->h, p->pad_top, p->pad_bottom, p->dilation_h, p->kh, p->stride_h);
    int64_t const wOut = outSize(p->w, p->pad_left, p->pad_right, p->dilation_w, p->kw, p->stride_w);
    if (hOut < 1 || wOut < 1)
    {
        return fail(msg, msg_size, "empty output: input %dx%d with pads (%d,%d,%d,%d) is smaller than the dilated "
            "kernel %lldx%lld", p->h, p->w, p->pad_top, p->pad_left, p->pad_bottom, p->pad_right,
            static_cast<long long>(khDilated), static_cast<long long>(kwDilated));
    }
    int64_t const cinG = p->c_in / p->groups;
    struct
    {
        char const* name;
        int64_t elements;
    } const limited[] = {
        {"x", volume({p->n, p->c_in, p->h, p->w})},
        {"y", volume({p->n, p->c_out, hOut, wOut})},
        {"weight", volume({p->k, p->c_out, cinG, p->kh, p->kw})},
        {"the fused kernels of the batch", volume({p->n, p->c_out, cinG, p->kh, p->kw})},
        {"coeff", volume({p->n, p->coeff_channels, p->k})},
    };
    for (auto const& s : limited)
    {
        if (s.elements > kMaxElements)
        {
            return fail(msg, msg_size, "%s of this call has %lld elements; the limit is 2^31-1 = %lld (lower the "
                "batch or the spatial size, e.g. the optimisation profile's max)", s.name,
                static_cast<long long>(s.elements), static_cast<long long>(kMaxElements));
        }
    }
    DynetConvSizes& z = *sizes;
    z.h_out = hOut;
    z.w_out = wOut;
    z.h_padded = hPadded;
    z.w_padded = wPadded;
    z.kh_dilated = khDilated;
    z.kw_dilated = kwDilated;
    z.x_elements = limited[0].elements;
    z.y_elements = limited[1].elements;
    z.weight_elements = limited[2].elements;
    z.fused_elements = limited[3].elements;
    z.coeff_elements = limited[4].elements;
    z.kernel_elements = volume({cinG, p->kh, p->kw});
    z.im2col_elements = volume({p->n, p->groups, z.kernel_elements, hOut, wOut});
    // Four tensors of at most 2^31-1 elements each: the sum and the product below stay far from INT64_MAX.
    z.scratch_budget = DYNET_SCRATCH_FACTOR * (z.x_elements + z.y_elements + z.weight_elements + z.fused_elements)
        + DYNET_SCRATCH_FLOOR;
    if (msg != nullptr && msg_size > 0)
    {
        msg[0] = '\0';
    }
    return DYNET_OK;
}

int32_t dynet_conv_output_hw(DynetConvParams const* p, int32_t* h_out, int32_t* w_out)
{
    DynetConvSizes sizes;
    int32_t const status = dynet_conv_sizes(p, &sizes, nullptr, 0);
    if (status != DYNET_OK)
    {
        return status;
    }
    if (h_out == nullptr || w_out == nullptr)
    {
        return DYNET_ERR_NULL_POINTER;
    }
    // y has at most 2^31-1 elements, so each extent fits int32.
    *h_out = static_cast<int32_t>(sizes.h_out);
    *w_out = static_cast<int32_t>(sizes.w_out);
    return DYNET_OK;
}

} // extern "C"
