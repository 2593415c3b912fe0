// Input and activation files of svcca-inspect: .npy, .pt tensor files and seeded random inputs.
#include "inputs.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/Exception.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <torch/csrc/jit/serialization/import.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
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

// Missing files and folders get the same one-line message wherever a file is read.
void check_readable_file(const std::string& path) {
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (!fs::exists(status)) throw InputError(quoted(path) + ": no such file");
  if (fs::is_directory(status)) throw InputError(quoted(path) + ": is a folder, not a file");
  if (::access(path.c_str(), R_OK) != 0) {
    throw InputError(quoted(path) + ": cannot be read: " + std::strerror(errno));
  }
}

std::vector<char> read_bytes(const std::string& path) {
  check_readable_file(path);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(quoted(path) + ": cannot be opened: " + std::strerror(errno));
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw InputError(quoted(path) + ": read error: " + std::strerror(errno));
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
      fail(std::string("unexpected character '") + c + "'");
    }
    --depth_;
    return v;
  }

  const std::string& path_;
  const std::string& s_;
  size_t i_ = 0;
  int depth_ = 0;
};

struct NpyHeader {
  char byte_order = '<';  // '<', '>', '|'
  char kind = 'f';        // numpy kind letter
  int64_t item_size = 4;
  bool fortran_order = false;
  std::vector<int64_t> shape;
  int64_t data_offset = 0;
};

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
  const std::string& d = descr->str;
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
  h.item_size = std::stoll(d.substr(2));
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

at::Tensor npy_to_tensor(const std::string& path, const NpyHeader& h, int fd, int64_t file_size) {
  const bool native_float = h.kind == 'f' && (h.item_size == 4 || h.item_size == 8) &&
                            h.byte_order != '>' && !h.fortran_order;
  const at::ScalarType float_type = h.item_size == 8 ? at::kDouble : at::kFloat;
  int64_t count = 1;
  for (int64_t s : h.shape) count *= s;
  if (native_float && count > 0 && h.data_offset % h.item_size == 0) {
    // MAP_PRIVATE with write access: an in-place op on the tensor copies the page instead of
    // changing the file (or faulting on a read-only mapping).
    void* base = ::mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (base != MAP_FAILED) {
      const size_t length = file_size;
      return at::from_blob(
          static_cast<char*>(base) + h.data_offset, h.shape,
          [base, length](void*) { ::munmap(base, length); }, at::TensorOptions().dtype(float_type));
    }
  }
  const int64_t bytes = count * h.item_size;
  std::vector<char> data(static_cast<size_t>(bytes));
  int64_t done = 0;
  while (done < bytes) {
    const ssize_t got = ::pread(fd, data.data() + done, bytes - done, h.data_offset + done);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) throw InputError(quoted(path) + ": read error: " + std::strerror(errno));
    done += got;
  }
  if (h.byte_order == '>' && h.item_size > 1) byteswap(data.data(), count, h.item_size);

  // Fortran order: the data is the C-order array of the reversed shape, transposed.
  std::vector<int64_t> storage_shape = h.shape;
  if (h.fortran_order) std::reverse(storage_shape.begin(), storage_shape.end());
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
  if (h.fortran_order) {
    std::vector<int64_t> reversed(t.dim());
    for (int64_t i = 0; i < t.dim(); ++i) reversed[i] = t.dim() - 1 - i;
    t = t.permute(reversed).contiguous();
  }
  if (t.scalar_type() != at::kFloat && t.scalar_type() != at::kDouble) t = t.to(at::kFloat);
  return t;
}

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

at::Tensor read_npy_impl(const std::string& path) {
  check_readable_file(path);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw InputError(quoted(path) + ": cannot be opened: " + std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0)
    throw InputError(quoted(path) + ": cannot stat: " + std::strerror(errno));
  const int64_t file_size = st.st_size;
  // The header is at most 12 bytes of prefix plus a 4-byte length; numpy caps it far lower.
  std::vector<char> head(static_cast<size_t>(std::min<int64_t>(file_size, 1 << 20)));
  int64_t done = 0;
  while (done < static_cast<int64_t>(head.size())) {
    const ssize_t got = ::pread(fd, head.data() + done, head.size() - done, done);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    done += got;
  }
  head.resize(done);
  const NpyHeader h = parse_npy_header(path, head, file_size);
  return npy_to_tensor(path, h, fd, file_size);
}

}  // namespace

std::string shape_string(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

at::Tensor read_npy(const std::string& path) {
  return read_npy_impl(path);
}

NamedTensors read_tensors(const std::string& path) {
  check_readable_file(path);
  {
    std::ifstream in(path, std::ios::binary);
    char magic[kNpyMagicLen] = {};
    in.read(magic, kNpyMagicLen);
    if (in.gcount() == static_cast<std::streamsize>(kNpyMagicLen) &&
        std::memcmp(magic, kNpyMagic, kNpyMagicLen) == 0) {
      return {{file_stem(path), read_npy_impl(path)}};
    }
  }
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
  s.description_ = path;
  return s;
}

InputSource InputSource::random(std::vector<int64_t> shape, uint64_t seed) {
  InputSource s;
  s.shape_ = std::move(shape);
  s.seed_ = seed;
  s.description_ = "random normal " + shape_string(s.shape_) + ", seed " + std::to_string(seed);
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

at::Tensor InputSource::batch(int64_t start, int64_t count) const {
  TORCH_INTERNAL_ASSERT(start >= 0 && count >= 1 && start + count <= n());
  if (tensor_.defined()) return tensor_.slice(0, start, start + count).contiguous();
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
