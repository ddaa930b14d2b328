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

//! Log through the logger TensorRT handed us (setLoggerFinder, the loadLibrary path), else (statically registered
//! library only) libnvinfer's global one, else stderr.
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
#if defined(DYNET_TRT_LOGGER_FALLBACK)
        // The statically registered library links libnvinfer anyway (REGISTER_TENSORRT_PLUGIN); the dynamically
        // loaded one logs only through the finder TensorRT hands it (setLoggerFinder) and needs no libnvinfer symbol.
        if (logger == nullptr)
        {
            logger = getLogger();
        }
#endif
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

std::string dimsToString(Dims const& d)
{
    std::string s = "[";
    for (int32_t i = 0; i < d.nbDims && i < Dims::MAX_DIMS; ++i)
    {
        s += (i ? ", " : "") + std::to_string(d.d[i]);
    }
    return s + "]";
}

//! Fill the shape fields of p from TensorRT dims through the C ABI (which checks them against each other and the
//! attributes); false with the reason in `error`.
bool setShapes(DynetConvParams& p, Dims const* dims, int32_t nbInputs, bool allowUnknown, std::string& error)
{
    if (nbInputs < 0 || nbInputs > kMaxInputs)
    {
        error = "expected 3 to " + std::to_string(kMaxInputs) + " inputs, got " + std::to_string(nbInputs);
        return false;
    }
    int32_t ranks[kMaxInputs] = {};
    int64_t flat[kMaxInputs * Dims::MAX_DIMS] = {};
    int32_t count = 0;
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        ranks[i] = dims[i].nbDims;
        if (ranks[i] < 0 || ranks[i] > Dims::MAX_DIMS)
        {
            error = "input " + std::to_string(i) + " has rank " + std::to_string(ranks[i]);
            return false;
        }
        for (int32_t j = 0; j < ranks[i]; ++j)
        {
            flat[count++] = dims[i].d[j];
        }
    }
    char msg[256];
    if (dynet_conv_params_set_shapes(&p, nbInputs, ranks, flat, allowUnknown ? 1 : 0, msg, sizeof(msg)) != DYNET_OK)
    {
        error = msg;
        return false;
    }
    return true;
}

int32_t toDynetType(DataType t)
{
    return t == DataType::kHALF ? DYNET_FLOAT16 : DYNET_FLOAT32;
}

std::string typeName(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kBF16: return "bfloat16";
    default: break;
    }
    return "TensorRT type " + std::to_string(static_cast<int32_t>(t));
}

//! Every input and output in x's type, float32 or float16 (what supportsFormatCombination accepts); else the reason.
bool sameIoType(DataType const* types, int32_t nbInputs, int32_t nbOutputs, std::string& error)
{
    DataType const x = types[0];
    if (x != DataType::kFLOAT && x != DataType::kHALF)
    {
        error = "x is " + typeName(x) + ": the plugin runs float32 or float16";
        return false;
    }
    for (int32_t i = 1; i < nbInputs + nbOutputs; ++i)
    {
        if (types[i] != x)
        {
            std::string const what = i < nbInputs ? "input " + std::to_string(i) : "output " + std::to_string(i - nbInputs);
            error = what + " is " + typeName(types[i]) + " but x is " + typeName(x) + ": the plugin takes every tensor in "
                "x's type" + (i == 2 ? " (a reduced-precision weight bank runs on the onnxruntime CPU library only)" : "");
            return false;
        }
    }
    return true;
}

IDimensionExpr const* outputExtent(IExprBuilder& eb, IDimensionExpr const& in, IDimensionExpr const& kernel,
    int64_t padSum, int64_t dilation, int64_t stride)
{
    // floor((in + padSum - dilation*(kernel-1) - 1) / stride) + 1
    IDimensionExpr const* span = eb.operation(DimensionOperation::kPROD, *eb.constant(dilation), kernel);
    IDimensionExpr const* padded = eb.operation(DimensionOperation::kSUM, in, *eb.constant(padSum + dilation - 1));
    IDimensionExpr const* num = eb.operation(DimensionOperation::kSUB, *padded, *span);
    IDimensionExpr const* q = eb.operation(DimensionOperation::kFLOOR_DIV, *num, *eb.constant(stride));
    return eb.operation(DimensionOperation::kSUM, *q, *eb.constant(1));
}

} // namespace

