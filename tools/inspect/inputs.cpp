// Input and activation files of svcca-inspect: .npy, .pt tensor files and seeded random inputs.
#include "inputs.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/Exception.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <torch/csrc/jit/serialization/import.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "errors.h"

namespace svcca::inspect {
namespace {

namespace fs = std::filesystem;

std::string quoted(const std::string& path) {
  return "'" + path + "'";
}

// Text from a file (a .npy header) as it can go into a one-line message: control bytes, NUL
// included, as \xNN (a NUL would otherwise end the message where it stands).
std::string printable(const std::string& s) {
  std::string out;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u != 0x7f) {
      out += c;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      out += buf;
    }
  }
  return out;
}

// Why `path` cannot be opened, from errno after stat() or open().
std::string open_problem(const std::string& path, int error) {
  switch (error) {
    case ENOENT:
      return quoted(path) + ": no such file";
    case ENOTDIR:
      return quoted(path) + ": no such file (a part of the path is not a folder)";
    case ELOOP:
      return quoted(path) + ": cannot be read: a symbolic link loop (" + std::strerror(error) + ")";
    default:
      return quoted(path) + ": cannot be read: " + std::strerror(error);
  }
}

// Opens `path` for reading. O_NONBLOCK: opening a FIFO without a writer would block for ever; only
// regular files are kept (a device such as /dev/zero never ends, a FIFO or socket has no size).
int open_regular(const std::string& path, const std::string& what, struct stat* st) {
  if (path.empty()) throw InputError("the " + what + " name is empty");
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int error = errno;
    struct stat s {};
    if (error == EACCES && ::stat(path.c_str(), &s) == 0 && S_ISDIR(s.st_mode))
      throw InputError(quoted(path) + ": is a folder, not a " + what);
    throw InputError(open_problem(path, error));
  }
  struct Closer {
    int fd;
    bool keep = false;
    ~Closer() {
      if (!keep) ::close(fd);
    }
  } closer{fd};
  if (::fstat(fd, st) != 0)
    throw InputError(quoted(path) + ": cannot stat: " + std::strerror(errno));
  if (S_ISDIR(st->st_mode)) throw InputError(quoted(path) + ": is a folder, not a " + what);
  if (!S_ISREG(st->st_mode)) {
    const char* kind = S_ISFIFO(st->st_mode)   ? "a FIFO (named pipe)"
                       : S_ISCHR(st->st_mode)  ? "a character device"
                       : S_ISBLK(st->st_mode)  ? "a block device"
                       : S_ISSOCK(st->st_mode) ? "a socket"
                                               : "not a regular file";
    throw InputError(quoted(path) + ": is " + kind + ", not a regular " + what +
                     " (svcca-inspect reads regular files only, whose size it can check)");
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0)
    throw InputError(quoted(path) + ": cannot be read: " + std::strerror(errno));
  closer.keep = true;
  return fd;
}

struct FdCloser {
  int fd;
  ~FdCloser() { ::close(fd); }
};

// Reads exactly `bytes` bytes at `offset`; returns how many it got before the end of the file.
int64_t pread_full(const std::string& path, int fd, char* data, int64_t bytes, int64_t offset) {
  int64_t done = 0;
  while (done < bytes) {
    const ssize_t got = ::pread(fd, data + done, static_cast<size_t>(bytes - done), offset + done);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw InputError(quoted(path) + ": read error: " + std::strerror(errno));
    if (got == 0) break;
    done += got;
  }
  return done;
}

std::vector<char> read_bytes(const std::string& path) {
  struct stat st {};
  const int fd = open_regular(path, "file", &st);
  FdCloser closer{fd};
  // The unpickler holds the bytes and the tensors it makes of them.
  check_fits_in_memory(kExitInput, quoted(path) + " (" + std::to_string(st.st_size) + " bytes)",
                       2.0 * static_cast<double>(st.st_size));
  std::vector<char> bytes(static_cast<size_t>(st.st_size));
  const int64_t got = pread_full(path, fd, bytes.data(), st.st_size, 0);
  if (got != st.st_size) {
    throw InputError(quoted(path) + " changed while it was being read (" + std::to_string(got) +
                     " of " + std::to_string(st.st_size) + " bytes)");
  }
  return bytes;
}

std::string file_stem(const std::string& path) {
  return fs::path(path).stem().string();
}

