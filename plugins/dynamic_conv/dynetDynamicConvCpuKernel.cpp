// Fast CPU kernel of DyNetDynamicConv2d: see dynetDynamicConvCpuKernel.h for the algorithm.
//
// ISA dispatch: the loops are written once (inline bodies below) and compiled three times, inside functions with
// target("avx512f"), target("avx2,fma") and the build's baseline, so the compiler vectorises each for its ISA; the
// GEMM micro-kernels use intrinsics. selectedIsa() picks the best one the CPU supports at run time.
#include "dynetDynamicConvCpuKernel.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define DYNET_X86 1
#include <immintrin.h>
#else
#define DYNET_X86 0
#endif

#if defined(__GNUC__)
#define DYNET_INLINE inline __attribute__((always_inline))
#else
#define DYNET_INLINE inline
#endif

namespace dynet
{

namespace
{
constexpr int kMr = 8;           // rows (output channels) of a fused-kernel panel
constexpr int64_t kFuseChunk = 128; // kernel elements per fusion block: 128 * 8 floats = 4 KiB per basis kernel
constexpr int64_t kPixelBlock = 256; // output pixels per GEMM task before splitting for parallelism
constexpr size_t kMinTasks = 16;  // split work until a layer has at least this many tasks
constexpr int64_t kMaxNr = 32;       // widest micro-kernel tile (AVX-512)
constexpr int64_t kImplicitMinWidth = 24; // implicit GEMM when output rows are at least this wide (tile use)

// Direct path when a group has few output channels (an 8-row GEMM panel would be mostly zeros: depthwise and
// channel-multiplier-2 layers) and the kernel of one output channel is small.
constexpr int64_t kDirectMaxR = 32;
constexpr int64_t kDirectMaxCoutG = 3;

template <typename T>
T ceilDiv(T a, T b)
{
    return (a + b - 1) / b;
}

//! a*b for non-negative a, b, saturating at INT64_MAX: scratch sizes compared with the call's scratch budget.
int64_t satMul(int64_t a, int64_t b)
{
    return (a != 0 && b > INT64_MAX / a) ? INT64_MAX : a * b;
}

struct Geometry
{
    int64_t n, cIn, h, w, hw, cOut, cinG, coutG, groups, kh, kw, r, k;
    int64_t sh, sw, dh, dw, pt, pl;
    int64_t hOut, wOut, p;
    int32_t activation;
};

Geometry geometry(DynetConvParams const& prm, int32_t hOut, int32_t wOut)
{
    Geometry g{};
    g.n = prm.n;
    g.cIn = prm.c_in;
    g.h = prm.h;
    g.w = prm.w;
    g.hw = g.h * g.w;
    g.cOut = prm.c_out;
    g.groups = prm.groups;
    g.cinG = g.cIn / g.groups;
    g.coutG = g.cOut / g.groups;
    g.kh = prm.kh;
    g.kw = prm.kw;
    g.r = g.cinG * g.kh * g.kw;
    g.k = prm.k;
    g.sh = prm.stride_h;
    g.sw = prm.stride_w;
    g.dh = prm.dilation_h;
    g.dw = prm.dilation_w;
    g.pt = prm.pad_top;
    g.pl = prm.pad_left;
    g.hOut = hOut;
    g.wOut = wOut;
    g.p = int64_t{hOut} * wOut;
    g.activation = prm.activation;
    return g;
}

// 1x1, stride 1, unpadded, same size: the implicit GEMM reads x in place.
bool flatCase(Geometry const& g)
{
    return g.sh == 1 && g.sw == 1 && g.kh == 1 && g.kw == 1 && g.pt == 0 && g.pl == 0 && g.hOut == g.h
        && g.wOut == g.w;
}

// Rows and columns of one stride-phase plane of the implicit GEMM's padded input copy.
int64_t phaseRows(Geometry const& g)
{
    return g.hOut + (g.kh - 1) * g.dh / g.sh;
}

int64_t phaseCols(Geometry const& g)
{
    return g.wOut + (g.kw - 1) * g.dw / g.sw;
}

// Elements of the implicit GEMM's padded, stride-decimated copy: n * C_in * (sh * hp) * (sw * wp), saturating.
int64_t padElements(Geometry const& g)
{
    return satMul(satMul(g.n * g.cIn, g.sh * g.sw), satMul(phaseRows(g), phaseCols(g)));
}

constexpr int64_t kNarrowMaxCin = 8;       // input channels per group
constexpr int64_t kNarrowMaxLanes = 64;    // widest block of lanes (AVX-512: 4 vectors)
constexpr int64_t kNarrowTaskLanes = 192;  // task blocks are multiples of every block width (64, 48, 24, 16, 8)

// Floats past the padded input that a block of lanes may read: the last row's lanes past wOut read into the next
// row by up to wq, and a block rounds up to kNarrowMaxLanes.
int64_t narrowSlack(Geometry const& g)
{
    return phaseCols(g) + 2 * kNarrowMaxLanes;
}

bool narrowCase(Geometry const& g)
{
    // At least two thirds of the lanes are outputs (wOut of wq).
    return g.groups > 1 && g.coutG <= kMr && g.cinG <= kNarrowMaxCin && 3 * g.wOut >= 2 * phaseCols(g);
}

// Which loop nest convForward runs for a layer (gemm: the bank's path, usesGemmPath; nr: the ISA's tile width;
// budget: the call's scratch budget in elements, from dynet_conv_sizes). A path whose buffer would exceed the budget
// is not taken: huge pads or dilations make the implicit GEMM's padded copy huge while the output stays small, and
// the im2col path's pixel-block buffers stay bounded.
CpuPath pathOf(Geometry const& g, bool gemm, int64_t nr, int64_t budget)
{
    if (!gemm)
    {
        return CpuPath::kDirect;
    }
    if (narrowCase(g) && padElements(g) <= budget - narrowSlack(g))
    {
        return CpuPath::kNarrow; // narrow groups: fused kernels in L1, lanes over the flattened padded input
    }
    int64_t const smallBlock = ceilDiv<int64_t>(g.p, nr) * nr;
    if (g.p <= kPixelBlock && satMul(satMul(g.n * g.groups, smallBlock), g.r) <= budget)
    {
        return CpuPath::kGemmSmall; // the batch's kernels fused inside the GEMM tasks
    }
    if (flatCase(g))
    {
        return CpuPath::kGemmImplicit; // reads x in place: no copy
    }
    return g.wOut >= kImplicitMinWidth && padElements(g) <= budget - 2 * kMaxNr ? CpuPath::kGemmImplicit
                                                                               : CpuPath::kGemmIm2col;
}

// ReLU / ReLU6 as PyTorch computes them: NaN stays NaN (every comparison with NaN is false, so NaN falls through to
// v), relu(+inf) = +inf, relu6(+inf) = 6, -inf -> 0. Written so that the vectorised forms keep the NaN too.
DYNET_INLINE float activate(float v, int32_t act)
{
    if (act == DYNET_ACT_RELU)
    {
        return v < 0.0f ? 0.0f : v;
    }
    if (act == DYNET_ACT_RELU6)
    {
        return v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v);
    }
    return v;
}

// Output columns ow whose input column ow*sw + off lies inside [0, w): [lo, hi).
DYNET_INLINE void validColumns(int64_t off, int64_t sw, int64_t w, int64_t wOut, int64_t& lo, int64_t& hi)
{
    lo = off >= 0 ? 0 : ceilDiv(-off, sw);
    hi = (w - 1 - off) >= 0 ? std::min(wOut, (w - 1 - off) / sw + 1) : 0;
    lo = std::min(lo, wOut);
    if (hi < lo)
    {
        hi = lo;
    }
}

// ---- a 16-bit bank: exact widening to fp32 -------------------------------------------------------------------

// IEEE binary16 bits -> float, exact (every binary16 value is a float): portable, for the generic ISA.
DYNET_INLINE float widenHalf(uint16_t h)
{
    uint32_t const sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t const exponent = (h >> 10) & 0x1fu;
    uint32_t const mantissa = h & 0x3ffu;
    uint32_t bits = sign;
    if (exponent == 0x1fu)
    {
        bits |= 0x7f800000u | (mantissa << 13); // inf, NaN (payload kept)
    }
    else if (exponent != 0)
    {
        bits |= ((exponent + 112u) << 23) | (mantissa << 13); // rebias 15 -> 127
    }
    else if (mantissa != 0)
    {
        // Subnormal: mantissa * 2^-24, exact in float arithmetic.
        float const magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
        uint32_t m;
        std::memcpy(&m, &magnitude, sizeof(m));
        bits |= m;
    }
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
}

// bfloat16 bits -> float, exact: they are a float's upper half.
DYNET_INLINE float widenBf16(uint16_t b)
{
    uint32_t const bits = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
}

DYNET_INLINE float widen(uint16_t v, int32_t dtype)
{
    return dtype == DYNET_BFLOAT16 ? widenBf16(v) : widenHalf(v);
}

// dst[e] = (first ? 0 : dst[e]) + cv[e % 8] * widen(s[e]) for e < len: one basis kernel's term of the fusion, the
// bank read in its 16-bit storage. Portable version.
void axpy16Generic(float* dst, uint16_t const* s, int64_t len, float const* cv, bool first, int32_t dtype)
{
    for (int64_t e = 0; e < len; ++e)
    {
        float const term = cv[e % kMr] * widen(s[e], dtype);
        dst[e] = first ? term : dst[e] + term;
    }
}

#if DYNET_X86
// Eight 16-bit values widened: F16C for binary16, a 16-bit shift into the float's upper half for bfloat16.
__attribute__((target("avx2,fma,f16c"))) inline __m256 widen8(uint16_t const* s, int32_t dtype)
{
    __m128i const raw = _mm_loadu_si128(reinterpret_cast<__m128i const*>(s));
    if (dtype == DYNET_BFLOAT16)
    {
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
    }
    return _mm256_cvtph_ps(raw);
}

__attribute__((target("avx2,fma,f16c"))) void axpy16Avx2(float* dst, uint16_t const* s, int64_t len, float const* cv,
    bool first, int32_t dtype)
{
    __m256 const c = _mm256_loadu_ps(cv);
    int64_t e = 0;
    for (; e + 8 <= len; e += 8)
    {
        __m256 const w = widen8(s + e, dtype);
        _mm256_storeu_ps(dst + e, first ? _mm256_mul_ps(c, w) : _mm256_fmadd_ps(c, w, _mm256_loadu_ps(dst + e)));
    }
    for (; e < len; ++e)
    {
        float const term = cv[e % kMr] * widen(s[e], dtype);
        dst[e] = first ? term : dst[e] + term;
    }
}

__attribute__((target("avx512f,avx2,fma,f16c"))) inline __m512 widen16(uint16_t const* s, int32_t dtype)
{
    // The zero-masked forms: GCC 12 warns about the plain ones' undefined pass-through (as clamp512).
    __m256i const raw = _mm256_loadu_si256(reinterpret_cast<__m256i const*>(s));
    if (dtype == DYNET_BFLOAT16)
    {
        return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xffff, _mm512_maskz_cvtepu16_epi32(0xffff, raw), 16));
    }
    return _mm512_maskz_cvtph_ps(0xffff, raw);
}