char const* pluginVersionString(int32_t version) noexcept
{
    static char const* const kVersions[] = {"1", "2"};
    static_assert(sizeof(kVersions) / sizeof(kVersions[0]) == DYNET_OP_VERSION_MAX - DYNET_OP_VERSION_MIN + 1,
        "one plugin version string per op version");
    return version >= DYNET_OP_VERSION_MIN && version <= DYNET_OP_VERSION_MAX ? kVersions[version - DYNET_OP_VERSION_MIN]
                                                                              : nullptr;
}

// ---- plugin ---------------------------------------------------------------------------------------------------

DyNetDynamicConv2dPlugin::DyNetDynamicConv2dPlugin(DynetConvParams const& attrs, int64_t workspaceBytes, int32_t version)
    : mAttrs(attrs)
    , mWorkspaceBytes(workspaceBytes)
    , mVersion(version)
{
    mParams = mAttrs;
}

DyNetDynamicConv2dPlugin::DyNetDynamicConv2dPlugin(DyNetDynamicConv2dPlugin const& other)
    : IPluginV3(other)
    , IPluginV3OneCore(other)
    , IPluginV3OneBuild(other)
    , IPluginV3OneRuntime(other)
    , mAttrs(other.mAttrs)
    , mWorkspaceBytes(other.mWorkspaceBytes)
    , mVersion(other.mVersion)
    , mToldTypes(other.mToldTypes)
    , mParams(other.mParams)
    , mDtype(other.mDtype)
    , mTactic(other.mTactic)
    , mConfiguredMax(other.mConfiguredMax)
    , mConfiguredDtype(other.mConfiguredDtype)
{
    std::copy(std::begin(other.mPlannable), std::end(other.mPlannable), std::begin(mPlannable));
    // Handles are per instance: a clone makes its own context (clone and attachToContext run outside enqueue) with the
    // handle of its tactic, and its own plan in it.
    char msg[256];
    if (other.mContext != nullptr && !prepareContext(mTactic, msg, sizeof(msg)))
    {
        logMessage(ILogger::Severity::kWARNING, std::string("clone: ") + msg);
    }
    if (other.mPlan != nullptr)
    {
        makePlan();
    }
}

DyNetDynamicConv2dPlugin::~DyNetDynamicConv2dPlugin()
{
    dynet_conv_cuda_plan_destroy(mPlan); // plans first: they borrow the context's handles
    dynet_conv_cuda_context_destroy(mContext);
}

bool DyNetDynamicConv2dPlugin::prepareContext(int32_t tactic, char* msg, size_t msgSize) const noexcept
{
    if (mContext == nullptr && dynet_conv_cuda_context_create(&mContext) != DYNET_OK)
    {
        std::snprintf(msg, msgSize, "out of host memory");
        return false;
    }
    return dynet_conv_cuda_context_prepare(mContext, tactic, msg, msgSize) == DYNET_OK;
}

