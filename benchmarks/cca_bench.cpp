// Google Benchmark of cca, svcca, pwcca and linear_cka against the covariance products they are
// built on.
//
// For each shape and input dtype, the program times (same tensors, same run):
//   products/<in>-><compute>/<shape>  the floor: X^T X and Y^T Y as symmetric products
//                                     (detail::covariance: BLAS syrk where the build has it) and
//                                     X^T Y (at::mm), in the compute dtype; a float32 input is
//                                     timed both in float32 and in float64 (the default policy
//                                     computes in float64; the cast is done once beforehand and
//                                     is not part of this time);
//   gemm/<in>/<shape>                 the same three products as general at::mm in float64;
//   cca|svcca|pwcca|linear_cka/<in>/<shape>  the full measure with default options (svcca: 0.99);
//   pieces/<in>/<shape>               cca() taken apart with the svcca::detail functions it calls
//                                     (checks, pair_moments' two passes, eigh,
//                                     whitened SVD, weights), to show where the time goes.
// Each measure row carries counters x_prod_f64 (and x_prod_f32 for float32 inputs): its time
// divided by the products' time; a summary table with the same ratios is printed at the end.
// The goal (issue 13): each measure within 1.15x of the float64 symmetric products.
//
// Flags (before the --benchmark_* ones): --shapes=small|big|all (env SVCCA_BENCH_SHAPES;
// default all), --threads=N (default 2). See benchmarks/README.md.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "svcca/blas.h"
#include "svcca/checks.h"
#include "svcca/linalg.h"
#include "svcca/measures/cca.h"
#include "svcca/measures/cka.h"
#include "svcca/measures/pwcca.h"
#include "svcca/measures/svcca.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Shape {
  int64_t n;
  int64_t p;
  bool big;
  std::string name() const { return std::to_string(n) + "x" + std::to_string(p); }
};

const char* dtype_name(at::ScalarType t) {
  return t == at::kFloat ? "f32" : "f64";
}

// ---- Inputs: generated once per shape, seeded ----------------------------------------------

// x and y mix a shared latent z ([n, p/4], decaying scales so that the spectrum is not flat and
// svcca's 0.99 cut keeps a strict subset) through different random matrices, plus independent
// noise: so the first ~p/4 canonical correlations are high and the rest low, as for two
// networks that share part of their representation. The float32 pair is the float64 pair cast.
struct Inputs {
  at::Tensor x, y;
};

const Inputs& inputs(const Shape& s, at::ScalarType dtype) {
  static std::map<std::pair<std::string, at::ScalarType>, Inputs> cache;
  auto key = std::make_pair(s.name(), dtype);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (dtype == at::kFloat) {
    const Inputs& d = inputs(s, at::kDouble);
    return cache[key] = Inputs{d.x.to(at::kFloat), d.y.to(at::kFloat)};
  }
  auto gen = at::detail::createCPUGenerator(/*seed_val=*/20240601 + s.n + s.p);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const int64_t d = std::max<int64_t>(s.p / 4, 1);
  at::Tensor scales = 1.0 / (1.0 + at::arange(d, opts) / 8.0);
  at::Tensor z = at::randn({s.n, d}, gen, opts) * scales;
  auto mix = [&] {
    at::Tensor a = at::randn({d, s.p}, gen, opts);
    return at::mm(z, a).add_(at::randn({s.n, s.p}, gen, opts), /*alpha=*/0.3);
  };
  Inputs in;
  in.x = mix();
  in.y = mix();
  return cache[key] = in;
}

// ---- Timings shared between benchmarks and the summary -------------------------------------

