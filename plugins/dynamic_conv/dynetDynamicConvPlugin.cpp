// TensorRT IPluginV3 glue for DyNetDynamicConv2d. See README.md for the op spec; the kernels are behind the C ABI.
#include "dynetDynamicConvPlugin.h"

#include "dynetDynamicConvKernel.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <new>
#include <string>

using namespace nvinfer1;

namespace dynet
{
namespace
{

std::atomic<ILoggerFinder*> gLoggerFinder{nullptr};

//! Log through the logger TensorRT handed us (loadLibrary path), else the library's global one, else stderr.
void logMessage(ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        std::string const text = std::string(kPluginName) + ": " + message;
        ILogger* logger = nullptr;
        if (ILoggerFinder* finder = gLoggerFinder.load())
        {
            logger = finder->findLogger();
        }
        if (logger == nullptr)
        {
            logger = getLogger();
        }
        if (logger != nullptr)
        {
            logger->log(severity, text.c_str());
        }
        else
        {
            std::fprintf(stderr, "%s\n", text.c_str());
        }
    }
    catch (...)
    {
    }
}

void logError(std::string const& message) noexcept
{
    logMessage(ILogger::Severity::kERROR, message);
}

// Attribute table: the ONNX attribute names, in the order getFieldNames and getFieldsToSerialize list them.
struct AttributeSlot
{
    char const* name;
    int32_t DynamicConvAttributes::*member;
};
constexpr AttributeSlot kAttributes[] = {
    {"stride_h", &DynamicConvAttributes::stride_h},
    {"stride_w", &DynamicConvAttributes::stride_w},
    {"pad_top", &DynamicConvAttributes::pad_top},
    {"pad_left", &DynamicConvAttributes::pad_left},
    {"pad_bottom", &DynamicConvAttributes::pad_bottom},
    {"pad_right", &DynamicConvAttributes::pad_right},
    {"dilation_h", &DynamicConvAttributes::dilation_h},
    {"dilation_w", &DynamicConvAttributes::dilation_w},
    {"groups", &DynamicConvAttributes::groups},
    {"activation", &DynamicConvAttributes::activation},
    {"has_bias_bank", &DynamicConvAttributes::has_bias_bank},
    {"has_bias", &DynamicConvAttributes::has_bias},
};

std::string dimsToString(Dims const& d)
{
    std::string s = "[";
    for (int32_t i = 0; i < d.nbDims && i < Dims::MAX_DIMS; ++i)
    {
        s += (i ? ", " : "") + std::to_string(d.d[i]);
    }
    return s + "]";
}

bool known(int64_t v)
{
    return v >= 0;
}

//! Shape checks that need only the static dims (channels, kernel); -1 marks a dim not known yet.
bool checkStaticShapes(DynamicConvAttributes const& a, Dims const* in, int32_t nbInputs, std::string& error)
{
    if (nbInputs != a.nbInputs())
    {
        error = "expected " + std::to_string(a.nbInputs()) + " inputs (x, coeff, weight"
            + (a.has_bias_bank ? ", bias_bank" : "") + (a.has_bias ? ", bias" : "") + "), got "
            + std::to_string(nbInputs);
        return false;
    }
    Dims const& x = in[0];
    Dims const& coeff = in[1];
    Dims const& w = in[2];
    if (x.nbDims != 4 || coeff.nbDims != 3 || w.nbDims != 5)
    {
        error = "x must be 4-D [N, C_in, H, W], coeff 3-D [N, C_c, K], weight 5-D [K, C_out, C_in/groups, kH, kW]; got "
            + dimsToString(x) + ", " + dimsToString(coeff) + ", " + dimsToString(w);
        return false;
    }
    int64_t const cIn = x.d[1];
    int64_t const K = w.d[0];
    int64_t const cOut = w.d[1];
    if (known(cIn) && cIn % a.groups != 0)
    {
        error = "groups=" + std::to_string(a.groups) + " does not divide C_in=" + std::to_string(cIn);
        return false;
    }
    if (known(cOut) && cOut % a.groups != 0)
    {
        error = "groups=" + std::to_string(a.groups) + " does not divide C_out=" + std::to_string(cOut);
        return false;
    }
    if (known(cIn) && known(w.d[2]) && w.d[2] * a.groups != cIn)
    {
        error = "weight " + dimsToString(w) + " does not match C_in=" + std::to_string(cIn) + " with groups="
            + std::to_string(a.groups) + " (dim 2 must be C_in/groups)";
        return false;
    }
    if (known(cOut) && known(coeff.d[1]) && coeff.d[1] != cOut && coeff.d[1] != 1)
    {
        error = "coeff " + dimsToString(coeff) + " must be [N, C_out, K] or [N, 1, K] with C_out=" + std::to_string(cOut);
        return false;
    }
    if (known(K) && known(coeff.d[2]) && coeff.d[2] != K)
    {
        error = "coeff " + dimsToString(coeff) + " has K=" + std::to_string(coeff.d[2]) + ", weight has K="
            + std::to_string(K);
        return false;
    }
    if (known(x.d[0]) && known(coeff.d[0]) && x.d[0] != coeff.d[0])
    {
        error = "x and coeff disagree on the batch: " + dimsToString(x) + " vs " + dimsToString(coeff);
        return false;
    }
    int32_t idx = 3;
    if (a.has_bias_bank)
    {
        Dims const& bb = in[idx++];
        if (bb.nbDims != 2 || (known(bb.d[0]) && known(K) && bb.d[0] != K)
            || (known(bb.d[1]) && known(cOut) && bb.d[1] != cOut))
        {
            error = "bias_bank must be [K, C_out], got " + dimsToString(bb);
            return false;
        }
    }
    if (a.has_bias)
    {
        Dims const& b = in[idx];
        if (b.nbDims != 1 || (known(b.d[0]) && known(cOut) && b.d[0] != cOut))
        {
            error = "bias must be [C_out], got " + dimsToString(b);
            return false;
        }
    }
    return true;
}

int32_t toDynetType(DataType t)
{
    return t == DataType::kHALF ? DYNET_FLOAT16 : DYNET_FLOAT32;
}

IDimensionExpr const* outputExtent(IExprBuilder& eb, IDimensionExpr const& in, IDimensionExpr const& kernel,
    int32_t padSum, int32_t dilation, int32_t stride)
{
    // floor((in + padSum - dilation*(kernel-1) - 1) / stride) + 1
    IDimensionExpr const* span = eb.operation(DimensionOperation::kPROD, *eb.constant(dilation), kernel);
    IDimensionExpr const* padded = eb.operation(DimensionOperation::kSUM, in, *eb.constant(padSum + dilation - 1));
    IDimensionExpr const* num = eb.operation(DimensionOperation::kSUB, *padded, *span);
    IDimensionExpr const* q = eb.operation(DimensionOperation::kFLOOR_DIV, *num, *eb.constant(stride));
    return eb.operation(DimensionOperation::kSUM, *q, *eb.constant(1));
}

} // namespace