__attribute__((target("avx512f,avx2,fma,f16c"))) void axpy16Avx512(float* dst, uint16_t const* s, int64_t len,
    float const* cv, bool first, int32_t dtype)
{
    float cv16[16];
    for (int i = 0; i < 16; ++i)
    {
        cv16[i] = cv[i % kMr];
    }
    __m512 const c = _mm512_loadu_ps(cv16);
    int64_t e = 0;
    for (; e + 16 <= len; e += 16)
    {
        __m512 const w = widen16(s + e, dtype);
        _mm512_storeu_ps(dst + e, first ? _mm512_mul_ps(c, w) : _mm512_fmadd_ps(c, w, _mm512_loadu_ps(dst + e)));
    }
    if (e < len)
    {
        axpy16Avx2(dst + e, s + e, len - e, cv, first, dtype); // e is a multiple of 8: the pattern is unchanged
    }
}
#endif

DYNET_INLINE void axpy16(CpuIsa isa, float* dst, uint16_t const* s, int64_t len, float const* cv, bool first,
    int32_t dtype)
{
#if DYNET_X86
    if (isa == CpuIsa::kAvx512)
    {
        axpy16Avx512(dst, s, len, cv, first, dtype);
        return;
    }
    if (isa == CpuIsa::kAvx2)
    {
        axpy16Avx2(dst, s, len, cv, first, dtype);
        return;
    }
#endif
    (void) isa;
    axpy16Generic(dst, s, len, cv, first, dtype);
}

// ---- step 1: kernel fusion ------------------------------------------------------------------------------------

struct FuseJob
{
    Geometry const* g;
    PackedBank const* bank;
    float const* coeff;
    int64_t coeffChannels;
    float* fused;     // GEMM: [N][groups][panels][R][8]; direct: [N][C_out][R]
    float* fusedBias; // [N][C_out]
    int64_t channelsPerTask; // direct path
    CpuIsa isa;              // how a 16-bit bank is widened
    float const* spatial;    // [N][kH*kW] or nullptr: scales every fused kernel's taps (op version 2)
};

DYNET_INLINE float coeffAt(FuseJob const& j, int64_t n, int64_t t, int64_t k)
{
    return j.coeff[(n * j.coeffChannels + (j.coeffChannels == 1 ? 0 : t)) * j.g->k + k];
}

DYNET_INLINE float fusedBiasOf(FuseJob const& j, int64_t n, int64_t t)
{
    PackedBank const& b = *j.bank;
    float acc = b.hasBias ? b.bias[static_cast<size_t>(t)] : 0.0f;
    if (b.hasBiasBank)
    {
        for (int64_t k = 0; k < j.g->k; ++k)
        {
            acc += coeffAt(j, n, t, k) * b.biasBank[static_cast<size_t>(t * j.g->k + k)];
        }
    }
    return acc;
}

DYNET_INLINE void fuseBias(FuseJob const& j, int64_t n, int64_t t)
{
    j.fusedBias[n * j.g->cOut + t] = fusedBiasOf(j, n, t);
}

// One 8-row panel (group gi, panel tp) for samples [n0, n1): dst(n) = dst0 + (n - n0) * dstStride,
// dst(n)[r][i] = sum_k c[n][t0+i][k] * bank[k][r][i]; also the samples' fused biases of these rows (unless
// j.fusedBias is null).
DYNET_INLINE void fusePanelSamples(FuseJob const& j, int64_t gi, int64_t tp, int64_t n0, int64_t n1, float* dst0,
    int64_t dstStride)
{
    Geometry const& g = *j.g;
    PackedBank const& b = *j.bank;
    int64_t const t0 = gi * g.coutG + tp * kMr;
    int64_t const rows = std::min<int64_t>(kMr, g.coutG - tp * kMr);
    int64_t const panelSize = g.r * kMr;
    int64_t const panelOffset = (gi * b.panels + tp) * g.k * panelSize;
    bool const narrowBank = b.dtype != DYNET_FLOAT32;
    float const* src = narrowBank ? nullptr : b.weight.data() + panelOffset;
    uint16_t const* src16 = narrowBank ? b.weight16.data() + panelOffset : nullptr;
    int64_t const taps = g.kh * g.kw;
    float cv[kMr];
    // Chunks of the kernel so that the K basis slices stay in L1 while every sample reads them.
    for (int64_t r0 = 0; r0 < g.r; r0 += kFuseChunk)
    {
        int64_t const len = std::min(kFuseChunk, g.r - r0) * kMr;
        for (int64_t n = n0; n < n1; ++n)
        {
            float* dst = dst0 + (n - n0) * dstStride + r0 * kMr;
            for (int64_t k = 0; k < g.k; ++k)
            {
                for (int i = 0; i < kMr; ++i)
                {
                    cv[i] = i < rows ? coeffAt(j, n, t0 + i, k) : 0.0f;
                }
                if (narrowBank)
                {
                    axpy16(j.isa, dst, src16 + k * panelSize + r0 * kMr, len, cv, k == 0, b.dtype);
                    continue;
                }
                float const* s = src + k * panelSize + r0 * kMr;
                if (k == 0)
                {
                    for (int64_t e = 0; e < len; e += kMr)
                    {
                        for (int i = 0; i < kMr; ++i)
                        {
                            dst[e + i] = cv[i] * s[e + i];
                        }
                    }
                }
                else
                {
                    for (int64_t e = 0; e < len; e += kMr)
                    {
                        for (int i = 0; i < kMr; ++i)
                        {
                            dst[e + i] += cv[i] * s[e + i];
                        }
                    }
                }
            }
            if (j.spatial != nullptr)
            {
                // Row e / 8 of the chunk is kernel element r0 + e / 8, tap (r0 + e / 8) % (kH*kW), for all 8 rows.
                float const* sp = j.spatial + n * taps;
                for (int64_t e = 0; e < len; e += kMr)
                {
                    float const scale = sp[(r0 + e / kMr) % taps];
                    for (int i = 0; i < kMr; ++i)
                    {
                        dst[e + i] *= scale;
                    }
                }
            }
        }
    }
    for (int64_t n = n0; n < n1 && j.fusedBias != nullptr; ++n)
    {
        for (int64_t i = 0; i < rows; ++i)
        {
            fuseBias(j, n, t0 + i);
        }
    }
}

// Task: one panel of one group for the whole batch, into the batch's fused-kernel buffer.
DYNET_INLINE void fusePanelBody(FuseJob const& j, int64_t task)
{
    Geometry const& g = *j.g;
    int64_t const panels = j.bank->panels;
    int64_t const gi = task / panels;
    int64_t const tp = task % panels;
    int64_t const panelSize = g.r * kMr;
    fusePanelSamples(j, gi, tp, 0, g.n, j.fused + (gi * panels + tp) * panelSize, g.groups * panels * panelSize);
}

// A run of output channels [t0, t1) for every sample, plain layout [C_out][R].
DYNET_INLINE void fuseChannelsBody(FuseJob const& j, int64_t task)
{
    Geometry const& g = *j.g;
    int64_t const t0 = task * j.channelsPerTask;
    int64_t const t1 = std::min(g.cOut, t0 + j.channelsPerTask);
    PackedBank const& b = *j.bank;
    int64_t const taps = g.kh * g.kw;
    for (int64_t t = t0; t < t1; ++t)
    {
        for (int64_t n = 0; n < g.n; ++n)
        {
            float* dst = j.fused + (n * g.cOut + t) * g.r;
            if (b.dtype != DYNET_FLOAT32)
            {
                uint16_t const* src16 = b.weight16.data() + t * g.k * g.r;
                for (int64_t k = 0; k < g.k; ++k)
                {
                    float cv[kMr];
                    std::fill(cv, cv + kMr, coeffAt(j, n, t, k));
                    axpy16(j.isa, dst, src16 + k * g.r, g.r, cv, k == 0, b.dtype);
                }
            }
            else
            {
                float const* src = b.weight.data() + t * g.k * g.r;
                float const c0 = coeffAt(j, n, t, 0);
                for (int64_t e = 0; e < g.r; ++e)
                {
                    dst[e] = c0 * src[e];
                }
                for (int64_t k = 1; k < g.k; ++k)
                {
                    float const ck = coeffAt(j, n, t, k);
                    float const* s = src + k * g.r;
                    for (int64_t e = 0; e < g.r; ++e)
                    {
                        dst[e] += ck * s[e];
                    }
                }
            }
            if (j.spatial != nullptr)
            {
                float const* sp = j.spatial + n * taps;
                for (int64_t e = 0; e < g.r; ++e)
                {
                    dst[e] *= sp[e % taps];
                }
            }
            fuseBias(j, n, t);
        }
    }
}

// ---- step 2a: GEMM path ---------------------------------------------------------------------------------------

struct GemmJob
{
    Geometry const* g;
    float const* x;
    float const* fused;
    float const* fusedBias;
    float* y;
    float const* residual; // [N][C_out][P] like y, or nullptr (op version 2)
    int64_t panels;      // 8-row panels per group
    int64_t pixelBlock;  // output pixels per task (multiple of nr)
    int64_t panelsPerTask;
    int64_t pixelBlocks, panelBlocks;
    int nr;              // columns of the micro-kernel
    CpuIsa isa;
    float* sharedCols;   // unrolled input of every (sample, group, pixel block), when tasks split the panels
    int64_t colsStride;  // floats per (sample, group, pixel block) in sharedCols
    FuseJob const* fuse; // fusion inside the GEMM tasks (small images), else nullptr
    int64_t const* packedOffsets; // e * nr for e < R: rows of a packed column panel

    // Implicit GEMM (large images): B is read straight from the padded, stride-decimated input, no unrolling.
    float const* src;    // padded input (or x itself for 1x1 convolutions without padding)
    int64_t srcStride;   // floats per (sample, group) in src
    int64_t const* tapOffsets; // offset of tap e = (ci, i, j) in src (its phase plane, row and column)
    int64_t rowsCount, rowPitch, rowLen, outRowPitch, rowsPerTask, rowBlocks;
    bool flat;           // 1x1 without padding: "rows" are chunks of the flattened image
    bool flatSmall;      // small-image mode on a 1x1 layer without padding or stride: B read from x in place
    float const* xEnd;   // one past the last float of x
};

