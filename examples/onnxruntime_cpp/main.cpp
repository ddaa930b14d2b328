// dynet_ort_run: run a fused graph (DyNetDynamicConv2d nodes) from C++ with onnxruntime's C++ API and the op library.
//
//   dynet_ort_run MODEL.onnx OP_LIBRARY.so INPUT OUTPUT [--shape N,C,H,W] [--threads T]
//
// INPUT is a float32 .npy file (C order), or a raw little-endian float32 file whose shape is --shape (default: the
// model input's shape when it is fully static). OUTPUT is written as .npy when its name ends in .npy, else as raw
// float32. The graph must have one float32 input; its first output is written, and each output's shape printed.
// Exit status: 0 done, 1 a failure (onnxruntime's message, or what is wrong with a file), 2 a usage error.
#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace
{

struct Tensor
{
    std::vector<int64_t> shape;
    std::vector<float> data;
};

struct UsageError : std::runtime_error
{
    using std::runtime_error::runtime_error;
};

std::string shapeText(std::vector<int64_t> const& shape)
{
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i)
    {
        s += (i ? ", " : "") + (shape[i] < 0 ? std::string("?") : std::to_string(shape[i]));
    }
    return s + "]";
}

int64_t elementCount(std::vector<int64_t> const& shape)
{
    int64_t n = 1;
    for (int64_t d : shape)
    {
        n *= d;
    }
    return n;
}

bool endsWith(std::string const& s, std::string const& suffix)
{
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string readFile(std::string const& path)
{
    std::ifstream f(path, std::ios::binary);
    if (!f)
    {
        throw std::runtime_error("cannot open " + path);
    }
    std::ostringstream s;
    s << f.rdbuf();
    return s.str();
}

void writeFile(std::string const& path, std::string const& bytes)
{
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!f)
    {
        throw std::runtime_error("cannot write " + path);
    }
}

std::vector<int64_t> parseShape(std::string const& text, std::string const& what)
{
    std::vector<int64_t> shape;
    std::stringstream s(text);
    std::string item;
    while (std::getline(s, item, ','))
    {
        size_t used = 0;
        long long v = -1;
        try
        {
            v = std::stoll(item, &used);
        }
        catch (std::exception const&)
        {
            used = 0;
        }
        while (used < item.size() && item[used] == ' ')
        {
            ++used;
        }
        if (item.empty() || used != item.size() || v < 0)
        {
            throw std::runtime_error(what + " '" + text + "' is not a list of sizes like 1,3,32,32");
        }
        shape.push_back(v);
    }
    return shape;
}

// .npy format 1.0-3.0 (numpy.lib.format): magic, version, header length, a Python dict literal, the data.
Tensor readNpy(std::string const& path)
{
    std::string const bytes = readFile(path);
    if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0)
    {
        throw std::runtime_error(path + " is not an .npy file");
    }
    int const major = static_cast<unsigned char>(bytes[6]);
    size_t headerLen = 0;
    size_t offset = 0;
    if (major == 1)
    {
        headerLen = static_cast<unsigned char>(bytes[8])
            | (static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8);
        offset = 10;
    }
    else if ((major == 2 || major == 3) && bytes.size() >= 12)
    {
        for (int i = 0; i < 4; ++i)
        {
            headerLen |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
        }
        offset = 12;
    }
    else
    {
        throw std::runtime_error(path + ": unsupported .npy version " + std::to_string(major));
    }
    if (offset + headerLen > bytes.size())
    {
        throw std::runtime_error(path + ": truncated .npy header");
    }
    std::string const header = bytes.substr(offset, headerLen);
    if (header.find("'descr': '<f4'") == std::string::npos)
    {
        throw std::runtime_error(path + ": expected float32 little-endian data ('<f4'); header: " + header
            + " (save it with numpy as arr.astype(np.float32))");
    }
    if (header.find("'fortran_order': False") == std::string::npos)
    {
        throw std::runtime_error(path + ": Fortran-ordered arrays are not read; save np.ascontiguousarray(arr)");
    }
    size_t const key = header.find("'shape':");
    size_t const open = header.find('(', key);
    size_t const close = header.find(')', open);
    if (key == std::string::npos || open == std::string::npos || close == std::string::npos)
    {
        throw std::runtime_error(path + ": no shape in the .npy header: " + header);
    }
    std::string dims = header.substr(open + 1, close - open - 1);
    while (!dims.empty() && (dims.back() == ',' || dims.back() == ' '))
    {
        dims.pop_back();
    }
    Tensor t;
    t.shape = dims.empty() ? std::vector<int64_t>{} : parseShape(dims, path + ": shape");
    size_t const count = static_cast<size_t>(elementCount(t.shape));
    size_t const dataStart = offset + headerLen;
    if (bytes.size() - dataStart != count * sizeof(float))
    {
        throw std::runtime_error(path + ": shape " + shapeText(t.shape) + " needs " + std::to_string(count * 4)
            + " data bytes, the file has " + std::to_string(bytes.size() - dataStart));
    }
    t.data.resize(count);
    std::memcpy(t.data.data(), bytes.data() + dataStart, count * sizeof(float));
    return t;
}