// ---- .npy -----------------------------------------------------------------------------------

constexpr char kNpyMagic[] = "\x93NUMPY";
constexpr size_t kNpyMagicLen = 6;

// The subset of Python literals a .npy header uses: a dict of str -> str | bool | tuple of int.
// Lists appear only in structured dtypes, which are rejected, so they are parsed and kept opaque.
struct PyValue {
  enum Kind { kStr, kInt, kBool, kNone, kTuple, kList, kDict } kind = kNone;
  std::string str;
  int64_t integer = 0;
  bool boolean = false;
  std::vector<PyValue> items;
  std::vector<std::pair<std::string, PyValue>> entries;
};

class HeaderParser {
 public:
  HeaderParser(const std::string& path, const std::string& text) : path_(path), s_(text) {}

  PyValue parse() {
    PyValue v = value();
    skip_space();
    if (i_ != s_.size()) fail("unexpected text after the header dict");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw InputError(quoted(path_) + " is not a valid .npy file: corrupt header (" + why +
                     " at character " + std::to_string(i_) + ")");
  }
  void skip_space() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  bool eat(char c) {
    skip_space();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) fail(std::string("expected '") + c + "'");
  }
  PyValue value() {
    if (++depth_ > 32) fail("nesting too deep");
    skip_space();
    if (i_ >= s_.size()) fail("unexpected end");
    PyValue v;
    const char c = s_[i_];
    if (c == '{') {
      ++i_;
      v.kind = PyValue::kDict;
      while (!eat('}')) {
        PyValue key = value();
        if (key.kind != PyValue::kStr) fail("dict key is not a string");
        expect(':');
        v.entries.emplace_back(key.str, value());
        if (!eat(',')) {
          expect('}');
          break;
        }
      }
    } else if (c == '(' || c == '[') {
      const char close = c == '(' ? ')' : ']';
      ++i_;
      v.kind = c == '(' ? PyValue::kTuple : PyValue::kList;
      while (!eat(close)) {
        v.items.push_back(value());
        if (!eat(',')) {
          expect(close);
          break;
        }
      }
    } else if (c == '\'' || c == '"') {
      ++i_;
      v.kind = PyValue::kStr;
      while (i_ < s_.size() && s_[i_] != c) v.str += s_[i_++];
      if (i_ >= s_.size()) fail("unterminated string");
      ++i_;
    } else if (std::isdigit(static_cast<unsigned char>(c)) || c == '-') {
      v.kind = PyValue::kInt;
      const size_t start = i_;
      if (c == '-') ++i_;
      while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) ++i_;
      while (i_ < s_.size() && (s_[i_] == 'L')) ++i_;  // Python 2 longs in old files
      try {
        v.integer = std::stoll(s_.substr(start, i_ - start));
      } catch (const std::exception&) {
        fail("bad integer");
      }
    } else if (s_.compare(i_, 4, "True") == 0) {
      v.kind = PyValue::kBool, v.boolean = true, i_ += 4;
    } else if (s_.compare(i_, 5, "False") == 0) {
      v.kind = PyValue::kBool, v.boolean = false, i_ += 5;
    } else if (s_.compare(i_, 4, "None") == 0) {
      v.kind = PyValue::kNone, i_ += 4;
    } else {
      fail("unexpected character '" + printable(std::string(1, c)) + "'");
    }
    --depth_;
    return v;
  }

  const std::string& path_;
  const std::string& s_;
  size_t i_ = 0;
  int depth_ = 0;
};

}  // namespace

struct NpyHeader {
  char byte_order = '<';  // '<', '>', '|'
  char kind = 'f';        // numpy kind letter
  int64_t item_size = 4;
  bool fortran_order = false;
  std::vector<int64_t> shape;
  int64_t data_offset = 0;
};