bool DyNetDynamicConv2dPlugin::makePlan() noexcept
{
    dynet_conv_cuda_plan_destroy(mPlan);
    mPlan = nullptr;
    mPlanTactic = -1;
    if (mWorkspaceBytes <= 0 && dynet_conv_cuda_workspace_size(&mParams, mDtype, mTactic) > 0)
    {
        logError("tactic " + std::to_string(mTactic) + " needs a workspace but TensorRT's grant is unknown (an engine "
            "without the " + kWorkspaceFieldName + " field: rebuild it with this plugin)");
        return false;
    }
    char msg[256];
    if (dynet_conv_cuda_context_ready(mContext, mTactic) == 0)
    {
        // setTactic / attachToContext make the handle; reaching here without it means TensorRT skipped both.
        logMessage(ILogger::Severity::kWARNING, "tactic " + std::to_string(mTactic) + ": no library handle made "
            "before the first shape; making it now");
        if (!prepareContext(mTactic, msg, sizeof(msg)))
        {
            logError("tactic " + std::to_string(mTactic) + ": " + msg);
            return false;
        }
    }
    // The plan may use at most what TensorRT grants (a limit of 0 would mean "no cap": the grant is > 0 here
    // whenever the tactic needs a workspace).
    int32_t const status = dynet_conv_cuda_plan_create_in(mContext, &mParams, mDtype, mTactic,
        static_cast<size_t>(std::max<int64_t>(mWorkspaceBytes, 0)), &mPlan, msg, sizeof(msg));
    if (status != DYNET_OK)
    {
        logError(std::string("tactic ") + std::to_string(mTactic) + " cannot run this shape within TensorRT's "
            "workspace grant of " + std::to_string(mWorkspaceBytes) + " bytes: " + msg);
        return false;
    }
    if (dynet_conv_cuda_plan_workspace_size(mPlan) > static_cast<size_t>(std::max<int64_t>(mWorkspaceBytes, 0)))
    {
        logError("tactic " + std::to_string(mTactic) + " needs "
            + std::to_string(dynet_conv_cuda_plan_workspace_size(mPlan)) + " bytes of workspace, TensorRT grants "
            + std::to_string(mWorkspaceBytes));
        dynet_conv_cuda_plan_destroy(mPlan);
        mPlan = nullptr;
        return false;
    }
    mPlanTactic = mTactic;
    return true;
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
    return pluginVersionString(mVersion);
}

char const* DyNetDynamicConv2dPlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t DyNetDynamicConv2dPlugin::getNbOutputs() const noexcept
{
    return expectedOutputs(); // y, and mean when has_mean
}

int32_t DyNetDynamicConv2dPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != expectedOutputs() || nbInputs < 1)
    {
        logError("getOutputDataTypes: expected " + std::to_string(expectedOutputs()) + " output(s) and at least 1 "
            "input, got " + std::to_string(nbOutputs) + " and " + std::to_string(nbInputs));
        return -1;
    }
    for (int32_t i = 0; i < nbOutputs; ++i)
    {
        outputTypes[i] = inputTypes[0]; // y and mean have x's type
    }
    return 0;
}

