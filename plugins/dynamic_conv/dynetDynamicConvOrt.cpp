// onnxruntime custom-op library for DyNetDynamicConv2d (domain "trt.plugins", op version 1; the op contract is
// plugins/dynamic_conv/README.md). Load it with SessionOptions::RegisterCustomOpsLibrary (Python:
// SessionOptions.register_custom_ops_library); the exported RegisterCustomOps adds the op's kernels:
//
//   - CPU, float and float16 (fp16 tensors are computed in fp32 and rounded once), on the fast CPU kernel
//     (dynetDynamicConvCpuKernel.h) running on onnxruntime's intra-op thread pool;
//   - CUDA execution provider, float and float16, through the C ABI's plans on onnxruntime's compute stream (only in
//     builds with the CUDA kernels, DYNET_ORT_WITH_CUDA). The tactic is DYNET_CUDA_ALGO (a DynetAlgo number, read
//     when the session is created; default 0 = AUTO): the library-backed ones (cuDNN 3, cuBLAS 4 and 5) get their
//     handle once per kernel, at its first call, and a plan per shape.
//
// Inputs 3 and 4 are optional in the op definition, so a node has 3, 4 or 5 inputs as has_bias_bank / has_bias
// say. Attribute names, defaults and ranges come from the C ABI's attribute table. Every error (attributes at
// session creation, shapes at run time) is returned as an onnxruntime status; no exception leaves the library.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include "dynetDynamicConv.h"
#include "dynetDynamicConvCpuKernel.h"

#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>


namespace
{
constexpr char const* kDomain = "trt.plugins";
constexpr char const* kOpName = "DyNetDynamicConv2d";
constexpr int kOpVersion = 1;
constexpr size_t kRequiredInputs = 3;
constexpr size_t kMaxInputs = 5;

// An error status with the node named, so a failing graph says which node and what to change.
OrtStatus* errorStatus(OrtErrorCode code, std::string const& node, std::string const& what)
{
    std::string const text = std::string(kOpName) + " node '" + node + "': " + what;
    return Ort::GetApi().CreateStatus(code, text.c_str());
}

// Run a kernel's compute: an exception becomes an error status naming the node (nothing may escape into onnxruntime).
template <typename Fn>
OrtStatus* statusOf(std::string const& node, Fn&& fn)
{
    try
    {
        return fn();
    }
    catch (Ort::Exception const& e)
    {
        return errorStatus(e.GetOrtErrorCode(), node, e.what());
    }
    catch (std::exception const& e)
    {
        return errorStatus(ORT_RUNTIME_EXCEPTION, node, e.what());
    }
}

std::string shapeText(std::vector<int64_t> const& s)
{
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i)
    {
        out += (i ? ", " : "") + std::to_string(s[i]);
    }
    return out + "]";
}

// IEEE binary16 <-> float, exact conversions (the onnxruntime Float16_t helpers, used through the public header).
inline float toFloat(Ort::Float16_t v)
{
    return v.ToFloat();
}
inline Ort::Float16_t toHalf(float v)
{
    return Ort::Float16_t(v);
}

template <typename T>
constexpr ONNXTensorElementDataType elementType()
{
    return std::is_same<T, float>::value ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
}

template <typename T>
char const* typeName()
{
    return std::is_same<T, float>::value ? "float32" : "float16";
}

// fp32 view of a tensor: the data itself for float, a converted copy for float16.
template <typename T>
float const* asFloat(T const* data, size_t count, std::vector<float>& store)
{
    if constexpr (std::is_same<T, float>::value)
    {
        (void) count;
        (void) store;
        return data;
    }
    else
    {
        store.resize(count);
        for (size_t i = 0; i < count; ++i)
        {
            store[i] = toFloat(data[i]);
        }
        return store.data();
    }
}

size_t elementCount(std::vector<int64_t> const& shape)
{
    size_t n = 1;
    for (int64_t d : shape)
    {
        n *= static_cast<size_t>(d < 0 ? 0 : d);
    }
    return n;
}

