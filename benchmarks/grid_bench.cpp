// Google Benchmark of grid reuse: a 12-layer one-model grid (n = 5000 float32 examples, widths 64
// to 512) against the same 78 cells (the upper triangle with the diagonal) from independent
// one-shot pair calls, for linear CKA and for SVCCA (default options: 99% of the variance):
//   cka/grid     svcca::similarity_grid(layers)          cka/pairs     78 x svcca::linear_cka
//   svcca/grid   svcca::similarity_grid(layers, svcca)   svcca/pairs   78 x svcca::svcca
// A summary with the pairs / grid ratios (the goal: >= 4x) is printed at the end.
// Flags: --benchmark_* as usual; env SVCCA_GRID_BENCH_N overrides n (default 5000).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <time.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "svcca/blas.h"
#include "svcca/grid/grid.h"

namespace {

using Clock = std::chrono::steady_clock;

const std::vector<int64_t> kWidths = {64, 96, 128, 160, 192, 256, 256, 320, 384, 448, 512, 512};

int64_t n_examples() {
  const char* env = std::getenv("SVCCA_GRID_BENCH_N");
  return env ? std::atoll(env) : 5000;
}

// Layers with shared low-rank structure plus noise (so SVCCA keeps a realistic share of the
// directions), float32 as captured activations are.
const svcca::NamedActivations& layers() {
  static const svcca::NamedActivations l = [] {
    at::manual_seed(0);
    const int64_t n = n_examples();
    at::Tensor z = at::randn({n, 32});
    svcca::NamedActivations out;
    for (size_t i = 0; i < kWidths.size(); ++i) {
      const int64_t p = kWidths[i];
      at::Tensor x = at::mm(z, at::randn({32, p})) + 0.5 * at::randn({n, p});
      out.push_back({"layer" + std::to_string(i), at::relu(x)});
    }
    return out;
  }();
  return l;
}

std::map<std::string, double>& seconds() {
  static std::map<std::string, double> m;
  return m;
}

// CPU seconds of the whole process (all threads): on a shared machine this moves much less
// with the load than the wall time does.
std::map<std::string, double>& cpu_seconds() {
  static std::map<std::string, double> m;
  return m;
}

double process_cpu_now() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

template <typename F>
void timed(benchmark::State& state, const std::string& name, F&& f) {
  double total = 0.0, cpu = 0.0;
  int64_t iters = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    const double c0 = process_cpu_now();
    f();
    cpu += process_cpu_now() - c0;
    total += std::chrono::duration<double>(Clock::now() - t0).count();
    ++iters;
  }
  seconds()[name] = total / static_cast<double>(iters);
  cpu_seconds()[name] = cpu / static_cast<double>(iters);
}

void BM_CkaGrid(benchmark::State& state) {
  timed(state, "cka/grid",
        [] { benchmark::DoNotOptimize(svcca::similarity_grid(layers()).values); });
}

void BM_CkaPairs(benchmark::State& state) {
  timed(state, "cka/pairs", [] {
    const auto& l = layers();
    for (size_t i = 0; i < l.size(); ++i) {
      for (size_t j = i; j < l.size(); ++j) {
        benchmark::DoNotOptimize(svcca::linear_cka(l[i].second, l[j].second).item<double>());
      }
    }
  });
}

void BM_SvccaGrid(benchmark::State& state) {
  svcca::GridOptions o;
  o.measure = svcca::GridMeasure::kSvcca;
  timed(state, "svcca/grid",
        [&] { benchmark::DoNotOptimize(svcca::similarity_grid(layers(), o).values); });
}

void BM_SvccaPairs(benchmark::State& state) {
  timed(state, "svcca/pairs", [] {
    const auto& l = layers();
    for (size_t i = 0; i < l.size(); ++i) {
      for (size_t j = i; j < l.size(); ++j) {
        benchmark::DoNotOptimize(svcca::svcca(l[i].second, l[j].second).score.item<double>());
      }
    }
  });
}

// Multiply-adds per example of svcca::detail::covariance on p features: one syrk (p (p + 1) / 2)
// where the build has BLAS; else two column blocks from p = 128 on (only the blocks on and
// above the diagonal are multiplied).
double covariance_madds(int64_t p) {
  if (svcca::detail::have_blas()) return static_cast<double>(p * (p + 1) / 2);
  if (p < 128) return static_cast<double>(p * p);
  const int64_t b = (p + 1) / 2;
  return static_cast<double>(b * b + b * (p - b) + (p - b) * (p - b));
}

// What linear CKA's products cost per example: the 78 pair calls each take X^T X, Y^T Y and
// X^T Y; the grid takes each layer's X^T X once and each X_a^T X_b (a < b) once. The cross
// products alone bound any exact reuse: their share is what no grid can skip.
void print_cka_flop_bound() {
  double pairs = 0.0, grid = 0.0, cross = 0.0;
  for (size_t i = 0; i < kWidths.size(); ++i) {
    grid += covariance_madds(kWidths[i]);
    for (size_t j = i; j < kWidths.size(); ++j) {
      const double xy = static_cast<double>(kWidths[i] * kWidths[j]);
      pairs += covariance_madds(kWidths[i]) + covariance_madds(kWidths[j]) + xy;
      if (j > i) cross += xy;
    }
  }
  grid += cross;
  std::printf(
      "  cka    multiply-adds per example: pairs %.3gM, grid %.3gM, of which cross products "
      "%.3gM:\n         flop ratio %.2fx; %.2fx even if per-layer work were free (the ceiling "
      "of exact reuse)\n",
      pairs / 1e6, grid / 1e6, cross / 1e6, pairs / grid, pairs / cross);
}

}  // namespace

BENCHMARK(BM_CkaGrid)->Name("cka/grid")->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK(BM_CkaPairs)->Name("cka/pairs")->Unit(benchmark::kMillisecond)->Iterations(2);
BENCHMARK(BM_SvccaGrid)->Name("svcca/grid")->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK(BM_SvccaPairs)->Name("svcca/pairs")->Unit(benchmark::kMillisecond)->Iterations(2);

int main(int argc, char** argv) {
  at::set_num_threads(2);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  layers();  // build the inputs outside the timings
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  auto& s = seconds();
  std::printf("\nSummary (12 layers, n = %lld float32, widths 64..512, 78 cells, threads %d):\n",
              static_cast<long long>(n_examples()), at::get_num_threads());
  auto& c = cpu_seconds();
  for (const auto& kv : s) {
    std::printf("  %-12s wall %9.1f ms   process CPU %9.1f ms\n", kv.first.c_str(), 1e3 * kv.second,
                1e3 * c[kv.first]);
  }
  for (const char* m : {"cka", "svcca"}) {
    const std::string g = std::string(m) + "/grid", p = std::string(m) + "/pairs";
    if (s.count(g) && s.count(p)) {
      std::printf("  %-6s pairs / grid = %6.2fx wall, %6.2fx process CPU (goal >= 4x)\n", m,
                  s[p] / s[g], c[p] / c[g]);
    }
  }
  if (s.count("cka/grid")) print_cka_flop_bound();
  return 0;
}