int32_t DyNetDynamicConv2dPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& exprBuilder) noexcept
{
    try
    {
        if (inputs == nullptr || outputs == nullptr || nbOutputs != expectedOutputs())
        {
            logError("getOutputShapes: expected " + std::to_string(expectedOutputs()) + " output(s), got "
                + std::to_string(nbOutputs));
            return -1;
        }
        if (nbInputs != expectedInputs())
        {
            logError("getOutputShapes: expected " + std::to_string(expectedInputs()) + " inputs, got "
                + std::to_string(nbInputs));
            return -1;
        }
        // Static dims (channels, kernel) are constants here: check them now, at network build time.
        Dims known[kMaxInputs];
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
        DynetConvParams p = mAttrs;
        if (!setShapes(p, known, nbInputs, true, error))
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
        y.d[2] = outputExtent(exprBuilder, *x.d[2], *w.d[3], int64_t{mAttrs.pad_top} + mAttrs.pad_bottom,
            mAttrs.dilation_h, mAttrs.stride_h);
        y.d[3] = outputExtent(exprBuilder, *x.d[3], *w.d[4], int64_t{mAttrs.pad_left} + mAttrs.pad_right,
            mAttrs.dilation_w, mAttrs.stride_w);
        if (mAttrs.has_mean)
        {
            DimsExprs& mean = outputs[1]; // GlobalAveragePool(y): [N, C_out, 1, 1]
            mean.nbDims = 4;
            mean.d[0] = x.d[0];
            mean.d[1] = w.d[1];
            mean.d[2] = exprBuilder.constant(1);
            mean.d[3] = exprBuilder.constant(1);
        }
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
    bool const same = desc.type == inOut[0].desc.type; // every tensor, the outputs included, in x's type
    if (!same && pos == 2 && !mToldTypes && inOut[0].desc.type == DataType::kFLOAT
        && (desc.type == DataType::kHALF || desc.type == DataType::kBF16))
    {
        // A narrowed bank (op version 2 allows it on the onnxruntime CPU library): say why TensorRT finds no
        // implementation when the network's weight really is this type.
        mToldTypes = true;
        logMessage(ILogger::Severity::kINFO, "weight offered as " + typeName(desc.type) + " with float32 x: refused, "
            "the plugin takes every tensor in x's type (a reduced-precision weight bank runs on the onnxruntime CPU "
            "library only)");
    }
    return same;
}

int32_t DyNetDynamicConv2dPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    // Build time: desc dims may be -1 (dynamic N/H/W), so they get the static checks; the profile's max must pass the
    // full contract (every tensor < 2^31 elements), else every large-shape enqueue would fail after a good build.
    if (in == nullptr || out == nullptr || nbOutputs != expectedOutputs() || nbInputs != expectedInputs())
    {
        logError("configurePlugin: expected " + std::to_string(expectedInputs()) + " inputs and "
            + std::to_string(expectedOutputs()) + " output(s), got " + std::to_string(nbInputs) + " and "
            + std::to_string(nbOutputs));
        return -1;
    }
    try
    {
        Dims dims[kMaxInputs];
        Dims maxDims[kMaxInputs];
        DataType types[kMaxInputs + kMaxOutputs];
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            dims[i] = in[i].desc.dims;
            maxDims[i] = in[i].max;
            types[i] = in[i].desc.type;
        }
        for (int32_t i = 0; i < nbOutputs; ++i)
        {
            types[nbInputs + i] = out[i].desc.type;
        }
        std::string error;
        if (!sameIoType(types, nbInputs, nbOutputs, error))
        {
            logError("configurePlugin: " + error);
            return -1;
        }
        DynetConvParams p = mAttrs;
        if (!setShapes(p, dims, nbInputs, true, error))
        {
            logError("configurePlugin: " + error);
            return -1;
        }
        DynetConvParams pMax = mAttrs;
        if (!setShapes(pMax, maxDims, nbInputs, false, error))
        {
            logError("configurePlugin: the optimisation profile's max shapes: " + error);
            return -1;
        }
        char msg[256];
        if (dynet_conv_validate(&pMax, msg, sizeof(msg)) != DYNET_OK)
        {
            logError(std::string("configurePlugin: the optimisation profile's max shapes break the op contract: ") + msg);
            return -1;
        }
        mDtype = toDynetType(in[0].desc.type);
        pMax.weight_dtype = mDtype; // every tensor in x's type (checked above)
        int64_t const grant = workspaceFor(pMax, mDtype, true);
        mConfiguredMax = pMax;
        mConfiguredDtype = mDtype;
        mWorkspaceBytes = grant;
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string("configurePlugin: ") + e.what());
    }
    return -1;
}

