// Error kinds of svcca-inspect and the exit codes they map to (documented in --help and README).
#pragma once

#include <stdexcept>
#include <string>

namespace svcca::inspect {

enum ExitCode : int {
  kExitOk = 0,
  kExitRuntime = 1,  // a computation failed (e.g. a measure needs more examples), or our bug
  kExitUsage = 2,    // bad command line: unknown option, measure, conv, layer pattern, shape
  kExitInput = 3,    // an input file is missing, unreadable, corrupt, or of the wrong kind/shape
  kExitOutput = 4,   // an output file or folder cannot be written
};

// An error with its exit code; main prints what() as one line.
struct Error : std::runtime_error {
  Error(int exit_code, const std::string& message) : std::runtime_error(message), code(exit_code) {}
  int code;
};
struct UsageError : Error {
  explicit UsageError(const std::string& m) : Error(kExitUsage, m) {}
};
struct InputError : Error {
  explicit InputError(const std::string& m) : Error(kExitInput, m) {}
};
struct OutputError : Error {
  explicit OutputError(const std::string& m) : Error(kExitOutput, m) {}
};

// c10 messages can span lines (and end in a backtrace hint); the CLI prints one line.
inline std::string one_line(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  for (size_t i = 0; (i = s.find('\n', i)) != std::string::npos;) s.replace(i, 1, "; ");
  return s;
}

}  // namespace svcca::inspect
