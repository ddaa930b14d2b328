// TensorRT IPluginV3 glue for DyNetDynamicConv2d (name "DyNetDynamicConv2d", versions "1" and "2", namespace "").
// The numerics live in dynetDynamicConvKernel.cu behind the C ABI; this file maps TensorRT's build and runtime
// phases onto it. Compiles against the TensorRT 10.x and 11.x headers.
// Plugin version v is op version v (README, "Versions"): its fields are the C ABI's attributes with since_version
// <= v (creator "1" keeps the 12 fields of version-1 engines), version 2 adds the spatial and residual inputs and the
// mean output.
#ifndef DYNET_DYNAMIC_CONV2D_PLUGIN_H
#define DYNET_DYNAMIC_CONV2D_PLUGIN_H

#include "NvInfer.h"
#include "NvInferRuntime.h"
#include "dynetDynamicConv.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dynet
{

constexpr char const* kPluginName = "DyNetDynamicConv2d";
constexpr char const* kPluginNamespace = "";

//! The plugin version string of op version `version` ("1", "2"), or nullptr outside
//! [DYNET_OP_VERSION_MIN, DYNET_OP_VERSION_MAX].
char const* pluginVersionString(int32_t version) noexcept;

//! Most inputs of a node (x, coeff, weight, bias_bank, bias, spatial, residual) and outputs (y, mean).
constexpr int32_t kMaxInputs = 7;
constexpr int32_t kMaxOutputs = 2;

//! The plugin's one non-attribute field: the workspace TensorRT grants (getWorkspaceSize at build time), serialised
//! with the engine so enqueue can hand the library the size it really has.
constexpr char const* kWorkspaceFieldName = "dynet_workspace_size";

//! Most scratch the cuDNN tactic may add to the workspace (its algorithms that need more are skipped).
constexpr size_t kCudnnScratchCap = size_t{256} << 20;

//! Most tactics a build offers (two-step, one-kernel, cuDNN, cuBLAS GEMM, cuBLAS im2col).
constexpr int32_t kMaxTactics = DYNET_ALGO_LAST;

//! Route the plugin's log messages through the logger TensorRT hands a dynamically loaded library.
void setPluginLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

class DyNetDynamicConv2dPlugin : public nvinfer1::IPluginV3,
                                 public nvinfer1::IPluginV3OneCore,
                                 public nvinfer1::IPluginV3OneBuild,
                                 public nvinfer1::IPluginV3OneRuntime
{
public:
    //! attrs: a DynetConvParams whose attributes are set (shapes unused; none above `version`); workspaceBytes: the
    //! serialised grant (0 before the build has sized it); version: the plugin (op) version of the creator.
    DyNetDynamicConv2dPlugin(DynetConvParams const& attrs, int64_t workspaceBytes, int32_t version);
    DyNetDynamicConv2dPlugin(DyNetDynamicConv2dPlugin const& other);
    DyNetDynamicConv2dPlugin& operator=(DyNetDynamicConv2dPlugin const&) = delete;
    ~DyNetDynamicConv2dPlugin() override;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    int32_t getValidTactics(int32_t* tactics, int32_t nbTactics) noexcept override;
    int32_t getNbTactics() noexcept override;
    char const* getTimingCacheID() noexcept override;

    // IPluginV3OneRuntime
    int32_t setTactic(int32_t tactic) noexcept override;
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    int32_t expectedInputs() const noexcept
    {
        return 3 + mAttrs.has_bias_bank + mAttrs.has_bias + mAttrs.has_spatial + mAttrs.has_residual;
    }
    int32_t expectedOutputs() const noexcept
    {
        return 1 + mAttrs.has_mean;
    }
    //! cuDNN expresses symmetric pads only.
    bool cudnnTacticApplies() const noexcept;
    //! The tactics this build has for these attributes (cuDNN when built and the pads are symmetric; the cuBLAS GEMM
    //! when built and stride 1, no pads; cuBLAS im2col when built); forTiming also drops those configurePlugin could
    //! not plan at the profile's max (library absent, kernel not 1x1, ...).
    int32_t tactics(int32_t* out, bool forTiming) const noexcept;
    //! Make the library handle `tactic` needs in mContext, if it has none yet (outside enqueue and onShapeChange:
    //! configurePlugin, setTactic, attachToContext); false with the reason in msg.
    bool prepareContext(int32_t tactic, char* msg, size_t msgSize) const noexcept;
    //! The workspace every offered tactic needs at pMax in dtype (the library-backed ones through a plan at pMax);
    //! with record, also notes which of them could be planned (mPlannable).
    int64_t workspaceFor(DynetConvParams const& pMax, int32_t dtype, bool record) const noexcept;
    //! Make mPlan for mParams / mDtype / mTactic in mContext; false with a logged reason.
    bool makePlan() noexcept;

    DynetConvParams mAttrs{};      // attributes only (from the C ABI's table); shape fields unused
    int64_t mWorkspaceBytes{0};    // what TensorRT grants (getWorkspaceSize for the profile's max), serialised
    int32_t mVersion{1};           // plugin (op) version: the creator's; decides the serialised fields
    bool mToldTypes{false};        // supportsFormatCombination explained a refused narrower weight once
    // Per-shape state, made in onShapeChange (outside enqueue) and read by enqueue.
    DynetConvParams mParams{};
    int32_t mDtype{DYNET_FLOAT32};
    int32_t mTactic{0};
    DynetConvCudaPlan* mPlan{nullptr};
    int32_t mPlanTactic{-1};
    // The library handles (cuDNN, cuBLAS) of this instance, made outside enqueue and onShapeChange; plans borrow them.
    mutable DynetConvCudaContext* mContext{nullptr};
    // Per tactic: configurePlugin's plan at the profile's max: -1 not tried, 0 failed, 1 made.
    mutable int32_t mPlannable[DYNET_ALGO_LAST + 1]{-1, -1, -1, -1, -1, -1};
    // configurePlugin's profile max and dtype, whose grant is mWorkspaceBytes.
    DynetConvParams mConfiguredMax{};
    int32_t mConfiguredDtype{-1};
    std::string mTimingCacheId;
    // Storage behind getFieldsToSerialize.
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

//! The creator of one plugin version (its fields: the attributes of that op version). TensorRT registers one creator
//! per (name, version, namespace): the libraries register DyNetDynamicConv2dPluginCreatorV1 and ...V2.
class DyNetDynamicConv2dPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    explicit DyNetDynamicConv2dPluginCreator(int32_t version);
    ~DyNetDynamicConv2dPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

    //! Parse the fields into attrs through the C ABI's attribute table and check them there; false (with the reason
    //! in `error`) on anything malformed. An attribute of a later op version than `version` set to a non-default
    //! value is refused (the node needs that plugin version); at its default it is ignored with a warning.
    static bool parseFields(nvinfer1::PluginFieldCollection const* fc, int32_t version, DynetConvParams& attrs,
        int64_t& workspaceBytes, std::string& error);

private:
    int32_t mVersion;
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

//! Creator "1" (version-1 nodes and engines) and creator "2"; default-constructible for REGISTER_TENSORRT_PLUGIN.
class DyNetDynamicConv2dPluginCreatorV1 : public DyNetDynamicConv2dPluginCreator
{
public:
    DyNetDynamicConv2dPluginCreatorV1()
        : DyNetDynamicConv2dPluginCreator(1)
    {
    }
};

class DyNetDynamicConv2dPluginCreatorV2 : public DyNetDynamicConv2dPluginCreator
{
public:
    DyNetDynamicConv2dPluginCreatorV2()
        : DyNetDynamicConv2dPluginCreator(2)
    {
    }
};

} // namespace dynet

#endif // DYNET_DYNAMIC_CONV2D_PLUGIN_H
