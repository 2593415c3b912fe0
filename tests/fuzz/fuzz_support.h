// Shared by the libFuzzer targets: a private scratch file per process, and the one rule of every
// target: a clear error (the types listed by each target) is fine, anything else is a finding.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace svcca::fuzz {

// A file in $TMPDIR (or /tmp) that the target rewrites for every input (the readers take paths).
inline const std::string& scratch_path(const char* name) {
  static const std::string path = [name] {
    const char* dir = std::getenv("TMPDIR");
    return std::string(dir && *dir ? dir : "/tmp") + "/svcca_fuzz_" + name + "_" +
           std::to_string(::getpid());
  }();
  return path;
}

inline void write_scratch(const std::string& path, const uint8_t* data, size_t size) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) std::abort();
  if (size > 0 && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
}

// A finding: say what escaped, then abort so that libFuzzer saves the input.
[[noreturn]] inline void finding(const char* target, const char* what) {
  std::fprintf(stderr, "%s: unexpected exception escaped: %s\n", target, what);
  std::abort();
}

}  // namespace svcca::fuzz
