// Loads a TorchScript module saved from Python and runs its forward on tensors saved with
// torch.save (a list or tuple of tensors), writing the output with torch::pickle_save.
// Usage: svcca_run_script MODULE.pt INPUTS.pt OUTPUT.pt
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/script.h>
#include <torch/serialize.h>

#include <fstream>
#include <iostream>
#include <iterator>

namespace {

std::vector<char> read_file(const char* path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(std::string("cannot open ") + path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: svcca_run_script MODULE.pt INPUTS.pt OUTPUT.pt\n";
    return 2;
  }
  try {
    torch::jit::Module module = torch::jit::load(argv[1]);
    c10::IValue inputs = torch::pickle_load(read_file(argv[2]));
    std::vector<c10::IValue> args;
    if (inputs.isTuple()) {
      for (const auto& v : inputs.toTupleRef().elements()) args.push_back(v);
    } else if (inputs.isList()) {
      for (const auto& v : inputs.toListRef()) args.push_back(v);
    } else {
      args.push_back(inputs);
    }
    c10::IValue out = module.forward(args);
    std::vector<char> bytes = torch::pickle_save(out);
    std::ofstream(argv[3], std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return 0;
  } catch (const c10::Error& e) {
    std::cerr << "svcca_run_script: " << e.what_without_backtrace() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "svcca_run_script: " << e.what() << "\n";
  }
  return 1;
}