void writeNpy(std::string const& path, std::vector<int64_t> const& shape, float const* data)
{
    std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
    for (size_t i = 0; i < shape.size(); ++i)
    {
        dict += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
        dict += i + 1 < shape.size() ? " " : "";
    }
    dict += "), }";
    size_t const unpadded = 10 + dict.size() + 1; // magic + version + length, the dict, '\n'
    dict += std::string((64 - unpadded % 64) % 64, ' ') + "\n";
    std::string bytes("\x93NUMPY\x01\x00", 8);
    bytes += static_cast<char>(dict.size() & 0xff);
    bytes += static_cast<char>((dict.size() >> 8) & 0xff);
    bytes += dict;
    bytes.append(reinterpret_cast<char const*>(data), static_cast<size_t>(elementCount(shape)) * sizeof(float));
    writeFile(path, bytes);
}

Tensor readRaw(std::string const& path, std::vector<int64_t> const& shape)
{
    std::string const bytes = readFile(path);
    size_t const count = static_cast<size_t>(elementCount(shape));
    if (bytes.size() != count * sizeof(float))
    {
        throw std::runtime_error(path + ": shape " + shapeText(shape) + " needs " + std::to_string(count * 4)
            + " bytes of float32, the file has " + std::to_string(bytes.size()));
    }
    Tensor t{shape, std::vector<float>(count)};
    std::memcpy(t.data.data(), bytes.data(), bytes.size());
    return t;
}

