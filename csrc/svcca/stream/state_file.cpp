// The versioned file format of the streaming accumulators.
#include "svcca/stream/state_file.h"

#include <ATen/core/jit_type.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include <unistd.h>

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

  // Temporary name in the same directory, so that rename() is atomic on POSIX file systems.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    TORCH_CHECK(out.good(), fn, ": path must be writable, but cannot open \"", tmp,
                "\" for writing");
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    out.write(body.data(), static_cast<std::streamsize>(body.size()));
    out.flush();
    if (!out.good()) {
      std::remove(tmp.c_str());
      TORCH_CHECK(false, fn, ": path must be writable, but writing \"", tmp, "\" failed");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    TORCH_CHECK(false, fn, ": path must be writable, but renaming \"", tmp, "\" to \"", path,
                "\" failed");
  }
}

c10::impl::GenericDict load_stream_file(const char* fn, const std::string& path,
                                        const std::string& kind) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK_VALUE(in.good(), fn, ": path must name a readable accumulator state file, but \"",
                    path, "\" cannot be opened");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  TORCH_CHECK_VALUE(bytes.size() >= kHeaderSize, fn, ": path must name an accumulator state file, ",
                    "but \"", path, "\" is truncated (", bytes.size(),
                    " bytes, the header alone is ", kHeaderSize, ")");
  TORCH_CHECK_VALUE(std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) == 0, fn,
                    ": path must name an accumulator state file, but \"", path,
                    "\" does not start with the svcca stream magic");
  const auto version = get<uint32_t>(bytes, 8);
  TORCH_CHECK_VALUE(version == kStreamFileVersion, fn, ": path must hold format version ",
                    kStreamFileVersion, ", but \"", path, "\" has version ", version);
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
