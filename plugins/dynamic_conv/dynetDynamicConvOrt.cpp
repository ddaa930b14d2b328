// onnxruntime custom-op library for DyNetDynamicConv2d (domain "trt.plugins", op versions 1 and 2; the op contract
// is plugins/dynamic_conv/README.md). Load it with SessionOptions::RegisterCustomOpsLibrary (Python:
// SessionOptions.register_custom_ops_library); the exported RegisterCustomOps adds the op's kernels:
//
//   - CPU, float and float16 (fp16 tensors are computed in fp32 and rounded once), on the fast CPU kernel
//     (dynetDynamicConvCpuKernel.h) running on onnxruntime's intra-op thread pool; the version-2 float kernel also
//     takes a float16 / bfloat16 weight bank (kept in 16 bits, widened exactly where the kernels are fused);
//   - CUDA execution provider, float and float16, through the C ABI's plans on onnxruntime's compute stream (only in
//     builds with the CUDA kernels, DYNET_ORT_WITH_CUDA). The tactic is DYNET_CUDA_ALGO (a DynetAlgo number, read
//     when the session is created; default 0 = AUTO): the library-backed ones (cuDNN 3, cuBLAS 4 and 5) get their
//     handle once per kernel, at its first call, and a plan per shape.
//
// Op versions: onnxruntime makes one schema per custom op name, whose since-version is that of the first kernel
// registered, and picks kernels by that since-version, so kernels registered for versions 1 and 2 apart are never
// told apart (a version-2 model reaches the version-1 kernel; with the version-2 kernel first, no model loads). Each
// kernel therefore serves every version (registered from version 1, open-ended) and takes a node's version from its
// plugin_version attribute, as TensorRT's parser does ("1" when absent): a version-1 node refuses version 2's
// attributes and a narrowed bank with a message naming the fix.
//
// Inputs past weight are optional in the op definition, so a node has 3 to 5 inputs (version 1: bias_bank, bias) or
// 3 to 7 (version 2: and spatial, residual) as its has_* attributes say, and 1 or 2 outputs (version 2's mean).
// Attribute names, defaults, ranges and versions come from the C ABI's attribute table. Every error (attributes at
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
constexpr size_t kRequiredInputs = 3;
constexpr size_t kMaxInputs = 7;  // x, coeff, weight, bias_bank, bias, spatial, residual
constexpr size_t kMaxOutputs = 2; // y, mean

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

char const* elementTypeName(ONNXTensorElementDataType t)
{
    switch (t)
    {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "double";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    default: return "another type";
    }
}

