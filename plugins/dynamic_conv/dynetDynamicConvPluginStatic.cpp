// Static registration of the DyNetDynamicConv2d TensorRT plugin: libdynet_dynamic_conv_trt.so registers its creator
// with TensorRT's global registry when it is loaded (ctypes, LD_PRELOAD, polygraphy --plugins, trtexec
// --staticPlugins). It exports nothing: no getCreators, so IPluginRegistry::loadLibrary is not for this library
// (that is libdynet_dynamic_conv_trt_dynamic.so), and never both in one process.
#include "dynetDynamicConvPlugin.h"

using dynet::DyNetDynamicConv2dPluginCreator;
REGISTER_TENSORRT_PLUGIN(DyNetDynamicConv2dPluginCreator);
