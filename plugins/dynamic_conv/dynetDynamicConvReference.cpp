// CPU reference of DyNetDynamicConv2d: a direct, readable implementation of the op contract with double
// accumulation. It is the oracle for the CUDA kernels, the onnxruntime CPU kernel and the TensorRT plugin, not a fast
// path.
#include "dynetDynamicConv.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace
{
// IEEE binary16 -> float, exact (every half value is a float).
float halfToFloat(uint16_t h)
{
    uint32_t const sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits = 0;
    if (exponent == 0x1fu)
    {
        bits = sign | 0x7f800000u | (mantissa << 13); // inf / NaN (payload kept)
    }
    else if (exponent != 0)
    {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    }
    else if (mantissa != 0)
    {
        // Subnormal half: normalise into a float.
        exponent = 113u;
        while ((mantissa & 0x400u) == 0)
        {
            mantissa <<= 1;
            --exponent;
        }
        bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
    }
    else
    {
        bits = sign; // +-0
    }
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
}

// bfloat16 -> float, exact: the upper 16 bits of a float.
float bfloat16ToFloat(uint16_t b)
{
    uint32_t const bits = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
}

// The bank's value at index i, widened to double exactly from its storage type.
double bankValue(void const* weight, int32_t dtype, int64_t i)
{
    switch (dtype)
    {
    case DYNET_FLOAT16: return halfToFloat(static_cast<uint16_t const*>(weight)[i]);
    case DYNET_BFLOAT16: return bfloat16ToFloat(static_cast<uint16_t const*>(weight)[i]);
    default: return static_cast<float const*>(weight)[i];
    }
}

// The op on validated params. roundFused: each fused kernel value (after the spatial scaling) is rounded to fp32, as
// every kernel computes it (dynet_conv_cpu); dynet_conv_cpu_f32 keeps it in double, as it always has.
void referenceConv(DynetConvParams const& prm, DynetConvTensors const& t, bool roundFused)
{
    DynetConvParams const* p = &prm;
    float const* x = static_cast<float const*>(t.x);
    float const* coeff = static_cast<float const*>(t.coeff);
    float const* bias_bank = static_cast<float const*>(t.bias_bank);
    float const* bias = static_cast<float const*>(t.bias);
    float const* spatial = static_cast<float const*>(t.spatial);
    float const* residual = static_cast<float const*>(t.residual);
    float* y = static_cast<float*>(t.y);
    float* mean = static_cast<float*>(t.mean);
    int32_t hOut = 0;
    int32_t wOut = 0;
    dynet_conv_output_hw(p, &hOut, &wOut);

    int64_t const K = p->k;
    int64_t const cinG = p->c_in / p->groups;
    int64_t const coutG = p->c_out / p->groups;
    int64_t const taps = int64_t{p->kh} * p->kw;
    int64_t const R = cinG * taps; // elements of one output channel's kernel
    int64_t const HW = int64_t{p->h} * p->w;
    int64_t const P = int64_t{hOut} * wOut;
    std::vector<double> fused(static_cast<size_t>(p->c_out * R));
    std::vector<double> fusedBias(static_cast<size_t>(p->c_out));

    for (int64_t n = 0; n < p->n; ++n)
    {
        // Kernel fusion for sample n: w~[t] = spatial[n] (.) sum_k coeff[n, t|0, k] * weight[k, t].
        for (int64_t to = 0; to < p->c_out; ++to)
        {
            float const* c = coeff + (n * p->coeff_channels + (p->coeff_channels == 1 ? 0 : to)) * K;
            double* wt = fused.data() + to * R;
            std::fill(wt, wt + R, 0.0);
            double b = p->has_bias ? static_cast<double>(bias[to]) : 0.0;
            for (int64_t k = 0; k < K; ++k)
            {
                double const ck = c[k];
                int64_t const base = (k * p->c_out + to) * R;
                for (int64_t r = 0; r < R; ++r)
                {
                    wt[r] += ck * bankValue(t.weight, p->weight_dtype, base + r);
                }
                if (p->has_bias_bank)
                {
                    b += ck * static_cast<double>(bias_bank[k * p->c_out + to]);
                }
            }
            if (spatial != nullptr)
            {
                float const* s = spatial + n * taps;
                for (int64_t r = 0; r < R; ++r)
                {
                    wt[r] *= static_cast<double>(s[r % taps]);
                }
            }
            if (roundFused)
            {
                for (int64_t r = 0; r < R; ++r)
                {
                    wt[r] = static_cast<double>(static_cast<float>(wt[r]));
                }
            }
            fusedBias[static_cast<size_t>(to)] = b;
        }
        // Convolution of sample n with its own kernel.
        for (int64_t to = 0; to < p->c_out; ++to)
        {
            int64_t const g = to / coutG;
            float const* xg = x + (n * p->c_in + g * cinG) * HW;
            double const* wt = fused.data() + to * R;
            float* yt = y + (n * p->c_out + to) * P;
            float const* rt = residual != nullptr ? residual + (n * p->c_out + to) * P : nullptr;
            for (int64_t oh = 0; oh < hOut; ++oh)
            {
                for (int64_t ow = 0; ow < wOut; ++ow)
                {
                    double acc = fusedBias[static_cast<size_t>(to)];
                    for (int64_t ci = 0; ci < cinG; ++ci)
                    {
                        for (int64_t i = 0; i < p->kh; ++i)
                        {
                            int64_t const ih = oh * p->stride_h - p->pad_top + i * p->dilation_h;
                            if (ih < 0 || ih >= p->h)
                            {
                                continue;
                            }
                            for (int64_t j = 0; j < p->kw; ++j)
                            {
                                int64_t const iw = ow * p->stride_w - p->pad_left + j * p->dilation_w;
                                if (iw < 0 || iw >= p->w)
                                {
                                    continue;
                                }
                                acc += wt[(ci * p->kh + i) * p->kw + j]
                                    * static_cast<double>(xg[ci * HW + ih * p->w + iw]);
                            }
                        }
                    }
                    if (rt != nullptr)
                    {
                        acc += static_cast<double>(rt[oh * wOut + ow]);
                    }
                    // ReLU / ReLU6 as PyTorch: a NaN falls through every comparison and stays NaN.
                    if (p->activation == DYNET_ACT_RELU)
                    {
                        acc = acc < 0.0 ? 0.0 : acc;
                    }
                    else if (p->activation == DYNET_ACT_RELU6)
                    {
                        acc = acc < 0.0 ? 0.0 : (acc > 6.0 ? 6.0 : acc);
                    }
                    yt[oh * wOut + ow] = static_cast<float>(acc);
                }
            }
            if (mean != nullptr)
            {
                // GlobalAveragePool of the stored y, accumulated in double.
                double sum = 0.0;
                for (int64_t q = 0; q < P; ++q)
                {
                    sum += static_cast<double>(yt[q]);
                }
                mean[n * p->c_out + to] = static_cast<float>(sum / static_cast<double>(P));
            }
        }
    }
}
} // namespace

