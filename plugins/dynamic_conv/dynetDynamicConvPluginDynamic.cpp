// Dynamic registration of the DyNetDynamicConv2d TensorRT plugin: libdynet_dynamic_conv_trt_dynamic.so registers
// nothing by itself and exports only getCreators and setLoggerFinder, the entry points
// IPluginRegistry::loadLibrary, trtexec --dynamicPlugins and IBuilderConfig::setPluginsToSerialize look up (the
// layout of NVIDIA's own dynamically loaded plugin libraries). TensorRT registers the creator it returns.
#include "dynetDynamicConvPlugin.h"

extern "C" {

DYNET_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    dynet::setPluginLoggerFinder(finder);
}

DYNET_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static dynet::DyNetDynamicConv2dPluginCreator creator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}

} // extern "C"