namespace {

std::string descr_problem(const std::string& descr) {
  if (descr.size() < 2) return "dtype '" + descr + "' is not understood";
  const char kind = descr[1];
  switch (kind) {
    case 'O':
      return "holds Python objects (dtype '" + descr + "'), not numbers";
    case 'U':
    case 'S':
    case 'a':
      return "holds strings (dtype '" + descr + "'), not numbers";
    case 'V':
      return "holds raw bytes or records (dtype '" + descr + "'), not numbers";
    case 'c':
      return "holds complex numbers (dtype '" + descr + "'); only real numbers are supported";
    case 'b':
      return "holds booleans (dtype '" + descr + "'), not numbers";
    case 'M':
    case 'm':
      return "holds dates or times (dtype '" + descr + "'), not numbers";
    default:
      return "";
  }
}

NpyHeader parse_npy_header(const std::string& path, const std::vector<char>& head,
                           int64_t file_size) {
  const std::string bad = quoted(path) + " is not a valid .npy file: ";
  if (head.size() < 10 || std::memcmp(head.data(), kNpyMagic, kNpyMagicLen) != 0) {
    throw InputError(bad + "it does not start with the .npy magic string");
  }
  const int major = static_cast<unsigned char>(head[6]);
  int64_t header_len = 0;
  int64_t prefix = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(head[8]) | (static_cast<unsigned char>(head[9]) << 8);
    prefix = 10;
  } else if (major == 2 || major == 3) {
    if (head.size() < 12) throw InputError(bad + "the file is truncated inside its header");
    header_len = 0;
    for (int b = 3; b >= 0; --b)
      header_len = (header_len << 8) | static_cast<unsigned char>(head[8 + b]);
    prefix = 12;
  } else {
    throw InputError(bad + "format version " + std::to_string(major) +
                     " is not supported (versions 1, 2 and 3 are)");
  }
  if (prefix + header_len > file_size || prefix + header_len > static_cast<int64_t>(head.size())) {
    throw InputError(bad + "the file is truncated inside its header (header length " +
                     std::to_string(header_len) + ", file size " + std::to_string(file_size) + ")");
  }
  const std::string text(head.data() + prefix, head.data() + prefix + header_len);
  const PyValue dict = HeaderParser(path, text).parse();
  if (dict.kind != PyValue::kDict) throw InputError(bad + "its header is not a dict");
  const PyValue* descr = nullptr;
  const PyValue* fortran = nullptr;
  const PyValue* shape = nullptr;
  for (const auto& [key, v] : dict.entries) {
    if (key == "descr") descr = &v;
    if (key == "fortran_order") fortran = &v;
    if (key == "shape") shape = &v;
  }
  if (!descr || !fortran || !shape) {
    throw InputError(bad + "its header lacks one of 'descr', 'fortran_order' and 'shape'");
  }
  if (descr->kind == PyValue::kList) {
    throw InputError(quoted(path) + " holds a structured array (record dtype), not numbers");
  }
  if (descr->kind != PyValue::kStr) throw InputError(bad + "'descr' is not a string");
  if (fortran->kind != PyValue::kBool)
    throw InputError(bad + "'fortran_order' is not True or False");
  if (shape->kind != PyValue::kTuple) throw InputError(bad + "'shape' is not a tuple");

  NpyHeader h;
  // NUL and other control bytes are escaped, so that they neither parse nor cut messages short.
  const std::string d = printable(descr->str);
  if (const std::string problem = descr_problem(d); !problem.empty()) {
    throw InputError(quoted(path) + " " + problem);
  }
  if (d.size() < 3 || std::string("<>|=").find(d[0]) == std::string::npos ||
      std::string("fiu").find(d[1]) == std::string::npos ||
      !std::all_of(d.begin() + 2, d.end(),
                   [](char c) { return std::isdigit(static_cast<unsigned char>(c)); })) {
    throw InputError(bad + "dtype '" + d + "' is not understood");
  }
  h.byte_order = d[0] == '=' ? '<' : d[0];  // '=' is native: x86 and arm64 are little-endian
  h.kind = d[1];
  // At most 2 digits: numpy's largest item is 16 bytes, and a longer number would overflow.
  h.item_size = d.size() <= 4 ? std::stoll(d.substr(2)) : -1;
  const bool size_ok = h.kind == 'f' ? (h.item_size == 2 || h.item_size == 4 || h.item_size == 8)
                                     : (h.item_size == 1 || h.item_size == 2 || h.item_size == 4 ||
                                        h.item_size == 8);
  if (!size_ok) throw InputError(quoted(path) + " holds dtype '" + d + "', which is not supported");
  h.fortran_order = fortran->boolean;
  int64_t count = 1;
  for (const PyValue& s : shape->items) {
    if (s.kind != PyValue::kInt || s.integer < 0)
      throw InputError(bad + "'shape' has a negative or non-integer size");
    h.shape.push_back(s.integer);
    if (__builtin_mul_overflow(count, s.integer, &count))
      throw InputError(bad + "'shape' is too large");
  }
  h.data_offset = prefix + header_len;
  int64_t need = 0;
  if (__builtin_mul_overflow(count, h.item_size, &need))
    throw InputError(bad + "'shape' is too large");
  const int64_t have = file_size - h.data_offset;
  if (have < need) {
    throw InputError(quoted(path) + " is truncated: shape " + shape_string(h.shape) +
                     " of dtype '" + d + "' needs " + std::to_string(need) +
                     " bytes of data, but the file has " + std::to_string(have));
  }
  if (have > need) {
    throw InputError(quoted(path) + " is not a valid .npy file: it has " + std::to_string(have) +
                     " bytes of data, more than the " + std::to_string(need) + " that shape " +
                     shape_string(h.shape) + " of dtype '" + d + "' needs");
  }
  return h;
}