// ---- plugin ---------------------------------------------------------------------------------------------------

DyNetDynamicConv2dPlugin::DyNetDynamicConv2dPlugin(DynamicConvAttributes const& attrs)
    : mAttrs(attrs)
{
    dynet_conv_params_init(&mParams);
}

DyNetDynamicConv2dPlugin::DyNetDynamicConv2dPlugin(DyNetDynamicConv2dPlugin const& other)
    : IPluginV3(other)
    , IPluginV3OneCore(other)
    , IPluginV3OneBuild(other)
    , IPluginV3OneRuntime(other)
    , mAttrs(other.mAttrs)
    , mParams(other.mParams)
    , mDtype(other.mDtype)
    , mTactic(other.mTactic)
{
}

IPluginCapability* DyNetDynamicConv2dPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* DyNetDynamicConv2dPlugin::clone() noexcept
{
    try
    {
        return new DyNetDynamicConv2dPlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError(std::string("clone failed: ") + e.what());
    }
    return nullptr;
}

char const* DyNetDynamicConv2dPlugin::getPluginName() const noexcept
{
    return kPluginName;
}

char const* DyNetDynamicConv2dPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* DyNetDynamicConv2dPlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t DyNetDynamicConv2dPlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t DyNetDynamicConv2dPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != 1 || nbInputs < 1)
    {
        logError("getOutputDataTypes: expected 1 output and at least 1 input");
        return -1;
    }
    outputTypes[0] = inputTypes[0]; // y has x's type
    return 0;
}

