// Dynamic registration of the DyNetDynamicConv2d TensorRT plugin: libdynet_dynamic_conv_trt_dynamic.so registers
// nothing by itself and exports only getCreators and setLoggerFinder, the entry points
// IPluginRegistry::loadLibrary, trtexec --dynamicPlugins and IBuilderConfig::setPluginsToSerialize look up (the
// layout of NVIDIA's own dynamically loaded plugin libraries). TensorRT registers the creators it returns: plugin
// versions "1" and "2".
#include "dynetDynamicConvPlugin.h"

extern "C" {

DYNET_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    dynet::setPluginLoggerFinder(finder);
}

DYNET_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static dynet::DyNetDynamicConv2dPluginCreatorV1 creatorV1;
    static dynet::DyNetDynamicConv2dPluginCreatorV2 creatorV2;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creatorV1, &creatorV2};
    nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}

} // extern "C"