// Attributes of the node, read through the C ABI's attribute table; shapes are filled per call.
OrtStatus* readAttributes(OrtKernelInfo const* info, std::string const& node, DynetConvParams& params)
{
    OrtApi const& api = Ort::GetApi();
    dynet_conv_params_init(&params);
    for (int32_t i = 0; i < dynet_conv_attribute_count(); ++i)
    {
        DynetAttributeInfo const* attr = dynet_conv_attribute(i);
        int64_t value = 0;
        OrtStatus* status = api.KernelInfoGetAttribute_int64(info, attr->name, &value);
        if (status != nullptr)
        {
            std::string const reason = api.GetErrorMessage(status);
            api.ReleaseStatus(status);
            if (reason.find("No attribute") != std::string::npos)
            {
                continue; // absent: the table's default stays
            }
            return errorStatus(ORT_INVALID_ARGUMENT, node,
                std::string("attribute '") + attr->name + "' must be a scalar int (" + reason + ")");
        }
        char msg[256];
        if (dynet_conv_params_set_attribute(&params, attr->name, value, msg, sizeof(msg)) != DYNET_OK)
        {
            return errorStatus(ORT_INVALID_ARGUMENT, node, msg);
        }
    }
    return nullptr;
}

// ---- shared kernel state ---------------------------------------------------------------------------------------

struct NodeConfig
{
    std::string name;
    DynetConvParams attrs{}; // attributes only; shapes are per call
    int biasBankInput = -1;
    int biasInput = -1;
    size_t inputCount = 0;
};

OrtStatus* readNode(OrtKernelInfo const* info, NodeConfig& cfg)
{
    OrtApi const& api = Ort::GetApi();
    size_t size = 0;
    if (OrtStatus* s = api.KernelInfo_GetNodeName(info, nullptr, &size))
    {
        api.ReleaseStatus(s);
        size = 0;
    }
    if (size > 0)
    {
        std::string name(size, '\0');
        if (OrtStatus* s = api.KernelInfo_GetNodeName(info, name.data(), &size))
        {
            api.ReleaseStatus(s);
        }
        cfg.name = name.c_str();
    }
    if (OrtStatus* s = readAttributes(info, cfg.name, cfg.attrs))
    {
        return s;
    }
    if (OrtStatus* s = api.KernelInfo_GetInputCount(info, &cfg.inputCount))
    {
        return s;
    }
    size_t const expected = kRequiredInputs + cfg.attrs.has_bias_bank + cfg.attrs.has_bias;
    if (cfg.inputCount != expected)
    {
        return errorStatus(ORT_INVALID_ARGUMENT, cfg.name,
            "has " + std::to_string(cfg.inputCount) + " inputs, but has_bias_bank=" + std::to_string(cfg.attrs.has_bias_bank)
                + " and has_bias=" + std::to_string(cfg.attrs.has_bias) + " call for " + std::to_string(expected)
                + " (x, coeff, weight" + (cfg.attrs.has_bias_bank ? ", bias_bank" : "") + (cfg.attrs.has_bias ? ", bias" : "")
                + ")");
    }
    int next = 3;
    cfg.biasBankInput = cfg.attrs.has_bias_bank ? next++ : -1;
    cfg.biasInput = cfg.attrs.has_bias ? next++ : -1;
    return nullptr;
}