// The weight bank's storage (DynetDataType) for a weight tensor of element type `t` in a kernel of I/O type T and
// op version `version`, or -1 with the reason in `why`: the version-2 float kernel takes float16 and bfloat16 banks
// too (narrowed under float I/O); everything else takes the I/O type (onnxruntime's type check already held it to
// T, except for that one input).
template <typename T>
int32_t bankType(ONNXTensorElementDataType t, int version, std::string& why)
{
    if constexpr (std::is_same<T, float>::value)
    {
        if (t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
        {
            return DYNET_FLOAT32;
        }
        if (version >= 2 && t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16)
        {
            return DYNET_FLOAT16;
        }
        if (version >= 2 && t == ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16)
        {
            return DYNET_BFLOAT16;
        }
        bool const narrow = t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 || t == ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
        why = narrow ? std::string("weight (input 2) is a ") + elementTypeName(t) + " bank under float I/O: a "
                           "reduced-precision bank is op version 2, but the node is op version 1 (plugin_version \"1\" "
                           "or absent): set plugin_version \"2\" and import domain trt.plugins at version 2"
                     : std::string("weight (input 2) must be float, or a float16 / bfloat16 bank (a reduced-precision "
                                   "bank under float I/O), got ")
                + elementTypeName(t);
        return -1;
    }
    else
    {
        if (t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16)
        {
            return DYNET_FLOAT16;
        }
        why = std::string("weight (input 2) of a float16 node must be float16, got ") + elementTypeName(t);
        return -1;
    }
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

// Attributes of the node, read through the C ABI's attribute table; shapes are filled per call. A kernel of op
// version `version` refuses an attribute of a later version (a version-1 node carries none of version 2's).
OrtStatus* readAttributes(OrtKernelInfo const* info, std::string const& node, int version, DynetConvParams& params)
{
    OrtApi const& api = Ort::GetApi();
    dynet_conv_params_init(&params);
    for (int32_t i = 0; i < dynet_conv_attribute_count(); ++i)
    {
        DynetAttributeInfo const* attr = dynet_conv_attribute(i);
        int64_t value = 0;
        OrtStatus* status = api.KernelInfoGetAttribute_int64(info, attr->name, &value);
        std::string reason;
        if (status != nullptr)
        {
            reason = api.GetErrorMessage(status);
            api.ReleaseStatus(status);
            if (reason.find("No attribute") != std::string::npos)
            {
                continue; // absent: the table's default stays
            }
        }
        if (attr->since_version > version)
        {
            return errorStatus(ORT_INVALID_ARGUMENT, node,
                std::string("attribute '") + attr->name + "' is an op version " + std::to_string(attr->since_version)
                    + " attribute, but the node is op version " + std::to_string(version) + " (plugin_version \""
                    + std::to_string(version) + "\" or absent): set plugin_version \""
                    + std::to_string(attr->since_version) + "\" and import domain " + kDomain + " at version "
                    + std::to_string(attr->since_version) + " to use it");
        }
        if (status != nullptr)
        {
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
    int version = 1;         // the op version the kernel serves
    DynetConvParams attrs{}; // attributes only; shapes are per call
    int biasBankInput = -1;
    int biasInput = -1;
    int spatialInput = -1;
    int residualInput = -1;
    size_t inputCount = 0;
    size_t outputCount = 0;
};

// The node's op version: its plugin_version string attribute ("1" when absent, as TensorRT's parser reads it).
OrtStatus* readVersion(OrtKernelInfo const* info, std::string const& node, int& version)
{
    OrtApi const& api = Ort::GetApi();
    char const* name = "plugin_version";
    size_t size = 0;
    if (OrtStatus* s = api.KernelInfoGetAttribute_string(info, name, nullptr, &size))
    {
        std::string const reason = api.GetErrorMessage(s);
        api.ReleaseStatus(s);
        if (reason.find("No attribute") != std::string::npos)
        {
            version = 1;
            return nullptr;
        }
        return errorStatus(ORT_INVALID_ARGUMENT, node, "attribute 'plugin_version' must be a string (" + reason + ")");
    }
    std::string text(size, '\0');
    if (OrtStatus* s = api.KernelInfoGetAttribute_string(info, name, text.data(), &size))
    {
        return s;
    }
    text = text.c_str();
    for (int v = DYNET_OP_VERSION_MIN; v <= DYNET_OP_VERSION_MAX; ++v)
    {
        if (text == std::to_string(v))
        {
            version = v;
            return nullptr;
        }
    }
    return errorStatus(ORT_INVALID_ARGUMENT, node, "plugin_version '" + text + "' is not an op version this library "
        "implements (" + std::to_string(DYNET_OP_VERSION_MIN) + " to " + std::to_string(DYNET_OP_VERSION_MAX) + ")");
}

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
    if (OrtStatus* s = readVersion(info, cfg.name, cfg.version))
    {
        return s;
    }
    int const version = cfg.version;
    if (OrtStatus* s = readAttributes(info, cfg.name, version, cfg.attrs))
    {
        return s;
    }
    if (OrtStatus* s = api.KernelInfo_GetInputCount(info, &cfg.inputCount))
    {
        return s;
    }
    if (OrtStatus* s = api.KernelInfo_GetOutputCount(info, &cfg.outputCount))
    {
        return s;
    }
    DynetConvParams const& a = cfg.attrs;
    size_t const expected = kRequiredInputs + a.has_bias_bank + a.has_bias + a.has_spatial + a.has_residual;
    if (cfg.inputCount != expected)
    {
        std::string const flags = version >= 2
            ? "has_bias_bank=" + std::to_string(a.has_bias_bank) + ", has_bias=" + std::to_string(a.has_bias)
                + ", has_spatial=" + std::to_string(a.has_spatial) + " and has_residual="
                + std::to_string(a.has_residual)
            : "has_bias_bank=" + std::to_string(a.has_bias_bank) + " and has_bias=" + std::to_string(a.has_bias);
        return errorStatus(ORT_INVALID_ARGUMENT, cfg.name,
            "has " + std::to_string(cfg.inputCount) + " inputs, but " + flags + " call for " + std::to_string(expected)
                + " (x, coeff, weight" + (a.has_bias_bank ? ", bias_bank" : "") + (a.has_bias ? ", bias" : "")
                + (a.has_spatial ? ", spatial" : "") + (a.has_residual ? ", residual" : "") + ")");
    }
    size_t const expectedOutputs = 1 + static_cast<size_t>(a.has_mean);
    if (cfg.outputCount != expectedOutputs)
    {
        return errorStatus(ORT_INVALID_ARGUMENT, cfg.name,
            "has " + std::to_string(cfg.outputCount) + " outputs, but has_mean=" + std::to_string(a.has_mean)
                + " calls for " + std::to_string(expectedOutputs) + (a.has_mean ? " (y, mean)" : " (y)"));
    }
    int next = 3;
    cfg.biasBankInput = a.has_bias_bank ? next++ : -1;
    cfg.biasInput = a.has_bias ? next++ : -1;
    cfg.spatialInput = a.has_spatial ? next++ : -1;
    cfg.residualInput = a.has_residual ? next++ : -1;
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

// One call: the node's inputs, their shapes checked into the op's params (callParams) and the outputs allocated.
struct Call
{
    Ort::ConstValue x{nullptr}, coeff{nullptr}, weight{nullptr}, biasBank{nullptr}, bias{nullptr};
    Ort::ConstValue spatial{nullptr}, residual{nullptr}; // op version 2
    std::vector<int64_t> xs, cs, ws;
    DynetConvParams p{};
    int32_t bank = DYNET_FLOAT32; // the weight tensor's storage (DynetDataType)
    int64_t hOut = 0, wOut = 0;
    Ort::UnownedValue y{nullptr};
    Ort::UnownedValue mean{nullptr}; // op version 2, has_mean
};

template <typename T>
OrtStatus* prepareCall(NodeConfig const& cfg, Ort::KernelContext& ctx, Call& call)
{
    auto optionalInput = [&](int index) { return index >= 0 ? ctx.GetInput(index) : Ort::ConstValue{nullptr}; };
    call.x = ctx.GetInput(0);
    call.coeff = ctx.GetInput(1);
    call.weight = ctx.GetInput(2);
    call.biasBank = optionalInput(cfg.biasBankInput);
    call.bias = optionalInput(cfg.biasInput);
    call.spatial = optionalInput(cfg.spatialInput);
    call.residual = optionalInput(cfg.residualInput);
    if (call.x == nullptr || call.coeff == nullptr || call.weight == nullptr
        || (cfg.biasBankInput >= 0 && call.biasBank == nullptr) || (cfg.biasInput >= 0 && call.bias == nullptr)
        || (cfg.spatialInput >= 0 && call.spatial == nullptr) || (cfg.residualInput >= 0 && call.residual == nullptr))
    {
        return errorStatus(ORT_INVALID_ARGUMENT, cfg.name, "a required input is missing");
    }
    call.xs = call.x.GetTensorTypeAndShapeInfo().GetShape();
    call.cs = call.coeff.GetTensorTypeAndShapeInfo().GetShape();
    Ort::TensorTypeAndShapeInfo const weightInfo = call.weight.GetTensorTypeAndShapeInfo();
    call.ws = weightInfo.GetShape();
    std::string why;
    call.bank = bankType<T>(weightInfo.GetElementType(), cfg.version, why);
    if (call.bank < 0)
    {
        return errorStatus(ORT_INVALID_ARGUMENT, cfg.name, why);
    }
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
    if constexpr (std::is_same<T, float>::value)
    {
        call.p.weight_dtype = call.bank; // a narrowed bank under float I/O (op version 2); a float16 node keeps the
                                         // version-1 convention (weight in the I/O type, weight_dtype float32)
    }
    DynetConvSizes sizes; // callParams validated p: the output extents come from the validator's checked sizes
    dynet_conv_sizes(&call.p, &sizes, nullptr, 0);
    call.hOut = sizes.h_out;
    call.wOut = sizes.w_out;
    std::vector<int64_t> const yShape{call.xs[0], call.ws[1], call.hOut, call.wOut};
    if (call.spatial != nullptr)
    {
        std::vector<int64_t> const ss = call.spatial.GetTensorTypeAndShapeInfo().GetShape();
        std::vector<int64_t> const want{call.xs[0], call.ws[3] * call.ws[4]};
        if (ss != want)
        {
            return errorStatus(ORT_INVALID_ARGUMENT, cfg.name,
                "spatial must be [N, kH*kW] = " + shapeText(want) + ", got " + shapeText(ss));
        }
    }
    if (call.residual != nullptr)
    {
        std::vector<int64_t> const rs = call.residual.GetTensorTypeAndShapeInfo().GetShape();
        if (rs != yShape)
        {
            return errorStatus(ORT_INVALID_ARGUMENT, cfg.name,
                "residual must be [N, C_out, H_out, W_out] = " + shapeText(yShape) + " (y's shape), got "
                    + shapeText(rs));
        }
    }
    call.y = ctx.GetOutput(0, yShape);
    if (cfg.attrs.has_mean)
    {
        call.mean = ctx.GetOutput(1, {call.xs[0], call.ws[1], 1, 1});
    }
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

// The weight input's element type as the graph declares it, checked at session creation (the version-2 float
// kernels declare that input's type open, so onnxruntime's type check does not cover it).
template <typename T>
OrtStatus* checkWeightType(OrtKernelInfo const* info, NodeConfig const& cfg)
{
    OrtApi const& api = Ort::GetApi();
    OrtTypeInfo* typeInfo = nullptr;
    if (OrtStatus* s = api.KernelInfo_GetInputTypeInfo(info, 2, &typeInfo))
    {
        api.ReleaseStatus(s); // not known here: checked per call
        return nullptr;
    }
    Ort::TypeInfo const owned(typeInfo);
    if (owned.GetONNXType() != ONNX_TYPE_TENSOR)
    {
        return errorStatus(ORT_INVALID_ARGUMENT, cfg.name, "weight (input 2) must be a tensor");
    }
    std::string why;
    if (bankType<T>(owned.GetTensorTypeAndShapeInfo().GetElementType(), cfg.version, why) < 0)
    {
        return errorStatus(ORT_INVALID_ARGUMENT, cfg.name, why);
    }
    return nullptr;
}

// A float16 tensor's values as float, into `store` (float tensors are read in place: asFloat).
template <typename T>
float const* optionalFloat(Ort::ConstValue const& v, std::vector<float>& store)
{
    if (v == nullptr)
    {
        return nullptr;
    }
    return asFloat<T>(v.GetTensorData<T>(), v.GetTensorTypeAndShapeInfo().GetElementCount(), store);
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
        if (OrtStatus* s = statusOf(cfg.name, [&] { return checkWeightType<T>(info, cfg); }))
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
        Ort::TensorTypeAndShapeInfo const weightInfo = weight.GetTensorTypeAndShapeInfo();
        std::vector<int64_t> const ws = weightInfo.GetShape();
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
        std::string why;
        int32_t const bank = bankType<T>(weightInfo.GetElementType(), cfg.version, why);
        if (bank < 0)
        {
            return errorStatus(ORT_INVALID_ARGUMENT, cfg.name, why);
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
        auto packed = std::make_shared<dynet::PackedBank>();
        if (OrtStatus* s = pack(*packed, ws, bank, values[0], values[1], values[2]))
        {
            return s;
        }
        constantBank = std::move(packed);
        return nullptr;
    }

    // Pack the bank; weight in `bank` storage (a 16-bit bank, float16 nodes' included, keeps its 16 bits).
    OrtStatus* pack(dynet::PackedBank& packed, std::vector<int64_t> const& ws, int32_t bank, OrtValue const* weight,
        OrtValue const* biasBank, OrtValue const* bias) const
    {
        DynetConvParams p = cfg.attrs;
        p.k = static_cast<int32_t>(ws[0]);
        p.c_out = static_cast<int32_t>(ws[1]);
        p.kh = static_cast<int32_t>(ws[3]);
        p.kw = static_cast<int32_t>(ws[4]);
        p.weight_dtype = bank;
        std::vector<float> bb32, b32;
        auto data = [](OrtValue const* v) { return Ort::ConstValue(v).GetTensorData<T>(); };
        void const* w = Ort::ConstValue(weight).GetTensorRawData();
        float const* bb = biasBank ? asFloat<T>(data(biasBank), static_cast<size_t>(ws[0] * ws[1]), bb32) : nullptr;
        float const* b = bias ? asFloat<T>(data(bias), static_cast<size_t>(ws[1]), b32) : nullptr;
        if (packed.pack(p, static_cast<int32_t>(ws[2]), w, bb, b) != DYNET_OK)
        {
            return errorStatus(ORT_INVALID_ARGUMENT, cfg.name, "cannot pack weight " + shapeText(ws));
        }
        return nullptr;
    }

    OrtStatus* compute(OrtKernelContext* context)
    {
        Ort::KernelContext ctx(context);
        Call call;
        if (OrtStatus* s = prepareCall<T>(cfg, ctx, call))
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
        if (bank == nullptr || !bank->matches(p) || bank->dtype != call.bank)
        {
            if (OrtStatus* s = pack(perCall, ws, call.bank, static_cast<OrtValue const*>(weight),
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
            dynet::ConvExtras extras;
            extras.spatial = call.spatial != nullptr ? call.spatial.GetTensorData<float>() : nullptr;
            extras.residual = call.residual != nullptr ? call.residual.GetTensorData<float>() : nullptr;
            extras.mean = call.mean != nullptr ? call.mean.GetTensorMutableData<float>() : nullptr;
            status = dynet::convForward(p, *bank, x.GetTensorData<float>(), coeff.GetTensorData<float>(), extras,
                y.GetTensorMutableData<float>(), parallel, isa);
        }
        else
        {
            thread_local std::vector<float> x32, c32, s32, r32, y32;
            float const* xf = asFloat<T>(x.GetTensorData<T>(), elementCount(xs), x32);
            float const* cf = asFloat<T>(coeff.GetTensorData<T>(), elementCount(cs), c32);
            dynet::ConvExtras extras;
            extras.spatial = optionalFloat<T>(call.spatial, s32);
            extras.residual = optionalFloat<T>(call.residual, r32);
            // The mean of the stored (float16) y: computed below, after the rounding.
            DynetConvParams q = p;
            q.has_mean = 0;
            y32.resize(yCount);
            status = dynet::convForward(q, *bank, xf, cf, extras, y32.data(), parallel, isa);
            T* out = y.GetTensorMutableData<T>();
            for (size_t i = 0; i < yCount; ++i)
            {
                out[i] = toHalf(y32[i]);
            }
            if (call.mean != nullptr)
            {
                size_t const planes = static_cast<size_t>(xs[0] * ws[1]);
                size_t const plane = static_cast<size_t>(hOut * wOut);
                T* mean = call.mean.GetTensorMutableData<T>();
                for (size_t e = 0; e < planes; ++e)
                {
                    double sum = 0.0;
                    for (size_t i = 0; i < plane; ++i)
                    {
                        sum += static_cast<double>(toFloat(out[e * plane + i]));
                    }
                    mean[e] = toHalf(static_cast<float>(sum / static_cast<double>(plane)));
                }
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
        if (OrtStatus* s = statusOf(cfg.name, [&] { return checkWeightType<T>(info, cfg); }))
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
        if (OrtStatus* s = prepareCall<T>(cfg, ctx, call))
        {
            return s;
        }
        Ort::ConstValue const &x = call.x, &coeff = call.coeff, &weight = call.weight, &biasBank = call.biasBank,
                              &bias = call.bias;
        DynetConvParams p = call.p;
        Ort::UnownedValue& y = call.y;
        int32_t const dtype = std::is_same<T, float>::value ? DYNET_FLOAT32 : DYNET_FLOAT16;
        if (call.bank != dtype)
        {
            return errorStatus(ORT_INVALID_ARGUMENT, cfg.name, std::string("the CUDA kernels take weight in the I/O "
                "type (") + typeName<T>() + "); a float16 / bfloat16 bank under float I/O runs on the CPU execution "
                "provider");
        }
        if (cfg.version >= 2)
        {
            p.weight_dtype = dtype; // the version-2 entry points: weight in the I/O dtype, said explicitly
        }
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
        auto raw = [](Ort::ConstValue const& v) { return v != nullptr ? v.GetTensorRawData() : nullptr; };
        int32_t status = DYNET_OK;
        if (cfg.version >= 2)
        {
            DynetConvTensors t{};
            t.x = x.GetTensorRawData();
            t.coeff = coeff.GetTensorRawData();
            t.weight = weight.GetTensorRawData();
            t.bias_bank = raw(biasBank);
            t.bias = raw(bias);
            t.spatial = raw(call.spatial);
            t.residual = raw(call.residual);
            t.y = y.GetTensorMutableRawData();
            t.mean = call.mean != nullptr ? call.mean.GetTensorMutableRawData() : nullptr;
            status = dynet_conv_cuda_plan_run_v2(plan, &t, workspace, wsBytes, stream);
        }
        else
        {
            status = dynet_conv_cuda_plan_run(plan, x.GetTensorRawData(), coeff.GetTensorRawData(),
                weight.GetTensorRawData(), raw(biasBank), raw(bias), y.GetTensorMutableRawData(), workspace, wsBytes,
                stream);
        }
        if (status != DYNET_OK)
        {
            return errorStatus(ORT_RUNTIME_EXCEPTION, cfg.name,
                std::string(cfg.version >= 2 ? "dynet_conv_cuda_plan_run_v2: " : "dynet_conv_cuda_plan_run: ")
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

// One kernel of the op: I/O type T, execution provider (Cuda); inputs x, coeff, weight[, bias_bank][, bias]
// [, spatial][, residual], outputs y[, mean], registered from op version 1 on (the node's version is its
// plugin_version: see the top of the file). The float kernels leave weight's type open (float, or a version-2 node's
// float16 / bfloat16 bank: checkWeightType and bankType decide).
template <typename T, typename Kernel, bool Cuda>
struct DynamicConvOp : Ort::CustomOpBase<DynamicConvOp<T, Kernel, Cuda>, Kernel, true>
{
    DynamicConvOp()
    {
        this->start_ver_ = DYNET_OP_VERSION_MIN;
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
    ONNXTensorElementDataType GetInputType(size_t index) const
    {
        if (index == 2 && std::is_same<T, float>::value)
        {
            return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
        }
        return elementType<T>();
    }
    OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const
    {
        return index < kRequiredInputs ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED
                                       : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL;
    }
    size_t GetOutputTypeCount() const
    {
        return kMaxOutputs;
    }
    ONNXTensorElementDataType GetOutputType(size_t) const
    {
        return elementType<T>();
    }
    OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const
    {
        return index == 0 ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED
                          : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL;
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
