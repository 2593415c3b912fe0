// Resident-memory readings for the memory benchmarks, from /proc/self/status (Linux).
#pragma once

#include <cstdlib>
#include <fstream>
#include <string>

namespace svcca_bench {

// A field of /proc/self/status in MB (VmRSS: resident now, VmHWM: peak resident), or -1.
inline double status_mb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string key = std::string(field) + ":";
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return std::atof(line.c_str() + key.size()) / 1024.0;
  }
  return -1.0;
}

}  // namespace svcca_bench