// Reverses each item's bytes (big-endian data on a little-endian machine).
void byteswap(char* data, int64_t count, int64_t item_size) {
  for (int64_t i = 0; i < count; ++i)
    std::reverse(data + i * item_size, data + (i + 1) * item_size);
}

// Items [count] of raw file bytes (in the file's byte order and kind) as a float32 or float64
// tensor of `storage_shape`: float16 and integers become float32.
at::Tensor convert_items(const NpyHeader& h, std::vector<char>& data, int64_t count,
                         const std::vector<int64_t>& storage_shape) {
  if (h.byte_order == '>' && h.item_size > 1) byteswap(data.data(), count, h.item_size);
  const at::ScalarType float_type = h.item_size == 8 ? at::kDouble : at::kFloat;
  at::Tensor t;
  const auto make = [&](at::ScalarType type) {
    return at::from_blob(data.data(), storage_shape, at::TensorOptions().dtype(type)).clone();
  };
  if (h.kind == 'f') {
    t = make(h.item_size == 2 ? at::kHalf : float_type);
  } else if (h.kind == 'i' || h.item_size == 1) {
    const at::ScalarType types[] = {at::kChar, at::kShort, at::kInt, at::kLong};
    const int index = h.item_size == 1 ? 0 : h.item_size == 2 ? 1 : h.item_size == 4 ? 2 : 3;
    t = make(h.kind == 'u' ? at::kByte : types[index]);
  } else {
    // LibTorch 1.13 has no uint16/32/64 tensors: widen by hand.
    std::vector<double> wide(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) {
      uint64_t v = 0;
      std::memcpy(&v, data.data() + i * h.item_size, h.item_size);  // little-endian after swap
      wide[i] = static_cast<double>(v);
    }
    t = at::from_blob(wide.data(), storage_shape, at::TensorOptions().dtype(at::kDouble))
            .to(at::kFloat);
  }
  if (t.scalar_type() != at::kFloat && t.scalar_type() != at::kDouble) t = t.to(at::kFloat);
  return t;
}

}  // namespace

// An open .npy file whose rows are read on demand with pread, into memory each tensor owns. No
// mmap: a file truncated under a mapping (np.save over it) kills the process with SIGBUS, where
// pread returns short and the size is checked before each read.
struct NpyFile {
  std::string path;
  int fd = -1;
  NpyHeader h;
  int64_t file_size = 0;
  NpyFile() = default;
  NpyFile(const NpyFile&) = delete;
  NpyFile& operator=(const NpyFile&) = delete;
  ~NpyFile() {
    if (fd >= 0) ::close(fd);
  }

  int64_t items() const {
    int64_t count = 1;
    for (int64_t s : h.shape) count *= s;  // no overflow: checked with the file size
    return count;
  }
  int64_t row_items() const {
    return h.shape.empty() ? 1 : items() / std::max<int64_t>(1, h.shape[0]);
  }
  // The bytes a tensor of `items` items takes once read (float16 and integers become float32).
  int64_t tensor_item_size() const { return h.kind == 'f' && h.item_size == 8 ? 8 : 4; }

  [[noreturn]] void changed(int64_t now) const {
    throw InputError(quoted(path) + " changed while it was being read: it is now " +
                     std::to_string(now) + " bytes, but its header needs " +
                     std::to_string(file_size) +
                     " (was it written again, e.g. by np.save, during the run?)");
  }
  void check_size() const {
    struct stat st {};
    if (::fstat(fd, &st) != 0)
      throw InputError(quoted(path) + ": cannot stat: " + std::strerror(errno));
    if (st.st_size != file_size) changed(st.st_size);
  }

