// Host-side test of the TensorRT plugin's build and runtime logic, without TensorRT's library or a GPU.
//
// The real plugin source (dynetDynamicConvPlugin.cpp) is compiled against the TensorRT headers and linked with the
// CUDA library's C ABI. libnvinfer is absent, so this file defines the only two functions of it the plugin refers
// to: getLogger (a logger that records messages, which the checks read) and getPluginRegistry (never used by these
// paths: returns nullptr). Everything else runs as in TensorRT: creator, fields, configurePlugin with a profile,
// getWorkspaceSize, serialisation round trip, tactics, timing-cache ID, onShapeChange, setTactic.
// Prints one "PASS name" / "FAIL name: why" line per check; exit status 1 when any failed.
#include "dynetDynamicConvPlugin.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

class RecordingLogger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        messages.push_back((severity <= Severity::kERROR ? "E " : "I ") + std::string(msg));
    }
    bool saw(std::string const& part) const
    {
        for (auto const& m : messages)
        {
            if (m.find(part) != std::string::npos)
            {
                return true;
            }
        }
        return false;
    }
    std::vector<std::string> messages;
};

RecordingLogger gLogger;
int gFailures = 0;

void check(bool ok, char const* name, std::string const& why = "")
{
    std::printf("%s %s%s%s\n", ok ? "PASS" : "FAIL", name, ok || why.empty() ? "" : ": ", ok ? "" : why.c_str());
    gFailures += ok ? 0 : 1;
}

Dims dims(std::vector<int64_t> const& v)
{
    Dims d{};
    d.nbDims = static_cast<int32_t>(v.size());
    for (size_t i = 0; i < v.size(); ++i)
    {
        d.d[i] = v[i];
    }
    return d;
}

//! The inputs of a 3x3 layer C_in -> C_out with K = 4 and per-channel coefficients; N, H, W dynamic (-1) in desc,
//! with the profile max given.
std::vector<DynamicPluginTensorDesc> profile(int64_t nMax, int64_t hwMax, int64_t cIn, int64_t cOut, DataType type)
{
    std::vector<std::vector<int64_t>> build = {{-1, cIn, -1, -1}, {-1, cOut, 4}, {4, cOut, cIn, 3, 3}};
    std::vector<std::vector<int64_t>> mx = {{nMax, cIn, hwMax, hwMax}, {nMax, cOut, 4}, {4, cOut, cIn, 3, 3}};
    std::vector<DynamicPluginTensorDesc> in(3);
    for (size_t i = 0; i < 3; ++i)
    {
        in[i].desc.dims = dims(build[i]);
        in[i].desc.type = type;
        in[i].desc.format = TensorFormat::kLINEAR;
        in[i].desc.scale = 1.F;
        in[i].min = dims(mx[i]);
        in[i].opt = dims(mx[i]);
        in[i].max = dims(mx[i]);
        for (int32_t j : {0, 2, 3})
        {
            if (j < in[i].min.nbDims && build[i][static_cast<size_t>(j)] == -1)
            {
                in[i].min.d[j] = 1;
            }
        }
    }
    return in;
}

DynamicPluginTensorDesc outputDesc(DataType type)
{
    DynamicPluginTensorDesc out{};
    out.desc.dims = dims({-1, -1, -1, -1});
    out.desc.type = type;
    out.desc.format = TensorFormat::kLINEAR;
    return out;
}

struct Fields
{
    std::vector<std::string> names;
    std::vector<int64_t> values;
    std::vector<PluginField> fields;
    PluginFieldCollection fc{};
    void add(char const* name, int64_t value)
    {
        names.emplace_back(name);
        values.push_back(value);
    }
    PluginFieldCollection const* collection()
    {
        fields.clear();
        for (size_t i = 0; i < names.size(); ++i)
        {
            fields.emplace_back(names[i].c_str(), &values[i], PluginFieldType::kINT64, 1);
        }
        fc.nbFields = static_cast<int32_t>(fields.size());
        fc.fields = fields.data();
        return &fc;
    }
};

using dynet::DyNetDynamicConv2dPlugin;
using dynet::DyNetDynamicConv2dPluginCreator;

std::unique_ptr<DyNetDynamicConv2dPlugin> make(DyNetDynamicConv2dPluginCreator& creator, Fields& f)
{
    return std::unique_ptr<DyNetDynamicConv2dPlugin>(
        static_cast<DyNetDynamicConv2dPlugin*>(creator.createPlugin("node", f.collection(), TensorRTPhase::kBUILD)));
}