// Per-iteration wall times (seconds) by key "<what>/<in>[-><compute>]/<shape>".
std::map<std::string, std::vector<double>>& samples() {
  static std::map<std::string, std::vector<double>> s;
  return s;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

double median_of(const std::string& key) {
  auto it = samples().find(key);
  return it == samples().end() ? 0.0 : median(it->second);
}

std::string products_key(at::ScalarType in, at::ScalarType compute, const Shape& s) {
  return std::string("products/") + dtype_name(in) + "->" + dtype_name(compute) + "/" + s.name();
}

// Runs f once per benchmark iteration, recording its wall time under key.
template <class F>
void timed_loop(benchmark::State& state, const std::string& key, F&& f) {
  auto& out = samples()[key];
  for (auto _ : state) {
    const auto t0 = Clock::now();
    f();
    out.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
}

// ---- Benchmarks -----------------------------------------------------------------------------

void bm_products(benchmark::State& state, Shape s, at::ScalarType in, at::ScalarType compute) {
  const Inputs& data = inputs(s, in);
  // Cast outside the timed region: this row is the products alone.
  const at::Tensor x = data.x.to(compute);
  const at::Tensor y = data.y.to(compute);
  // The floor: X^T X and Y^T Y as symmetric products (syrk where the build has BLAS), X^T Y as
  // a general one, exactly as the measures form them.
  timed_loop(state, products_key(in, compute, s), [&] {
    at::Tensor sxx = svcca::detail::covariance(x);
    at::Tensor syy = svcca::detail::covariance(y);
    at::Tensor sxy = svcca::detail::cross_covariance(x, y);
    benchmark::DoNotOptimize(sxx.data_ptr());
    benchmark::DoNotOptimize(syy.data_ptr());
    benchmark::DoNotOptimize(sxy.data_ptr());
  });
  const double flops = 2.0 * s.n * s.p * s.p * (svcca::detail::have_blas() ? 2.0 : 2.5);
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// The same three products as general matrix products (what the measures did before syrk).
void bm_gemm(benchmark::State& state, Shape s, at::ScalarType in) {
  const Inputs& data = inputs(s, in);
  const at::Tensor x = data.x.to(at::kDouble);
  const at::Tensor y = data.y.to(at::kDouble);
  timed_loop(state, std::string("gemm/") + dtype_name(in) + "/" + s.name(), [&] {
    at::Tensor sxx = at::mm(x.t(), x);
    at::Tensor syy = at::mm(y.t(), y);
    at::Tensor sxy = at::mm(x.t(), y);
    benchmark::DoNotOptimize(sxx.data_ptr());
    benchmark::DoNotOptimize(syy.data_ptr());
    benchmark::DoNotOptimize(sxy.data_ptr());
  });
  const double flops = 2.0 * s.n * s.p * s.p * 3.0;
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

enum class Measure { kCca, kSvcca, kPwcca, kLinearCka };
constexpr Measure kMeasures[] = {Measure::kCca, Measure::kSvcca, Measure::kPwcca,
                                 Measure::kLinearCka};

const char* measure_name(Measure m) {
  switch (m) {
    case Measure::kCca:
      return "cca";
    case Measure::kSvcca:
      return "svcca";
    case Measure::kPwcca:
      return "pwcca";
    case Measure::kLinearCka:
      return "linear_cka";
  }
  return "?";
}

void set_ratio_counters(benchmark::State& state, const std::string& key, const Shape& s,
                        at::ScalarType in) {
  const double t = median_of(key);
  const double p64 = median_of(products_key(in, at::kDouble, s));
  if (p64 > 0) state.counters["x_prod_f64"] = t / p64;
  if (in == at::kFloat) {
    const double p32 = median_of(products_key(in, at::kFloat, s));
    if (p32 > 0) state.counters["x_prod_f32"] = t / p32;
  }
}

void bm_measure(benchmark::State& state, Shape s, at::ScalarType in, Measure m) {
  const Inputs& data = inputs(s, in);
  const std::string key = std::string(measure_name(m)) + "/" + dtype_name(in) + "/" + s.name();
  double score = 0.0;
  double kept = 0.0;  // svcca: directions of x kept at 0.99
  timed_loop(state, key, [&] {
    at::Tensor r;
    switch (m) {
      case Measure::kCca:
        r = svcca::cca(data.x, data.y).correlations.mean();
        break;
      case Measure::kSvcca: {
        svcca::SvccaOptions o;
        o.fraction = 0.99;
        const auto res = svcca::svcca(data.x, data.y, o);
        r = res.score;
        kept = static_cast<double>(res.x_dims);
        break;
      }
      case Measure::kPwcca:
        r = svcca::pwcca(data.x, data.y).score;
        break;
      case Measure::kLinearCka:
        r = svcca::linear_cka(data.x, data.y);
        break;
    }
    score = r.item<double>();
  });
  state.counters["score"] = score;
  if (m == Measure::kSvcca) state.counters["x_dims"] = kept;
  set_ratio_counters(state, key, s, in);
}

// cca() taken apart into the steps it performs (csrc/svcca/measures/cca.cpp), each timed.
struct PieceTimes {
  std::vector<std::pair<std::string, std::vector<double>>> pieces;
  void add(const std::string& name, double t) {
    for (auto& p : pieces) {
      if (p.first == name) {
        p.second.push_back(t);
        return;
      }
    }
    pieces.push_back({name, {t}});
  }
};

const char* piece_description(const std::string& name) {
  static const std::map<std::string, const char*> d = {
      {"checks", "check_pair etc. (finiteness scans)"},
      {"moments", "pair_moments: statistics pass, blocked syrk x2 + cross"},
      {"eigh", "factor_layer x2 (eigh)"},
      {"core_svd", "cca_core (2 mm + svd)"},
      {"weights", "canonical weights (2 mm)"},
  };
  auto it = d.find(name);
  return it == d.end() ? name.c_str() : it->second;
}

std::map<std::string, PieceTimes>& piece_times() {
  static std::map<std::string, PieceTimes> p;
  return p;
}

void bm_pieces(benchmark::State& state, Shape s, at::ScalarType in) {
  const Inputs& data = inputs(s, in);
  const std::string key = std::string("pieces/") + dtype_name(in) + "/" + s.name();
  auto& pt = piece_times()[key];
  const at::Tensor& x = data.x;
  const at::Tensor& y = data.y;
  timed_loop(state, key, [&] {
    auto t = Clock::now();
    auto lap = [&](const char* name) {
      const auto now = Clock::now();
      pt.add(name, std::chrono::duration<double>(now - t).count());
      t = now;
    };
    svcca::detail::check_pair("cca", x, y);
    svcca::detail::check_more_examples_than_features("cca", "x", x);
    svcca::detail::check_more_examples_than_features("cca", "y", y);
    lap("checks");
    auto m = svcca::detail::pair_moments(x, y, svcca::Precision::kFloat64);
    lap("moments");
    svcca::detail::FactorOptions fo;
    auto fx = svcca::detail::factor_layer("cca", "x", m.sxx, m.x_non_constant, fo);
    auto fy = svcca::detail::factor_layer("cca", "y", m.syy, m.y_non_constant, fo);
    lap("eigh");
    auto core = svcca::detail::cca_core(fx, fy, m.sxy);
    lap("core_svd");
    at::Tensor wx =
        svcca::detail::scatter_rows(at::mm(fx.whitening, core.u), fx).to(x.scalar_type());
    at::Tensor wy =
        svcca::detail::scatter_rows(at::mm(fy.whitening, core.v), fy).to(x.scalar_type());
    benchmark::DoNotOptimize(wx.data_ptr());
    benchmark::DoNotOptimize(wy.data_ptr());
    lap("weights");
  });
  for (const auto& p : pt.pieces) state.counters[p.first] = median(p.second);
  set_ratio_counters(state, key, s, in);
}

// ---- Summary --------------------------------------------------------------------------------

void print_summary(const std::vector<Shape>& shapes) {
  if (samples().empty()) return;  // --benchmark_list_tests, or a filter that matched nothing
  std::printf("\nSummary: median wall time per call; ratio = measure time / products time\n");
  std::printf(
      "(products = X^T X, Y^T Y as symmetric products (%s) and X^T Y by at::mm, on the same "
      "tensors; goal: x_prod_f64 <= 1.15)\n\n",
      svcca::detail::have_blas() ? "BLAS syrk" : "no BLAS: blocked at::mm");
  std::printf("%-11s %-4s %-36s %10s %11s %11s\n", "shape", "in", "what", "time [s]", "x_prod_f64",
              "x_prod_f32");
  for (const Shape& s : shapes) {
    for (at::ScalarType in : {at::kDouble, at::kFloat}) {
      const double p64 = median_of(products_key(in, at::kDouble, s));
      const double p32 = in == at::kFloat ? median_of(products_key(in, at::kFloat, s)) : 0.0;
      auto row = [&](const std::string& what, const std::string& key) {
        const double t = median_of(key);
        if (t <= 0) return;
        char r64[32] = "-", r32[32] = "-";
        if (p64 > 0) std::snprintf(r64, sizeof r64, "%.2f", t / p64);
        if (p32 > 0) std::snprintf(r32, sizeof r32, "%.2f", t / p32);
        std::printf("%-11s %-4s %-36s %10.4f %11s %11s\n", s.name().c_str(), dtype_name(in),
                    what.c_str(), t, r64, r32);
      };
      if (in == at::kFloat) row("products (in f32)", products_key(in, at::kFloat, s));
      row("products (in f64)", products_key(in, at::kDouble, s));
      row("3 x at::mm (in f64)", std::string("gemm/") + dtype_name(in) + "/" + s.name());
      for (Measure m : kMeasures) {
        row(measure_name(m), std::string(measure_name(m)) + "/" + dtype_name(in) + "/" + s.name());
      }
      const std::string pkey = std::string("pieces/") + dtype_name(in) + "/" + s.name();
      auto it = piece_times().find(pkey);
      if (it != piece_times().end()) {
        row("cca by pieces", pkey);
        for (const auto& p : it->second.pieces) {
          const double t = median(p.second);
          char r64[32] = "-";
          if (p64 > 0) std::snprintf(r64, sizeof r64, "%.2f", t / p64);
          std::printf("%-11s %-4s   %-34s %10.4f %11s\n", "", "", piece_description(p.first), t,
                      r64);
        }
      }
    }
  }
}

// Removes --name=value from argv (so that benchmark::Initialize does not see it).
const char* take_flag(int& argc, char** argv, const char* name) {
  const size_t len = std::strlen(name);
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], name, len) == 0 && argv[i][len] == '=') {
      const char* v = argv[i] + len + 1;
      for (int j = i; j + 1 < argc; ++j) argv[j] = argv[j + 1];
      --argc;
      return v;
    }
  }
  return nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  const char* shapes_arg = take_flag(argc, argv, "--shapes");
  if (shapes_arg == nullptr) shapes_arg = std::getenv("SVCCA_BENCH_SHAPES");
  const std::string which = shapes_arg ? shapes_arg : "all";
  if (which != "all" && which != "small" && which != "big") {
    std::fprintf(stderr, "svcca_cca_bench: --shapes must be small, big or all, but got '%s'\n",
                 which.c_str());
    return 1;
  }
  const char* threads_arg = take_flag(argc, argv, "--threads");
  const int threads = threads_arg ? std::atoi(threads_arg) : 2;
  if (threads < 1) {
    std::fprintf(stderr, "svcca_cca_bench: --threads must be >= 1, but got '%s'\n", threads_arg);
    return 1;
  }
  at::set_num_threads(threads);

  std::vector<Shape> shapes;
  if (which != "big") shapes.push_back({10000, 256, false});
  if (which != "small") shapes.push_back({50000, 1024, true});

  for (const Shape& s : shapes) {
    for (at::ScalarType in : {at::kDouble, at::kFloat}) {
      std::vector<benchmark::internal::Benchmark*> regs;
      const std::string suffix = std::string("/") + dtype_name(in) + "/" + s.name();
      if (in == at::kFloat) {
        regs.push_back(benchmark::RegisterBenchmark(("products/f32->f32/" + s.name()).c_str(),
                                                    bm_products, s, in, at::kFloat));
      }
      regs.push_back(benchmark::RegisterBenchmark(
          (std::string("products/") + dtype_name(in) + "->f64/" + s.name()).c_str(), bm_products, s,
          in, at::kDouble));
      regs.push_back(benchmark::RegisterBenchmark(("gemm" + suffix).c_str(), bm_gemm, s, in));
      for (Measure m : kMeasures) {
        regs.push_back(
            benchmark::RegisterBenchmark((measure_name(m) + suffix).c_str(), bm_measure, s, in, m));
      }
      regs.push_back(benchmark::RegisterBenchmark(("pieces" + suffix).c_str(), bm_pieces, s, in));
      for (auto* b : regs) {
        b->Unit(benchmark::kMillisecond)->UseRealTime();
        // The big shape costs ~10 s per products call with OpenBLAS's generic kernels.
        if (s.big)
          b->Iterations(1);
        else
          b->MinTime(1.0);
      }
    }
  }

  benchmark::AddCustomContext("torch_threads", std::to_string(at::get_num_threads()));
  const char* core = std::getenv("OPENBLAS_CORETYPE");
  benchmark::AddCustomContext("OPENBLAS_CORETYPE", core ? core : "(unset)");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  print_summary(shapes);
  benchmark::Shutdown();
  return 0;
}
