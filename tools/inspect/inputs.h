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

// Bytes of memory this process can still allocate: /proc/meminfo's MemAvailable, or the cgroup's
// memory.max minus memory.current when that is lower (-1 where neither can be read).
int64_t available_memory_bytes();
// The machine's memory: /proc/meminfo's MemTotal, or the cgroup's memory.max when lower (-1 where
// neither can be read).
int64_t total_memory_bytes();
// "1.50 GiB" or "300 MiB".
std::string size_text(double bytes);
// Throws an Error with `exit_code` unless `bytes` fits in the available memory; `what` says what
// would need them (e.g. "'big.npy' ([1000000, 4096] of dtype '<f4')").
void check_fits_in_memory(int exit_code, const std::string& what, double bytes);

// Throws InputError unless `path` is a regular file that can be read (or a link to one): a
// missing file, a folder, a symbolic link loop, a device (/dev/zero), a FIFO or a socket each get
// their own message. `what` names the kind of file in messages ("file", "model file").
void check_regular_file(const std::string& path, const std::string& what = "file");

// Reads a .npy file (format versions 1, 2 and 3). float32 and float64 keep their dtype; float16
// and integer arrays become float32; bool, complex, string, object and structured arrays are
// rejected. The data is read (pread) into memory the tensor owns, after checking that it fits in
// the available memory. Throws InputError naming the file and what is wrong: not a .npy, not a
// regular file, truncated (shape vs file size), corrupt header, too large for memory.
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

// "64,1,8,8" (or "64x1x8x8") -> {64, 1, 8, 8}; every size >= 1 and their product below 2^62.
// Throws UsageError.
std::vector<int64_t> parse_shape(const std::string& option, const std::string& text);
std::string shape_string(at::IntArrayRef shape);

struct NpyFile;  // an open .npy file read by rows (inputs.cpp)

// The examples fed to a model, along dim 0, read one batch at a time.
class InputSource {
 public:
  // A tensor file (read_tensor). A C-order .npy stays on disk: each batch reads only its rows
  // (pread into a fresh tensor, so inputs may be larger than memory), and a file that shrinks or
  // grows while it is read (np.save over it) is an InputError, never a crash.
  static InputSource from_file(const std::string& path);
  // Standard normal float32 values of `shape`, from `seed`. The numbers do not depend on the
  // batch size: rows are drawn in fixed chunks, each from its own seeded generator.
  static InputSource random(std::vector<int64_t> shape, uint64_t seed);

  int64_t n() const { return shape_.empty() ? 0 : shape_[0]; }
  const std::vector<int64_t>& shape() const { return shape_; }
  // Rows [start, start + count) as a contiguous tensor. Throws (UsageError for random inputs,
  // InputError for files) when the batch does not fit in the available memory, and InputError
  // when a file's batch holds NaN or infinite values or the file changed while being read.
  at::Tensor batch(int64_t start, int64_t count) const;
  // Bytes of one example (row) as batch() returns it.
  int64_t row_bytes() const { return row_bytes_; }
  // E.g. "probe.npy" or "random [64, 1, 8, 8], seed 0": for reports.
  const std::string& description() const { return description_; }

 private:
  at::Tensor tensor_;                   // the file's tensor (not a C-order .npy, not random)
  std::shared_ptr<const NpyFile> npy_;  // a C-order .npy, read by batch
  std::vector<int64_t> shape_;
  int64_t row_bytes_ = 0;
  uint64_t seed_ = 0;
  std::string description_;
};

}  // namespace svcca::inspect