// Unroll the input of sample n, group gi, output pixels [p0, p0 + pc) into column panels B[jp][r][nr].
DYNET_INLINE void im2colPanels(Geometry const& g, float const* xg, int64_t p0, int64_t pc, int nr, float* out)
{
    int64_t const npan = ceilDiv<int64_t>(pc, nr);
    int64_t const khw = g.kh * g.kw;
    int64_t const panelStride = g.r * nr;
    for (int64_t r = 0; r < g.r; ++r)
    {
        int64_t const ci = r / khw;
        int64_t const i = (r / g.kw) % g.kh;
        int64_t const jj = r % g.kw;
        float const* xc = xg + ci * g.hw;
        int64_t const off = jj * g.dw - g.pl;
        int64_t lo, hi;
        validColumns(off, g.sw, g.w, g.wOut, lo, hi);
        int64_t p = p0;
        int64_t const pEnd = p0 + pc;
        int64_t oh = p / g.wOut;
        int64_t ow = p % g.wOut;
        while (p < pEnd)
        {
            int64_t const q = p - p0;
            int64_t const col = q % nr;
            int64_t const run = std::min({g.wOut - ow, pEnd - p, int64_t{nr} - col});
            float* dst = out + (q / nr) * panelStride + r * nr + col;
            int64_t const ih = oh * g.sh - g.pt + i * g.dh;
            if (ih < 0 || ih >= g.h)
            {
                for (int64_t e = 0; e < run; ++e)
                {
                    dst[e] = 0.0f;
                }
            }
            else
            {
                float const* src = xc + ih * g.w + off;
                int64_t const a = std::clamp(lo - ow, int64_t{0}, run);
                int64_t const b = std::clamp(hi - ow, a, run);
                for (int64_t e = 0; e < a; ++e)
                {
                    dst[e] = 0.0f;
                }
                if (g.sw == 1)
                {
                    std::memcpy(dst + a, src + ow + a, static_cast<size_t>(b - a) * sizeof(float));
                }
                else
                {
                    for (int64_t e = a; e < b; ++e)
                    {
                        dst[e] = src[(ow + e) * g.sw];
                    }
                }
                for (int64_t e = b; e < run; ++e)
                {
                    dst[e] = 0.0f;
                }
            }
            p += run;
            ow += run;
            if (ow == g.wOut)
            {
                ow = 0;
                ++oh;
            }
        }
        int64_t const tail = npan * nr - pc; // zero columns past the last pixel
        if (tail > 0)
        {
            float* dst = out + (npan - 1) * panelStride + r * nr + (nr - tail);
            for (int64_t e = 0; e < tail; ++e)
            {
                dst[e] = 0.0f;
            }
        }
    }
}

// Where a micro-kernel writes: rows y + i * ldy (i < rows), columns [0, width), value
// clamp(acc + bias[i] + res[i * ldy + c], lo, hi) (res: the residual at the same place as y, op version 2, or
// nullptr; lo = 0 for ReLU / ReLU6, hi = 6 for ReLU6, else +-infinity). A full tile (8 rows, nr columns) is stored from
// registers; a partial one goes through a stack tile. The clamp keeps NaN (as PyTorch's relu / clamp do): the x86
// max / min instructions return their second operand when either is NaN, so the value goes second, max(lo, v) and
// min(hi, .); the other order would turn NaN into lo (-inf without activation, 0 with ReLU / ReLU6).
struct TileOut
{
    float* y;
    int64_t ldy;
    int64_t rows;
    int64_t width;
    float const* bias; // 8 values (rows past `rows` are unused)
    float lo, hi;
    float const* res;  // residual rows res + i * ldy, or nullptr
};

// NaN falls through both comparisons and stays NaN.
DYNET_INLINE float clampTo(float v, float lo, float hi)
{
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}

DYNET_INLINE void storeTile(float const* tile, int nr, TileOut const& o)
{
    for (int64_t i = 0; i < o.rows; ++i)
    {
        float const b = o.bias[i];
        float* yrow = o.y + i * o.ldy;
        float const* trow = tile + i * nr;
        if (o.res != nullptr)
        {
            float const* rrow = o.res + i * o.ldy;
            for (int64_t c = 0; c < o.width; ++c)
            {
                yrow[c] = clampTo(trow[c] + b + rrow[c], o.lo, o.hi);
            }
            continue;
        }
        for (int64_t c = 0; c < o.width; ++c)
        {
            yrow[c] = clampTo(trow[c] + b, o.lo, o.hi);
        }
    }
}

// acc[i][c] = sum_e A[e][i] * B[e][c], A an 8-row panel [R][8], row e of B at base + offs[e] (a packed column
// panel, offs[e] = e * nr, or the padded input itself, offs[e] = the tap's offset); then the epilogue.
DYNET_INLINE void microGeneric8x8(float const* a, float const* base, int64_t const* offs, int64_t r, TileOut const& o)
{
    float acc[kMr][8] = {};
    for (int64_t e = 0; e < r; ++e)
    {
        float const* b = base + offs[e];
        for (int i = 0; i < kMr; ++i)
        {
            float const av = a[e * kMr + i];
            for (int c = 0; c < 8; ++c)
            {
                acc[i][c] += av * b[c];
            }
        }
    }
    storeTile(&acc[0][0], 8, o);
}

#if DYNET_X86
__attribute__((target("avx2,fma"))) void microAvx2(float const* a, float const* base, int64_t const* offs, int64_t r,
    TileOut const& o)
{
    __m256 acc[kMr];
#pragma GCC unroll 8
    for (int i = 0; i < kMr; ++i)
    {
        acc[i] = _mm256_setzero_ps();
    }
    for (int64_t e = 0; e < r; ++e)
    {
        __m256 const bv = _mm256_loadu_ps(base + offs[e]);
        float const* ae = a + e * kMr;
#pragma GCC unroll 8
        for (int i = 0; i < kMr; ++i)
        {
            acc[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(ae + i), bv, acc[i]);
        }
    }
    if (o.rows == kMr && o.width == 8)
    {
        __m256 const lo = _mm256_set1_ps(o.lo), hi = _mm256_set1_ps(o.hi);
        if (o.res != nullptr)
        {
#pragma GCC unroll 8
            for (int i = 0; i < kMr; ++i)
            {
                __m256 v = _mm256_add_ps(acc[i], _mm256_set1_ps(o.bias[i]));
                v = _mm256_add_ps(v, _mm256_loadu_ps(o.res + i * o.ldy));
                _mm256_storeu_ps(o.y + i * o.ldy, _mm256_min_ps(hi, _mm256_max_ps(lo, v)));
            }
            return;
        }
#pragma GCC unroll 8
        for (int i = 0; i < kMr; ++i)
        {
            __m256 v = _mm256_add_ps(acc[i], _mm256_set1_ps(o.bias[i]));
            _mm256_storeu_ps(o.y + i * o.ldy, _mm256_min_ps(hi, _mm256_max_ps(lo, v)));
        }
        return;
    }
    alignas(32) float tile[kMr * 8];
#pragma GCC unroll 8
    for (int i = 0; i < kMr; ++i)
    {
        _mm256_store_ps(tile + i * 8, acc[i]);
    }
    storeTile(tile, 8, o);
}

// clamp(v, lo, hi) keeping NaN (v second, see TileOut); the zero-masked forms because GCC 12 warns about the plain
// ones' undefined pass-through.
__attribute__((target("avx512f"))) inline __m512 clamp512(__m512 v, __m512 lo, __m512 hi)
{
    return _mm512_maskz_min_ps(0xffff, hi, _mm512_maskz_max_ps(0xffff, lo, v));
}

__attribute__((target("avx512f"))) void microAvx512(float const* a, float const* base, int64_t const* offs, int64_t r,
    TileOut const& o)
{
    __m512 acc[kMr][2];
#pragma GCC unroll 8
    for (int i = 0; i < kMr; ++i)
    {
        acc[i][0] = _mm512_setzero_ps();
        acc[i][1] = _mm512_setzero_ps();
    }
    for (int64_t e = 0; e < r; ++e)
    {
        float const* b = base + offs[e];
        __m512 const b0 = _mm512_loadu_ps(b);
        __m512 const b1 = _mm512_loadu_ps(b + 16);
        float const* ae = a + e * kMr;
#pragma GCC unroll 8
        for (int i = 0; i < kMr; ++i)
        {
            __m512 const av = _mm512_set1_ps(ae[i]);
            acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(av, b1, acc[i][1]);
        }
    }
    __m512 const lo = _mm512_set1_ps(o.lo), hi = _mm512_set1_ps(o.hi);
    uint32_t const bits = o.width >= 32 ? 0xffffffffu : ((1u << o.width) - 1u);
    __mmask16 const m0 = static_cast<__mmask16>(bits & 0xffffu);
    __mmask16 const m1 = static_cast<__mmask16>(bits >> 16);
    if (o.res != nullptr)
    {
#pragma GCC unroll 8
        for (int i = 0; i < kMr; ++i)
        {
            if (i < o.rows)
            {
                __m512 const bias = _mm512_set1_ps(o.bias[i]);
                float* yrow = o.y + i * o.ldy;
                float const* rrow = o.res + i * o.ldy;
                __m512 const v0 = _mm512_add_ps(_mm512_add_ps(acc[i][0], bias), _mm512_maskz_loadu_ps(m0, rrow));
                __m512 const v1 = _mm512_add_ps(_mm512_add_ps(acc[i][1], bias), _mm512_maskz_loadu_ps(m1, rrow + 16));
                _mm512_mask_storeu_ps(yrow, m0, clamp512(v0, lo, hi));
                _mm512_mask_storeu_ps(yrow + 16, m1, clamp512(v1, lo, hi));
            }
        }
        return;
    }
#pragma GCC unroll 8
    for (int i = 0; i < kMr; ++i)
    {
        if (i < o.rows)
        {
            __m512 const bias = _mm512_set1_ps(o.bias[i]);
            float* yrow = o.y + i * o.ldy;
            _mm512_mask_storeu_ps(yrow, m0, clamp512(_mm512_add_ps(acc[i][0], bias), lo, hi));
            _mm512_mask_storeu_ps(yrow + 16, m1, clamp512(_mm512_add_ps(acc[i][1], bias), lo, hi));
        }
    }
}
#endif

int nrFor(CpuIsa isa)
{
    return isa == CpuIsa::kAvx512 ? 32 : 8;
}