DynetConvParams paramsAt(int32_t n, int32_t hw, int32_t cIn, int32_t cOut, int32_t pad)
{
    DynetConvParams p{};
    dynet_conv_params_init(&p);
    p.n = n;
    p.c_in = cIn;
    p.h = hw;
    p.w = hw;
    p.c_out = cOut;
    p.k = 4;
    p.coeff_channels = cOut;
    p.kh = 3;
    p.kw = 3;
    p.pad_top = p.pad_left = p.pad_bottom = p.pad_right = pad;
    return p;
}

} // namespace

extern "C" ILogger* getLogger() noexcept
{
    return &gLogger;
}

extern "C" IPluginRegistry* getPluginRegistry() noexcept
{
    return nullptr;
}

int main()
{
    DyNetDynamicConv2dPluginCreator creator;

    // Field names: the C ABI's table, in its order.
    {
        PluginFieldCollection const* names = creator.getFieldNames();
        bool same = names->nbFields == dynet_conv_attribute_count();
        for (int32_t i = 0; same && i < names->nbFields; ++i)
        {
            same = std::strcmp(names->fields[i].name, dynet_conv_attribute(i)->name) == 0;
        }
        check(same, "creator field names are the C ABI's attribute table");
    }

    // Attribute parsing goes through the table's ranges.
    {
        Fields bad;
        bad.add("groups", 0);
        gLogger.messages.clear();
        check(make(creator, bad) == nullptr && gLogger.saw("attribute 'groups' = 0: must be >= 1"),
            "createPlugin refuses groups=0 with the table's message");
        Fields big;
        big.add("stride_h", int64_t{1} << 40);
        check(make(creator, big) == nullptr, "createPlugin refuses a value beyond int32");
        Fields unknown;
        unknown.add("not_an_attribute", 3);
        gLogger.messages.clear();
        check(make(creator, unknown) != nullptr && gLogger.saw("ignoring unknown attribute 'not_an_attribute'"),
            "createPlugin ignores an unknown attribute with a warning");
    }

    Fields f;
    f.add("pad_top", 1);
    f.add("pad_left", 1);
    f.add("pad_bottom", 1);
    f.add("pad_right", 1);
    f.add("activation", 1);
    auto plugin = make(creator, f);
    check(plugin != nullptr, "createPlugin with pads and ReLU");
    if (plugin == nullptr)
    {
        return 1;
    }

    // configurePlugin sizes the grant at the profile's max; getWorkspaceSize returns it.
    auto in = profile(8, 32, 16, 32, DataType::kHALF);
    auto out = outputDesc(DataType::kHALF);
    check(plugin->configurePlugin(in.data(), 3, &out, 1) == 0, "configurePlugin accepts a profile within the limit");
    DynetConvParams pMax = paramsAt(8, 32, 16, 32, 1);
    size_t const twoStep = dynet_conv_cuda_workspace_size(&pMax, DYNET_FLOAT16, DYNET_ALGO_TWO_STEP);
    size_t const grant = plugin->getWorkspaceSize(in.data(), 3, &out, 1);
    check(twoStep == ((8 * 32 * 16 * 9 * 2 + 255) / 256) * 256, "two-step workspace formula at the profile max");
    check(grant >= twoStep, "the grant covers the two-step tactic at the profile max",
        std::to_string(grant) + " < " + std::to_string(twoStep));
    // getWorkspaceSize answers for the descs it is given, not with the last configurePlugin's grant: the same profile
    // in fp32 needs at least the fp32 two-step size (twice the fp16 one), a larger max at least its own.
    {
        auto in32 = profile(8, 32, 16, 32, DataType::kFLOAT);
        auto out32 = outputDesc(DataType::kFLOAT);
        size_t const twoStep32 = dynet_conv_cuda_workspace_size(&pMax, DYNET_FLOAT32, DYNET_ALGO_TWO_STEP);
        size_t const asked32 = plugin->getWorkspaceSize(in32.data(), 3, &out32, 1);
        check(asked32 >= twoStep32, "getWorkspaceSize sizes the dtype it is asked about (fp32 after an fp16 configure)",
            std::to_string(asked32) + " < " + std::to_string(twoStep32));
        auto in64 = profile(64, 32, 16, 32, DataType::kHALF);
        DynetConvParams p64 = paramsAt(64, 32, 16, 32, 1);
        size_t const twoStep64 = dynet_conv_cuda_workspace_size(&p64, DYNET_FLOAT16, DYNET_ALGO_TWO_STEP);
        size_t const asked64 = plugin->getWorkspaceSize(in64.data(), 3, &out, 1);
        check(asked64 >= twoStep64, "getWorkspaceSize sizes the profile max it is asked about (N=64 after N=8)",
            std::to_string(asked64) + " < " + std::to_string(twoStep64));
        check(plugin->getWorkspaceSize(in.data(), 3, &out, 1) == grant,
            "getWorkspaceSize of the configured descs is configurePlugin's grant");
    }

    // A profile whose max breaks the 2^31-1 element limit fails the build, with the reason.
    {
        auto huge = profile(4096, 1024, 16, 32, DataType::kHALF); // y = 4096 * 32 * 1024^2 elements
        gLogger.messages.clear();
        auto other = make(creator, f);
        check(other->configurePlugin(huge.data(), 3, &out, 1) == -1
                && gLogger.saw("the optimisation profile's max shapes break the op contract")
                && gLogger.saw("the limit is 2^31-1"),
            "configurePlugin refuses a profile max beyond the element limit");
        auto mismatch = profile(8, 32, 16, 32, DataType::kHALF);
        mismatch[1].desc.dims.d[2] = 5; // coeff K = 5, weight K = 4
        gLogger.messages.clear();
        check(other->configurePlugin(mismatch.data(), 3, &out, 1) == -1 && gLogger.saw("coeff has K=5"),
            "configurePlugin refuses inconsistent static dims");
    }

    // Serialised fields: the 12 attributes (names from the table, values from the plugin) and the grant.
    {
        PluginFieldCollection const* fc = plugin->getFieldsToSerialize();
        int32_t const count = dynet_conv_attribute_count();
        bool ok = fc != nullptr && fc->nbFields == count + 1;
        for (int32_t i = 0; ok && i < count; ++i)
        {
            ok = std::strcmp(fc->fields[i].name, dynet_conv_attribute(i)->name) == 0
                && fc->fields[i].type == PluginFieldType::kINT32 && fc->fields[i].length == 1;
        }
        check(ok, "serialised fields are the attribute table plus the workspace grant");
        if (ok)
        {
            int32_t const actIdx = dynet_conv_attribute_index("activation");
            check(*static_cast<int32_t const*>(fc->fields[actIdx].data) == 1, "serialised attribute values");
            PluginField const& ws = fc->fields[count];
            check(std::strcmp(ws.name, dynet::kWorkspaceFieldName) == 0 && ws.type == PluginFieldType::kINT64
                    && *static_cast<int64_t const*>(ws.data) == static_cast<int64_t>(grant),
                "serialised workspace grant equals getWorkspaceSize");
            // Round trip: the runtime plugin made from these fields knows the grant without configurePlugin.
            std::unique_ptr<DyNetDynamicConv2dPlugin> runtime(static_cast<DyNetDynamicConv2dPlugin*>(
                creator.createPlugin("node", fc, TensorRTPhase::kRUNTIME)));
            check(runtime != nullptr && runtime->getWorkspaceSize(nullptr, 0, nullptr, 0) == grant,
                "the grant survives serialisation");
        }
    }

    // Tactics and the timing-cache ID.
    {
        int32_t const nb = plugin->getNbTactics();
        // A library-backed tactic is offered for timing when the build has it and configurePlugin could plan it at
        // the profile's max (its library loads and a handle can be made: not on a machine without a GPU). This layer
        // (3x3, pads 1) is no pointwise layer: no cuBLAS GEMM; cuBLAS im2col instead.
        DynetConvCudaPlan* probe = nullptr;
        DynetConvParams pAct = pMax;
        pAct.activation = 1;
        bool const plannable = dynet_conv_cuda_plan_create(&pAct, DYNET_FLOAT16, DYNET_ALGO_CUDNN,
                                   dynet_conv_cuda_workspace_size(&pAct, DYNET_FLOAT16, DYNET_ALGO_CUDNN)
                                       + dynet::kCudnnScratchCap,
                                   &probe, nullptr, 0)
            == DYNET_OK;
        dynet_conv_cuda_plan_destroy(probe);
        DynetConvCudaContext* ctx = nullptr;
        dynet_conv_cuda_context_create(&ctx);
        bool const cublasHandle = dynet_conv_cuda_context_prepare(ctx, DYNET_ALGO_CUBLAS_IM2COL, nullptr, 0) == DYNET_OK;
        bool const cudnnHandle = dynet_conv_cuda_context_prepare(ctx, DYNET_ALGO_CUDNN, nullptr, 0) == DYNET_OK;
        dynet_conv_cuda_context_destroy(ctx);
        std::printf("INFO cuDNN in this build: %d, plannable here: %d; cuBLAS in this build: %d, handle here: %d\n",
            dynet_conv_cuda_has_cudnn(), plannable ? 1 : 0, dynet_conv_cuda_has_cublas(), cublasHandle ? 1 : 0);
        std::vector<int32_t> expected = {DYNET_ALGO_TWO_STEP, DYNET_ALGO_ONE_KERNEL};
        if (plannable)
        {
            expected.push_back(DYNET_ALGO_CUDNN);
        }
        if (dynet_conv_cuda_has_cublas() != 0 && cublasHandle)
        {
            expected.push_back(DYNET_ALGO_CUBLAS_IM2COL);
        }
        std::vector<int32_t> tactics(static_cast<size_t>(std::max(nb, 1)));
        check(nb == static_cast<int32_t>(expected.size()) && plugin->getValidTactics(tactics.data(), nb) == 0
                && std::equal(expected.begin(), expected.end(), tactics.begin()),
            "tactics timed: two-step, one-kernel, then cuDNN and cuBLAS im2col when built with them and plannable",
            std::to_string(nb));
        check(plugin->setTactic(DYNET_ALGO_CUDNN) == (dynet_conv_cuda_has_cudnn() && cudnnHandle ? 0 : -1),
            "setTactic accepts cuDNN exactly when the build has it and its handle can be made (outside enqueue)");
        check(plugin->setTactic(DYNET_ALGO_CUBLAS_GEMM) == -1, "setTactic refuses the cuBLAS GEMM for a padded layer");
        check(plugin->setTactic(DYNET_ALGO_TWO_STEP) == 0, "setTactic back to two-step");

        // A pointwise layer (1x1, stride 1, no pads): the cuBLAS GEMM is in the build's set and timed when its handle
        // can be made; cuBLAS im2col is in the set but never timed (the GEMM runs the layer without the copy).
        Fields pw;
        pw.add("activation", 2);
        auto point = make(creator, pw);
        auto inPw = profile(8, 16, 16, 32, DataType::kHALF);
        for (auto* d : {&inPw[2].desc.dims, &inPw[2].min, &inPw[2].opt, &inPw[2].max})
        {
            d->d[3] = 1;
            d->d[4] = 1;
        }
        check(point->configurePlugin(inPw.data(), 3, &out, 1) == 0, "configurePlugin of a pointwise layer");
        std::vector<int32_t> expectedPw = {DYNET_ALGO_TWO_STEP, DYNET_ALGO_ONE_KERNEL};
        if (dynet_conv_cuda_has_cublas() != 0 && cublasHandle)
        {
            expectedPw.push_back(DYNET_ALGO_CUBLAS_GEMM);
        }
        int32_t const nbPw = point->getNbTactics();
        std::vector<int32_t> tPw(static_cast<size_t>(std::max(nbPw, 1)));
        bool const cudnnPw = nbPw > 2 && point->getValidTactics(tPw.data(), nbPw) == 0 && tPw[2] == DYNET_ALGO_CUDNN;
        if (cudnnPw)
        {
            expectedPw.insert(expectedPw.begin() + 2, DYNET_ALGO_CUDNN);
        }
        check(nbPw == static_cast<int32_t>(expectedPw.size()) && point->getValidTactics(tPw.data(), nbPw) == 0
                && std::equal(expectedPw.begin(), expectedPw.end(), tPw.begin()),
            "pointwise layer: cuBLAS GEMM timed when plannable, cuBLAS im2col not", std::to_string(nbPw));
        std::string const idPw = point->getTimingCacheID() ? point->getTimingCacheID() : "";
        std::string setPw = "tactics=1,2";
        setPw += dynet_conv_cuda_has_cudnn() ? ",3" : "";
        setPw += dynet_conv_cuda_has_cublas() ? ",4,5" : "";
        check(idPw.find(setPw + "/") != std::string::npos, "the pointwise layer's build set names both cuBLAS tactics",
            idPw);
        if (dynet_conv_cuda_has_cublas() != 0)
        {
            // The grant covers the cuBLAS GEMM's formula only where it is offered; its formula itself:
            DynetConvParams pPw = paramsAt(8, 16, 16, 32, 1);
            pPw.kh = 1;
            pPw.kw = 1;
            pPw.pad_top = pPw.pad_left = pPw.pad_bottom = pPw.pad_right = 0;
            size_t const f16 = ((8 * 32 * 16 * 2 + 255) / 256) * 256;
            size_t const b16 = ((8 * 32 * 2 + 255) / 256) * 256;
            check(dynet_conv_cuda_workspace_size(&pPw, DYNET_FLOAT16, DYNET_ALGO_CUBLAS_GEMM)
                    == f16 + b16 + (size_t{32} << 20),
                "cuBLAS GEMM workspace: fused kernels + fused biases + cuBLAS scratch");
        }

        Fields asym = f;
        asym.values[2] = 0; // pad_bottom 0 != pad_top 1
        auto a = make(creator, asym);
        check(a->getNbTactics() == 2 + dynet_conv_cuda_has_cublas(),
            "no cuDNN tactic for asymmetric pads (an unconfigured plugin lists cuBLAS im2col where built)");
        check(plugin->setTactic(7) == -1, "setTactic refuses an unknown tactic");
        check(a->setTactic(DYNET_ALGO_CUDNN) == -1, "setTactic refuses cuDNN where it is not offered");

        auto same = make(creator, f);
        std::string const id = plugin->getTimingCacheID() ? plugin->getTimingCacheID() : "";
        std::string const idSame = same->getTimingCacheID() ? same->getTimingCacheID() : "";
        std::string const idAsym = a->getTimingCacheID() ? a->getTimingCacheID() : "";
        char key[512];
        dynet_conv_attributes_key(&pMax, key, sizeof(key));
        check(!id.empty() && id == idSame, "equal attributes give equal timing-cache IDs", id + " vs " + idSame);
        check(id != idAsym, "different attributes give different timing-cache IDs");
        DynetConvParams withAct = pMax;
        withAct.activation = 1;
        dynet_conv_attributes_key(&withAct, key, sizeof(key));
        std::string set = "tactics=1,2";
        set += dynet_conv_cuda_has_cudnn() ? ",3" : "";
        set += dynet_conv_cuda_has_cublas() ? ",5" : ""; // pads: no cuBLAS GEMM in the set
        check(id.find(key) != std::string::npos && id.find(set + "/") != std::string::npos,
            "the ID carries the attributes key and the build's tactic set", id);
        std::printf("INFO timing-cache ID: %s; workspace grant %zu bytes\n", id.c_str(), grant);
    }

    // onShapeChange makes the plan within the grant (host-only for two-step); a shape beyond it is refused there.
    {
        auto shapeDescs = [](int64_t n, int64_t hw) {
            std::vector<PluginTensorDesc> d(3);
            d[0].dims = dims({n, 16, hw, hw});
            d[1].dims = dims({n, 32, 4});
            d[2].dims = dims({4, 32, 16, 3, 3});
            for (auto& t : d)
            {
                t.type = DataType::kHALF;
                t.format = TensorFormat::kLINEAR;
            }
            return d;
        };
        PluginTensorDesc y{};
        y.type = DataType::kHALF;
        check(plugin->setTactic(DYNET_ALGO_TWO_STEP) == 0, "setTactic two-step");
        auto d = shapeDescs(4, 20);
        y.dims = dims({4, 32, 20, 20});
        check(plugin->onShapeChange(d.data(), 3, &y, 1) == 0, "onShapeChange plans a shape within the profile");
        y.dims = dims({4, 32, 19, 20});
        gLogger.messages.clear();
        check(plugin->onShapeChange(d.data(), 3, &y, 1) == -1 && gLogger.saw("does not match the computed shape"),
            "onShapeChange refuses a wrong output shape");
        auto big = shapeDescs(64, 20); // N = 64 > the profile's 8: two-step needs 8x its grant share
        y.dims = dims({64, 32, 20, 20});
        DynetConvParams p64 = paramsAt(64, 20, 16, 32, 1);
        if (dynet_conv_cuda_workspace_size(&p64, DYNET_FLOAT16, DYNET_ALGO_TWO_STEP) > grant)
        {
            gLogger.messages.clear();
            check(plugin->onShapeChange(big.data(), 3, &y, 1) == -1 && gLogger.saw("workspace grant"),
                "a plan that needs more than TensorRT's grant is refused in onShapeChange");
        }
        else
        {
            std::printf("SKIP grant check: the grant (%zu bytes, with cuDNN scratch) covers N=64\n", grant);
        }
        // Re-plan for the tactic set after the shape (TensorRT times tactics on a configured shape).
        y.dims = dims({4, 32, 20, 20});
        check(plugin->onShapeChange(d.data(), 3, &y, 1) == 0 && plugin->setTactic(DYNET_ALGO_ONE_KERNEL) == 0,
            "setTactic after onShapeChange re-plans");
        std::unique_ptr<IPluginV3> clone(plugin->clone());
        check(clone != nullptr, "clone (makes its own plan)");
    }

    std::printf("%s: %d failure(s)\n", gFailures == 0 ? "PASS" : "FAIL", gFailures);
    return gFailures == 0 ? 0 : 1;
}
