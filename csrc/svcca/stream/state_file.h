// The versioned file format shared by the streaming accumulators' save() and load().
#pragma once

#include <ATen/core/Dict.h>
#include <ATen/core/ivalue.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>

namespace svcca {
namespace detail {

// Layout (little-endian):
//   8 bytes  magic "SVCCAST\0"
//   u32      format version (kStreamFileVersion)
//   u32      reserved (0)
//   u64      payload size in bytes
//   u64      FNV-1a 64 hash of the payload (detects truncation and corruption)
//   payload  torch::jit::pickle_save of a Dict[str, Any] (readable by torch.load in Python after
//            skipping the 32-byte header); it always holds "kind" (str).
// Version 2 (svcca 0.x, issue 12): covariance and linear minibatch CKA states may hold per-layer
// power-of-two scales ("scale.<l>", "scale_x", "scale_y"); their moments are in those units.
// Version 1 files (no scales: every scale 1) still load.
inline constexpr uint32_t kStreamFileVersion = 2;
inline constexpr uint32_t kOldestStreamFileVersion = 1;

// Writes `payload` to `path` through a unique temporary file in the same directory (mkstemp), then
// renames it, so a crash never leaves a half-written file under `path` and concurrent saves to one
// path never collide (the last rename wins). Throws naming `fn` on I/O errors.
void save_stream_file(const char* fn, const std::string& path,
                      const c10::impl::GenericDict& payload);

// An empty Dict[str, Any] payload to fill.
c10::impl::GenericDict make_payload(const std::string& kind);

// Reads and checks a file written by save_stream_file whose "kind" is `kind`. Throws naming `fn`
// and `path` when the file is missing, not a regular file (a directory, FIFO or device), truncated,
// corrupt, of an unknown version or of another kind.
c10::impl::GenericDict load_stream_file(const char* fn, const std::string& path,
                                        const std::string& kind);

// Typed access to a loaded payload; a missing key or a wrong type is reported as a corrupt file.
c10::IValue payload_get(const char* fn, const std::string& path,
                        const c10::impl::GenericDict& payload, const std::string& key);

// Throws the corrupt-file error for the malformed entry `what` of `path`.
[[noreturn]] void throw_corrupt(const char* fn, const std::string& path, const char* what);

// Stores an accumulator's state tensors (copied to the CPU) under "state".
void put_state(c10::impl::GenericDict& payload, const std::map<std::string, at::Tensor>& state);

// Reads the "state" entry of a loaded payload back as tensors on `device`.
std::map<std::string, at::Tensor> get_state(const char* fn, const std::string& path,
                                            const c10::impl::GenericDict& payload,
                                            at::Device device);

}  // namespace detail
}  // namespace svcca