int32_t DyNetDynamicConv2dPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& exprBuilder) noexcept
{
    try
    {
        if (inputs == nullptr || outputs == nullptr || nbOutputs != 1)
        {
            logError("getOutputShapes: expected 1 output");
            return -1;
        }
        if (nbInputs < 0 || nbInputs > 8)
        {
            logError("getOutputShapes: unexpected number of inputs " + std::to_string(nbInputs));
            return -1;
        }
        // Static dims (channels, kernel) are constants here: check them now, at network build time.
        Dims known[8];
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            known[i].nbDims = std::min(inputs[i].nbDims, Dims::MAX_DIMS);
            for (int32_t j = 0; j < known[i].nbDims; ++j)
            {
                IDimensionExpr const* e = inputs[i].d[j];
                known[i].d[j] = (e != nullptr && e->isConstant()) ? e->getConstantValue() : -1;
            }
        }
        std::string error;
        if (!checkStaticShapes(mAttrs, known, nbInputs, error))
        {
            logError(error);
            return -1;
        }
        DimsExprs const& x = inputs[0];
        DimsExprs const& w = inputs[2];
        DimsExprs& y = outputs[0];
        y.nbDims = 4;
        y.d[0] = x.d[0];
        y.d[1] = w.d[1];
        y.d[2] = outputExtent(
            exprBuilder, *x.d[2], *w.d[3], mAttrs.pad_top + mAttrs.pad_bottom, mAttrs.dilation_h, mAttrs.stride_h);
        y.d[3] = outputExtent(
            exprBuilder, *x.d[3], *w.d[4], mAttrs.pad_left + mAttrs.pad_right, mAttrs.dilation_w, mAttrs.stride_w);
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string("getOutputShapes: ") + e.what());
    }
    return -1;
}

bool DyNetDynamicConv2dPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == 0)
    {
        return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
    }
    return desc.type == inOut[0].desc.type; // every tensor, the output included, in x's type
}

int32_t DyNetDynamicConv2dPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    // Build time: dims may be -1 (dynamic N/H/W); only static dims are checked. Real shapes arrive in onShapeChange.
    if (in == nullptr || out == nullptr || nbOutputs != 1 || nbInputs < 0 || nbInputs > 8)
    {
        logError("configurePlugin: unexpected inputs/outputs");
        return -1;
    }
    try
    {
        Dims dims[8];
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            dims[i] = in[i].desc.dims;
        }
        std::string error;
        if (!checkStaticShapes(mAttrs, dims, nbInputs, error))
        {
            logError(error);
            return -1;
        }
        mDtype = toDynetType(in[0].desc.type);
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string("configurePlugin: ") + e.what());
    }
    return -1;
}

bool DyNetDynamicConv2dPlugin::paramsFromDims(
    Dims const& x, Dims const& coeff, Dims const& weight, bool allowUnknown, DynetConvParams& p) const noexcept
{
    if (x.nbDims != 4 || coeff.nbDims != 3 || weight.nbDims != 5)
    {
        return false;
    }
    auto fits = [allowUnknown](int64_t v) {
        return (v >= 1 || (allowUnknown && v == -1)) && v <= std::numeric_limits<int32_t>::max();
    };
    int64_t const vals[] = {x.d[0], x.d[1], x.d[2], x.d[3], coeff.d[1], weight.d[0], weight.d[1], weight.d[3],
        weight.d[4]};
    for (int64_t v : vals)
    {
        if (!fits(v))
        {
            return false;
        }
    }
    dynet_conv_params_init(&p);
    p.n = static_cast<int32_t>(x.d[0]);
    p.c_in = static_cast<int32_t>(x.d[1]);
    p.h = static_cast<int32_t>(x.d[2]);
    p.w = static_cast<int32_t>(x.d[3]);
    p.coeff_channels = static_cast<int32_t>(coeff.d[1]);
    p.k = static_cast<int32_t>(weight.d[0]);
    p.c_out = static_cast<int32_t>(weight.d[1]);
    p.kh = static_cast<int32_t>(weight.d[3]);
    p.kw = static_cast<int32_t>(weight.d[4]);
    p.stride_h = mAttrs.stride_h;
    p.stride_w = mAttrs.stride_w;
    p.pad_top = mAttrs.pad_top;
    p.pad_left = mAttrs.pad_left;
    p.pad_bottom = mAttrs.pad_bottom;
    p.pad_right = mAttrs.pad_right;
    p.dilation_h = mAttrs.dilation_h;
    p.dilation_w = mAttrs.dilation_w;
    p.groups = mAttrs.groups;
    p.activation = mAttrs.activation;
    p.has_bias_bank = mAttrs.has_bias_bank;
    p.has_bias = mAttrs.has_bias;
    return true;
}

