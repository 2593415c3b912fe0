// svcca-compare: CCA, R^2_CCA, SVCCA and PWCCA between the layers of two activation files.
//
//   svcca-compare [A.pt B.pt] [--json OUT]
//
// A and B are files written by Python's torch.save: a dict {layer name: tensor [n, p]}, a tuple
// or list of such tensors (layers named "0", "1", ...), or a single tensor (layer "0"). Every
// layer of both files must be a 2-D float32/float64 tensor over the same n examples (rows: the
// same probe inputs, in the same order). Without A and B it compares the bundled activations of
// two small MLPs trained from different seeds (data/net_a.pt, data/net_b.pt; see data/README.md).
//
// Loading uses torch::jit::pickle_load (the function <torch/serialize.h> declares as
// torch::pickle_load; the narrower header keeps this file quick to compile).
//
// Output: per-layer similarities for the layers both files have (by name; by position when no
// name is shared), and the SVCCA of every layer of A against every layer of B, which shows
// which layers correspond.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <fmt/core.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "svcca/measures/cca.h"
#include "svcca/measures/pwcca.h"
#include "svcca/measures/svcca.h"

#ifndef SVCCA_DATA_DIR
#error "SVCCA_DATA_DIR must point at the directory holding net_a.pt and net_b.pt"
#endif

namespace {

constexpr int kExitOk = 0;
constexpr int kExitInput = 1;  // missing file, not a tensor file, bad layer, measure failed
constexpr int kExitUsage = 2;  // bad command line

constexpr const char* kUsage = R"(usage: svcca-compare [A.pt B.pt] [--json OUT]

Compares the layers of two activation sets with CCA (mean canonical correlation), R^2_CCA (mean
squared canonical correlation), SVCCA (99% of each layer's variance kept) and PWCCA.

A.pt, B.pt   files written by torch.save in Python: a dict {layer name: tensor [n, p]}, or a
             tuple/list of tensors (layers "0", "1", ...), or one tensor. Each layer must be a
             2-D float32/float64 tensor of the same n examples (same probe inputs, same order)
             with at least p + 2 examples (n >= p + 2). Layers are paired by name (by position
             when the files share no name). A dict must have two or more entries (LibTorch
             1.13 cannot read a one-entry dict). Without A and B: the bundled example,
             )" SVCCA_DATA_DIR R"(/net_a.pt and net_b.pt.
--json OUT   also write every number as JSON to OUT.
-h, --help   print this help and exit.

PWCCA is not symmetric: it is pwcca(A layer, B layer), weighted by the layer with fewer
directions.

exit codes:
  0  success
  1  input error: a file is missing or unreadable, is not a tensor file, holds a layer that is
     not a 2-D float tensor or has the wrong number of examples, or a measure failed; also when
     the JSON output cannot be written
  2  usage error: unknown option, wrong number of arguments
)";

// An error in the inputs: reported as one line, exit code 1.
struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// An error in the command line: exit code 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Messages from c10 may span lines; the CLI prints one.
std::string one_line(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  for (size_t i = 0; (i = s.find('\n', i)) != std::string::npos;) s.replace(i, 1, "; ");
  return s;
}

std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + "]";
}

struct Layer {
  std::string name;
  at::Tensor acts;  // [n, p]
};

struct ActivationSet {
  std::string path;
  std::vector<Layer> layers;
};