int run(int argc, char** argv)
{
    std::vector<std::string> positional;
    std::string shapeArg;
    int threads = 0;
    for (int i = 1; i < argc; ++i)
    {
        std::string const a = argv[i];
        if ((a == "--shape" || a == "--threads") && i + 1 < argc)
        {
            std::string const v = argv[++i];
            if (a == "--shape")
            {
                shapeArg = v;
            }
            else
            {
                size_t used = 0;
                try
                {
                    threads = std::stoi(v, &used);
                }
                catch (std::exception const&)
                {
                    used = 0;
                }
                if (used == 0 || used != v.size() || threads < 1)
                {
                    throw UsageError("--threads takes a positive count, got '" + v + "'");
                }
            }
        }
        else if (a.rfind("--", 0) == 0)
        {
            throw UsageError("unknown or incomplete option " + a);
        }
        else
        {
            positional.push_back(a);
        }
    }
    if (positional.size() != 4)
    {
        throw UsageError("expected MODEL.onnx OP_LIBRARY.so INPUT OUTPUT");
    }
    std::string const& modelPath = positional[0];
    std::string const& libraryPath = positional[1];
    std::string const& inputPath = positional[2];
    std::string const& outputPath = positional[3];

    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "dynet_ort_run");
    Ort::SessionOptions options;
    if (threads > 0)
    {
        options.SetIntraOpNumThreads(threads);
    }
    // onnxruntime loads the library, calls its RegisterCustomOps and keeps it loaded while the options live.
    options.RegisterCustomOpsLibrary(libraryPath.c_str());
    Ort::Session session(env, modelPath.c_str(), options);

    Ort::AllocatorWithDefaultOptions allocator;
    if (session.GetInputCount() != 1)
    {
        throw std::runtime_error(modelPath + " has " + std::to_string(session.GetInputCount())
            + " inputs; this example feeds graphs with one");
    }
    std::string const inputName = session.GetInputNameAllocated(0, allocator).get();
    Ort::TypeInfo const inputType = session.GetInputTypeInfo(0); // owns what inputInfo views
    auto const inputInfo = inputType.GetTensorTypeAndShapeInfo();
    if (inputInfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    {
        throw std::runtime_error("input '" + inputName + "' is not float32; this example feeds float32");
    }
    std::vector<int64_t> const modelShape = inputInfo.GetShape();

    Tensor input;
    if (endsWith(inputPath, ".npy"))
    {
        if (!shapeArg.empty())
        {
            throw UsageError("--shape is for raw inputs; an .npy file carries its shape");
        }
        input = readNpy(inputPath);
    }
    else
    {
        std::vector<int64_t> shape = modelShape;
        if (!shapeArg.empty())
        {
            try
            {
                shape = parseShape(shapeArg, "--shape");
            }
            catch (std::runtime_error const& e)
            {
                throw UsageError(e.what());
            }
        }
        bool dynamic = false;
        for (int64_t d : shape)
        {
            dynamic = dynamic || d < 0;
        }
        if (dynamic)
        {
            throw UsageError("input '" + inputName + "' has the dynamic shape " + shapeText(modelShape)
                + "; give a raw input's shape with --shape, e.g. --shape 1,3,32,32");
        }
        input = readRaw(inputPath, shape);
    }
    bool fits = input.shape.size() == modelShape.size();
    for (size_t i = 0; fits && i < modelShape.size(); ++i)
    {
        fits = modelShape[i] < 0 || modelShape[i] == input.shape[i];
    }
    if (!fits)
    {
        throw std::runtime_error("input " + inputPath + " has shape " + shapeText(input.shape) + ", the model's input '"
            + inputName + "' is " + shapeText(modelShape));
    }

    auto const memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    Ort::Value inputValue = Ort::Value::CreateTensor<float>(
        memory, input.data.data(), input.data.size(), input.shape.data(), input.shape.size());

    std::vector<std::string> outputNames;
    for (size_t i = 0; i < session.GetOutputCount(); ++i)
    {
        outputNames.push_back(session.GetOutputNameAllocated(i, allocator).get());
    }
    std::vector<char const*> outputNamePtrs;
    for (auto const& name : outputNames)
    {
        outputNamePtrs.push_back(name.c_str());
    }
    char const* inputNamePtr = inputName.c_str();
    std::vector<Ort::Value> outputs = session.Run(
        Ort::RunOptions{nullptr}, &inputNamePtr, &inputValue, 1, outputNamePtrs.data(), outputNamePtrs.size());

    for (size_t i = 0; i < outputs.size(); ++i)
    {
        auto const info = outputs[i].GetTensorTypeAndShapeInfo();
        std::cout << "output '" << outputNames[i] << "': " << shapeText(info.GetShape())
                  << (i == 0 ? " -> " + outputPath : std::string()) << "\n";
    }
    auto const info = outputs[0].GetTensorTypeAndShapeInfo();
    if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    {
        throw std::runtime_error("output '" + outputNames[0] + "' is not float32; this example writes float32");
    }
    std::vector<int64_t> const shape = info.GetShape();
    float const* data = outputs[0].GetTensorData<float>();
    if (endsWith(outputPath, ".npy"))
    {
        writeNpy(outputPath, shape, data);
    }
    else
    {
        writeFile(outputPath,
            std::string(reinterpret_cast<char const*>(data), static_cast<size_t>(elementCount(shape)) * sizeof(float)));
    }
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    try
    {
        return run(argc, argv);
    }
    catch (UsageError const& e)
    {
        std::cerr << "usage: " << argv[0] << " MODEL.onnx OP_LIBRARY.so INPUT(.npy|raw float32) OUTPUT(.npy|raw)"
                  << " [--shape N,C,H,W] [--threads T]\nerror: " << e.what() << "\n";
        return 2;
    }
    catch (Ort::Exception const& e)
    {
        std::cerr << "onnxruntime: " << e.what() << "\n";
        return 1;
    }
    catch (std::exception const& e)
    {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