size_t DyNetDynamicConv2dPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    if (inputs == nullptr || nbInputs < 3)
    {
        return 0;
    }
    // Sized for the profile's largest shape and for the algorithm that needs the most (two-step), so every tactic
    // fits: align256(N_max * C_out * C_in/groups * kH * kW * sizeof(dtype)).
    DynetConvParams p{};
    if (!paramsFromDims(inputs[0].max, inputs[1].max, inputs[2].max, false, p))
    {
        return 0;
    }
    return dynet_conv_cuda_workspace_size(&p, toDynetType(inputs[0].desc.type), DYNET_ALGO_TWO_STEP);
}

int32_t DyNetDynamicConv2dPlugin::getNbTactics() noexcept
{
    return 2;
}

int32_t DyNetDynamicConv2dPlugin::getValidTactics(int32_t* tactics, int32_t nbTactics) noexcept
{
    // TensorRT times each tactic per format combination and keeps the faster: the algorithm is chosen by measurement.
    if (tactics == nullptr || nbTactics != 2)
    {
        return -1;
    }
    tactics[0] = DYNET_ALGO_TWO_STEP;
    tactics[1] = DYNET_ALGO_ONE_KERNEL;
    return 0;
}

int32_t DyNetDynamicConv2dPlugin::setTactic(int32_t tactic) noexcept
{
    if (tactic < DYNET_ALGO_AUTO || tactic > DYNET_ALGO_ONE_KERNEL)
    {
        logError("setTactic: unknown tactic " + std::to_string(tactic));
        return -1;
    }
    mTactic = tactic; // 0 (TensorRT's default tactic) is DYNET_ALGO_AUTO
    return 0;
}

int32_t DyNetDynamicConv2dPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (in == nullptr || out == nullptr || nbOutputs != 1 || nbInputs != mAttrs.nbInputs())
        {
            logError("onShapeChange: expected " + std::to_string(mAttrs.nbInputs()) + " inputs and 1 output");
            return -1;
        }
        Dims dims[8];
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            dims[i] = in[i].dims;
        }
        std::string error;
        DynetConvParams p{};
        if (!checkStaticShapes(mAttrs, dims, nbInputs, error))
        {
            logError(error);
            return -1;
        }
        if (!paramsFromDims(in[0].dims, in[1].dims, in[2].dims, false, p))
        {
            logError("onShapeChange: invalid shapes " + dimsToString(in[0].dims) + ", " + dimsToString(in[1].dims)
                + ", " + dimsToString(in[2].dims));
            return -1;
        }
        char msg[256];
        if (dynet_conv_validate(&p, msg, sizeof(msg)) != DYNET_OK)
        {
            logError(msg);
            return -1;
        }
        int32_t hOut = 0;
        int32_t wOut = 0;
        dynet_conv_output_hw(&p, &hOut, &wOut);
        Dims const& y = out[0].dims;
        if (y.nbDims != 4 || y.d[0] != p.n || y.d[1] != p.c_out || y.d[2] != hOut || y.d[3] != wOut)
        {
            logError("onShapeChange: output " + dimsToString(y) + " does not match the computed shape");
            return -1;
        }
        mParams = p;
        mDtype = toDynetType(in[0].type);
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string("onShapeChange: ") + e.what());
    }
    return -1;
}

