// Writes tensor files the way C++ users do (torch::save of a tensor and of a vector, and
// torch::pickle_save), for svcca-inspect's reader tests: write_tensors OUT_DIR.
#include <torch/serialize.h>

#include <fstream>
#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: svcca_cli_write_tensors OUT_DIR\n";
    return 2;
  }
  const std::string dir = argv[1];
  // Deterministic values: y = x A, so that CCA between them is exactly 1.
  const torch::Tensor x = torch::arange(0, 200, torch::kDouble).reshape({50, 4}).sin();
  const torch::Tensor a = torch::tensor(
      {{2.0, 0.5, 0.0, 1.0}, {0.0, 1.0, 0.3, 0.0}, {1.0, 0.0, 1.0, 0.2}, {0.0, 0.7, 0.0, 1.5}},
      torch::kDouble);
  const torch::Tensor y = x.matmul(a).to(torch::kFloat);
  torch::save(x, dir + "/cpp_save.pt");
  torch::save(std::vector<torch::Tensor>{x, y}, dir + "/cpp_save_vector.pt");
  const std::vector<char> bytes = torch::pickle_save(y);
  std::ofstream(dir + "/cpp_pickle.pt", std::ios::binary).write(bytes.data(), bytes.size());
  return 0;
}