// Shapes of one call, checked against each other and the contract (dynet_conv_validate decides the rest).
OrtStatus* callParams(NodeConfig const& cfg, std::vector<int64_t> const& xs, std::vector<int64_t> const& cs,
    std::vector<int64_t> const& ws, std::vector<int64_t> const* bbs, std::vector<int64_t> const* bs,
    DynetConvParams& p)
{
    auto bad = [&](std::string const& what) { return errorStatus(ORT_INVALID_ARGUMENT, cfg.name, what); };
    if (xs.size() != 4)
    {
        return bad("x must be rank 4 [N, C_in, H, W], got " + shapeText(xs));
    }
    if (cs.size() != 3)
    {
        return bad("coeff must be rank 3 [N, C_out or 1, K], got " + shapeText(cs));
    }
    if (ws.size() != 5)
    {
        return bad("weight must be rank 5 [K, C_out, C_in/groups, kH, kW], got " + shapeText(ws));
    }
    for (auto const* s : {&xs, &cs, &ws})
    {
        for (int64_t d : *s)
        {
            if (d > 2147483647)
            {
                return bad("a dimension exceeds int32: x " + shapeText(xs) + ", coeff " + shapeText(cs));
            }
        }
    }
    p = cfg.attrs;
    p.n = static_cast<int32_t>(xs[0]);
    p.c_in = static_cast<int32_t>(xs[1]);
    p.h = static_cast<int32_t>(xs[2]);
    p.w = static_cast<int32_t>(xs[3]);
    p.k = static_cast<int32_t>(ws[0]);
    p.c_out = static_cast<int32_t>(ws[1]);
    p.kh = static_cast<int32_t>(ws[3]);
    p.kw = static_cast<int32_t>(ws[4]);
    p.coeff_channels = static_cast<int32_t>(cs[1]);
    if (cs[0] != xs[0] || cs[2] != ws[0])
    {
        return bad("coeff " + shapeText(cs) + " must be [N=" + std::to_string(xs[0]) + ", C_out or 1, K="
            + std::to_string(ws[0]) + "] (x " + shapeText(xs) + ", weight " + shapeText(ws) + ")");
    }
    char msg[256];
    if (dynet_conv_validate(&p, msg, sizeof(msg)) != DYNET_OK)
    {
        return bad(msg);
    }
    if (ws[2] * p.groups != xs[1])
    {
        std::string hint;
        if (ws[2] > 0 && xs[1] % ws[2] == 0 && xs[1] / ws[2] != p.groups)
        {
            // The usual cause: a grouped layer whose node lacks its groups attribute (absent means 1).
            hint = "; a grouped layer with these shapes needs groups=" + std::to_string(xs[1] / ws[2])
                + " (the node's groups is " + std::to_string(p.groups) + (p.groups == 1 ? ", the default" : "")
                + ")";
        }
        return bad("weight " + shapeText(ws) + " expects C_in = " + std::to_string(ws[2]) + " * groups "
            + std::to_string(p.groups) + " = " + std::to_string(ws[2] * p.groups) + " input channels, x "
            + shapeText(xs) + " has " + std::to_string(xs[1]) + hint);
    }
    if (bbs != nullptr && (bbs->size() != 2 || (*bbs)[0] != ws[0] || (*bbs)[1] != ws[1]))
    {
        return bad("bias_bank must be [K, C_out] = [" + std::to_string(ws[0]) + ", " + std::to_string(ws[1])
            + "], got " + shapeText(*bbs));
    }
    if (bs != nullptr && (bs->size() != 1 || (*bs)[0] != ws[1]))
    {
        return bad("bias must be [C_out] = [" + std::to_string(ws[1]) + "], got " + shapeText(*bs));
    }
    return nullptr;
}

// One call: the node's inputs, their shapes checked into the op's params (callParams) and the output allocated.
struct Call
{
    Ort::ConstValue x{nullptr}, coeff{nullptr}, weight{nullptr}, biasBank{nullptr}, bias{nullptr};
    std::vector<int64_t> xs, cs, ws;
    DynetConvParams p{};
    int64_t hOut = 0, wOut = 0;
    Ort::UnownedValue y{nullptr};
};