int64_t DyNetDynamicConv2dPlugin::workspaceFor(DynetConvParams const& pMax, int32_t dtype, bool record) const noexcept
{
    // Enough for every offered tactic at the profile's max. The pure-arithmetic ones from the C ABI's formula; the
    // library-backed ones (cuDNN's scratch is known only to a plan) from a plan at the max, capped; smaller shapes
    // choose within the same grant (onShapeChange). A tactic that cannot be planned here is not offered for timing.
    int64_t grant = static_cast<int64_t>(dynet_conv_cuda_workspace_size(&pMax, dtype, DYNET_ALGO_TWO_STEP));
    int32_t offered[kMaxTactics];
    int32_t const n = tactics(offered, false);
    for (int32_t i = 0; i < n; ++i)
    {
        int32_t const t = offered[i];
        if (t != DYNET_ALGO_CUDNN && t != DYNET_ALGO_CUBLAS_GEMM && t != DYNET_ALGO_CUBLAS_IM2COL)
        {
            continue;
        }
        char msg[256] = "";
        bool ok = true;
        size_t need = 0;
        if (t == DYNET_ALGO_CUBLAS_IM2COL && pMax.kh == 1 && pMax.kw == 1 && pMax.stride_h == 1 && pMax.stride_w == 1
            && pMax.pad_top == 0 && pMax.pad_left == 0 && pMax.pad_bottom == 0 && pMax.pad_right == 0)
        {
            ok = false; // a pointwise layer: the cuBLAS GEMM tactic runs it without the im2col copy
            std::snprintf(msg, sizeof(msg), "pointwise layer (the cuBLAS GEMM tactic covers it)");
        }
        else if (t == DYNET_ALGO_CUDNN)
        {
            ok = prepareContext(t, msg, sizeof(msg));
            DynetConvCudaPlan* plan = nullptr;
            size_t const cap = dynet_conv_cuda_workspace_size(&pMax, dtype, t) + kCudnnScratchCap;
            ok = ok && dynet_conv_cuda_plan_create_in(mContext, &pMax, dtype, t, cap, &plan, msg, sizeof(msg)) == DYNET_OK;
            need = dynet_conv_cuda_plan_workspace_size(plan);
            dynet_conv_cuda_plan_destroy(plan);
        }
        else
        {
            // The cuBLAS tactics' workspace is the C ABI's formula; the library must load and make a handle.
            need = dynet_conv_cuda_workspace_size(&pMax, dtype, t);
            ok = need > 0 && prepareContext(t, msg, sizeof(msg));
            if (need == 0)
            {
                std::snprintf(msg, sizeof(msg), "not a pointwise layer (1x1, stride 1, no pads)");
            }
        }
        if (ok)
        {
            grant = std::max(grant, static_cast<int64_t>(need));
        }
        else if (record)
        {
            logMessage(ILogger::Severity::kINFO, "tactic " + std::to_string(t) + " not offered: " + msg);
        }
        if (record)
        {
            mPlannable[t] = ok ? 1 : 0;
        }
    }
    return grant;
}

size_t DyNetDynamicConv2dPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    // From the descs TensorRT asks about (their profile max and dtype), not from whatever configurePlugin saw last.
    // For the configured max and dtype this is configurePlugin's grant, which is serialised (kWorkspaceFieldName):
    // the runtime plugin hands exactly this grant to the library, whose own check then guards every enqueue.
    try
    {
        if (inputs == nullptr || nbInputs != expectedInputs())
        {
            return static_cast<size_t>(std::max<int64_t>(mWorkspaceBytes, 0));
        }
        Dims maxDims[kMaxInputs];
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            maxDims[i] = inputs[i].max;
        }
        std::string error;
        DynetConvParams pMax = mAttrs;
        if (!setShapes(pMax, maxDims, nbInputs, false, error) || dynet_conv_validate(&pMax, nullptr, 0) != DYNET_OK)
        {
            logError("getWorkspaceSize: the profile's max shapes: " + (error.empty() ? "break the op contract" : error));
            return 0;
        }
        int32_t const dtype = toDynetType(inputs[0].desc.type);
        pMax.weight_dtype = dtype;
        if (dtype == mConfiguredDtype && std::memcmp(&pMax, &mConfiguredMax, sizeof(pMax)) == 0)
        {
            return static_cast<size_t>(std::max<int64_t>(mWorkspaceBytes, 0));
        }
        return static_cast<size_t>(workspaceFor(pMax, dtype, false));
    }
    catch (std::exception const& e)
    {
        logError(std::string("getWorkspaceSize: ") + e.what());
    }
    return 0;
}

bool DyNetDynamicConv2dPlugin::cudnnTacticApplies() const noexcept
{
    return mAttrs.pad_top == mAttrs.pad_bottom && mAttrs.pad_left == mAttrs.pad_right;
}

