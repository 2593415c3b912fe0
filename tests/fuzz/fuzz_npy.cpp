// libFuzzer target: svcca-inspect's .npy reader (read_npy, and InputSource's batch reads).
// Every input must end in a result or an InputError (svcca::inspect::Error), never a crash, a
// hang, an allocation beyond the file's own size, or another exception.
#include <c10/util/Exception.h>

#include <cstring>
#include <exception>

#include "errors.h"
#include "fuzz_support.h"
#include "inputs.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace svcca::inspect;
  const std::string& path = svcca::fuzz::scratch_path("npy");
  svcca::fuzz::write_scratch(path, data, size);
  try {
    const at::Tensor t = read_npy(path);
    (void)t.numel();
  } catch (const Error&) {
  } catch (const std::exception& e) {
    svcca::fuzz::finding("fuzz_npy: read_npy", e.what());
  }
  try {
    const InputSource input = InputSource::from_file(path);
    if (input.n() > 0) {
      (void)input.batch(0, std::min<int64_t>(input.n(), 3));
      (void)input.batch(input.n() - 1, 1);
    }
  } catch (const Error&) {
  } catch (const std::exception& e) {
    svcca::fuzz::finding("fuzz_npy: InputSource", e.what());
  }
  return 0;
}