OrtStatus* prepareCall(NodeConfig const& cfg, Ort::KernelContext& ctx, Call& call)
{
    call.x = ctx.GetInput(0);
    call.coeff = ctx.GetInput(1);
    call.weight = ctx.GetInput(2);
    call.biasBank = cfg.biasBankInput >= 0 ? ctx.GetInput(cfg.biasBankInput) : Ort::ConstValue{nullptr};
    call.bias = cfg.biasInput >= 0 ? ctx.GetInput(cfg.biasInput) : Ort::ConstValue{nullptr};
    if (call.x == nullptr || call.coeff == nullptr || call.weight == nullptr
        || (cfg.biasBankInput >= 0 && call.biasBank == nullptr) || (cfg.biasInput >= 0 && call.bias == nullptr))
    {
        return errorStatus(ORT_INVALID_ARGUMENT, cfg.name, "a required input is missing");
    }
    call.xs = call.x.GetTensorTypeAndShapeInfo().GetShape();
    call.cs = call.coeff.GetTensorTypeAndShapeInfo().GetShape();
    call.ws = call.weight.GetTensorTypeAndShapeInfo().GetShape();
    std::vector<int64_t> bbs, bs;
    if (call.biasBank != nullptr)
    {
        bbs = call.biasBank.GetTensorTypeAndShapeInfo().GetShape();
    }
    if (call.bias != nullptr)
    {
        bs = call.bias.GetTensorTypeAndShapeInfo().GetShape();
    }
    if (OrtStatus* s = callParams(cfg, call.xs, call.cs, call.ws, call.biasBank != nullptr ? &bbs : nullptr,
            call.bias != nullptr ? &bs : nullptr, call.p))
    {
        return s;
    }
    DynetConvSizes sizes; // callParams validated p: the output extents come from the validator's checked sizes
    dynet_conv_sizes(&call.p, &sizes, nullptr, 0);
    call.hOut = sizes.h_out;
    call.wOut = sizes.w_out;
    call.y = ctx.GetOutput(0, {call.xs[0], call.ws[1], call.hOut, call.wOut});
    return nullptr;
}

// ---- CPU kernel ------------------------------------------------------------------------------------------------

void runOnPool(void* context, void (*fn)(void*, size_t), size_t total, void* usr)
{
    OrtStatus* s = Ort::GetApi().KernelContext_ParallelFor(static_cast<OrtKernelContext const*>(context), fn, total,
        0, usr);
    if (s != nullptr)
    {
        // No pool available to this call: run the same tasks on this thread.
        Ort::GetApi().ReleaseStatus(s);
        for (size_t i = 0; i < total; ++i)
        {
            fn(usr, i);
        }
    }
}

template <typename T>
struct CpuKernel
{
    NodeConfig cfg;
    std::shared_ptr<dynet::PackedBank const> constantBank; // packed at session creation when the bank is constant
    dynet::CpuIsa isa = dynet::selectedIsa();

    OrtStatus* init(OrtKernelInfo const* info)
    {
        if (OrtStatus* s = readNode(info, cfg))
        {
            return s;
        }
        return packConstantBank(info);
    }

    // When weight (and bias_bank, bias) are initializers, check and pack them once here.
    OrtStatus* packConstantBank(OrtKernelInfo const* info)
    {
        OrtApi const& api = Ort::GetApi();
        OrtValue const* values[3] = {nullptr, nullptr, nullptr};
        int const indices[3] = {2, cfg.biasBankInput, cfg.biasInput};
        for (int i = 0; i < 3; ++i)
        {
            if (indices[i] < 0)
            {
                continue;
            }
            int isConstant = 0;
            if (OrtStatus* s = api.KernelInfoGetConstantInput_tensor(info, static_cast<size_t>(indices[i]),
                    &isConstant, &values[i]))
            {
                api.ReleaseStatus(s);
                return nullptr; // not known to be constant: packed per call
            }
            if (!isConstant)
            {
                return nullptr;
            }
        }
        Ort::ConstValue weight(values[0]);
        std::vector<int64_t> const ws = weight.GetTensorTypeAndShapeInfo().GetShape();
        if (ws.size() != 5)
        {
            return errorStatus(ORT_INVALID_ARGUMENT, cfg.name,
                "weight must be rank 5 [K, C_out, C_in/groups, kH, kW], got " + shapeText(ws));
        }
        for (int64_t d : ws)
        {
            if (d < 1 || d > 2147483647)
            {
                return errorStatus(ORT_INVALID_ARGUMENT, cfg.name, "weight has an empty or huge dim: " + shapeText(ws));
            }
        }
        if (ws[1] % cfg.attrs.groups != 0)
        {
            return errorStatus(ORT_INVALID_ARGUMENT, cfg.name, "groups=" + std::to_string(cfg.attrs.groups)
                + " must divide C_out=" + std::to_string(ws[1]) + " (weight " + shapeText(ws) + ")");
        }
        std::vector<int64_t> bbs, bs;
        if (values[1] != nullptr)
        {
            bbs = Ort::ConstValue(values[1]).GetTensorTypeAndShapeInfo().GetShape();
            if (bbs.size() != 2 || bbs[0] != ws[0] || bbs[1] != ws[1])
            {
                return errorStatus(ORT_INVALID_ARGUMENT, cfg.name, "bias_bank must be [K, C_out] = ["
                    + std::to_string(ws[0]) + ", " + std::to_string(ws[1]) + "], got " + shapeText(bbs));
            }
        }
        if (values[2] != nullptr)
        {
            bs = Ort::ConstValue(values[2]).GetTensorTypeAndShapeInfo().GetShape();
            if (bs.size() != 1 || bs[0] != ws[1])
            {
                return errorStatus(ORT_INVALID_ARGUMENT, cfg.name,
                    "bias must be [C_out] = [" + std::to_string(ws[1]) + "], got " + shapeText(bs));
            }
        }
        auto bank = std::make_shared<dynet::PackedBank>();
        if (OrtStatus* s = pack(*bank, ws, values[0], values[1], values[2]))
        {
            return s;
        }
        constantBank = std::move(bank);
        return nullptr;
    }