  // Every item, in its shape (Fortran order transposed back).
  at::Tensor read_all() const {
    const int64_t count = items();
    const int64_t bytes = count * h.item_size;
    check_fits_in_memory(kExitInput,
                         quoted(path) + " (shape " + shape_string(h.shape) + ", " +
                             size_text(static_cast<double>(bytes)) + " on disk)",
                         static_cast<double>(bytes) +
                             static_cast<double>(count) * static_cast<double>(tensor_item_size()));
    std::vector<char> data(static_cast<size_t>(bytes));
    check_size();
    if (pread_full(path, fd, data.data(), bytes, h.data_offset) != bytes) {
      struct stat st {};
      ::fstat(fd, &st);
      changed(st.st_size);
    }
    // Fortran order: the data is the C-order array of the reversed shape, transposed.
    std::vector<int64_t> storage_shape = h.shape;
    if (h.fortran_order) std::reverse(storage_shape.begin(), storage_shape.end());
    at::Tensor t = convert_items(h, data, count, storage_shape);
    if (h.fortran_order) {
      std::vector<int64_t> reversed(t.dim());
      for (int64_t i = 0; i < t.dim(); ++i) reversed[i] = t.dim() - 1 - i;
      t = t.permute(reversed).contiguous();
    }
    return t;
  }

  // Rows [start, start + count) of a C-order array of >= 1 dims.
  at::Tensor read_rows(int64_t start, int64_t count) const {
    TORCH_INTERNAL_ASSERT(!h.fortran_order && !h.shape.empty());
    const int64_t row = row_items();
    const int64_t n_items = count * row;
    const int64_t bytes = n_items * h.item_size;
    std::vector<int64_t> shape = h.shape;
    shape[0] = count;
    const bool native =
        h.kind == 'f' && (h.item_size == 4 || h.item_size == 8) && h.byte_order != '>';
    check_fits_in_memory(kExitInput,
                         "a batch of " + std::to_string(count) + " examples of " + quoted(path) +
                             " (shape " + shape_string(shape) + ")",
                         static_cast<double>(n_items) * static_cast<double>(tensor_item_size()) +
                             (native ? 0.0 : static_cast<double>(bytes)));
    check_size();
    const int64_t offset = h.data_offset + start * row * h.item_size;
    if (native) {
      at::Tensor t =
          at::empty(shape, at::TensorOptions().dtype(h.item_size == 8 ? at::kDouble : at::kFloat));
      if (pread_full(path, fd, static_cast<char*>(t.data_ptr()), bytes, offset) != bytes) {
        struct stat st {};
        ::fstat(fd, &st);
        changed(st.st_size);
      }
      return t;
    }
    std::vector<char> data(static_cast<size_t>(bytes));
    if (pread_full(path, fd, data.data(), bytes, offset) != bytes) {
      struct stat st {};
      ::fstat(fd, &st);
      changed(st.st_size);
    }
    return convert_items(h, data, n_items, shape);
  }
};