int32_t DyNetDynamicConv2dPlugin::enqueue(PluginTensorDesc const* /*inputDesc*/,
    PluginTensorDesc const* /*outputDesc*/, void const* const* inputs, void* const* outputs, void* workspace,
    cudaStream_t stream) noexcept
{
    // No allocation, no synchronisation, no logging on the success path: safe under CUDA graph capture.
    if (inputs == nullptr || outputs == nullptr)
    {
        return -1;
    }
    int32_t idx = 3;
    void const* biasBank = mAttrs.has_bias_bank ? inputs[idx++] : nullptr;
    void const* bias = mAttrs.has_bias ? inputs[idx] : nullptr;
    size_t const wsBytes = dynet_conv_cuda_workspace_size(&mParams, mDtype, mTactic);
    int32_t const status = dynet_conv_cuda(&mParams, mDtype, mTactic, inputs[0], inputs[1], inputs[2], biasBank,
        bias, outputs[0], workspace, wsBytes, static_cast<void*>(stream));
    if (status != DYNET_OK)
    {
        logError(std::string("enqueue failed: ") + dynet_status_string(status));
        return -1;
    }
    return 0;
}

IPluginV3* DyNetDynamicConv2dPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

PluginFieldCollection const* DyNetDynamicConv2dPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        mFields.clear();
        for (AttributeSlot const& slot : kAttributes)
        {
            mFields.emplace_back(slot.name, &(mAttrs.*slot.member), PluginFieldType::kINT32, 1);
        }
        mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
        mFieldCollection.fields = mFields.data();
        return &mFieldCollection;
    }
    catch (std::exception const& e)
    {
        logError(std::string("getFieldsToSerialize: ") + e.what());
    }
    return nullptr;
}

// ---- creator --------------------------------------------------------------------------------------------------

DyNetDynamicConv2dPluginCreator::DyNetDynamicConv2dPluginCreator()
{
    for (AttributeSlot const& slot : kAttributes)
    {
        mFieldNames.emplace_back(slot.name, nullptr, PluginFieldType::kINT32, 1);
    }
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* DyNetDynamicConv2dPluginCreator::getPluginName() const noexcept
{
    return kPluginName;
}

char const* DyNetDynamicConv2dPluginCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* DyNetDynamicConv2dPluginCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

PluginFieldCollection const* DyNetDynamicConv2dPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

bool DyNetDynamicConv2dPluginCreator::parseFields(
    PluginFieldCollection const* fc, DynamicConvAttributes& attrs, std::string& error)
{
    attrs = DynamicConvAttributes{};
    if (fc == nullptr)
    {
        return true; // every attribute at its default
    }
    if (fc->nbFields < 0 || (fc->nbFields > 0 && fc->fields == nullptr))
    {
        error = "malformed field collection (nbFields=" + std::to_string(fc->nbFields) + ")";
        return false;
    }
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        if (f.name == nullptr)
        {
            error = "field " + std::to_string(i) + " has no name";
            return false;
        }
        AttributeSlot const* slot = nullptr;
        for (AttributeSlot const& s : kAttributes)
        {
            if (std::strcmp(s.name, f.name) == 0)
            {
                slot = &s;
            }
        }
        if (slot == nullptr)
        {
            logMessage(ILogger::Severity::kWARNING, std::string("ignoring unknown attribute '") + f.name + "'");
            continue;
        }
        if (f.data == nullptr || f.length != 1)
        {
            error = std::string("attribute '") + f.name + "' must be one scalar int, got length "
                + std::to_string(f.length) + (f.data == nullptr ? " and no data" : "");
            return false;
        }
        int64_t value = 0;
        if (f.type == PluginFieldType::kINT32)
        {
            value = *static_cast<int32_t const*>(f.data);
        }
        else if (f.type == PluginFieldType::kINT64)
        {
            value = *static_cast<int64_t const*>(f.data);
        }
        else
        {
            error = std::string("attribute '") + f.name + "' must be an INT (int32 or int64) scalar, got field type "
                + std::to_string(static_cast<int32_t>(f.type));
            return false;
        }
        if (value < std::numeric_limits<int32_t>::min() || value > std::numeric_limits<int32_t>::max())
        {
            error = std::string("attribute '") + f.name + "' = " + std::to_string(value) + " does not fit int32";
            return false;
        }
        attrs.*(slot->member) = static_cast<int32_t>(value);
    }
    auto bad = [&error](char const* what, int32_t v, char const* rule) {
        error = std::string("attribute '") + what + "' = " + std::to_string(v) + ": " + rule;
        return false;
    };
    if (attrs.stride_h < 1) return bad("stride_h", attrs.stride_h, "must be >= 1");
    if (attrs.stride_w < 1) return bad("stride_w", attrs.stride_w, "must be >= 1");
    if (attrs.dilation_h < 1) return bad("dilation_h", attrs.dilation_h, "must be >= 1");
    if (attrs.dilation_w < 1) return bad("dilation_w", attrs.dilation_w, "must be >= 1");
    if (attrs.pad_top < 0) return bad("pad_top", attrs.pad_top, "must be >= 0");
    if (attrs.pad_left < 0) return bad("pad_left", attrs.pad_left, "must be >= 0");
    if (attrs.pad_bottom < 0) return bad("pad_bottom", attrs.pad_bottom, "must be >= 0");
    if (attrs.pad_right < 0) return bad("pad_right", attrs.pad_right, "must be >= 0");
    if (attrs.groups < 1) return bad("groups", attrs.groups, "must be >= 1");
    if (attrs.activation < DYNET_ACT_NONE || attrs.activation > DYNET_ACT_RELU6)
        return bad("activation", attrs.activation, "must be 0 (none), 1 (relu) or 2 (relu6)");
    if (attrs.has_bias_bank != 0 && attrs.has_bias_bank != 1)
        return bad("has_bias_bank", attrs.has_bias_bank, "must be 0 or 1");
    if (attrs.has_bias != 0 && attrs.has_bias != 1) return bad("has_bias", attrs.has_bias, "must be 0 or 1");
    return true;
}

