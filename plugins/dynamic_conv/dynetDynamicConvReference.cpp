// CPU reference of DyNetDynamicConv2d: a direct, readable implementation of the op contract with double
// accumulation. It is the oracle for the CUDA kernels and the TensorRT plugin, not a fast path.
#include "dynetDynamicConv.h"

#include <algorithm>
#include <cstdint>
#include <vector>

extern "C" int32_t dynet_conv_cpu_f32(DynetConvParams const* p, float const* x, float const* coeff,
    float const* weight, float const* bias_bank, float const* bias, float* y)
{
    int32_t const status = dynet_conv_validate(p, nullptr, 0);
    if (status != DYNET_OK)
    {
        return status;
    }
    if (x == nullptr || coeff == nullptr || weight == nullptr || y == nullptr
        || (p->has_bias_bank && bias_bank == nullptr) || (p->has_bias && bias == nullptr))
    {
        return DYNET_ERR_NULL_POINTER;
    }
    int32_t hOut = 0;
    int32_t wOut = 0;
    dynet_conv_output_hw(p, &hOut, &wOut);

    int64_t const K = p->k;
    int64_t const cinG = p->c_in / p->groups;
    int64_t const coutG = p->c_out / p->groups;
    int64_t const R = cinG * p->kh * p->kw; // elements of one output channel's kernel
    int64_t const HW = int64_t{p->h} * p->w;
    std::vector<double> fused(static_cast<size_t>(p->c_out * R));
    std::vector<double> fusedBias(static_cast<size_t>(p->c_out));

    for (int64_t n = 0; n < p->n; ++n)
    {
        // Kernel fusion for sample n: w~[t] = sum_k coeff[n, t|0, k] * weight[k, t].
        for (int64_t t = 0; t < p->c_out; ++t)
        {
            float const* c = coeff + (n * p->coeff_channels + (p->coeff_channels == 1 ? 0 : t)) * K;
            double* wt = fused.data() + t * R;
            std::fill(wt, wt + R, 0.0);
            double b = p->has_bias ? static_cast<double>(bias[t]) : 0.0;
            for (int64_t k = 0; k < K; ++k)
            {
                double const ck = c[k];
                float const* src = weight + (k * p->c_out + t) * R;
                for (int64_t r = 0; r < R; ++r)
                {
                    wt[r] += ck * static_cast<double>(src[r]);
                }
                if (p->has_bias_bank)
                {
                    b += ck * static_cast<double>(bias_bank[k * p->c_out + t]);
                }
            }
            fusedBias[static_cast<size_t>(t)] = b;
        }
        // Convolution of sample n with its own kernel.
        for (int64_t t = 0; t < p->c_out; ++t)
        {
            int64_t const g = t / coutG;
            float const* xg = x + (n * p->c_in + g * cinG) * HW;
            double const* wt = fused.data() + t * R;
            float* yt = y + (n * p->c_out + t) * int64_t{hOut} * wOut;
            for (int64_t oh = 0; oh < hOut; ++oh)
            {
                for (int64_t ow = 0; ow < wOut; ++ow)
                {
                    double acc = fusedBias[static_cast<size_t>(t)];
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
                    if (p->activation == DYNET_ACT_RELU)
                    {
                        acc = std::max(acc, 0.0);
                    }
                    else if (p->activation == DYNET_ACT_RELU6)
                    {
                        acc = std::min(std::max(acc, 0.0), 6.0);
                    }
                    yt[oh * wOut + ow] = static_cast<float>(acc);
                }
            }
        }
    }
    return DYNET_OK;
}
