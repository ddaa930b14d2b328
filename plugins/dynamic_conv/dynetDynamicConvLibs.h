// cuDNN and cuBLAS, loaded when a plan needs them (dlopen), never linked: the libraries of this project load and run
// their other tactics where neither is installed. Each library's functions are resolved once into a table of
// function pointers; the tactics call through the table.
//
// Where a library is looked for, in order (first hit wins):
//   1. its soname (libcudnn.so.9; libcublasLt.so.13 then libcublas.so.13) through the dynamic linker's own search:
//      LD_LIBRARY_PATH, the system's ld.so.cache, an already loaded copy (torch's, onnxruntime's);
//   2. each folder of the environment variable DYNET_CUDA_LIBRARY_PATH (':'-separated), which the Python package
//      sets to the lib/ folders of the installed nvidia-* wheels (nvidia/cudnn/lib, nvidia/cu13/lib) when unset.
// A library that is absent, or lacks a function, gives DYNET_ERR_UNSUPPORTED with a message naming what was tried.
#ifndef DYNET_DYNAMIC_CONV_LIBS_H
#define DYNET_DYNAMIC_CONV_LIBS_H

#include "dynetDynamicConv.h"

#include <cstddef>
#include <cstdint>

#if defined(DYNET_HAVE_CUDNN)
#include <cudnn.h>
#endif
#if defined(DYNET_HAVE_CUBLAS)
#include <cublas_v2.h>
#endif

namespace dynet
{

//! The environment variable holding extra folders to look for cuDNN / cuBLAS in.
constexpr char const* kCudaLibraryPathEnv = "DYNET_CUDA_LIBRARY_PATH";

//! Load `library` (DYNET_LIBRARY_CUDNN or DYNET_LIBRARY_CUBLAS) once per process; DYNET_OK when its table is ready,
//! else DYNET_ERR_UNSUPPORTED with the reason in msg (also when this build has no tactic using it).
int32_t loadCudaLibrary(int32_t library, char* msg, size_t msgSize) noexcept;

#if defined(DYNET_HAVE_CUDNN)
#define DYNET_CUDNN_FUNCTIONS(X)                                                                                       \
    X(cudnnGetVersion)                                                                                                 \
    X(cudnnGetErrorString)                                                                                             \
    X(cudnnCreate)                                                                                                     \
    X(cudnnDestroy)                                                                                                    \
    X(cudnnSetStream)                                                                                                  \
    X(cudnnCreateTensorDescriptor)                                                                                     \
    X(cudnnDestroyTensorDescriptor)                                                                                    \
    X(cudnnSetTensor4dDescriptor)                                                                                      \
    X(cudnnCreateFilterDescriptor)                                                                                     \
    X(cudnnDestroyFilterDescriptor)                                                                                    \
    X(cudnnSetFilter4dDescriptor)                                                                                      \
    X(cudnnCreateConvolutionDescriptor)                                                                                \
    X(cudnnDestroyConvolutionDescriptor)                                                                               \
    X(cudnnSetConvolution2dDescriptor)                                                                                 \
    X(cudnnSetConvolutionGroupCount)                                                                                   \
    X(cudnnSetConvolutionMathType)                                                                                     \
    X(cudnnCreateActivationDescriptor)                                                                                 \
    X(cudnnDestroyActivationDescriptor)                                                                                \
    X(cudnnSetActivationDescriptor)                                                                                    \
    X(cudnnGetConvolution2dForwardOutputDim)                                                                           \
    X(cudnnGetConvolutionForwardAlgorithm_v7)                                                                          \
    X(cudnnGetConvolutionForwardWorkspaceSize)                                                                         \
    X(cudnnConvolutionBiasActivationForward)

struct CudnnApi
{
#define DYNET_DECLARE_FN(name) decltype(&::name) name{nullptr};
    DYNET_CUDNN_FUNCTIONS(DYNET_DECLARE_FN)
#undef DYNET_DECLARE_FN
};

//! The cuDNN table; valid only after loadCudaLibrary(DYNET_LIBRARY_CUDNN) returned DYNET_OK.
CudnnApi const& cudnnApi() noexcept;
#endif

#if defined(DYNET_HAVE_CUBLAS)
#define DYNET_CUBLAS_FUNCTIONS(X)                                                                                      \
    X(cublasCreate_v2)                                                                                                 \
    X(cublasDestroy_v2)                                                                                                \
    X(cublasSetStream_v2)                                                                                              \
    X(cublasSetWorkspace_v2)                                                                                           \
    X(cublasSetMathMode)                                                                                               \
    X(cublasGetStatusString)

// The GEMMs are overloaded in C++ (a deprecated cudaDataType compute type): their C signatures, spelled out.
using CublasGemmEx = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
    void const*, void const*, cudaDataType, int, void const*, cudaDataType, int, void const*, void*, cudaDataType, int,
    cublasComputeType_t, cublasGemmAlgo_t);
using CublasGemmStridedBatchedEx = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int,
    int, void const*, void const*, cudaDataType, int, long long int, void const*, cudaDataType, int, long long int,
    void const*, void*, cudaDataType, int, long long int, int, cublasComputeType_t, cublasGemmAlgo_t);

struct CublasApi
{
#define DYNET_DECLARE_FN(name) decltype(&::name) name{nullptr};
    DYNET_CUBLAS_FUNCTIONS(DYNET_DECLARE_FN)
#undef DYNET_DECLARE_FN
    CublasGemmEx cublasGemmEx{nullptr};
    CublasGemmStridedBatchedEx cublasGemmStridedBatchedEx{nullptr};
};

//! The cuBLAS table; valid only after loadCudaLibrary(DYNET_LIBRARY_CUBLAS) returned DYNET_OK.
CublasApi const& cublasApi() noexcept;
#endif

} // namespace dynet

#endif // DYNET_DYNAMIC_CONV_LIBS_H
