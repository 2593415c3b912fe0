// Input and activation files of svcca-inspect: a strict .npy reader, .pt tensor files (Python's
// torch.save; C++'s torch::save and torch::pickle_save), and seeded random inputs, by batch.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace svcca::inspect {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Reads a .npy file (format versions 1, 2 and 3). float32 and float64 keep their dtype; float16
// and integer arrays become float32; bool, complex, string, object and structured arrays are
// rejected. Little-endian C-order float32/float64 data is memory-mapped, not read, so slicing a
// batch touches only that batch's rows (inputs larger than memory). Throws InputError naming
// the file and what is wrong: not a .npy, truncated (shape vs file size), corrupt header.
at::Tensor read_npy(const std::string& path);

// Every tensor of a tensor file, by name, in file order. The format is found from the content:
//   .npy                                  one tensor, named after the file stem
//   torch.save(t) / torch::pickle_save(t) one tensor, named after the file stem
//   torch.save({name: t, ...})            a dict of str -> tensor (two or more entries: LibTorch
//                                         1.13 cannot unpickle a one-entry dict)
//   torch.save([t0, t1]) / tuple          "0", "1", ...
//   torch::save(t) / torch::save(vector)  the archive's tensors, "0", "1", ... (one: file stem)
// Throws InputError for a missing file, a TorchScript model, a state_dict-like nest, text, etc.
NamedTensors read_tensors(const std::string& path);

// Exactly one tensor (a model's input); throws InputError when the file holds several.
at::Tensor read_tensor(const std::string& path);

// "64,1,8,8" (or "64x1x8x8") -> {64, 1, 8, 8}; every size >= 1. Throws UsageError.
std::vector<int64_t> parse_shape(const std::string& option, const std::string& text);
std::string shape_string(at::IntArrayRef shape);

// The examples fed to a model, along dim 0, read one batch at a time.
class InputSource {
 public:
  // A tensor file (read_tensor); a memory-mapped .npy is sliced without reading all of it.
  static InputSource from_file(const std::string& path);
  // Standard normal float32 values of `shape`, from `seed`. The numbers do not depend on the
  // batch size: rows are drawn in fixed chunks, each from its own seeded generator.
  static InputSource random(std::vector<int64_t> shape, uint64_t seed);

  int64_t n() const { return shape_.empty() ? 0 : shape_[0]; }
  const std::vector<int64_t>& shape() const { return shape_; }
  // Rows [start, start + count) as a contiguous tensor.
  at::Tensor batch(int64_t start, int64_t count) const;
  // E.g. "probe.npy" or "random [64, 1, 8, 8], seed 0": for reports.
  const std::string& description() const { return description_; }

 private:
  at::Tensor tensor_;  // the file's tensor; undefined for random inputs
  std::vector<int64_t> shape_;
  uint64_t seed_ = 0;
  std::string description_;
};

}  // namespace svcca::inspect
