// Runs a kiln artifact's model.so through TVM's Relax VM on the CPU, outside Python: built for
// aarch64 and run under qemu-user, it executes aarch64 artifacts on an x86 machine.
//
//   vm_runner MODEL.so OUT_DIR D0xD1x...=INPUT.bin ...
//
// Each input is raw little-endian float32 of the given shape, in the model's input order. Output i
// is written to OUT_DIR/output_i.bin (raw float32), and "output_i D0xD1x..." is printed for it.
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;
using ffi::Tensor;

namespace {

constexpr int kPooledAllocator = 2;  // tvm.runtime.vm.VirtualMachine.POOLED_ALLOCATOR
const DLDataType kFloat32{kDLFloat, 32, 1};
const DLDevice kCPU{kDLCPU, 0};
constexpr size_t kAlignment = 64;  // what TVM's own CPU allocator gives, and its kernels may assume

struct AlignedAllocator {
  void AllocData(DLTensor* tensor) {
    size_t size = (ffi::GetDataSize(*tensor) + kAlignment - 1) / kAlignment * kAlignment;
    tensor->data = std::aligned_alloc(kAlignment, size ? size : kAlignment);
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

std::vector<int64_t> ParseShape(const std::string& text) {
  std::vector<int64_t> shape;
  std::stringstream stream(text);
  for (std::string dim; std::getline(stream, dim, 'x');) shape.push_back(std::stoll(dim));
  return shape;
}

std::string FormatShape(const Tensor& tensor) {
  std::string text;
  for (int i = 0; i < tensor.ndim(); ++i) text += (i ? "x" : "") + std::to_string(tensor.size(i));
  return text;
}

size_t NumBytes(const Tensor& tensor) { return ffi::GetDataSize(static_cast<size_t>(tensor.numel()), tensor.dtype()); }

Tensor ReadInput(const std::string& spec) {
  size_t split = spec.find('=');
  if (split == std::string::npos) throw std::runtime_error("input must be SHAPE=FILE, got " + spec);
  std::vector<int64_t> shape = ParseShape(spec.substr(0, split));
  std::ifstream file(spec.substr(split + 1), std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  Tensor tensor = Tensor::FromNDAlloc(AlignedAllocator(), ffi::Shape(shape), kFloat32, kCPU);
  if (bytes.size() != NumBytes(tensor)) {
    throw std::runtime_error(spec + ": " + std::to_string(bytes.size()) + " bytes, shape needs " +
                             std::to_string(NumBytes(tensor)));
  }
  std::memcpy(tensor.data_ptr(), bytes.data(), bytes.size());
  return tensor;
}

void WriteOutput(const Tensor& tensor, const std::string& path) {
  if (tensor.dtype().code != kDLFloat || tensor.dtype().bits != 32 || !tensor.IsContiguous()) {
    throw std::runtime_error("vm_runner writes contiguous float32 outputs only");
  }
  const char* data = static_cast<const char*>(tensor.data_ptr()) + tensor.byte_offset();
  std::ofstream(path, std::ios::binary).write(data, static_cast<std::streamsize>(NumBytes(tensor)));
}

std::vector<Tensor> Run(const std::string& library, const std::vector<Tensor>& inputs) {
  ffi::Module executable = ffi::Module::LoadFromFile(library);
  ffi::Module vm = executable->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, kPooledAllocator);
  std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
  ffi::Any result;
  vm->GetFunction("main").value().CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
  if (auto tensor = result.try_cast<Tensor>()) return {*tensor};
  std::vector<Tensor> outputs;
  for (const ffi::Any& item : result.cast<ffi::Array<ffi::Any>>()) outputs.push_back(item.cast<Tensor>());
  return outputs;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: vm_runner MODEL.so OUT_DIR D0xD1x...=INPUT.bin ...\n";
    return 2;
  }
  try {
    std::vector<Tensor> inputs;
    for (int i = 3; i < argc; ++i) inputs.push_back(ReadInput(argv[i]));
    std::vector<Tensor> outputs = Run(argv[1], inputs);
    for (size_t i = 0; i < outputs.size(); ++i) {
      std::string name = "output_" + std::to_string(i);
      WriteOutput(outputs[i], std::string(argv[2]) + "/" + name + ".bin");
      std::cout << name << " " << FormatShape(outputs[i]) << "\n";
    }
  } catch (const std::exception& error) {
    std::cerr << "vm_runner: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