namespace {

bool starts_with(const std::vector<char>& bytes, const char* magic, size_t len) {
  return bytes.size() >= len && std::memcmp(bytes.data(), magic, len) == 0;
}

// ---- .pt ------------------------------------------------------------------------------------

at::Tensor as_tensor(const std::string& path, const std::string& where, const c10::IValue& v) {
  if (!v.isTensor()) {
    throw InputError(quoted(path) + " is not a tensor file: " + where + " is a " + v.tagKind() +
                     ", not a tensor");
  }
  return v.toTensor();
}

// torch::save writes a TorchScript archive of a module whose parameters/buffers are the tensors.
NamedTensors read_torch_save_archive(const std::string& path, const std::string& pickle_error) {
  torch::jit::Module m;
  try {
    m = torch::jit::load(path);
  } catch (const std::exception&) {
    // LibTorch's unpickler reports Python-only content (a state_dict's OrderedDict, other
    // classes) as an internal assert; that text helps nobody, the likely cause does.
    const bool internal = pickle_error.find("INTERNAL ASSERT") != std::string::npos;
    throw InputError(quoted(path) + " is a torch.save archive whose content LibTorch cannot read" +
                     (internal
                          ? std::string(" (a state_dict, an OrderedDict or other Python objects?)")
                          : " (" + pickle_error + ")") +
                     ": save a tensor, a list of tensors or a dict of str to tensor");
  }
  if (m.find_method("forward")) {
    throw InputError(quoted(path) +
                     " is a TorchScript model, not a tensor file (expected activations or inputs "
                     "saved with torch.save, or a .npy)");
  }
  NamedTensors out;
  for (const auto& p : m.named_parameters(/*recurse=*/false)) out.emplace_back(p.name, p.value);
  for (const auto& b : m.named_buffers(/*recurse=*/false)) out.emplace_back(b.name, b.value);
  if (out.empty())
    throw InputError(quoted(path) + " is a TorchScript archive that holds no tensors");
  if (out.size() == 1) out[0].first = file_stem(path);
  return out;
}

NamedTensors read_pickled(const std::string& path, const std::vector<char>& bytes) {
  c10::IValue root;
  try {
    root = torch::jit::pickle_load(bytes);
  } catch (const std::exception& e) {
    std::string why = one_line(dynamic_cast<const c10::Error*>(&e)
                                   ? dynamic_cast<const c10::Error&>(e).what_without_backtrace()
                                   : e.what());
    // Python pickles a one-entry dict with SETITEM (0x73), which LibTorch 1.13 cannot read.
    if (why.find("0x73") != std::string::npos) {
      throw InputError(quoted(path) +
                       " holds a dict with a single entry, which LibTorch 1.13 cannot read: save "
                       "the tensor itself, or a dict of two or more tensors");
    }
    if (starts_with(bytes, "PK\x03\x04", 4)) return read_torch_save_archive(path, why);
    // 0x80 is a pickle protocol header: torch.save's legacy (pre-1.6, non-zip) format.
    if (!bytes.empty() && static_cast<unsigned char>(bytes[0]) == 0x80) {
      throw InputError(
          quoted(path) +
          " looks like torch.save's legacy format (_use_new_zipfile_serialization=False), which "
          "LibTorch cannot read: save it again with the default format");
    }
    throw InputError(quoted(path) +
                     " is not a tensor file: neither .npy nor written by torch.save (" + why + ")");
  }
  NamedTensors out;
  if (root.isTensor()) {
    out.emplace_back(file_stem(path), root.toTensor());
  } else if (root.isGenericDict()) {
    for (const auto& item : root.toGenericDict()) {
      if (!item.key().isString()) {
        throw InputError(quoted(path) + " is not a tensor file: its dict has a key of type " +
                         item.key().tagKind() + " (expected names: str)");
      }
      const std::string name = item.key().toStringRef();
      out.emplace_back(name, as_tensor(path, "entry '" + name + "'", item.value()));
    }
  } else if (root.isTuple() || root.isList()) {
    const std::vector<c10::IValue> items =
        root.isTuple() ? root.toTupleRef().elements().vec() : root.toList().vec();
    for (size_t i = 0; i < items.size(); ++i) {
      out.emplace_back(std::to_string(i), as_tensor(path, "item " + std::to_string(i), items[i]));
    }
  } else {
    throw InputError(quoted(path) + " is not a tensor file: it holds a " + root.tagKind() +
                     " (expected a tensor, or a dict, tuple or list of tensors)");
  }
  if (out.empty()) throw InputError(quoted(path) + " holds no tensors");
  return out;
}

// The .npy file at `path` with its header parsed, or null when the file does not start with the
// .npy magic (and `require` is false). Throws InputError as open_regular and parse_npy_header do.
std::shared_ptr<NpyFile> open_npy(const std::string& path, bool require) {
  struct stat st {};
  auto f = std::make_shared<NpyFile>();  // owns the descriptor from here on
  f->fd = open_regular(path, "file", &st);
  f->path = path;
  f->file_size = st.st_size;
  char magic[kNpyMagicLen] = {};
  const bool npy =
      pread_full(path, f->fd, magic, kNpyMagicLen, 0) == static_cast<int64_t>(kNpyMagicLen) &&
      std::memcmp(magic, kNpyMagic, kNpyMagicLen) == 0;
  if (!npy && !require) return nullptr;
  // The header is at most 12 bytes of prefix plus a 4-byte length; numpy caps it far lower.
  std::vector<char> head(static_cast<size_t>(std::min<int64_t>(f->file_size, 1 << 20)));
  head.resize(pread_full(path, f->fd, head.data(), static_cast<int64_t>(head.size()), 0));
  f->h = parse_npy_header(path, head, f->file_size);
  return f;
}

}  // namespace