// Output rows of kernel panel tp (group gi, sample n) over pixels [p0, p0 + pc): micro-kernel, bias, activation.
DYNET_INLINE void gemmPanel(GemmJob const& j, float const* a, float const* cols, int64_t n, int64_t gi, int64_t tp,
    int64_t p0, int64_t pc)
{
    Geometry const& g = *j.g;
    int const nr = j.nr;
    int64_t const npan = ceilDiv<int64_t>(pc, nr);
    int64_t const t0 = gi * g.coutG + tp * kMr;
    TileOut o{};
    o.ldy = g.p;
    o.rows = std::min<int64_t>(kMr, g.coutG - tp * kMr);
    float bias[kMr] = {};
    for (int64_t i = 0; i < o.rows; ++i)
    {
        bias[i] = j.fusedBias[n * g.cOut + t0 + i];
    }
    o.bias = bias;
    o.lo = g.activation == DYNET_ACT_NONE ? -std::numeric_limits<float>::infinity() : 0.0f;
    o.hi = g.activation == DYNET_ACT_RELU6 ? 6.0f : std::numeric_limits<float>::infinity();
    for (int64_t jp = 0; jp < npan; ++jp)
    {
        float const* b = j.flatSmall ? nullptr : cols + jp * g.r * nr;
        int64_t const* offs = j.packedOffsets;
        int64_t const pStart = p0 + jp * nr;
        o.y = j.y + (n * g.cOut + t0) * g.p + pStart;
        o.width = std::min<int64_t>(nr, p0 + pc - pStart);
        if (j.flatSmall)
        {
            // 1x1 without padding or stride: the channels of x are the rows of B, read in place (offsets e * HW).
            // A partial last tile is moved back to end at the last pixel: it recomputes columns of the tile before
            // (the same sums, so the same values) and never reads past the plane. Images narrower than a tile would
            // read past the end of x: their columns come from a zero-padded copy.
            int64_t start = pStart;
            if (o.width < nr && pStart + nr > g.p && g.p >= nr)
            {
                start = g.p - nr;
                o.y = j.y + (n * g.cOut + t0) * g.p + start;
                o.width = nr;
            }
            b = j.x + (n * g.cIn + gi * g.cinG) * g.hw + start;
            offs = j.tapOffsets;
            if (b + offs[g.r - 1] + nr > j.xEnd)
            {
                thread_local std::vector<float> tail;
                tail.assign(static_cast<size_t>(g.r * nr), 0.0f);
                for (int64_t e = 0; e < g.r; ++e)
                {
                    std::memcpy(tail.data() + e * nr, b + offs[e], static_cast<size_t>(o.width) * sizeof(float));
                }
                b = tail.data();
                offs = j.packedOffsets;
            }
        }
        o.res = j.residual != nullptr ? j.residual + (o.y - j.y) : nullptr;
#if DYNET_X86
        if (j.isa == CpuIsa::kAvx512)
        {
            microAvx512(a, b, offs, g.r, o);
        }
        else if (j.isa == CpuIsa::kAvx2)
        {
            microAvx2(a, b, offs, g.r, o);
        }
        else
#endif
        {
            microGeneric8x8(a, b, offs, g.r, o);
        }
    }
}

DYNET_INLINE void gemmTaskBody(GemmJob const& j, int64_t task, std::vector<float>& buffer)
{
    Geometry const& g = *j.g;
    int64_t const tb = task % j.panelBlocks;
    int64_t rest = task / j.panelBlocks;
    int64_t const pb = rest % j.pixelBlocks;
    rest /= j.pixelBlocks;
    int64_t const gi = rest % g.groups;
    int64_t const n = rest / g.groups;
    int const nr = j.nr;

    int64_t const p0 = pb * j.pixelBlock;
    int64_t const pc = std::min(j.pixelBlock, g.p - p0);
    int64_t const npan = ceilDiv<int64_t>(pc, nr);
    float const* cols = nullptr;
    if (j.sharedCols != nullptr)
    {
        cols = j.sharedCols + ((n * g.groups + gi) * j.pixelBlocks + pb) * j.colsStride;
    }
    else
    {
        size_t const need = static_cast<size_t>(npan * g.r * nr);
        if (buffer.size() < need)
        {
            buffer.resize(need);
        }
        im2colPanels(g, j.x + (n * g.cIn + gi * g.cinG) * g.hw, p0, pc, nr, buffer.data());
        cols = buffer.data();
    }

    int64_t const tp0 = tb * j.panelsPerTask;
    int64_t const tp1 = std::min(j.panels, tp0 + j.panelsPerTask);
    for (int64_t tp = tp0; tp < tp1; ++tp)
    {
        float const* a = j.fused + ((n * g.groups + gi) * j.panels + tp) * g.r * kMr;
        gemmPanel(j, a, cols, n, gi, tp, p0, pc);
    }
}

// Task of the small-image mode: kernel panels [tp0, tp1) of group gi, fused here for one sample at a time (the
// bank slice stays in L2 across the batch; nothing is written back), then multiplied with every pixel block.
DYNET_INLINE void fusedGemmTaskBody(GemmJob const& j, int64_t task, std::vector<float>& buffer)
{
    Geometry const& g = *j.g;
    int64_t const gi = task / j.panelBlocks;
    int64_t const tb = task % j.panelBlocks;
    int64_t const tp0 = tb * j.panelsPerTask;
    int64_t const tp1 = std::min(j.panels, tp0 + j.panelsPerTask);
    size_t const need = static_cast<size_t>(g.r * kMr);
    if (buffer.size() < need)
    {
        buffer.resize(need);
    }
    for (int64_t tp = tp0; tp < tp1; ++tp)
    {
        for (int64_t n = 0; n < g.n; ++n)
        {
            fusePanelSamples(*j.fuse, gi, tp, n, n + 1, buffer.data(), 0);
            for (int64_t pb = 0; pb < j.pixelBlocks; ++pb)
            {
                int64_t const p0 = pb * j.pixelBlock;
                int64_t const pc = std::min(j.pixelBlock, g.p - p0);
                float const* cols = j.flatSmall
                    ? nullptr
                    : j.sharedCols + ((n * g.groups + gi) * j.pixelBlocks + pb) * j.colsStride;
                gemmPanel(j, buffer.data(), cols, n, gi, tp, p0, pc);
            }
        }
    }
}

// Implicit-GEMM task (sample n, group gi, output rows block rb, kernel panels block tb).
DYNET_INLINE void implicitTaskBody(GemmJob const& j, int64_t task)
{
    Geometry const& g = *j.g;
    int64_t const tb = task % j.panelBlocks;
    int64_t rest = task / j.panelBlocks;
    int64_t const rb = rest % j.rowBlocks;
    rest /= j.rowBlocks;
    int64_t const gi = rest % g.groups;
    int64_t const n = rest / g.groups;
    float const* base = j.src + (n * g.groups + gi) * j.srcStride;
    int64_t const row0 = rb * j.rowsPerTask;
    int64_t const row1 = std::min(j.rowsCount, row0 + j.rowsPerTask);
    int64_t const tp0 = tb * j.panelsPerTask;
    int64_t const tp1 = std::min(j.panels, tp0 + j.panelsPerTask);
    TileOut o{};
    o.ldy = g.p;
    o.lo = g.activation == DYNET_ACT_NONE ? -std::numeric_limits<float>::infinity() : 0.0f;
    o.hi = g.activation == DYNET_ACT_RELU6 ? 6.0f : std::numeric_limits<float>::infinity();
    float bias[kMr] = {};
    o.bias = bias;
    for (int64_t tp = tp0; tp < tp1; ++tp)
    {
        float const* a = j.fused + ((n * g.groups + gi) * j.panels + tp) * g.r * kMr;
        int64_t const t0 = gi * g.coutG + tp * kMr;
        o.rows = std::min<int64_t>(kMr, g.coutG - tp * kMr);
        for (int64_t i = 0; i < o.rows; ++i)
        {
            bias[i] = j.fusedBias[n * g.cOut + t0 + i];
        }
        float* yPanel = j.y + (n * g.cOut + t0) * g.p;
        for (int64_t row = row0; row < row1; ++row)
        {
            int64_t const len = j.flat ? std::min(j.rowLen, g.p - row * j.rowPitch) : j.rowLen;
            for (int64_t c0 = 0; c0 < len; c0 += j.nr)
            {
                float const* b = base + row * j.rowPitch + c0;
                o.y = yPanel + row * j.outRowPitch + c0;
                o.width = std::min<int64_t>(j.nr, len - c0);
                int64_t const* offs = j.tapOffsets;
                if (j.flat && o.width < j.nr)
                {
                    // The last columns of a flat image (x read in place): a full-width load would read past the end
                    // of x, so the micro-kernel reads a zero-padded copy of them instead.
                    thread_local std::vector<float> tail;
                    tail.assign(static_cast<size_t>(g.r * j.nr), 0.0f);
                    for (int64_t e = 0; e < g.r; ++e)
                    {
                        std::memcpy(tail.data() + e * j.nr, b + j.tapOffsets[e],
                            static_cast<size_t>(o.width) * sizeof(float));
                    }
                    b = tail.data();
                    offs = j.packedOffsets;
                }
                o.res = j.residual != nullptr ? j.residual + (o.y - j.y) : nullptr;
#if DYNET_X86
                if (j.isa == CpuIsa::kAvx512)
                {
                    microAvx512(a, b, offs, g.r, o);
                }
                else if (j.isa == CpuIsa::kAvx2)
                {
                    microAvx2(a, b, offs, g.r, o);
                }
                else
#endif
                {
                    microGeneric8x8(a, b, offs, g.r, o);
                }
            }
        }
    }
}

// Zero-padded, stride-decimated copy of one input plane (sample, channel) for the implicit GEMM: sh * sw phase
// planes of hq x wq, phase (ph, pw) holding padded[r * sh + ph][c * sw + pw] (padded = the input with its top/left
// pads, zeros elsewhere). With stride 1 it is the plain padded plane.
struct PadJob
{
    Geometry const* g;
    float const* x;
    float* out;
    int64_t hq, wq;
};

DYNET_INLINE void padTaskBody(PadJob const& j, int64_t plane)
{
    Geometry const& g = *j.g;
    float const* src = j.x + plane * g.hw;
    float* dst = j.out + plane * g.sh * g.sw * j.hq * j.wq;
    std::memset(dst, 0, static_cast<size_t>(g.sh * g.sw * j.hq * j.wq) * sizeof(float));
    for (int64_t ph = 0; ph < g.sh; ++ph)
    {
        for (int64_t pw = 0; pw < g.sw; ++pw)
        {
            float* phase = dst + (ph * g.sw + pw) * j.hq * j.wq;
            int64_t lo, hi; // columns c whose source column c * sw + pw - pl lies inside the input
            validColumns(pw - g.pl, g.sw, g.w, j.wq, lo, hi);
            for (int64_t r = 0; r < j.hq; ++r)
            {
                int64_t const h = r * g.sh + ph - g.pt;
                if (h < 0 || h >= g.h)
                {
                    continue;
                }
                float const* srow = src + h * g.w + pw - g.pl;
                float* drow = phase + r * j.wq;
                if (g.sw == 1)
                {
                    std::memcpy(drow + lo, srow + lo, static_cast<size_t>(hi - lo) * sizeof(float));
                }
                else
                {
                    for (int64_t c = lo; c < hi; ++c)
                    {
                        drow[c] = srow[c * g.sw];
                    }
                }
            }
        }
    }
}