IPluginV3* DyNetDynamicConv2dPluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        DynamicConvAttributes attrs;
        std::string error;
        if (!parseFields(fc, attrs, error))
        {
            logError(std::string("node '") + (name != nullptr ? name : "?") + "': " + error);
            return nullptr;
        }
        return new DyNetDynamicConv2dPlugin(attrs);
    }
    catch (std::exception const& e)
    {
        logError(std::string("createPlugin: ") + e.what());
    }
    return nullptr;
}

} // namespace dynet

// ---- registration ---------------------------------------------------------------------------------------------
// (1) Static: registers with the global registry whenever the library is loaded (ctypes, polygraphy --plugins,
//     trtexec --staticPlugins).
using dynet::DyNetDynamicConv2dPluginCreator;
REGISTER_TENSORRT_PLUGIN(DyNetDynamicConv2dPluginCreator);

// (2) IPluginRegistry::loadLibrary / trtexec --dynamicPlugins look these up by name.
extern "C" {

DYNET_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    dynet::gLoggerFinder.store(finder);
}

DYNET_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static dynet::DyNetDynamicConv2dPluginCreator creator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
    // loadLibrary dlopens the library first, so (1) has already registered a creator of the same name, version and
    // namespace, and the registry refuses a second one ("exists already"). Hand registration over to loadLibrary
    // (which also makes the plugin serialisable into engines) by withdrawing the static one, if it is ours.
    if (nvinfer1::IPluginRegistry* registry = getPluginRegistry())
    {
        nvinfer1::IPluginCreatorInterface* existing
            = registry->getCreator(dynet::kPluginName, dynet::kPluginVersion, dynet::kPluginNamespace);
        if (existing != nullptr && existing != &creator
            && dynamic_cast<dynet::DyNetDynamicConv2dPluginCreator*>(existing) != nullptr)
        {
            registry->deregisterCreator(*existing);
        }
    }
    nbCreators = 1;
    return creators;
}

} // extern "C"