std::vector<char> read_bytes(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw InputError("'" + path + "': no such file");
  if (std::filesystem::is_directory(path, ec)) throw InputError("'" + path + "': is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError("'" + path + "': cannot open: " + std::strerror(errno));
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw InputError("'" + path + "': read error: " + std::strerror(errno));
  return bytes;
}

at::Tensor as_layer_tensor(const std::string& path, const std::string& name, const c10::IValue& v) {
  if (!v.isTensor()) {
    throw InputError("'" + path + "' is not a tensor file: entry '" + name + "' has type " +
                     v.tagKind() + ", not Tensor");
  }
  return v.toTensor();
}

// Loads a torch.save'd dict / tuple / list of tensors, or a single tensor.
ActivationSet load_activations(const std::string& path) {
  const std::vector<char> bytes = read_bytes(path);
  c10::IValue root;
  try {
    root = torch::jit::pickle_load(bytes);
  } catch (const c10::Error& e) {
    std::string why = one_line(e.what_without_backtrace());
    // Python pickles a one-entry dict with SETITEM ('s', 0x73), an opcode LibTorch 1.13's
    // unpickler lacks (it knows SETITEMS).
    if (why.find("Unknown opcode for unpickling at 0x73") != std::string::npos) {
      why +=
          "; LibTorch cannot read a dict with a single entry: save the tensor itself, a tuple, "
          "or a dict of two or more layers";
    }
    throw InputError("'" + path + "' is not a tensor file written by torch.save (" + why + ")");
  }
  ActivationSet set{path, {}};
  if (root.isTensor()) {
    set.layers.push_back({"0", root.toTensor()});
  } else if (root.isGenericDict()) {
    for (const auto& item : root.toGenericDict()) {
      if (!item.key().isString()) {
        throw InputError("'" + path + "' is not a tensor file: its dict has a key of type " +
                         item.key().tagKind() + " (expected layer names: str)");
      }
      const std::string name = item.key().toStringRef();
      set.layers.push_back({name, as_layer_tensor(path, name, item.value())});
    }
  } else if (root.isTuple() || root.isList()) {
    const std::vector<c10::IValue> items =
        root.isTuple() ? root.toTupleRef().elements().vec() : root.toList().vec();
    for (size_t i = 0; i < items.size(); ++i) {
      set.layers.push_back({std::to_string(i), as_layer_tensor(path, std::to_string(i), items[i])});
    }
  } else {
    throw InputError("'" + path + "' is not a tensor file: it holds a value of type " +
                     root.tagKind() + " (expected a dict, tuple or list of tensors, or a tensor)");
  }
  if (set.layers.empty()) throw InputError("'" + path + "' holds no layers");
  return set;
}

// Every layer 2-D float32/float64 with n >= p + 2 (as svcca::cca requires), one n across both
// files.
int64_t check_layers(const ActivationSet& a, const ActivationSet& b) {
  int64_t n = -1;
  std::string n_from;
  for (const ActivationSet* set : {&a, &b}) {
    for (const Layer& l : set->layers) {
      const std::string where = "layer '" + l.name + "' of '" + set->path + "'";
      const at::Tensor& t = l.acts;
      if (t.scalar_type() != at::kFloat && t.scalar_type() != at::kDouble) {
        throw InputError(where + " must be float32 or float64, but has dtype " +
                         std::string(c10::toString(t.scalar_type())));
      }
      if (t.dim() != 2) {
        throw InputError(where + " must be 2-D [n_examples, n_features], but has shape " +
                         shape_str(t));
      }
      if (n < 0) {
        n = t.size(0);
        n_from = where;
      } else if (t.size(0) != n) {
        throw InputError(where + " has shape " + shape_str(t) + ", but " + n_from + " has " +
                         std::to_string(n) + " examples (dim 0 must match: same probe inputs)");
      }
      if (t.size(1) < 1 || t.size(1) + 2 > n) {
        throw InputError(where + " has shape " + shape_str(t) +
                         ": CCA and PWCCA need at least p + 2 examples (n >= p + 2, p >= 1)");
      }
    }
  }
  return n;
}

// Layer pairs to report: names both files have, in A's order; by position when none match.
std::vector<std::pair<size_t, size_t>> layer_pairs(const ActivationSet& a, const ActivationSet& b) {
  std::vector<std::pair<size_t, size_t>> pairs;
  for (size_t i = 0; i < a.layers.size(); ++i) {
    for (size_t j = 0; j < b.layers.size(); ++j) {
      if (a.layers[i].name == b.layers[j].name) pairs.push_back({i, j});
    }
  }
  if (pairs.empty()) {
    for (size_t i = 0; i < std::min(a.layers.size(), b.layers.size()); ++i) pairs.push_back({i, i});
  }
  return pairs;
}

struct PairResult {
  std::string a_layer, b_layer;
  int64_t a_features = 0, b_features = 0;
  double cca_mean = 0, r2_cca = 0, svcca = 0, pwcca = 0;
  int64_t svcca_a_dims = 0, svcca_b_dims = 0;
};

// Runs f, prefixing a failure with the layer pair it concerns.
template <class F>
auto with_context(const Layer& la, const Layer& lb, F&& f) {
  try {
    return f();
  } catch (const c10::Error& e) {
    throw InputError("layers '" + la.name + "' (A) and '" + lb.name +
                     "' (B): " + one_line(e.what_without_backtrace()));
  }
}

PairResult compare_pair(const Layer& la, const Layer& lb) {
  return with_context(la, lb, [&] {
    PairResult r;
    r.a_layer = la.name;
    r.b_layer = lb.name;
    r.a_features = la.acts.size(1);
    r.b_features = lb.acts.size(1);
    const auto c = svcca::cca(la.acts, lb.acts);
    r.cca_mean = svcca::mean_correlation(c.correlations).item<double>();
    r.r2_cca = svcca::mean_squared_correlation(c.correlations).item<double>();
    const auto s = svcca::svcca(la.acts, lb.acts);  // default: 99% of the variance
    r.svcca = s.score.item<double>();
    r.svcca_a_dims = s.x_dims;
    r.svcca_b_dims = s.y_dims;
    r.pwcca = svcca::pwcca(la.acts, lb.acts).score.item<double>();
    return r;
  });
}

// SVCCA of every A layer against every B layer, and the directions each layer keeps.
struct Grid {
  std::vector<std::vector<double>> svcca;  // [A layers][B layers]
  std::vector<int64_t> a_dims, b_dims;  // directions kept per layer (they depend on the layer only)
};

Grid svcca_grid(const ActivationSet& a, const ActivationSet& b) {
  Grid g;
  g.svcca.assign(a.layers.size(), std::vector<double>(b.layers.size()));
  g.a_dims.assign(a.layers.size(), 0);
  g.b_dims.assign(b.layers.size(), 0);
  for (size_t i = 0; i < a.layers.size(); ++i) {
    for (size_t j = 0; j < b.layers.size(); ++j) {
      const Layer& la = a.layers[i];
      const Layer& lb = b.layers[j];
      const auto r = with_context(la, lb, [&] { return svcca::svcca(la.acts, lb.acts); });
      g.svcca[i][j] = r.score.item<double>();
      g.a_dims[i] = r.x_dims;
      g.b_dims[j] = r.y_dims;
    }
  }
  return g;
}

size_t name_width(const ActivationSet& a, const ActivationSet& b, size_t at_least) {
  size_t w = at_least;
  for (const ActivationSet* s : {&a, &b}) {
    for (const Layer& l : s->layers) w = std::max(w, l.name.size());
  }
  return w;
}

void print_report(const ActivationSet& a, const ActivationSet& b, int64_t n,
                  const std::vector<PairResult>& pairs, const Grid& grid) {
  auto count = [](size_t k) { return fmt::format("{} layer{}", k, k == 1 ? "" : "s"); };
  fmt::print("A: {} ({})\nB: {} ({})\n{} examples\n\n", a.path, count(a.layers.size()), b.path,
             count(b.layers.size()), n);

  const size_t w = name_width(a, b, 5);
  fmt::print("Per-layer similarity (A layer vs B layer)\n");
  fmt::print("{:<{}}  {:<{}}  {:>4} {:>4}  {:>8} {:>7} {:>7} {:>7} {:>7}\n", "A", w, "B", w, "p_A",
             "p_B", "CCA mean", "R2_CCA", "SVCCA", "dims", "PWCCA");
  for (const PairResult& r : pairs) {
    fmt::print("{:<{}}  {:<{}}  {:>4} {:>4}  {:>8.4f} {:>7.4f} {:>7.4f} {:>7} {:>7.4f}\n",
               r.a_layer, w, r.b_layer, w, r.a_features, r.b_features, r.cca_mean, r.r2_cca,
               r.svcca, fmt::format("{}/{}", r.svcca_a_dims, r.svcca_b_dims), r.pwcca);
  }
  fmt::print("(SVCCA keeps 99% of each layer's variance; dims = directions kept in A/B.)\n\n");

  // Labels "name [dims]": the mean runs over min(dims) correlations, so the dims matter.
  auto label = [](const Layer& l, int64_t dims) { return fmt::format("{} [{}]", l.name, dims); };
  size_t lw = 0, cw = 7;
  for (size_t i = 0; i < a.layers.size(); ++i)
    lw = std::max(lw, label(a.layers[i], grid.a_dims[i]).size());
  for (size_t j = 0; j < b.layers.size(); ++j)
    cw = std::max(cw, label(b.layers[j], grid.b_dims[j]).size());
  fmt::print("SVCCA, A layers (rows) x B layers (columns), [directions kept]; * = row maximum\n");
  fmt::print("{:<{}}", "", lw);
  for (size_t j = 0; j < b.layers.size(); ++j)
    fmt::print("  {:>{}}", label(b.layers[j], grid.b_dims[j]), cw);
  fmt::print("\n");
  for (size_t i = 0; i < a.layers.size(); ++i) {
    const auto& row = grid.svcca[i];
    fmt::print("{:<{}}", label(a.layers[i], grid.a_dims[i]), lw);
    const size_t best = static_cast<size_t>(std::max_element(row.begin(), row.end()) - row.begin());
    for (size_t j = 0; j < row.size(); ++j) {
      fmt::print("  {:>{}}", fmt::format("{:.4f}{}", row[j], j == best ? "*" : " "), cw);
    }
    fmt::print("\n");
  }
  fmt::print(
      "(A layer is most similar to the B layer marked *. SVCCA averages min(dims) correlations,\n"
      " so a layer that keeps few directions, like logits, scores high against any layer that\n"
      " linearly contains them: compare cells of similar dims.)\n");
}

void write_json(const std::string& out, const ActivationSet& a, const ActivationSet& b, int64_t n,
                const std::vector<PairResult>& pairs, const Grid& grid) {
  nlohmann::ordered_json j;
  j["a"] = a.path;
  j["b"] = b.path;
  j["n_examples"] = n;
  j["svcca_fraction"] = svcca::SvccaOptions{}.fraction;
  j["pairs"] = nlohmann::ordered_json::array();
  for (const PairResult& r : pairs) {
    j["pairs"].push_back({{"a_layer", r.a_layer},
                          {"b_layer", r.b_layer},
                          {"a_features", r.a_features},
                          {"b_features", r.b_features},
                          {"cca_mean", r.cca_mean},
                          {"r2_cca", r.r2_cca},
                          {"svcca", r.svcca},
                          {"svcca_a_dims", r.svcca_a_dims},
                          {"svcca_b_dims", r.svcca_b_dims},
                          {"pwcca", r.pwcca}});
  }
  auto names = [](const ActivationSet& s) {
    std::vector<std::string> v;
    for (const Layer& l : s.layers) v.push_back(l.name);
    return v;
  };
  j["svcca_grid"] = {{"a_layers", names(a)},
                     {"b_layers", names(b)},
                     {"a_dims", grid.a_dims},
                     {"b_dims", grid.b_dims},
                     {"values", grid.svcca}};

  std::ofstream f(out);
  if (!f) throw InputError("cannot write JSON to '" + out + "': " + std::strerror(errno));
  f << j.dump(2) << "\n";
  f.close();
  if (!f) throw InputError("cannot write JSON to '" + out + "': " + std::strerror(errno));
}

struct Args {
  std::string a = SVCCA_DATA_DIR "/net_a.pt";
  std::string b = SVCCA_DATA_DIR "/net_b.pt";
  std::optional<std::string> json;
  bool help = false;
};

Args parse_args(int argc, char** argv) {
  Args args;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      args.help = true;
    } else if (arg == "--json") {
      if (i + 1 >= argc) throw UsageError("--json needs a path");
      args.json = argv[++i];
    } else if (arg.rfind("--json=", 0) == 0) {
      args.json = arg.substr(7);
      if (args.json->empty()) throw UsageError("--json needs a path");
    } else if (arg.size() > 1 && arg[0] == '-') {
      throw UsageError("unknown option '" + arg + "'");
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() == 2) {
    args.a = positional[0];
    args.b = positional[1];
  } else if (!positional.empty()) {
    throw UsageError("expected two activation files A.pt B.pt (or none), but got " +
                     std::to_string(positional.size()));
  }
  return args;
}