// Unroll one (sample, group, pixel block) into the shared buffer.
DYNET_INLINE void im2colTaskBody(GemmJob const& j, int64_t task)
{
    Geometry const& g = *j.g;
    int64_t const pb = task % j.pixelBlocks;
    int64_t const ng = task / j.pixelBlocks; // n * groups + gi
    int64_t const p0 = pb * j.pixelBlock;
    int64_t const pc = std::min(j.pixelBlock, g.p - p0);
    float const* xg = j.x + (ng / g.groups * g.cIn + ng % g.groups * g.cinG) * g.hw;
    im2colPanels(g, xg, p0, pc, j.nr, j.sharedCols + task * j.colsStride);
}

// ---- step 2b: direct path -------------------------------------------------------------------------------------

struct DirectJob
{
    Geometry const* g;
    float const* x;
    float const* fused;
    float const* fusedBias;
    float* y;
    int64_t planesPerTask;
    float const* residual; // like y, or nullptr
};

// One output plane; rt: its residual plane (added before the activation) or nullptr.
DYNET_INLINE void directPlane(Geometry const& g, float const* xg, float const* wt, float bias, float const* rt,
    float* yt)
{
    for (int64_t oh = 0; oh < g.hOut; ++oh)
    {
        float* acc = yt + oh * g.wOut;
        for (int64_t ow = 0; ow < g.wOut; ++ow)
        {
            acc[ow] = bias;
        }
        for (int64_t ci = 0; ci < g.cinG; ++ci)
        {
            for (int64_t i = 0; i < g.kh; ++i)
            {
                int64_t const ih = oh * g.sh - g.pt + i * g.dh;
                if (ih < 0 || ih >= g.h)
                {
                    continue;
                }
                float const* xrow = xg + ci * g.hw + ih * g.w;
                for (int64_t jj = 0; jj < g.kw; ++jj)
                {
                    float const wv = wt[(ci * g.kh + i) * g.kw + jj];
                    int64_t const off = jj * g.dw - g.pl;
                    int64_t lo, hi;
                    validColumns(off, g.sw, g.w, g.wOut, lo, hi);
                    float const* src = xrow + off;
                    if (g.sw == 1)
                    {
                        for (int64_t ow = lo; ow < hi; ++ow)
                        {
                            acc[ow] += wv * src[ow];
                        }
                    }
                    else
                    {
                        for (int64_t ow = lo; ow < hi; ++ow)
                        {
                            acc[ow] += wv * src[ow * g.sw];
                        }
                    }
                }
            }
        }
        if (rt != nullptr)
        {
            float const* rrow = rt + oh * g.wOut;
            for (int64_t ow = 0; ow < g.wOut; ++ow)
            {
                acc[ow] += rrow[ow];
            }
        }
        if (g.activation != DYNET_ACT_NONE)
        {
            for (int64_t ow = 0; ow < g.wOut; ++ow)
            {
                acc[ow] = activate(acc[ow], g.activation);
            }
        }
    }
}

DYNET_INLINE void directTaskBody(DirectJob const& j, int64_t task)
{
    Geometry const& g = *j.g;
    int64_t const e0 = task * j.planesPerTask;
    int64_t const e1 = std::min(g.n * g.cOut, e0 + j.planesPerTask);
    for (int64_t e = e0; e < e1; ++e)
    {
        int64_t const n = e / g.cOut;
        int64_t const t = e % g.cOut;
        int64_t const gi = t / g.coutG;
        directPlane(g, j.x + (n * g.cIn + gi * g.cinG) * g.hw, j.fused + e * g.r, j.fusedBias[e],
            j.residual != nullptr ? j.residual + e * g.p : nullptr, j.y + e * g.p);
    }
}

// ---- step 2c: narrow groups -----------------------------------------------------------------------------------
// Groups of at most 8 output and at most 8 input channels that the GEMM path would take (Dy-mobile's 6-channel
// groups): an 8-row GEMM panel is partly empty there, and the small images' unrolled input or the wide rows' tiles
// cost more than the arithmetic. One task per (sample, group, block of output pixels): the group's kernels are
// fused into an [R][8] buffer that stays in L1, and the output is computed over the padded, stride-decimated input
// flattened with its row pitch wq: output (oh, ow) is lane q = oh * wq + ow, and tap e reads src[tapOffset[e] + q],
// so consecutive lanes read consecutive floats for every tap. Lanes with q % wq >= wOut are computed and dropped.
struct NarrowJob
{
    Geometry const* g;
    FuseJob const* fuse;
    float const* x;
    float const* src;   // the batch's padded input (its own parallel step), or nullptr: each task pads its group
    int64_t srcStride;  // floats per (sample, group) of the padded input
    int64_t hq, wq;     // one stride-phase plane
    int64_t const* tapOffsets;
    int64_t qCount;     // hOut * wq lanes per (sample, group)
    int64_t qPerTask, qBlocks;
    float* y;
    float const* residual; // like y, or nullptr
    CpuIsa isa;
};

// Lanes [q0, q0 + count) of `rows` channels, tile[i * ld + l], into the output planes y + i * P, keeping the lanes
// whose column lies inside the output. Without a residual the tile has bias and activation applied; with one (res:
// its planes, like y) the tile has the bias only, and the residual is added and the activation applied here.
DYNET_INLINE void narrowStore(Geometry const& g, int64_t wq, float const* tile, int64_t ld, int64_t rows, int64_t q0,
    int64_t count, float* y, float const* res, float lo, float hi)
{
    int64_t q = q0;
    int64_t const qEnd = q0 + count;
    while (q < qEnd)
    {
        int64_t const oh = q / wq;
        int64_t const ow = q - oh * wq;
        int64_t const rowEnd = std::min(qEnd, oh * wq + wq);
        if (ow < g.wOut)
        {
            int64_t const len = std::min(rowEnd, oh * wq + g.wOut) - q;
            for (int64_t i = 0; i < rows; ++i)
            {
                float* dst = y + i * g.p + oh * g.wOut + ow;
                float const* src = tile + i * ld + (q - q0);
                if (res != nullptr)
                {
                    float const* r = res + i * g.p + oh * g.wOut + ow;
                    for (int64_t l = 0; l < len; ++l)
                    {
                        dst[l] = clampTo(src[l] + r[l], lo, hi);
                    }
                }
                else
                {
                    std::memcpy(dst, src, static_cast<size_t>(len) * sizeof(float));
                }
            }
        }
        q = rowEnd;
    }
}

// tile[i][l] = clamp(bias[i] + sum_e a[e][i] * base[offs[e] + l], lo, hi) for i < 8, l < 16 (portable).
DYNET_INLINE void narrowGeneric(float const* a, float const* base, int64_t const* offs, int64_t r, float const* bias,
    float lo, float hi, float* tile)
{
    float acc[kMr][16] = {};
    for (int64_t e = 0; e < r; ++e)
    {
        float const* b = base + offs[e];
        for (int i = 0; i < kMr; ++i)
        {
            float const av = a[e * kMr + i];
            for (int l = 0; l < 16; ++l)
            {
                acc[i][l] += av * b[l];
            }
        }
    }
    for (int i = 0; i < kMr; ++i)
    {
        for (int l = 0; l < 16; ++l)
        {
            tile[i * 16 + l] = clampTo(acc[i][l] + bias[i], lo, hi);
        }
    }
}

#if DYNET_X86
// ROWS channels x V vectors of 16 lanes, accumulators in registers; tile row pitch 16 * V.
template <int ROWS, int V>
__attribute__((target("avx512f"))) void narrowAvx512(float const* a, float const* base, int64_t const* offs, int64_t r,
    float const* bias, float lo, float hi, float* tile)
{
    __m512 acc[ROWS][V];
#pragma GCC unroll 8
    for (int i = 0; i < ROWS; ++i)
    {
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v)
        {
            acc[i][v] = _mm512_setzero_ps();
        }
    }
    for (int64_t e = 0; e < r; ++e)
    {
        float const* b = base + offs[e];
        __m512 bv[V];
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v)
        {
            bv[v] = _mm512_loadu_ps(b + 16 * v);
        }
        float const* ae = a + e * kMr;
#pragma GCC unroll 8
        for (int i = 0; i < ROWS; ++i)
        {
            __m512 const av = _mm512_set1_ps(ae[i]);
#pragma GCC unroll 4
            for (int v = 0; v < V; ++v)
            {
                acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);
            }
        }
    }
    __m512 const lov = _mm512_set1_ps(lo), hiv = _mm512_set1_ps(hi);
#pragma GCC unroll 8
    for (int i = 0; i < ROWS; ++i)
    {
        __m512 const bi = _mm512_set1_ps(bias[i]);
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v)
        {
            _mm512_storeu_ps(tile + (i * V + v) * 16, clamp512(_mm512_add_ps(acc[i][v], bi), lov, hiv));
        }
    }
}

// The same with 8-lane AVX2 vectors (16 registers).
template <int ROWS, int V>
__attribute__((target("avx2,fma"))) void narrowAvx2(float const* a, float const* base, int64_t const* offs, int64_t r,
    float const* bias, float lo, float hi, float* tile)
{
    __m256 acc[ROWS][V];
#pragma GCC unroll 8
    for (int i = 0; i < ROWS; ++i)
    {
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v)
        {
            acc[i][v] = _mm256_setzero_ps();
        }
    }
    for (int64_t e = 0; e < r; ++e)
    {
        float const* b = base + offs[e];
        __m256 bv[V];
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v)
        {
            bv[v] = _mm256_loadu_ps(b + 8 * v);
        }
        float const* ae = a + e * kMr;
#pragma GCC unroll 8
        for (int i = 0; i < ROWS; ++i)
        {
            __m256 const av = _mm256_broadcast_ss(ae + i);
#pragma GCC unroll 4
            for (int v = 0; v < V; ++v)
            {
                acc[i][v] = _mm256_fmadd_ps(av, bv[v], acc[i][v]);
            }
        }
    }
    __m256 const lov = _mm256_set1_ps(lo), hiv = _mm256_set1_ps(hi);