extern "C" int32_t dynet_conv_cpu(DynetConvParams const* p, DynetConvTensors const* t)
{
    int32_t const status = dynet_conv_validate(p, nullptr, 0);
    if (status != DYNET_OK)
    {
        return status;
    }
    if (t == nullptr || t->x == nullptr || t->coeff == nullptr || t->weight == nullptr || t->y == nullptr)
    {
        return DYNET_ERR_NULL_POINTER;
    }
    // Each optional tensor is present exactly when its flag says so: a missing one is a NULL pointer, one passed
    // without its flag is a call that does not say what it means.
    struct
    {
        int32_t flag;
        void const* ptr;
    } const optional[] = {{p->has_bias_bank, t->bias_bank}, {p->has_bias, t->bias}, {p->has_spatial, t->spatial},
        {p->has_residual, t->residual}, {p->has_mean, t->mean}};
    for (auto const& o : optional)
    {
        if (o.flag != 0 && o.ptr == nullptr)
        {
            return DYNET_ERR_NULL_POINTER;
        }
        if (o.flag == 0 && o.ptr != nullptr)
        {
            return DYNET_ERR_INVALID_ARGUMENT;
        }
    }
    referenceConv(*p, *t, true);
    return DYNET_OK;
}

extern "C" int32_t dynet_conv_cpu_f32(DynetConvParams const* p, float const* x, float const* coeff,
    float const* weight, float const* bias_bank, float const* bias, float* y)
{
    int32_t const status = dynet_conv_validate(p, nullptr, 0);
    if (status != DYNET_OK)
    {
        return status;
    }
    if (dynet_conv_op_version(p) > 1)
    {
        return DYNET_ERR_UNSUPPORTED; // spatial, residual, mean or a narrowed bank: dynet_conv_cpu
    }
    if (x == nullptr || coeff == nullptr || weight == nullptr || y == nullptr
        || (p->has_bias_bank && bias_bank == nullptr) || (p->has_bias && bias == nullptr))
    {
        return DYNET_ERR_NULL_POINTER;
    }
    DynetConvTensors t{};
    t.x = x;
    t.coeff = coeff;
    t.weight = weight;
    t.bias_bank = p->has_bias_bank ? bias_bank : nullptr;
    t.bias = p->has_bias ? bias : nullptr;
    t.y = y;
    referenceConv(*p, t, false);
    return DYNET_OK;
}
