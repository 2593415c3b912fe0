// svcca-inspect: layer similarity of TorchScript models from the command line (parsing, reporter
// choice and exit codes only; the work is in inspector.cpp, the rendering in reporters.cpp).
#include <c10/util/Exception.h>
#include <unistd.h>
#include <algorithm>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <new>
#include <sstream>
#include <string>

#include "cli.h"
#include "errors.h"
#include "inputs.h"
#include "inspector.h"
#include "reporters.h"

namespace {

using namespace svcca::inspect;

std::string first_line(const std::string& s) {
  std::string line = s.substr(0, s.find('\n'));
  while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) line.pop_back();
  return line;
}

// Writes `text` to stdout. SIGPIPE is ignored (main), so a reader that went away (`| head -c 10`)
// shows as EPIPE: the run ends quietly with kExitOutput; any other error (a full disk, /dev/full)
// is reported. Returns kExitOk or kExitOutput.
int write_stdout(const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t w = ::write(STDOUT_FILENO, text.data() + done, text.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      if (errno != EPIPE)
        std::cerr << "svcca-inspect: cannot write to stdout: " << std::strerror(errno) << "\n";
      return kExitOutput;
    }
    done += static_cast<size_t>(w);
  }
  return kExitOk;
}

// One line per distinct reason, for stderr.
std::string undefined_lines(const svcca::Grid& grid) {
  size_t cells = 0;
  for (const auto& u : grid.undefined) cells += u.cells.size();
  std::string s = std::to_string(cells) + " of " + std::to_string(grid.values.numel()) +
                  " cells are undefined (null):\n";
  // The largest groups first; at most kShown lines (a big grid can have thousands of reasons,
  // e.g. one per pair of layers refused for forced correlations): the JSON has them all.
  constexpr size_t kShown = 10;
  std::vector<const svcca::UndefinedCells*> order;
  for (const auto& u : grid.undefined) order.push_back(&u);
  std::stable_sort(order.begin(), order.end(),
                   [](const auto* a, const auto* b) { return a->cells.size() > b->cells.size(); });
  for (size_t i = 0; i < order.size() && i < kShown; ++i)
    s += "  " + std::to_string(order[i]->cells.size()) + " cells: " + order[i]->reason + "\n";
  if (order.size() > kShown) {
    size_t rest = 0;
    for (size_t i = kShown; i < order.size(); ++i) rest += order[i]->cells.size();
    s += "  ... " + std::to_string(rest) + " more cells, for " +
         std::to_string(order.size() - kShown) +
         " more reasons (every reason is in the JSON's \"undefined\")\n";
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  // Output errors are handled where they happen (write_stdout), never by a signal.
  std::signal(SIGPIPE, SIG_IGN);
  CommandLine line;
  {
    std::ostringstream out;
    const int code = parse_command_line(argc, argv, line, out, std::cerr);
    if (code >= 0) {
      const int written = write_stdout(out.str());  // --help
      return code == kExitOk ? written : code;
    }
  }
  const bool quiet = line.quiet;
  const bool progress_on = !quiet && ::isatty(STDERR_FILENO);
  bool progress_shown = false;
  const Progress progress = [&](const std::string& line) {
    if (!progress_on) return;
    std::cerr << "\r" << line << "\033[K" << std::flush;
    progress_shown = true;
  };
  const auto end_progress = [&] {
    if (progress_shown) std::cerr << "\r\033[K" << std::flush;
    progress_shown = false;
  };

  try {
    InspectionReport report;
    const std::string& out_dir = line.out_dir;
    const bool strict = line.strict;
    if (line.command == "layers") {
      report = inspect_layers(line.layers);
    } else if (line.command == "grid") {
      report = inspect_grid(line.grid, progress);
    } else if (line.command == "compare") {
      report = inspect_compare(line.compare);
    } else if (line.command == "dynamics") {
      report = inspect_dynamics(line.dynamics, progress);
    } else {
      report = inspect_tap(line.tap);
    }
    end_progress();
    if (report.has_grid && !report.grid.undefined.empty()) {
      if (strict) {
        std::cerr << "svcca-inspect: --strict: " << undefined_lines(report.grid);
        return kExitRuntime;
      }
      if (!quiet) std::cerr << "svcca-inspect: " << undefined_lines(report.grid);
    }
    if (!out_dir.empty()) write_files(report, out_dir);
    if (line.json) return write_stdout(render_json(report).dump(2) + "\n");
    const bool color =
        !line.no_color && std::getenv("NO_COLOR") == nullptr && ::isatty(STDOUT_FILENO);
    return write_stdout(render_text(report, color));
  } catch (const Error& e) {
    end_progress();
    std::cerr << "svcca-inspect: " << first_line(e.what()) << "\n";
    return e.code;
  } catch (const c10::Error& e) {
    end_progress();
    std::cerr << "svcca-inspect: " << first_line(e.what_without_backtrace()) << "\n";
    return kExitRuntime;
  } catch (const std::bad_alloc&) {
    end_progress();
    std::cerr << "svcca-inspect: out of memory\n";
    return kExitRuntime;
  } catch (const std::exception& e) {
    end_progress();
    std::cerr << "svcca-inspect: " << first_line(e.what()) << "\n";
    return kExitRuntime;
  } catch (...) {
    end_progress();
    std::cerr << "svcca-inspect: unknown error\n";
    return kExitRuntime;
  }
}