#pragma GCC unroll 8
    for (int i = 0; i < ROWS; ++i)
    {
        __m256 const bi = _mm256_set1_ps(bias[i]);
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v)
        {
            __m256 const out = _mm256_min_ps(hiv, _mm256_max_ps(lov, _mm256_add_ps(acc[i][v], bi)));
            _mm256_storeu_ps(tile + (i * V + v) * 8, out);
        }
    }
}
#endif

using NarrowKernel = void (*)(float const*, float const*, int64_t const*, int64_t, float const*, float, float, float*);

// The micro-kernel for `rows` channels and its block width in lanes.
NarrowKernel narrowKernel(CpuIsa isa, int64_t rows, int64_t& lanes)
{
#if DYNET_X86
    if (isa == CpuIsa::kAvx512)
    {
        switch (rows)
        {
        case 1: lanes = 64; return narrowAvx512<1, 4>;
        case 2: lanes = 64; return narrowAvx512<2, 4>;
        case 3: lanes = 64; return narrowAvx512<3, 4>;
        case 4: lanes = 64; return narrowAvx512<4, 4>;
        case 5: lanes = 64; return narrowAvx512<5, 4>;
        case 6: lanes = 64; return narrowAvx512<6, 4>;
        case 7: lanes = 48; return narrowAvx512<7, 3>;
        default: lanes = 48; return narrowAvx512<8, 3>;
        }
    }
    if (isa == CpuIsa::kAvx2)
    {
        switch (rows)
        {
        case 1: lanes = 24; return narrowAvx2<1, 3>;
        case 2: lanes = 24; return narrowAvx2<2, 3>;
        case 3: lanes = 24; return narrowAvx2<3, 3>;
        case 4: lanes = 24; return narrowAvx2<4, 3>;
        case 5: lanes = 16; return narrowAvx2<5, 2>;
        case 6: lanes = 16; return narrowAvx2<6, 2>;
        case 7: lanes = 8; return narrowAvx2<7, 1>;
        default: lanes = 8; return narrowAvx2<8, 1>;
        }
    }
#endif
    (void) isa;
    (void) rows;
    lanes = 16;
    return narrowGeneric;
}

DYNET_INLINE void narrowTaskBody(NarrowJob const& j, int64_t task)
{
    Geometry const& g = *j.g;
    int64_t const qb = task % j.qBlocks;
    int64_t const ng = task / j.qBlocks; // n * groups + gi
    int64_t const n = ng / g.groups;
    int64_t const gi = ng % g.groups;
    thread_local std::vector<float> kernel;
    thread_local std::vector<float> padded;
    if (kernel.size() < static_cast<size_t>(g.r * kMr))
    {
        kernel.resize(static_cast<size_t>(g.r * kMr));
    }
    FuseJob fuse = *j.fuse;
    fuse.fusedBias = nullptr; // the biases go to this task's registers, not to the shared buffer
    fusePanelSamples(fuse, gi, 0, n, n + 1, kernel.data(), 0);
    int64_t const rows = g.coutG;
    float bias[kMr] = {};
    for (int64_t i = 0; i < rows; ++i)
    {
        bias[i] = fusedBiasOf(fuse, n, gi * g.coutG + i);
    }
    float const* base = nullptr;
    if (j.src != nullptr)
    {
        base = j.src + ng * j.srcStride;
    }
    else
    {
        size_t const body = static_cast<size_t>(j.srcStride);
        size_t const need = body + static_cast<size_t>(narrowSlack(g));
        if (padded.size() < need)
        {
            padded.assign(need, 0.0f);
        }
        std::memset(padded.data() + body, 0, (need - body) * sizeof(float));
        PadJob pad{&g, j.x + (n * g.cIn + gi * g.cinG) * g.hw, padded.data(), j.hq, j.wq};
        for (int64_t ci = 0; ci < g.cinG; ++ci)
        {
            padTaskBody(pad, ci);
        }
        base = padded.data();
    }
    float const lo = g.activation == DYNET_ACT_NONE ? -std::numeric_limits<float>::infinity() : 0.0f;
    float const hi = g.activation == DYNET_ACT_RELU6 ? 6.0f : std::numeric_limits<float>::infinity();
    int64_t lanes = 16;
    NarrowKernel const micro = narrowKernel(j.isa, rows, lanes);
    alignas(64) float tile[kMr * kNarrowMaxLanes];
    int64_t const q0 = qb * j.qPerTask;
    int64_t const q1 = std::min(j.qCount, q0 + j.qPerTask);
    float* yg = j.y + (n * g.cOut + gi * g.coutG) * g.p;
    float const* rg = j.residual != nullptr ? j.residual + (n * g.cOut + gi * g.coutG) * g.p : nullptr;
    // With a residual the activation waits for it (narrowStore): the micro-kernel clamps to +-infinity only.
    float const tileLo = rg != nullptr ? -std::numeric_limits<float>::infinity() : lo;
    float const tileHi = rg != nullptr ? std::numeric_limits<float>::infinity() : hi;
    for (int64_t q = q0; q < q1; q += lanes)
    {
        micro(kernel.data(), base + q, j.tapOffsets, g.r, bias, tileLo, tileHi, tile);
        narrowStore(g, j.wq, tile, lanes, rows, q, std::min(lanes, q1 - q), yg, rg, lo, hi);
    }
}

// ---- op version 2's mean ----------------------------------------------------------------------------------------

// mean[e] = the mean of plane e of y (P values), accumulated in double from the stored y, for planes
// [task * planesPerTask, ...).
struct MeanJob
{
    float const* y;
    float* mean;
    int64_t planes, p, planesPerTask;
};

DYNET_INLINE void meanTaskBody(MeanJob const& j, int64_t task)
{
    int64_t const e1 = std::min(j.planes, (task + 1) * j.planesPerTask);
    for (int64_t e = task * j.planesPerTask; e < e1; ++e)
    {
        float const* v = j.y + e * j.p;
        double part[4] = {0.0, 0.0, 0.0, 0.0}; // four independent sums: the adds pipeline
        int64_t q = 0;
        for (; q + 4 <= j.p; q += 4)
        {
            for (int l = 0; l < 4; ++l)
            {
                part[l] += static_cast<double>(v[q + l]);
            }
        }
        for (; q < j.p; ++q)
        {
            part[0] += static_cast<double>(v[q]);
        }
        j.mean[e] = static_cast<float>(((part[0] + part[1]) + (part[2] + part[3])) / static_cast<double>(j.p));
    }
}

// ---- per-ISA instantiations -------------------------------------------------------------------------------------

thread_local std::vector<float> tColumns; // im2col panels of the task a pool thread runs

#define DYNET_DEFINE_TASKS(SUFFIX, TARGET)                                                                           \
    TARGET void fusePanel##SUFFIX(void* usr, size_t i)                                                             \
    {                                                                                                              \
        fusePanelBody(*static_cast<FuseJob const*>(usr), static_cast<int64_t>(i));                                 \
    }                                                                                                              \
    TARGET void fuseChannels##SUFFIX(void* usr, size_t i)                                                          \
    {                                                                                                              \
        fuseChannelsBody(*static_cast<FuseJob const*>(usr), static_cast<int64_t>(i));                              \
    }                                                                                                              \
    TARGET void gemmTask##SUFFIX(void* usr, size_t i)                                                              \
    {                                                                                                              \
        gemmTaskBody(*static_cast<GemmJob const*>(usr), static_cast<int64_t>(i), tColumns);                        \
    }                                                                                                              \
    TARGET void fusedGemmTask##SUFFIX(void* usr, size_t i)                                                         \
    {                                                                                                              \
        fusedGemmTaskBody(*static_cast<GemmJob const*>(usr), static_cast<int64_t>(i), tColumns);                   \
    }                                                                                                              \
    TARGET void implicitTask##SUFFIX(void* usr, size_t i)                                                          \
    {                                                                                                              \
        implicitTaskBody(*static_cast<GemmJob const*>(usr), static_cast<int64_t>(i));                              \
    }                                                                                                              \
    TARGET void im2colTask##SUFFIX(void* usr, size_t i)                                                            \
    {                                                                                                              \
        im2colTaskBody(*static_cast<GemmJob const*>(usr), static_cast<int64_t>(i));                                \
    }                                                                                                              \
    TARGET void directTask##SUFFIX(void* usr, size_t i)                                                            \
    {                                                                                                              \
        directTaskBody(*static_cast<DirectJob const*>(usr), static_cast<int64_t>(i));                              \
    }                                                                                                              \
    TARGET void narrowTask##SUFFIX(void* usr, size_t i)                                                            \
    {                                                                                                              \
        narrowTaskBody(*static_cast<NarrowJob const*>(usr), static_cast<int64_t>(i));                              \
    }                                                                                                              \
    TARGET void padTask##SUFFIX(void* usr, size_t i)                                                               \
    {                                                                                                              \
        padTaskBody(*static_cast<PadJob const*>(usr), static_cast<int64_t>(i));                                    \
    }                                                                                                              \
    TARGET void meanTask##SUFFIX(void* usr, size_t i)                                                              \
    {                                                                                                              \
        meanTaskBody(*static_cast<MeanJob const*>(usr), static_cast<int64_t>(i));                                  \
    }

DYNET_DEFINE_TASKS(Generic, )
#if DYNET_X86
DYNET_DEFINE_TASKS(Avx2, __attribute__((target("avx2,fma"))))
DYNET_DEFINE_TASKS(Avx512, __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))))
#endif

struct TaskSet
{
    void (*fusePanel)(void*, size_t);
    void (*fuseChannels)(void*, size_t);
    void (*gemmTask)(void*, size_t);
    void (*im2colTask)(void*, size_t);
    void (*fusedGemmTask)(void*, size_t);
    void (*implicitTask)(void*, size_t);
    void (*directTask)(void*, size_t);
    void (*narrowTask)(void*, size_t);
    void (*padTask)(void*, size_t);
    void (*meanTask)(void*, size_t);
};

TaskSet tasksFor(CpuIsa isa)
{
#if DYNET_X86
    if (isa == CpuIsa::kAvx512)
    {
        return {fusePanelAvx512, fuseChannelsAvx512, gemmTaskAvx512, im2colTaskAvx512, fusedGemmTaskAvx512,
            implicitTaskAvx512, directTaskAvx512, narrowTaskAvx512, padTaskAvx512, meanTaskAvx512};
    }
    if (isa == CpuIsa::kAvx2)
    {
        return {fusePanelAvx2, fuseChannelsAvx2, gemmTaskAvx2, im2colTaskAvx2, fusedGemmTaskAvx2, implicitTaskAvx2,
            directTaskAvx2, narrowTaskAvx2, padTaskAvx2, meanTaskAvx2};
    }
#endif
    (void) isa;
    return {fusePanelGeneric, fuseChannelsGeneric, gemmTaskGeneric, im2colTaskGeneric, fusedGemmTaskGeneric,
        implicitTaskGeneric, directTaskGeneric, narrowTaskGeneric, padTaskGeneric, meanTaskGeneric};
}