int64_t available_memory_bytes() {
  int64_t available = -1;
  if (std::ifstream meminfo("/proc/meminfo"); meminfo) {
    std::string key;
    int64_t value = 0;
    std::string unit;
    while (meminfo >> key >> value) {
      std::getline(meminfo, unit);
      if (key == "MemAvailable:") available = value * 1024;
    }
  }
  // cgroup v2: a container's limit can be far below the machine's memory.
  std::ifstream max_file("/sys/fs/cgroup/memory.max"),
      current_file("/sys/fs/cgroup/memory.current");
  std::string max_text;
  int64_t current = 0;
  if (max_file >> max_text && max_text != "max" && current_file >> current) {
    try {
      const int64_t left = std::max<int64_t>(0, std::stoll(max_text) - current);
      available = available < 0 ? left : std::min(available, left);
    } catch (const std::exception&) {
    }
  }
  return available;
}

int64_t total_memory_bytes() {
  int64_t total = -1;
  if (std::ifstream meminfo("/proc/meminfo"); meminfo) {
    std::string key, unit;
    int64_t value = 0;
    while (meminfo >> key >> value) {
      std::getline(meminfo, unit);
      if (key == "MemTotal:") total = value * 1024;
    }
  }
  std::ifstream max_file("/sys/fs/cgroup/memory.max");
  std::string max_text;
  if (max_file >> max_text && max_text != "max") {
    try {
      const int64_t limit = std::stoll(max_text);
      total = total < 0 ? limit : std::min(total, limit);
    } catch (const std::exception&) {
    }
  }
  return total;
}

std::string size_text(double bytes) {
  char buf[48];
  if (bytes >= 1073741824.0) {
    std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / 1073741824.0);
  } else {
    std::snprintf(buf, sizeof buf, "%.0f MiB", std::ceil(bytes / 1048576.0));
  }
  return buf;
}

void check_fits_in_memory(int exit_code, const std::string& what, double bytes) {
  const int64_t available = available_memory_bytes();
  if (available < 0 || bytes <= static_cast<double>(available)) return;
  throw Error(exit_code, what + " needs " + size_text(bytes) + " of memory, but only " +
                             size_text(static_cast<double>(available)) + " is available");
}

void check_regular_file(const std::string& path, const std::string& what) {
  struct stat st {};
  ::close(open_regular(path, what, &st));
}

