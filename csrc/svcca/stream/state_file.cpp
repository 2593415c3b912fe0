// The versioned file format of the streaming accumulators.
#include "svcca/stream/state_file.h"

#include <ATen/core/jit_type.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "svcca/io/atomic_file.h"

namespace svcca {
namespace detail {
namespace {

constexpr char kMagic[8] = {'S', 'V', 'C', 'C', 'A', 'S', 'T', '\0'};
constexpr size_t kHeaderSize = 32;

uint64_t fnv1a(const char* data, size_t size) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < size; ++i) {
    h ^= static_cast<unsigned char>(data[i]);
    h *= 1099511628211ULL;
  }
  return h;
}

template <typename T>
void put(std::vector<char>& out, T value) {
  const char* p = reinterpret_cast<const char*>(&value);
  out.insert(out.end(), p, p + sizeof(T));
}

template <typename T>
T get(const std::vector<char>& in, size_t offset) {
  T value;
  std::memcpy(&value, in.data() + offset, sizeof(T));
  return value;
}

// The whole content of the regular file `path`. A folder, FIFO, device or socket is refused by
// name before any read (reading /dev/zero or a FIFO would never end; a folder fails inside
// the stream library with an unhelpful message).
std::vector<char> read_regular_file(const char* fn, const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  const int open_err = errno;
  TORCH_CHECK_VALUE(fd >= 0, fn, ": path must name a readable accumulator state file, but \"", path,
                    "\" cannot be opened (", std::strerror(open_err), ")");
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat st;
  TORCH_CHECK_VALUE(::fstat(fd, &st) == 0, fn, ": path must name a readable accumulator state ",
                    "file, but \"", path, "\" cannot be examined (", std::strerror(errno), ")");
  TORCH_CHECK_VALUE(!S_ISDIR(st.st_mode), fn, ": path must name an accumulator state file, but \"",
                    path, "\" is a directory");
  TORCH_CHECK_VALUE(S_ISREG(st.st_mode), fn,
                    ": path must name a regular accumulator state file, but \"", path,
                    "\" is not a regular file (a FIFO, device or socket)");
  const size_t size = static_cast<size_t>(st.st_size);
  std::vector<char> bytes(size);
  size_t got = 0;
  while (got < size) {
    const ssize_t r = ::read(fd, bytes.data() + got, size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    TORCH_CHECK_VALUE(r >= 0, fn, ": path must name a readable accumulator state file, but ",
                      "reading \"", path, "\" failed (", std::strerror(errno), ")");
    if (r == 0) break;  // shrank while being read: the size checks below report it
    got += static_cast<size_t>(r);
  }
  bytes.resize(got);
  return bytes;
}

}  // namespace

c10::impl::GenericDict make_payload(const std::string& kind) {
  c10::impl::GenericDict payload(c10::StringType::get(), c10::AnyType::get());
  payload.insert(std::string("kind"), kind);
  return payload;
}

void save_stream_file(const char* fn, const std::string& path,
                      const c10::impl::GenericDict& payload) {
  const std::vector<char> body = torch::jit::pickle_save(c10::IValue(payload));
  std::vector<char> header;
  header.insert(header.end(), kMagic, kMagic + sizeof(kMagic));
  put<uint32_t>(header, kStreamFileVersion);
  put<uint32_t>(header, 0);
  put<uint64_t>(header, body.size());
  put<uint64_t>(header, fnv1a(body.data(), body.size()));

  // A unique temporary beside path (mkstemp), renamed over it: concurrent savers of one path never
  // share a temporary, a crash never leaves a half-written file under path, and an error removes
  // the temporary.
  TempFile tmp(fn, path);
  tmp.write(header.data(), header.size());
  tmp.write(body.data(), body.size());
  tmp.commit();
}

c10::impl::GenericDict load_stream_file(const char* fn, const std::string& path,
                                        const std::string& kind) {
  const std::vector<char> bytes = read_regular_file(fn, path);
  TORCH_CHECK_VALUE(bytes.size() >= kHeaderSize, fn, ": path must name an accumulator state file, ",
                    "but \"", path, "\" is truncated (", bytes.size(),
                    " bytes, the header alone is ", kHeaderSize, ")");
  TORCH_CHECK_VALUE(std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) == 0, fn,
                    ": path must name an accumulator state file, but \"", path,
                    "\" does not start with the svcca stream magic");
  const auto version = get<uint32_t>(bytes, 8);
  TORCH_CHECK_VALUE(version >= kOldestStreamFileVersion && version <= kStreamFileVersion, fn,
                    ": path must hold format version ", kOldestStreamFileVersion, " to ",
                    kStreamFileVersion, ", but \"", path, "\" has version ", version,
                    " (written by a newer svcca?)");
  const auto size = get<uint64_t>(bytes, 16);
  const auto hash = get<uint64_t>(bytes, 24);
  TORCH_CHECK_VALUE(bytes.size() - kHeaderSize == size, fn, ": path must hold a complete state, ",
                    "but \"", path, "\" is truncated or padded (payload of ",
                    bytes.size() - kHeaderSize, " bytes, the header says ", size, ")");
  TORCH_CHECK_VALUE(fnv1a(bytes.data() + kHeaderSize, size) == hash, fn,
                    ": path must hold an intact state, but the payload of \"", path,
                    "\" does not match its checksum (corrupt file)");
  std::vector<char> body(bytes.begin() + kHeaderSize, bytes.end());
  c10::IValue value;
  try {
    value = torch::jit::pickle_load(body);
  } catch (const std::exception& e) {
    TORCH_CHECK_VALUE(false, fn, ": path must hold an intact state, but the payload of \"", path,
                      "\" cannot be unpickled");
  }
  TORCH_CHECK_VALUE(value.isGenericDict(), fn, ": path must hold a state dictionary, but \"", path,
                    "\" holds a ", value.tagKind());
  auto dict = value.toGenericDict();
  const auto k = payload_get(fn, path, dict, "kind");
  TORCH_CHECK_VALUE(k.isString() && k.toStringRef() == kind, fn, ": path must hold a ", kind,
                    " accumulator, but \"", path, "\" holds ",
                    k.isString() ? k.toStringRef() : std::string("an unknown kind"));
  return dict;
}