CpuIsa detectIsa()
{
    CpuIsa best = CpuIsa::kGeneric;
#if DYNET_X86 && defined(__GNUC__)
    __builtin_cpu_init();
    // F16C widens a float16 bank on both vector paths (every AVX2 CPU has it; checked all the same).
    bool const avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512dq"))
    {
        best = CpuIsa::kAvx512;
    }
    else if (avx2)
    {
        best = CpuIsa::kAvx2;
    }
#endif
    char const* env = std::getenv("DYNET_CPU_ISA");
    if (env != nullptr)
    {
        CpuIsa want = best;
        if (std::strcmp(env, "generic") == 0)
        {
            want = CpuIsa::kGeneric;
        }
        else if (std::strcmp(env, "avx2") == 0)
        {
            want = CpuIsa::kAvx2;
        }
        else if (std::strcmp(env, "avx512") == 0)
        {
            want = CpuIsa::kAvx512;
        }
        best = static_cast<int32_t>(want) < static_cast<int32_t>(best) ? want : best;
    }
    return best;
}
} // namespace

void ParallelFor::operator()(size_t total, void (*fn)(void*, size_t), void* usr) const
{
    if (run != nullptr && total > 1)
    {
        run(runner, fn, total, usr);
        return;
    }
    for (size_t i = 0; i < total; ++i)
    {
        fn(usr, i);
    }
}

CpuIsa selectedIsa()
{
    static CpuIsa const isa = detectIsa();
    return isa;
}

char const* isaName(CpuIsa isa)
{
    switch (isa)
    {
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx2: return "avx2";
    default: return "generic";
    }
}

bool usesGemmPath(int32_t cinPerGroup, int32_t coutPerGroup, int32_t kh, int32_t kw)
{
    return coutPerGroup > kDirectMaxCoutG || int64_t{cinPerGroup} * kh * kw > kDirectMaxR;
}

CpuPath cpuPath(DynetConvParams const& prm)
{
    DynetConvSizes sizes;
    if (dynet_conv_sizes(&prm, &sizes, nullptr, 0) != DYNET_OK)
    {
        return CpuPath::kInvalid;
    }
    Geometry const g = geometry(prm, static_cast<int32_t>(sizes.h_out), static_cast<int32_t>(sizes.w_out));
    bool const gemm = usesGemmPath(static_cast<int32_t>(g.cinG), static_cast<int32_t>(g.coutG), prm.kh, prm.kw);
    return pathOf(g, gemm, nrFor(selectedIsa()), sizes.scratch_budget);
}

char const* cpuPathName(CpuPath path)
{
    switch (path)
    {
    case CpuPath::kDirect: return "direct";
    case CpuPath::kGemmSmall: return "gemm-small";
    case CpuPath::kGemmImplicit: return "gemm-implicit";
    case CpuPath::kGemmIm2col: return "gemm-im2col";
    case CpuPath::kNarrow: return "narrow";
    default: return "invalid";
    }
}

namespace
{
// The basis kernels in the layout the fusion reads (PackedBank::weight's comment), in their storage type S.
template <typename S>
void packKernels(PackedBank const& b, S const* w, std::vector<S>& out)
{
    int64_t const k = b.k, r = b.r, cOut = b.cOut, coutG = b.coutG;
    if (b.gemmPath())
    {
        out.assign(static_cast<size_t>(int64_t{b.groups} * b.panels * k * r * kMr), S{});
        for (int64_t gi = 0; gi < b.groups; ++gi)
        {
            for (int64_t tp = 0; tp < b.panels; ++tp)
            {
                for (int64_t kk = 0; kk < k; ++kk)
                {
                    S* dst = out.data() + ((gi * b.panels + tp) * k + kk) * r * kMr;
                    for (int64_t i = 0; i < kMr && tp * kMr + i < coutG; ++i)
                    {
                        int64_t const t = gi * coutG + tp * kMr + i;
                        S const* src = w + (kk * cOut + t) * r;
                        for (int64_t e = 0; e < r; ++e)
                        {
                            dst[e * kMr + i] = src[e];
                        }
                    }
                }
            }
        }
    }
    else
    {
        out.resize(static_cast<size_t>(cOut * k * r));
        for (int64_t t = 0; t < cOut; ++t)
        {
            for (int64_t kk = 0; kk < k; ++kk)
            {
                std::memcpy(out.data() + (t * k + kk) * r, w + (kk * cOut + t) * r, static_cast<size_t>(r) * sizeof(S));
            }
        }
    }
}
} // namespace

int32_t PackedBank::pack(DynetConvParams const& p, int32_t cinPerGroup, void const* w, float const* bb,
    float const* b)
{
    if (w == nullptr || (p.has_bias_bank && bb == nullptr) || (p.has_bias && b == nullptr))
    {
        return DYNET_ERR_NULL_POINTER;
    }
    if (p.k < 1 || p.c_out < 1 || cinPerGroup < 1 || p.kh < 1 || p.kw < 1 || p.groups < 1
        || p.c_out % p.groups != 0
        || (p.weight_dtype != DYNET_FLOAT32 && p.weight_dtype != DYNET_FLOAT16 && p.weight_dtype != DYNET_BFLOAT16))
    {
        return DYNET_ERR_INVALID_ARGUMENT;
    }
    k = p.k;
    cOut = p.c_out;
    cinG = cinPerGroup;
    kh = p.kh;
    kw = p.kw;
    groups = p.groups;
    coutG = cOut / groups;
    r = int64_t{cinG} * kh * kw;
    hasBiasBank = p.has_bias_bank != 0;
    hasBias = p.has_bias != 0;
    dtype = p.weight_dtype;
    gemm_ = usesGemmPath(cinG, coutG, kh, kw);
    panels = gemm_ ? static_cast<int32_t>(ceilDiv(coutG, kMr)) : 0;
    // A 16-bit bank keeps its bits (half the memory a batch-1 call streams); the fusion widens them exactly.
    if (dtype == DYNET_FLOAT32)
    {
        packKernels(*this, static_cast<float const*>(w), weight);
        weight16.clear();
    }
    else
    {
        packKernels(*this, static_cast<uint16_t const*>(w), weight16);
        weight.clear();
    }
    biasBank.assign(hasBiasBank ? static_cast<size_t>(cOut) * k : 0, 0.0f);
    for (int64_t t = 0; hasBiasBank && t < cOut; ++t)
    {
        for (int64_t kk = 0; kk < k; ++kk)
        {
            biasBank[static_cast<size_t>(t * k + kk)] = bb[kk * cOut + t];
        }
    }
    if (hasBias)
    {
        bias.assign(b, b + cOut);
    }
    else
    {
        bias.clear();
    }
    return DYNET_OK;
}

bool PackedBank::matches(DynetConvParams const& p) const
{
    return p.k == k && p.c_out == cOut && p.c_in == cinG * p.groups && p.kh == kh && p.kw == kw
        && p.groups == groups && (p.has_bias_bank != 0) == hasBiasBank && (p.has_bias != 0) == hasBias;
}