    OrtStatus* pack(dynet::PackedBank& bank, std::vector<int64_t> const& ws, OrtValue const* weight,
        OrtValue const* biasBank, OrtValue const* bias) const
    {
        DynetConvParams p = cfg.attrs;
        p.k = static_cast<int32_t>(ws[0]);
        p.c_out = static_cast<int32_t>(ws[1]);
        p.kh = static_cast<int32_t>(ws[3]);
        p.kw = static_cast<int32_t>(ws[4]);
        std::vector<float> w32, bb32, b32;
        auto data = [](OrtValue const* v) { return Ort::ConstValue(v).GetTensorData<T>(); };
        float const* w = asFloat<T>(data(weight), elementCount(ws), w32);
        float const* bb = biasBank ? asFloat<T>(data(biasBank), static_cast<size_t>(ws[0] * ws[1]), bb32) : nullptr;
        float const* b = bias ? asFloat<T>(data(bias), static_cast<size_t>(ws[1]), b32) : nullptr;
        if (bank.pack(p, static_cast<int32_t>(ws[2]), w, bb, b) != DYNET_OK)
        {
            return errorStatus(ORT_INVALID_ARGUMENT, cfg.name, "cannot pack weight " + shapeText(ws));
        }
        return nullptr;
    }

    OrtStatus* compute(OrtKernelContext* context)
    {
        Ort::KernelContext ctx(context);
        Call call;
        if (OrtStatus* s = prepareCall(cfg, ctx, call))
        {
            return s;
        }
        Ort::ConstValue const &x = call.x, &coeff = call.coeff, &weight = call.weight, &biasBank = call.biasBank,
                              &bias = call.bias;
        std::vector<int64_t> const &xs = call.xs, &cs = call.cs, &ws = call.ws;
        DynetConvParams const& p = call.p;
        int64_t const hOut = call.hOut, wOut = call.wOut;
        Ort::UnownedValue& y = call.y;

        dynet::PackedBank perCall;
        dynet::PackedBank const* bank = constantBank.get();
        if (bank == nullptr || !bank->matches(p))
        {
            if (OrtStatus* s = pack(perCall, ws, static_cast<OrtValue const*>(weight),
                    biasBank != nullptr ? static_cast<OrtValue const*>(biasBank) : nullptr,
                    bias != nullptr ? static_cast<OrtValue const*>(bias) : nullptr))
            {
                return s;
            }
            bank = &perCall;
        }

        dynet::ParallelFor parallel{runOnPool, context};
        size_t const yCount = elementCount({xs[0], ws[1], hOut, wOut});
        int32_t status = DYNET_OK;
        if constexpr (std::is_same<T, float>::value)
        {
            status = dynet::convForward(p, *bank, x.GetTensorData<float>(), coeff.GetTensorData<float>(),
                dynet::ConvExtras{}, y.GetTensorMutableData<float>(), parallel, isa);
        }
        else
        {
            thread_local std::vector<float> x32, c32, y32;
            float const* xf = asFloat<T>(x.GetTensorData<T>(), elementCount(xs), x32);
            float const* cf = asFloat<T>(coeff.GetTensorData<T>(), elementCount(cs), c32);
            y32.resize(yCount);
            status = dynet::convForward(p, *bank, xf, cf, dynet::ConvExtras{}, y32.data(), parallel, isa);
            T* out = y.GetTensorMutableData<T>();
            for (size_t i = 0; i < yCount; ++i)
            {
                out[i] = toHalf(y32[i]);
            }
        }
        if (status != DYNET_OK)
        {
            return errorStatus(ORT_RUNTIME_EXCEPTION, cfg.name, dynet_status_string(status));
        }
        return nullptr;
    }