std::string shape_string(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

at::Tensor read_npy(const std::string& path) {
  return open_npy(path, true)->read_all();
}

NamedTensors read_tensors(const std::string& path) {
  if (const auto npy = open_npy(path, false)) return {{file_stem(path), npy->read_all()}};
  const std::vector<char> bytes = read_bytes(path);
  if (bytes.empty()) throw InputError(quoted(path) + " is empty, not a tensor file");
  return read_pickled(path, bytes);
}

at::Tensor read_tensor(const std::string& path) {
  NamedTensors all = read_tensors(path);
  if (all.size() != 1) {
    throw InputError(quoted(path) + " must hold one tensor, but holds " +
                     std::to_string(all.size()) + " (" + all[0].first + ", ...)");
  }
  return all[0].second;
}

std::vector<int64_t> parse_shape(const std::string& option, const std::string& text) {
  std::vector<int64_t> shape;
  std::string part;
  int64_t product = 1;
  const auto bad = [&] {
    return UsageError(
        option + " must be sizes separated by commas, each at least 1 (e.g. 64,1,8,8), but got '" +
        text + "'");
  };
  for (size_t i = 0; i <= text.size(); ++i) {
    if (i == text.size() || text[i] == ',' || text[i] == 'x') {
      if (part.empty() || part.size() > 12) throw bad();
      const int64_t v = std::stoll(part);
      if (v < 1) throw bad();
      shape.push_back(v);
      part.clear();
      if (__builtin_mul_overflow(product, v, &product) || product >= (int64_t{1} << 62)) {
        throw UsageError(option + " must have fewer than 2^62 values in all, but got '" + text +
                         "'");
      }
    } else if (std::isdigit(static_cast<unsigned char>(text[i]))) {
      part += text[i];
    } else if (text[i] != ' ') {
      throw bad();
    }
  }
  return shape;
}

InputSource InputSource::from_file(const std::string& path) {
  InputSource s;
  s.description_ = path;
  if (auto npy = open_npy(path, false);
      npy && !npy->h.fortran_order && !npy->h.shape.empty() && npy->h.shape[0] >= 1) {
    s.shape_ = npy->h.shape;
    s.row_bytes_ = npy->row_items() * npy->tensor_item_size();
    s.npy_ = std::move(npy);
    return s;
  }
  s.tensor_ = read_tensor(path);
  if (s.tensor_.dim() < 1 || s.tensor_.size(0) < 1) {
    throw InputError(quoted(path) +
                     " must hold a tensor with examples along dim 0, but holds one of shape " +
                     shape_string(s.tensor_.sizes()));
  }
  if (s.tensor_.is_complex() || s.tensor_.scalar_type() == at::kBool) {
    throw InputError(quoted(path) + " must hold real numbers, but holds dtype " +
                     std::string(c10::toString(s.tensor_.scalar_type())));
  }
  s.shape_ = s.tensor_.sizes().vec();
  s.row_bytes_ = (s.tensor_.numel() / s.tensor_.size(0)) * s.tensor_.element_size();
  return s;
}

InputSource InputSource::random(std::vector<int64_t> shape, uint64_t seed) {
  InputSource s;
  s.shape_ = std::move(shape);
  s.seed_ = seed;
  s.description_ = "random normal " + shape_string(s.shape_) + ", seed " + std::to_string(seed);
  int64_t row = 4;  // float32; parse_shape keeps the product below 2^62
  for (size_t i = 1; i < s.shape_.size(); ++i) row *= s.shape_[i];
  s.row_bytes_ = row;
  return s;
}

namespace {
constexpr int64_t kRandomChunk = 256;  // rows per generator: batch sizes do not change the values

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
}  // namespace

namespace {

// Inputs are examples a model is run on: NaN or inf would come out as undefined cells or
// failures far from their cause.
void check_finite(const std::string& path, const at::Tensor& t, int64_t start) {
  if (!t.is_floating_point() || at::isfinite(t).all().item<bool>()) return;
  const at::Tensor bad_rows = at::logical_not(at::isfinite(t)).reshape({t.size(0), -1}).any(1);
  const int64_t first = bad_rows.nonzero().min().item<int64_t>();
  throw InputError(quoted(path) + " holds NaN or infinite values (the first in example " +
                   std::to_string(start + first + 1) +
                   "): svcca-inspect needs finite inputs to run a model on");
}

}  // namespace

at::Tensor InputSource::batch(int64_t start, int64_t count) const {
  TORCH_INTERNAL_ASSERT(start >= 0 && count >= 1 && start + count <= n());
  if (npy_) {
    at::Tensor t = npy_->read_rows(start, count);
    check_finite(description_, t, start);
    return t;
  }
  if (tensor_.defined()) {
    at::Tensor t = tensor_.slice(0, start, start + count).contiguous();
    check_finite(description_, t, start);
    return t;
  }
  // The rows, the chunks they are drawn in, and the copy that joins them.
  std::vector<int64_t> shape = shape_;
  shape[0] = count;
  check_fits_in_memory(
      kExitUsage,
      "--input-shape " + shape_string(shape_) + ": a batch of " + std::to_string(count) +
          " random examples (shape " + shape_string(shape) + ")",
      (2.0 * static_cast<double>(count) + static_cast<double>(std::min(kRandomChunk, n()))) *
          static_cast<double>(row_bytes_));
  std::vector<at::Tensor> parts;
  for (int64_t chunk = start / kRandomChunk; chunk * kRandomChunk < start + count; ++chunk) {
    const int64_t lo = chunk * kRandomChunk;
    const int64_t hi = std::min(n(), lo + kRandomChunk);
    std::vector<int64_t> shape = shape_;
    shape[0] = hi - lo;
    at::Generator gen = at::detail::createCPUGenerator(splitmix64(seed_ ^ splitmix64(chunk)));
    at::Tensor rows = at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat));
    const int64_t from = std::max(start, lo) - lo;
    const int64_t to = std::min(start + count, hi) - lo;
    parts.push_back(rows.slice(0, from, to));
  }
  return parts.size() == 1 ? parts[0].contiguous() : at::cat(parts, 0);
}

}  // namespace svcca::inspect