int32_t convForward(DynetConvParams const& prm, PackedBank const& bank, float const* x, float const* coeff,
    ConvExtras const& extras, float* y, ParallelFor const& parallel, CpuIsa isa)
{
    // Sizes come from the validator; every buffer below beyond the fused kernels stays within sizes.scratch_budget
    // (a path whose buffer would not fit is not taken).
    DynetConvSizes sizes;
    int32_t const status = dynet_conv_sizes(&prm, &sizes, nullptr, 0);
    if (status != DYNET_OK)
    {
        return status;
    }
    int32_t const hOut = static_cast<int32_t>(sizes.h_out);
    int32_t const wOut = static_cast<int32_t>(sizes.w_out);
    int64_t const budget = sizes.scratch_budget;
    if (!bank.matches(prm))
    {
        return DYNET_ERR_INVALID_ARGUMENT;
    }
    if (x == nullptr || coeff == nullptr || y == nullptr || (prm.has_spatial != 0 && extras.spatial == nullptr)
        || (prm.has_residual != 0 && extras.residual == nullptr) || (prm.has_mean != 0 && extras.mean == nullptr))
    {
        return DYNET_ERR_NULL_POINTER;
    }
    if ((prm.has_spatial == 0 && extras.spatial != nullptr) || (prm.has_residual == 0 && extras.residual != nullptr)
        || (prm.has_mean == 0 && extras.mean != nullptr))
    {
        return DYNET_ERR_INVALID_ARGUMENT; // a tensor the params do not announce
    }
    Geometry const g = geometry(prm, hOut, wOut);
    TaskSet const tasks = tasksFor(isa);

    // Fused kernels and biases of the batch; kept per calling thread so repeated runs reuse the memory.
    thread_local std::vector<float> fusedStore;
    thread_local std::vector<float> biasStore;
    // Small images fuse inside the GEMM tasks and share the unrolled input of the whole batch, if it fits the budget.
    CpuPath const path = pathOf(g, bank.gemmPath(), nrFor(isa), budget); // the one decision, as cpuPath reports
    bool const smallImage = path == CpuPath::kGemmSmall || path == CpuPath::kNarrow;
    size_t const fusedSize = !bank.gemmPath() ? static_cast<size_t>(sizes.fused_elements)
        : smallImage                              ? 0
                                                  : static_cast<size_t>(g.n * g.groups * bank.panels * g.r * kMr);
    if (fusedStore.size() < fusedSize)
    {
        fusedStore.resize(fusedSize);
    }
    if (biasStore.size() < static_cast<size_t>(g.n * g.cOut))
    {
        biasStore.resize(static_cast<size_t>(g.n * g.cOut));
    }
    FuseJob fuse{&g, &bank, coeff, prm.coeff_channels, fusedStore.data(), biasStore.data(), 1, isa, extras.spatial};

    if (path == CpuPath::kNarrow)
    {
        NarrowJob job{};
        job.g = &g;
        job.fuse = &fuse;
        job.x = x;
        job.hq = phaseRows(g);
        job.wq = phaseCols(g);
        job.srcStride = g.cinG * g.sh * g.sw * job.hq * job.wq;
        job.qCount = g.hOut * job.wq;
        job.y = y;
        job.residual = extras.residual;
        job.isa = isa;
        thread_local std::vector<int64_t> narrowOffsets;
        narrowOffsets.resize(static_cast<size_t>(g.r));
        for (int64_t e = 0; e < g.r; ++e)
        {
            int64_t const ci = e / (g.kh * g.kw);
            int64_t const rowTap = (e / g.kw) % g.kh * g.dh;
            int64_t const colTap = e % g.kw * g.dw;
            int64_t const phase = (ci * g.sh + rowTap % g.sh) * g.sw + colTap % g.sw;
            narrowOffsets[static_cast<size_t>(e)] = phase * job.hq * job.wq + (rowTap / g.sh) * job.wq + colTap / g.sw;
        }
        job.tapOffsets = narrowOffsets.data();
        // Whole images per task where there are enough (sample, group) pairs or the image is small: each task pads
        // its own group. Otherwise blocks of lanes, on an input padded once in its own parallel step.
        int64_t const pairs = g.n * g.groups;
        job.qBlocks = 1;
        if (pairs < static_cast<int64_t>(kMinTasks) && job.qCount > 4 * kNarrowTaskLanes)
        {
            job.qBlocks = std::min(ceilDiv<int64_t>(kMinTasks, pairs), ceilDiv(job.qCount, kNarrowTaskLanes));
        }
        job.qPerTask = ceilDiv(ceilDiv(job.qCount, job.qBlocks), kNarrowTaskLanes) * kNarrowTaskLanes;
        job.qBlocks = ceilDiv(job.qCount, job.qPerTask);
        thread_local std::vector<float> narrowPad;
        if (job.qBlocks > 1)
        {
            size_t const padSize = static_cast<size_t>(padElements(g) + narrowSlack(g));
            if (narrowPad.size() < padSize)
            {
                narrowPad.assign(padSize, 0.0f);
            }
            std::fill(narrowPad.begin() + padElements(g), narrowPad.begin() + static_cast<std::ptrdiff_t>(padSize),
                0.0f);
            PadJob pad{&g, x, narrowPad.data(), job.hq, job.wq};
            parallel(static_cast<size_t>(g.n * g.cIn), tasks.padTask, &pad);
            job.src = narrowPad.data();
        }
        parallel(static_cast<size_t>(pairs * job.qBlocks), tasks.narrowTask, &job);
    }
    else if (bank.gemmPath())
    {
        GemmJob job{};
        job.g = &g;
        job.x = x;
        job.fused = fusedStore.data();
        job.fusedBias = biasStore.data();
        job.y = y;
        job.residual = extras.residual;
        job.panels = bank.panels;
        job.isa = isa;
        job.nr = nrFor(isa);
        thread_local std::vector<int64_t> packedOffsets;
        packedOffsets.resize(static_cast<size_t>(g.r));
        for (int64_t e = 0; e < g.r; ++e)
        {
            packedOffsets[static_cast<size_t>(e)] = e * job.nr;
        }
        job.packedOffsets = packedOffsets.data();
        thread_local std::vector<float> colsStore;
        auto columnsFit = [&] { return satMul(satMul(g.n * g.groups, job.pixelBlocks * job.pixelBlock), g.r) <= budget; };
        auto shareColumns = [&] {
            // Several tasks read each pixel block: unroll the input once, in its own parallel step.
            job.colsStride = job.pixelBlock * g.r;
            size_t const blocks = static_cast<size_t>(g.n * g.groups * job.pixelBlocks);
            if (colsStore.size() < blocks * static_cast<size_t>(job.colsStride))
            {
                colsStore.resize(blocks * static_cast<size_t>(job.colsStride));
            }
            job.sharedCols = colsStore.data();
            parallel(blocks, tasks.im2colTask, &job);
        };
        bool const flat = flatCase(g);
        int64_t const hp = phaseRows(g);
        int64_t const wp = phaseCols(g);
        if (path == CpuPath::kGemmSmall)
        {
            // Small images: a sample's fused kernel serves few pixels, so it is fused inside the GEMM task that
            // uses it (never written to memory); tasks split the kernel panels, and the bank is read once.
            job.pixelBlock = ceilDiv<int64_t>(g.p, job.nr) * job.nr;
            job.pixelBlocks = 1;
            job.panelsPerTask = job.panels;
            while (static_cast<size_t>(g.groups * ceilDiv(job.panels, job.panelsPerTask)) < kMinTasks
                && job.panelsPerTask > 1)
            {
                job.panelsPerTask = ceilDiv<int64_t>(job.panelsPerTask, 2);
            }
            job.panelBlocks = ceilDiv(job.panels, job.panelsPerTask);
            job.fuse = &fuse;
            if (flat)
            {
                // 1x1 without padding or stride: no unrolling, the micro-kernel reads x's channels in place.
                job.flatSmall = true;
                job.xEnd = x + g.n * g.cIn * g.hw;
                thread_local std::vector<int64_t> channelOffsets;
                channelOffsets.resize(static_cast<size_t>(g.r));
                for (int64_t e = 0; e < g.r; ++e)
                {
                    channelOffsets[static_cast<size_t>(e)] = e * g.hw;
                }
                job.tapOffsets = channelOffsets.data();
            }
            else
            {
                shareColumns();
            }
            parallel(static_cast<size_t>(g.groups * job.panelBlocks), tasks.fusedGemmTask, &job);
        }
        else if (path == CpuPath::kGemmImplicit)
        {
            // Large images: fuse the batch's kernels once, then an implicit GEMM that reads the padded input in
            // place. Output (oh, ow), tap (ci, i, j) reads padded[ci][oh*sh + i*dh][ow*sw + j*dw]; with the input
            // split into stride phases that is phase[ci][(i*dh) % sh][(j*dw) % sw][oh + (i*dh)/sh][ow + (j*dw)/sw],
            // so every tap is one offset and consecutive outputs read consecutive floats.
            parallel(static_cast<size_t>(g.groups * bank.panels), tasks.fusePanel, &fuse);
            job.flat = flat;
            thread_local std::vector<int64_t> tapOffsets;
            tapOffsets.resize(static_cast<size_t>(g.r));
            if (job.flat)
            {
                job.src = x;
                job.srcStride = g.cinG * g.hw;
                job.rowPitch = job.rowLen = job.outRowPitch = kPixelBlock;
                job.rowsCount = ceilDiv(g.p, kPixelBlock);
            }
            else
            {
                thread_local std::vector<float> padStore;
                size_t const padSize = static_cast<size_t>(padElements(g) + 2 * kMaxNr);
                if (padStore.size() < padSize)
                {
                    padStore.resize(padSize);
                }
                PadJob pad{&g, x, padStore.data(), hp, wp};
                parallel(static_cast<size_t>(g.n * g.cIn), tasks.padTask, &pad);
                job.src = padStore.data();
                job.srcStride = g.cinG * g.sh * g.sw * hp * wp;
                job.rowPitch = wp;
                job.rowLen = g.wOut;
                job.outRowPitch = g.wOut;
                job.rowsCount = g.hOut;
            }
            for (int64_t e = 0; e < g.r; ++e)
            {
                int64_t const ci = e / (g.kh * g.kw);
                int64_t const i = (e / g.kw) % g.kh;
                int64_t const jj = e % g.kw;
                int64_t const rowTap = i * g.dh;
                int64_t const colTap = jj * g.dw;
                int64_t const phase = job.flat ? 0 : (ci * g.sh + rowTap % g.sh) * g.sw + colTap % g.sw;
                tapOffsets[static_cast<size_t>(e)] = job.flat
                    ? ci * g.hw
                    : phase * hp * wp + (rowTap / g.sh) * wp + colTap / g.sw;
            }
            job.tapOffsets = tapOffsets.data();
            // Rows per task: about kPixelBlock outputs, then fewer until the pool has enough tasks.
            job.rowsPerTask = std::max<int64_t>(1, kPixelBlock / std::max<int64_t>(1, job.rowLen));
            job.panelsPerTask = job.panels;
            auto count = [&] {
                job.rowBlocks = ceilDiv(job.rowsCount, job.rowsPerTask);
                job.panelBlocks = ceilDiv(job.panels, job.panelsPerTask);
                return static_cast<size_t>(g.n * g.groups * job.rowBlocks * job.panelBlocks);
            };
            while (count() < kMinTasks && job.rowsPerTask > 1)
            {
                job.rowsPerTask = ceilDiv<int64_t>(job.rowsPerTask, 2);
            }
            while (count() < kMinTasks && job.panelsPerTask > 1)
            {
                job.panelsPerTask = ceilDiv<int64_t>(job.panelsPerTask, 2);
            }
            parallel(count(), tasks.implicitTask, &job);
        }
        else
        {
            // Large images: fuse the batch's kernels once (the bank streamed once), then tasks over pixel blocks.
            parallel(static_cast<size_t>(g.groups * bank.panels), tasks.fusePanel, &fuse);
            job.pixelBlock = kPixelBlock;
            job.panelsPerTask = job.panels;
            auto count = [&] {
                job.pixelBlocks = ceilDiv(g.p, job.pixelBlock);
                job.panelBlocks = ceilDiv(job.panels, job.panelsPerTask);
                return static_cast<size_t>(g.n * g.groups * job.pixelBlocks * job.panelBlocks);
            };
            // Enough tasks for the pool: narrower pixel blocks first, then fewer kernel panels per task.
            while (count() < kMinTasks && job.pixelBlock > 2 * job.nr)
            {
                job.pixelBlock = ceilDiv<int64_t>(job.pixelBlock / 2, job.nr) * job.nr;
            }
            while (count() < kMinTasks && job.panelsPerTask > 1)
            {
                job.panelsPerTask = ceilDiv<int64_t>(job.panelsPerTask, 2);
            }
            size_t const nbTasks = count();
            if (job.panelBlocks > 1 && columnsFit())
            {
                shareColumns();
            }
            parallel(nbTasks, tasks.gemmTask, &job);
        }
    }
    else
    {
        int64_t const perTaskFuse = std::max<int64_t>(1, g.cOut / 64);
        fuse.channelsPerTask = perTaskFuse;
        parallel(static_cast<size_t>(ceilDiv(g.cOut, perTaskFuse)), tasks.fuseChannels, &fuse);

        DirectJob job{&g, x, fusedStore.data(), biasStore.data(), y, 1, extras.residual};
        int64_t const planes = g.n * g.cOut;
        // About 4096 multiply-adds per task at least, so small planes do not drown in scheduling.
        int64_t const work = std::max<int64_t>(1, g.p * g.r);
        job.planesPerTask = std::max<int64_t>(1, std::min<int64_t>(4096 / work, planes / 16));
        parallel(static_cast<size_t>(ceilDiv(planes, job.planesPerTask)), tasks.directTask, &job);
    }
    if (extras.mean != nullptr)
    {
        MeanJob job{y, extras.mean, g.n * g.cOut, g.p, 1};
        job.planesPerTask = std::max<int64_t>(1, std::min<int64_t>(16384 / std::max<int64_t>(1, g.p), job.planes / 16));
        parallel(static_cast<size_t>(ceilDiv(job.planes, job.planesPerTask)), tasks.meanTask, &job);
    }
    return DYNET_OK;
}

} // namespace dynet