    OrtStatusPtr ComputeV2(OrtKernelContext* context)
    {
        return statusOf(cfg.name, [&] { return compute(context); });
    }
};

#if defined(DYNET_ORT_WITH_CUDA)
// ---- CUDA execution provider -----------------------------------------------------------------------------------

//! The CUDA kernels' tactic: DYNET_CUDA_ALGO (0..DYNET_ALGO_LAST), else AUTO.
int32_t cudaAlgoFromEnvironment()
{
    char const* env = std::getenv("DYNET_CUDA_ALGO");
    if (env == nullptr || *env == '\0')
    {
        return DYNET_ALGO_AUTO;
    }
    char* end = nullptr;
    long const v = std::strtol(env, &end, 10);
    return (*end == '\0' && v >= DYNET_ALGO_AUTO && v <= DYNET_ALGO_LAST) ? static_cast<int32_t>(v) : -1;
}

template <typename T>
struct CudaKernel
{
    NodeConfig cfg;
    int32_t algo = DYNET_ALGO_AUTO;
    // The kernel's library handles and its plan for the last shape; calls of one kernel may come from several
    // threads (concurrent Run), and a handle serves one stream at a time, so they are used under `lock`.
    std::mutex lock;
    DynetConvCudaContext* context = nullptr;
    DynetConvCudaPlan* plan = nullptr;
    DynetConvParams planParams{};

    CudaKernel() = default;
    CudaKernel(CudaKernel const&) = delete;
    CudaKernel& operator=(CudaKernel const&) = delete;
    ~CudaKernel()
    {
        dynet_conv_cuda_plan_destroy(plan);
        dynet_conv_cuda_context_destroy(context);
    }

    OrtStatus* init(OrtKernelInfo const* info)
    {
        if (OrtStatus* s = readNode(info, cfg))
        {
            return s;
        }
        algo = cudaAlgoFromEnvironment();
        if (algo < 0)
        {
            return errorStatus(ORT_INVALID_ARGUMENT, cfg.name, "DYNET_CUDA_ALGO must be a tactic number 0.."
                + std::to_string(DYNET_ALGO_LAST) + " (0 = AUTO)");
        }
        if (dynet_conv_cuda_context_create(&context) != DYNET_OK)
        {
            return errorStatus(ORT_FAIL, cfg.name, "out of host memory");
        }
        return nullptr;
    }

    //! The plan for p (the last one when the shape is unchanged); the handle is made at the kernel's first call.
    OrtStatus* planFor(DynetConvParams const& p, int32_t dtype)
    {
        if (plan != nullptr && std::memcmp(&p, &planParams, sizeof(p)) == 0)
        {
            return nullptr;
        }
        dynet_conv_cuda_plan_destroy(plan);
        plan = nullptr;
        char msg[512];
        if (dynet_conv_cuda_context_prepare(context, algo, msg, sizeof(msg)) != DYNET_OK
            || dynet_conv_cuda_plan_create_in(context, &p, dtype, algo, 0, &plan, msg, sizeof(msg)) != DYNET_OK)
        {
            return errorStatus(ORT_RUNTIME_EXCEPTION, cfg.name, std::string("tactic ") + std::to_string(algo)
                + " (DYNET_CUDA_ALGO) cannot run this shape: " + msg);
        }
        planParams = p;
        return nullptr;
    }