int32_t DyNetDynamicConv2dPlugin::tactics(int32_t* out, bool forTiming) const noexcept
{
    int32_t n = 0;
    out[n++] = DYNET_ALGO_TWO_STEP;
    out[n++] = DYNET_ALGO_ONE_KERNEL;
    auto const keep = [&](int32_t t) { return !(forTiming && mPlannable[t] == 0); };
    if (dynet_conv_cuda_has_cudnn() != 0 && cudnnTacticApplies() && keep(DYNET_ALGO_CUDNN))
    {
        out[n++] = DYNET_ALGO_CUDNN;
    }
    bool const unitStride = mAttrs.stride_h == 1 && mAttrs.stride_w == 1 && mAttrs.pad_top == 0 && mAttrs.pad_left == 0
        && mAttrs.pad_bottom == 0 && mAttrs.pad_right == 0;
    if (dynet_conv_cuda_has_cublas() != 0 && unitStride && keep(DYNET_ALGO_CUBLAS_GEMM))
    {
        out[n++] = DYNET_ALGO_CUBLAS_GEMM;
    }
    if (dynet_conv_cuda_has_cublas() != 0 && keep(DYNET_ALGO_CUBLAS_IM2COL))
    {
        out[n++] = DYNET_ALGO_CUBLAS_IM2COL;
    }
    return n;
}

int32_t DyNetDynamicConv2dPlugin::getNbTactics() noexcept
{
    int32_t buf[kMaxTactics];
    return tactics(buf, true);
}

int32_t DyNetDynamicConv2dPlugin::getValidTactics(int32_t* tacticsOut, int32_t nbTactics) noexcept
{
    // TensorRT times every tactic per format combination and keeps the fastest: the algorithm is chosen by measurement.
    int32_t buf[kMaxTactics];
    int32_t const n = tactics(buf, true);
    if (tacticsOut == nullptr || nbTactics != n)
    {
        return -1;
    }
    std::copy(buf, buf + n, tacticsOut);
    return 0;
}

char const* DyNetDynamicConv2dPlugin::getTimingCacheID() noexcept
{
    // TensorRT prefixes the I/O shapes and formats; the suffix carries what else decides the timings: the plugin
    // version, the attributes (every one of the C ABI's table, version 2's included), the ABI version and the tactic
    // set of this build.
    try
    {
        char key[512];
        if (dynet_conv_attributes_key(&mAttrs, key, sizeof(key)) < 0)
        {
            return nullptr;
        }
        int32_t buf[kMaxTactics];
        int32_t const n = tactics(buf, false); // the build's tactic set: creation state only
        std::string id = std::string(kPluginName) + "/v" + std::to_string(mVersion) + "/abi"
            + std::to_string(dynet_conv_abi_version()) + "/tactics";
        for (int32_t i = 0; i < n; ++i)
        {
            id += (i ? "," : "=") + std::to_string(buf[i]);
        }
        mTimingCacheId = id + "/" + key;
        return mTimingCacheId.c_str();
    }
    catch (std::exception const&)
    {
    }
    return nullptr; // disables timing caching for this plugin, which is always safe
}

int32_t DyNetDynamicConv2dPlugin::setTactic(int32_t tactic) noexcept
{
    int32_t buf[kMaxTactics];
    int32_t const n = tactics(buf, false); // a deserialised plugin accepts every tactic this build has
    if (tactic != DYNET_ALGO_AUTO && std::find(buf, buf + n, tactic) == buf + n)
    {
        logError("setTactic: tactic " + std::to_string(tactic) + " is not offered by this build");
        return -1;
    }
    mTactic = tactic; // 0 (TensorRT's default tactic) is DYNET_ALGO_AUTO
    // The tactic's library handle, made here (outside enqueue and onShapeChange) once per instance.
    char msg[256];
    if (!prepareContext(mTactic, msg, sizeof(msg)))
    {
        logError("setTactic: tactic " + std::to_string(tactic) + ": " + msg);
        return -1;
    }
    // A tactic set after the shape: re-plan now (outside enqueue) so enqueue runs the tactic being timed.
    if (mPlan != nullptr && mPlanTactic != mTactic)
    {
        return makePlan() ? 0 : -1;
    }
    return 0;
}

