// Static registration of the DyNetDynamicConv2d TensorRT plugin: libdynet_dynamic_conv_trt.so registers its creators
// (plugin versions "1" and "2") with TensorRT's global registry when it is loaded (ctypes, LD_PRELOAD, polygraphy --plugins, trtexec
// --staticPlugins). It exports nothing: no getCreators, so IPluginRegistry::loadLibrary is not for this library
// (that is libdynet_dynamic_conv_trt_dynamic.so), and never both in one process.
#include "dynetDynamicConvPlugin.h"

using dynet::DyNetDynamicConv2dPluginCreatorV1;
using dynet::DyNetDynamicConv2dPluginCreatorV2;
REGISTER_TENSORRT_PLUGIN(DyNetDynamicConv2dPluginCreatorV1);
REGISTER_TENSORRT_PLUGIN(DyNetDynamicConv2dPluginCreatorV2);