    OrtStatus* compute(OrtKernelContext* context)
    {
        Ort::KernelContext ctx(context);
        Call call;
        if (OrtStatus* s = prepareCall(cfg, ctx, call))
        {
            return s;
        }
        Ort::ConstValue const &x = call.x, &coeff = call.coeff, &weight = call.weight, &biasBank = call.biasBank,
                              &bias = call.bias;
        DynetConvParams p = call.p;
        Ort::UnownedValue& y = call.y;
        int32_t const dtype = std::is_same<T, float>::value ? DYNET_FLOAT32 : DYNET_FLOAT16;
        std::lock_guard<std::mutex> guard(lock);
        if (OrtStatus* s = planFor(p, dtype))
        {
            return s;
        }
        size_t const wsBytes = dynet_conv_cuda_plan_workspace_size(plan);
        void* workspace = nullptr;
        std::unique_ptr<void, std::function<void(void*)>> hold(nullptr, [](void*) {});
        if (wsBytes > 0)
        {
            // A scratch buffer of the device x lives on, allocated for this kernel's compute stream: onnxruntime's
            // stream-aware arena hands a freed chunk to another stream only after that stream waits for this one, so
            // freeing it right after the asynchronous launch below is safe.
            Ort::ConstMemoryInfo deviceMem = x.GetTensorMemoryInfo();
            OrtMemoryInfo const* info = deviceMem;
            Ort::Allocator alloc = ctx.GetAllocator(*info); // the allocator the buffer goes back to
            Ort::ThrowOnError(Ort::GetApi().KernelContext_GetScratchBuffer(context, info, wsBytes, &workspace));
            if (workspace == nullptr)
            {
                return errorStatus(ORT_RUNTIME_EXCEPTION, cfg.name, "no workspace of " + std::to_string(wsBytes)
                    + " bytes from onnxruntime's scratch buffer");
            }
            OrtAllocator* raw = alloc.release();
            hold = std::unique_ptr<void, std::function<void(void*)>>(workspace, [raw](void* ptr) {
                raw->Free(raw, ptr);
                Ort::GetApi().ReleaseAllocator(raw);
            });
        }
        void* stream = ctx.GetGPUComputeStream();
        int32_t const status = dynet_conv_cuda_plan_run(plan, x.GetTensorRawData(), coeff.GetTensorRawData(),
            weight.GetTensorRawData(), biasBank != nullptr ? biasBank.GetTensorRawData() : nullptr,
            bias != nullptr ? bias.GetTensorRawData() : nullptr, y.GetTensorMutableRawData(), workspace, wsBytes,
            stream);
        if (status != DYNET_OK)
        {
            return errorStatus(ORT_RUNTIME_EXCEPTION, cfg.name, std::string("dynet_conv_cuda_plan_run: ")
                + dynet_status_string(status));
        }
        // The workspace goes back to onnxruntime's arena when `hold` ends, tagged with this compute stream.
        return nullptr;
    }

    OrtStatusPtr ComputeV2(OrtKernelContext* context)
    {
        return statusOf(cfg.name, [&] { return compute(context); });
    }
};
#endif

// ---- op definitions --------------------------------------------------------------------------------------------