int32_t DyNetDynamicConv2dPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (in == nullptr || out == nullptr || nbOutputs != expectedOutputs() || nbInputs != expectedInputs())
        {
            logError("onShapeChange: expected " + std::to_string(expectedInputs()) + " inputs and "
                + std::to_string(expectedOutputs()) + " output(s), got " + std::to_string(nbInputs) + " and "
                + std::to_string(nbOutputs));
            return -1;
        }
        Dims dims[kMaxInputs];
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            dims[i] = in[i].dims;
        }
        std::string error;
        DynetConvParams p = mAttrs;
        if (!setShapes(p, dims, nbInputs, false, error))
        {
            logError("onShapeChange: " + error);
            return -1;
        }
        char msg[256];
        if (dynet_conv_validate(&p, msg, sizeof(msg)) != DYNET_OK)
        {
            logError(std::string("onShapeChange: ") + msg);
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
        if (mAttrs.has_mean)
        {
            Dims const& mean = out[1].dims;
            if (mean.nbDims != 4 || mean.d[0] != p.n || mean.d[1] != p.c_out || mean.d[2] != 1 || mean.d[3] != 1)
            {
                logError("onShapeChange: mean output " + dimsToString(mean) + " is not [N, C_out, 1, 1] = ["
                    + std::to_string(p.n) + ", " + std::to_string(p.c_out) + ", 1, 1]");
                return -1;
            }
        }
        int32_t const dtype = toDynetType(in[0].type);
        p.weight_dtype = dtype; // every tensor in x's type (supportsFormatCombination)
        if (mPlan != nullptr && dtype == mDtype && std::memcmp(&p, &mParams, sizeof(p)) == 0 && mPlanTactic == mTactic)
        {
            return 0; // same shape and tactic: keep the plan
        }
        mParams = p;
        mDtype = dtype;
        return makePlan() ? 0 : -1;
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
    // No allocation, no synchronisation, no logging on the success path: safe under CUDA graph capture. The plan
    // (descriptors, GEMM shapes) was made in onShapeChange in this instance's context, whose handles were made
    // before; the workspace size passed is TensorRT's grant, so the library's own check guards it.
    if (inputs == nullptr || outputs == nullptr || mPlan == nullptr)
    {
        return -1;
    }
    // The node's inputs in order, the optional ones present as the attributes say (README, "Inputs").
    DynetConvTensors t{};
    t.x = inputs[0];
    t.coeff = inputs[1];
    t.weight = inputs[2];
    int32_t idx = 3;
    t.bias_bank = mAttrs.has_bias_bank ? inputs[idx++] : nullptr;
    t.bias = mAttrs.has_bias ? inputs[idx++] : nullptr;
    t.spatial = mAttrs.has_spatial ? inputs[idx++] : nullptr;
    t.residual = mAttrs.has_residual ? inputs[idx++] : nullptr;
    t.y = outputs[0];
    t.mean = mAttrs.has_mean ? outputs[1] : nullptr;
    int32_t const status = dynet_conv_cuda_plan_run_v2(mPlan, &t, workspace,
        static_cast<size_t>(std::max<int64_t>(mWorkspaceBytes, 0)), static_cast<void*>(stream));
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
        // Names and values through the C ABI's attribute table, the attributes of this plugin version (a version-1
        // engine keeps its 12 fields); the field data points into mAttrs.
        mFields.clear();
        int32_t const count = dynet_conv_attribute_count();
        for (int32_t i = 0; i < count; ++i)
        {
            DynetAttributeInfo const* info = dynet_conv_attribute(i);
            if (info->since_version <= mVersion)
            {
                mFields.emplace_back(info->name, dynet_conv_params_attribute_data(&mAttrs, i), PluginFieldType::kINT32, 1);
            }
        }
        mFields.emplace_back(kWorkspaceFieldName, &mWorkspaceBytes, PluginFieldType::kINT64, 1);
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

DyNetDynamicConv2dPluginCreator::DyNetDynamicConv2dPluginCreator(int32_t version)
    : mVersion(version)
{
    // The field names are the C ABI's attribute table, in its order: the attributes of this op version.
    int32_t const count = dynet_conv_attribute_count();
    for (int32_t i = 0; i < count; ++i)
    {
        DynetAttributeInfo const* info = dynet_conv_attribute(i);
        if (info->since_version <= mVersion)
        {
            mFieldNames.emplace_back(info->name, nullptr, PluginFieldType::kINT32, 1);
        }
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
    return pluginVersionString(mVersion);
}

char const* DyNetDynamicConv2dPluginCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

PluginFieldCollection const* DyNetDynamicConv2dPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

bool DyNetDynamicConv2dPluginCreator::parseFields(PluginFieldCollection const* fc, int32_t version,
    DynetConvParams& attrs, int64_t& workspaceBytes, std::string& error)
{
    dynet_conv_params_init(&attrs);
    workspaceBytes = 0;
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
        bool const isWorkspace = std::strcmp(f.name, kWorkspaceFieldName) == 0;
        int32_t const index = isWorkspace ? -1 : dynet_conv_attribute_index(f.name);
        if (!isWorkspace && index < 0)
        {
            logMessage(ILogger::Severity::kWARNING, std::string("ignoring unknown attribute '") + f.name + "'");
            continue;
        }
        DynetAttributeInfo const* info = isWorkspace ? nullptr : dynet_conv_attribute(index);
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
        if (info != nullptr && info->since_version > version)
        {
            // An attribute of a later op version: at its default it changes nothing, set it needs that version.
            if (value != info->default_value)
            {
                error = std::string("attribute '") + f.name + "' = " + std::to_string(value) + " needs op version "
                    + std::to_string(info->since_version) + " (plugin_version \"" + pluginVersionString(info->since_version)
                    + "\"); this is plugin version \"" + pluginVersionString(version) + "\"";
                return false;
            }
            logMessage(ILogger::Severity::kWARNING, std::string("plugin version ") + pluginVersionString(version)
                + ": ignoring attribute '" + f.name + "' of op version " + std::to_string(info->since_version)
                + " at its default");
            continue;
        }
        if (isWorkspace)
        {
            if (value < 0)
            {
                error = std::string(kWorkspaceFieldName) + " = " + std::to_string(value) + " must be >= 0";
                return false;
            }
            workspaceBytes = value;
            continue;
        }
        char msg[256];
        if (dynet_conv_params_set_attribute(&attrs, f.name, value, msg, sizeof(msg)) != DYNET_OK)
        {
            error = msg; // range and int32 checks live in the C ABI's table
            return false;
        }
    }
    char msg[256];
    if (dynet_conv_validate_attributes(&attrs, msg, sizeof(msg)) != DYNET_OK)
    {
        error = msg;
        return false;
    }
    return true;
}

IPluginV3* DyNetDynamicConv2dPluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        DynetConvParams attrs{};
        int64_t workspaceBytes = 0;
        std::string error;
        if (!parseFields(fc, mVersion, attrs, workspaceBytes, error))
        {
            logError(std::string("node '") + (name != nullptr ? name : "?") + "': " + error);
            return nullptr;
        }
        return new DyNetDynamicConv2dPlugin(attrs, workspaceBytes, mVersion);
    }
    catch (std::exception const& e)
    {
        logError(std::string("createPlugin: ") + e.what());
    }
    return nullptr;
}

void setPluginLoggerFinder(ILoggerFinder* finder) noexcept
{
    gLoggerFinder.store(finder);
}

} // namespace dynet
