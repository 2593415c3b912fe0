// libFuzzer target: svcca-inspect's command line (parse_command_line: CLI11 and every check that
// needs no file). The input is split at NUL bytes into arguments after "svcca-inspect". Every
// input must end in "run" (-1), help (0) or a usage error (2) with one line on stderr, never a
// crash or an exception.
#include <exception>
#include <sstream>
#include <string>
#include <vector>

#include "cli.h"
#include "fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> args = {"svcca-inspect"};
  std::string current;
  for (size_t i = 0; i < size && args.size() < 64; ++i) {
    if (data[i] == 0) {
      args.push_back(current);
      current.clear();
    } else {
      current += static_cast<char>(data[i]);
    }
  }
  if (!current.empty() && args.size() < 64) args.push_back(current);
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  argv.push_back(nullptr);
  std::ostringstream out, err;
  svcca::inspect::CommandLine line;
  int code = 0;
  try {
    code = svcca::inspect::parse_command_line(static_cast<int>(args.size()), argv.data(), line, out,
                                              err);
  } catch (const std::exception& e) {
    svcca::fuzz::finding("fuzz_cli", e.what());
  } catch (...) {
    svcca::fuzz::finding("fuzz_cli", "a non-std exception");
  }
  if (code != -1 && code != 0 && code != 2)
    svcca::fuzz::finding("fuzz_cli", "an unknown exit code");
  if (code == 2) {
    const std::string e = err.str();
    // One line, ending in a newline, starting with the program's name.
    if (e.rfind("svcca-inspect: ", 0) != 0 || e.find('\n') != e.size() - 1)
      svcca::fuzz::finding("fuzz_cli", ("a usage error that is not one line: " + e).c_str());
  }
  return 0;
}