template <typename T, typename Kernel, bool Cuda>
struct DynamicConvOp : Ort::CustomOpBase<DynamicConvOp<T, Kernel, Cuda>, Kernel, true>
{
    DynamicConvOp()
    {
        this->start_ver_ = kOpVersion;
    }
    char const* GetName() const
    {
        return kOpName;
    }
    char const* GetExecutionProviderType() const
    {
        return Cuda ? "CUDAExecutionProvider" : "CPUExecutionProvider";
    }
    size_t GetInputTypeCount() const
    {
        return kMaxInputs;
    }
    ONNXTensorElementDataType GetInputType(size_t) const
    {
        return elementType<T>();
    }
    OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const
    {
        return index < kRequiredInputs ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED
                                       : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL;
    }
    size_t GetOutputTypeCount() const
    {
        return 1;
    }
    ONNXTensorElementDataType GetOutputType(size_t) const
    {
        return elementType<T>();
    }
    OrtStatusPtr CreateKernelV2(OrtApi const&, OrtKernelInfo const* info, void** kernel) const
    {
        *kernel = nullptr;
        try
        {
            auto k = std::make_unique<Kernel>();
            if (OrtStatus* s = k->init(info))
            {
                return s;
            }
            *kernel = k.release();
            return nullptr;
        }
        catch (Ort::Exception const& e)
        {
            return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
        }
        catch (std::exception const& e)
        {
            return Ort::GetApi().CreateStatus(ORT_RUNTIME_EXCEPTION, e.what());
        }
    }
};

using CpuFloatOp = DynamicConvOp<float, CpuKernel<float>, false>;
using CpuHalfOp = DynamicConvOp<Ort::Float16_t, CpuKernel<Ort::Float16_t>, false>;
#if defined(DYNET_ORT_WITH_CUDA)
using CudaFloatOp = DynamicConvOp<float, CudaKernel<float>, true>;
using CudaHalfOp = DynamicConvOp<Ort::Float16_t, CudaKernel<Ort::Float16_t>, true>;
#endif

std::mutex gRegisterMutex;
} // namespace

// Which CPU kernel ISA this process uses ("avx512", "avx2" or "generic"; DYNET_CPU_ISA may lower it): for tests and
// benchmark reports.
extern "C" DYNET_API char const* dynet_ort_cpu_isa(void)
{
    return dynet::isaName(dynet::selectedIsa());
}

// Which CPU loop nest a call with these parameters takes ("direct", "gemm-small", "gemm-implicit", "gemm-im2col",
// "narrow";
// "invalid" for parameters without an output size): for tests that must reach a given path.
extern "C" DYNET_API char const* dynet_ort_cpu_path(DynetConvParams const* p)
{
    return dynet::cpuPathName(p == nullptr ? dynet::CpuPath::kInvalid : dynet::cpuPath(*p));
}

extern "C" DYNET_API OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, OrtApiBase const* apiBase)
{
    if (apiBase == nullptr || options == nullptr)
    {
        return nullptr; // nothing to report through: onnxruntime always passes both
    }
    OrtApi const* api = apiBase->GetApi(ORT_API_VERSION);
    if (api == nullptr)
    {
        OrtApi const* v1 = apiBase->GetApi(1);
        std::string const text = std::string("libdynet_dynamic_conv_ort was built against onnxruntime API version ")
            + std::to_string(ORT_API_VERSION) + "; this onnxruntime (" + apiBase->GetVersionString()
            + ") is older: upgrade onnxruntime or rebuild the library against its headers";
        return v1 != nullptr ? v1->CreateStatus(ORT_FAIL, text.c_str()) : nullptr;
    }
    std::lock_guard<std::mutex> lock(gRegisterMutex);
    Ort::InitApi(api);
    // The op objects and domains must outlive every session that uses them, which may outlive this call's
    // SessionOptions: they are created once and never freed.
    static CpuFloatOp cpuFloat;
    static CpuHalfOp cpuHalf;
#if defined(DYNET_ORT_WITH_CUDA)
    static CudaFloatOp cudaFloat;
    static CudaHalfOp cudaHalf;
#endif
    OrtCustomOpDomain* domain = nullptr;
    if (OrtStatus* s = api->CreateCustomOpDomain(kDomain, &domain))
    {
        return s;
    }
    OrtCustomOp const* ops[] = {
        &cpuFloat, &cpuHalf,
#if defined(DYNET_ORT_WITH_CUDA)
        &cudaFloat, &cudaHalf,
#endif
    };
    for (OrtCustomOp const* op : ops)
    {
        if (OrtStatus* s = api->CustomOpDomain_Add(domain, op))
        {
            return s;
        }
    }
    return api->AddCustomOpDomain(options, domain);
}