int run(const Args& args) {
  const ActivationSet a = load_activations(args.a);
  const ActivationSet b = load_activations(args.b);
  const int64_t n = check_layers(a, b);

  std::vector<PairResult> pairs;
  for (const auto& [i, j] : layer_pairs(a, b))
    pairs.push_back(compare_pair(a.layers[i], b.layers[j]));
  const Grid grid = svcca_grid(a, b);

  print_report(a, b, n, pairs, grid);
  if (args.json) {
    write_json(*args.json, a, b, n, pairs, grid);
    fmt::print("\nwrote {}\n", *args.json);
  }
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args args = parse_args(argc, argv);
    if (args.help) {
      fmt::print("{}", kUsage);
      return kExitOk;
    }
    return run(args);
  } catch (const UsageError& e) {
    fmt::print(stderr, "svcca-compare: {} (see --help)\n", e.what());
    return kExitUsage;
  } catch (const InputError& e) {
    fmt::print(stderr, "svcca-compare: {}\n", e.what());
    return kExitInput;
  } catch (const c10::Error& e) {
    fmt::print(stderr, "svcca-compare: {}\n", one_line(e.what_without_backtrace()));
    return kExitInput;
  } catch (const std::exception& e) {
    fmt::print(stderr, "svcca-compare: {}\n", one_line(e.what()));
    return kExitInput;
  }
}
