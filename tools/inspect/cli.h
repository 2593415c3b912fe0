// svcca-inspect's command line: the CLI11 options of every command and each check that needs no
// file (shapes, seeds, sizes, batch sizes, names, option combinations), so that a bad command line
// is a usage error (exit 2) before any model or file is opened. The fuzz target calls it too.
#pragma once

#include <iosfwd>
#include <string>

#include "inspector.h"

namespace svcca::inspect {

// A parsed and checked command line.
struct CommandLine {
  std::string command;  // "layers" | "grid" | "compare" | "dynamics" | "tap"
  bool quiet = false;
  bool no_color = false;
  bool json = false;  // --json or --format json
  LayersRequest layers;
  GridRequest grid;
  CompareRequest compare;
  DynamicsRequest dynamics;
  TapRequest tap;
  std::string out_dir;  // grid, dynamics: --out; compare: --out or "" (no files)
  bool strict = false;  // --strict: an undefined cell is an error
};

// Parses `argv` into `line`. Returns -1 when the command is to run; otherwise the exit code to
// end with: 0 after writing help to `out` (--help), kExitUsage after writing the one-line error to
// `err`. Never throws for any argv (CLI11's errors and UsageError are caught here).
int parse_command_line(int argc, const char* const* argv, CommandLine& line, std::ostream& out,
                       std::ostream& err);

// Parses a seed: decimal digits only, 0 to 18446744073709551615 (2^64 - 1). Throws UsageError
// naming `option` for a sign, another character, or a value out of range.
uint64_t parse_seed(const std::string& option, const std::string& text);

}  // namespace svcca::inspect
