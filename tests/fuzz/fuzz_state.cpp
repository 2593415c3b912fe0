// libFuzzer target: the streaming accumulators' state-file reader, through its public load API
// (CovarianceAccumulator::load, MinibatchCkaAccumulator::load). The first byte picks the framing:
// odd: the input is the whole file; even: the rest is a payload, wrapped in a valid header (magic,
// version, size, FNV-1a checksum) so that mutations reach the unpickler and the state checks.
// Every input must end in a loaded accumulator or a c10::Error, never a crash or another exception.
#include <c10/util/Exception.h>

#include <cstring>
#include <exception>
#include <vector>

#include "fuzz_support.h"
#include "svcca/stream/covariance_accumulator.h"
#include "svcca/stream/minibatch_cka.h"

namespace {

void put64(std::vector<uint8_t>& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

// The header of state_file.h: "SVCCAST\0", u32 version 1, u32 0, u64 size, u64 FNV-1a 64.
std::vector<uint8_t> framed(const uint8_t* payload, size_t size) {
  std::vector<uint8_t> out = {'S', 'V', 'C', 'C', 'A', 'S', 'T', 0, 1, 0, 0, 0, 0, 0, 0, 0};
  uint64_t hash = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < size; ++i) hash = (hash ^ payload[i]) * 0x100000001b3ull;
  put64(out, size);
  put64(out, hash);
  out.insert(out.end(), payload, payload + size);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string& path = svcca::fuzz::scratch_path("state");
  if (data[0] % 2 == 1) {
    svcca::fuzz::write_scratch(path, data + 1, size - 1);
  } else {
    const std::vector<uint8_t> file = framed(data + 1, size - 1);
    svcca::fuzz::write_scratch(path, file.data(), file.size());
  }
  try {
    const auto acc = svcca::CovarianceAccumulator::load(path);
    (void)acc.n();
  } catch (const c10::Error&) {
  } catch (const std::exception& e) {
    svcca::fuzz::finding("fuzz_state: CovarianceAccumulator::load", e.what());
  }
  try {
    const auto acc = svcca::MinibatchCkaAccumulator::load(path);
    (void)acc.n();
  } catch (const c10::Error&) {
  } catch (const std::exception& e) {
    svcca::fuzz::finding("fuzz_state: MinibatchCkaAccumulator::load", e.what());
  }
  return 0;
}