c10::IValue payload_get(const char* fn, const std::string& path,
                        const c10::impl::GenericDict& payload, const std::string& key) {
  auto it = payload.find(c10::IValue(key));
  TORCH_CHECK_VALUE(it != payload.end(), fn, ": path must hold an intact state, but \"", path,
                    "\" has no entry \"", key, "\" (corrupt file)");
  return it->value();
}

void throw_corrupt(const char* fn, const std::string& path, const char* what) {
  TORCH_CHECK_VALUE(false, fn, ": path must hold an intact state, but the ", what, " of \"", path,
                    "\" is malformed (corrupt file)");
  TORCH_INTERNAL_ASSERT(false);  // unreachable: TORCH_CHECK_VALUE(false, ...) throws
}

void put_state(c10::impl::GenericDict& payload, const std::map<std::string, at::Tensor>& state) {
  c10::Dict<std::string, at::Tensor> tensors;
  for (const auto& kv : state) tensors.insert(kv.first, kv.second.cpu());
  payload.insert(std::string("state"), tensors);
}

std::map<std::string, at::Tensor> get_state(const char* fn, const std::string& path,
                                            const c10::impl::GenericDict& payload,
                                            at::Device device) {
  auto st = payload_get(fn, path, payload, "state");
  if (!st.isGenericDict()) throw_corrupt(fn, path, "state dictionary");
  std::map<std::string, at::Tensor> tensors;
  for (const auto& kv : st.toGenericDict()) {
    if (!kv.key().isString() || !kv.value().isTensor()) throw_corrupt(fn, path, "state dictionary");
    tensors[kv.key().toStringRef()] = kv.value().toTensor().to(device);
  }
  return tensors;
}

}  // namespace detail
}  // namespace svcca
