// dlopen of cuDNN and cuBLAS for the tactics that use them (see dynetDynamicConvLibs.h for the search order).
#include "dynetDynamicConvLibs.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

namespace dynet
{
namespace
{

struct LoadResult
{
    int32_t status{DYNET_ERR_UNSUPPORTED};
    std::string message;
};

void writeMsg(char* msg, size_t size, std::string const& text)
{
    if (msg != nullptr && size > 0)
    {
        std::snprintf(msg, size, "%s", text.c_str());
    }
}

#if defined(DYNET_HAVE_CUDNN) || defined(DYNET_HAVE_CUBLAS)
std::vector<std::string> searchFolders()
{
    std::vector<std::string> folders;
    char const* env = std::getenv(kCudaLibraryPathEnv);
    std::string const list = env != nullptr ? env : "";
    size_t start = 0;
    while (start <= list.size())
    {
        size_t const end = list.find(':', start);
        std::string const folder = list.substr(start, end == std::string::npos ? std::string::npos : end - start);
        if (!folder.empty())
        {
            folders.push_back(folder);
        }
        if (end == std::string::npos)
        {
            break;
        }
        start = end + 1;
    }
    return folders;
}

//! dlopen `soname` by name, else from the first folder of DYNET_CUDA_LIBRARY_PATH holding it; *folder is where it
//! was found ("" for the linker's own search). The handle is kept for the process's lifetime.
void* openLibrary(char const* soname, std::string* folder, std::string& tried)
{
    folder->clear();
    if (void* h = dlopen(soname, RTLD_NOW | RTLD_LOCAL))
    {
        return h;
    }
    tried = std::string(soname) + " (the dynamic linker's search)";
    for (std::string const& dir : searchFolders())
    {
        std::string const path = dir + "/" + soname;
        if (void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL))
        {
            *folder = dir;
            return h;
        }
        tried += ", " + path;
    }
    return nullptr;
}

std::string notFound(char const* soname, std::string const& tried, char const* package)
{
    char const* env = std::getenv(kCudaLibraryPathEnv);
    return std::string(soname) + " not found (tried " + tried + "; " + kCudaLibraryPathEnv + "="
        + (env != nullptr ? env : "<unset>") + "): install " + package + " or add the folder holding " + soname
        + " to " + kCudaLibraryPathEnv + " or LD_LIBRARY_PATH";
}

template <typename Table>
bool resolve(void* handle, char const* name, Table& slot, std::string& error, char const* soname)
{
    void* sym = dlsym(handle, name);
    if (sym == nullptr)
    {
        error = std::string(soname) + " has no symbol " + name + " (too old a version?)";
        return false;
    }
    slot = reinterpret_cast<Table>(sym);
    return true;
}
#endif

#if defined(DYNET_HAVE_CUDNN)
CudnnApi gCudnn;

LoadResult loadCudnn()
{
    LoadResult r;
    char const* soname = "libcudnn.so.9";
    std::string folder;
    std::string tried;
    void* h = openLibrary(soname, &folder, tried);
    if (h == nullptr)
    {
        r.message = notFound(soname, tried, "nvidia-cudnn-cu13 (pip) or cuDNN 9");
        return r;
    }
    if (!folder.empty())
    {
        // cuDNN 9 loads its sub-libraries by soname at first use; found outside the linker's search, they are
        // opened here from the same folder so that those later lookups find them already loaded.
        for (char const* sub : {"libcudnn_graph.so.9", "libcudnn_ops.so.9", "libcudnn_cnn.so.9",
                 "libcudnn_heuristic.so.9", "libcudnn_engines_runtime_compiled.so.9",
                 "libcudnn_engines_precompiled.so.9"})
        {
            static_cast<void>(dlopen((folder + "/" + sub).c_str(), RTLD_LAZY | RTLD_LOCAL));
        }
    }
    std::string error;
#define DYNET_RESOLVE(name)                                                                                            \
    if (!resolve(h, #name, gCudnn.name, error, soname))                                                                \
    {                                                                                                                  \
        r.message = error;                                                                                             \
        return r;                                                                                                      \
    }
    DYNET_CUDNN_FUNCTIONS(DYNET_RESOLVE)
#undef DYNET_RESOLVE
    size_t const version = gCudnn.cudnnGetVersion();
    if (version < 90000)
    {
        r.message = std::string(soname) + " reports version " + std::to_string(version) + "; cuDNN >= 9 is needed";
        return r;
    }
    r.status = DYNET_OK;
    return r;
}
#endif

#if defined(DYNET_HAVE_CUBLAS)
CublasApi gCublas;

LoadResult loadCublas()
{
    LoadResult r;
    std::string folder;
    std::string tried;
    // libcublas needs libcublasLt: opened first, so that a copy found in a search folder satisfies that dependency.
    void* lt = openLibrary("libcublasLt.so.13", &folder, tried);
    if (lt == nullptr)
    {
        r.message = notFound("libcublasLt.so.13", tried, "nvidia-cublas (pip) or cuBLAS 13");
        return r;
    }
    char const* soname = "libcublas.so.13";
    void* h = openLibrary(soname, &folder, tried);
    if (h == nullptr)
    {
        r.message = notFound(soname, tried, "nvidia-cublas (pip) or cuBLAS 13");
        return r;
    }
    std::string error;
#define DYNET_RESOLVE(name)                                                                                            \
    if (!resolve(h, #name, gCublas.name, error, soname))                                                               \
    {                                                                                                                  \
        r.message = error;                                                                                             \
        return r;                                                                                                      \
    }
    DYNET_CUBLAS_FUNCTIONS(DYNET_RESOLVE)
    DYNET_RESOLVE(cublasGemmEx)
    DYNET_RESOLVE(cublasGemmStridedBatchedEx)
#undef DYNET_RESOLVE
    r.status = DYNET_OK;
    return r;
}
#endif

LoadResult const& loaded(int32_t library)
{
    // Each library is tried once per process (function-local statics are initialised thread-safely).
#if defined(DYNET_HAVE_CUDNN)
    static LoadResult const cudnn = loadCudnn();
#else
    static LoadResult const cudnn{DYNET_ERR_UNSUPPORTED, "this library was built without cuDNN (its tactic "
        "needs the cuDNN headers at build time: CUDNN_ROOT, or the nvidia-cudnn-cu13 package)"};
#endif
#if defined(DYNET_HAVE_CUBLAS)
    static LoadResult const cublas = loadCublas();
#else
    static LoadResult const cublas{DYNET_ERR_UNSUPPORTED, "this library was built without cuBLAS (its tactics "
        "need the cuBLAS headers at build time: CUBLAS_ROOT, or the nvidia-cublas package)"};
#endif
    static LoadResult const unknown{DYNET_ERR_INVALID_ARGUMENT, "unknown library id"};
    return library == DYNET_LIBRARY_CUDNN ? cudnn : library == DYNET_LIBRARY_CUBLAS ? cublas : unknown;
}

} // namespace

int32_t loadCudaLibrary(int32_t library, char* msg, size_t msgSize) noexcept
{
    try
    {
        LoadResult const& r = loaded(library);
        writeMsg(msg, msgSize, r.message);
        return r.status;
    }
    catch (...)
    {
        writeMsg(msg, msgSize, "out of host memory while loading a CUDA library");
        return DYNET_ERR_UNSUPPORTED;
    }
}

#if defined(DYNET_HAVE_CUDNN)
CudnnApi const& cudnnApi() noexcept
{
    return gCudnn;
}
#endif

#if defined(DYNET_HAVE_CUBLAS)
CublasApi const& cublasApi() noexcept
{
    return gCublas;
}
#endif

} // namespace dynet

extern "C" int32_t dynet_conv_cuda_library_status(int32_t library, char* msg, size_t msg_size)
{
    return dynet::loadCudaLibrary(library, msg, msg_size);
}
