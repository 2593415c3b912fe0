// Google Benchmark of Fourier CCA on conv activations [512, 64, 16, 16] vs [512, 64, 16, 16]
// (float32 input, default float64/complex128 numerics):
//   fourier/batched      svcca::fourier_cca: one FFT, all frequencies in one batched pass,
//   conjugate
//                        pairs solved once (130 of 256 frequencies);
//   fourier/loop_all     the same numerics frequency by frequency (FFT once, then for each of the
//                        256 frequencies: slice, center, covariances, eigh whitening, svdvals), as
//                        a port of the reference's per-location loop would do;
//   fourier/loop_half    the same loop over the 130 frequencies the batched pass solves;
//   fold/cca             the fold-into-examples recipe: cca on [512*16*16, 64] x [.., 64].
// A summary with the ratios the issue asks for is printed at the end.
// Flags: --benchmark_* as usual; env SVCCA_CONV_BENCH_N overrides N (default 512).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "svcca/conv/fourier.h"
#include "svcca/conv/recipes.h"
#include "svcca/linalg.h"
#include "svcca/measures/cca.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Inputs {
  at::Tensor x, y;
};

const Inputs& inputs() {
  static const Inputs in = [] {
    const char* env = std::getenv("SVCCA_CONV_BENCH_N");
    const int64_t n = env ? std::atoll(env) : 512;
    at::manual_seed(0);
    at::Tensor x = at::randn({n, 64, 16, 16});
    at::Tensor mix = at::randn({64, 64}) / 8.0;
    at::Tensor y = at::einsum("dc,nchw->ndhw", {mix, x}) + 0.5 * at::randn({n, 64, 16, 16});
    return Inputs{x, y};
  }();
  return in;
}

std::map<std::string, double>& seconds() {
  static std::map<std::string, double> m;
  return m;
}

// The per-frequency loop: identical numerics to fourier_cca, one frequency at a time.
at::Tensor loop_fourier_cca(const at::Tensor& x, const at::Tensor& y, bool half) {
  auto grid = svcca::detail::frequency_grid(x.size(2), x.size(3), y.size(2), y.size(3), half);
  at::Tensor xf = at::fft_fft2(x.to(at::kComplexDouble), c10::nullopt, {2, 3});
  at::Tensor yf = at::fft_fft2(y.to(at::kComplexDouble), c10::nullopt, {2, 3});
  svcca::detail::FactorOptions o;
  std::vector<at::Tensor> out;
  for (int64_t l : grid.solved) {
    const int64_t i = l / grid.w, j = l % grid.w;
    at::Tensor a = xf.select(2, i).select(2, j).unsqueeze(0);  // [1, N, C]
    at::Tensor b = yf.select(2, i).select(2, j).unsqueeze(0);
    a = a - a.mean(1, true);
    b = b - b.mean(1, true);
    auto wx =
        svcca::detail::batched_whitening(svcca::detail::batched_cross_covariance(a, a), {}, o);
    auto wy =
        svcca::detail::batched_whitening(svcca::detail::batched_cross_covariance(b, b), {}, o);
    at::Tensor sxy = svcca::detail::batched_cross_covariance(a, b);
    at::Tensor m = at::matmul(svcca::detail::mh(wx.whitening), at::matmul(sxy, wy.whitening));
    out.push_back(at::linalg_svdvals(m).clamp(0.0, 1.0));
  }
  return at::cat(out);
}

template <typename F>
void timed(benchmark::State& state, const std::string& name, F&& f) {
  double total = 0;
  int64_t iters = 0;
  for (auto _ : state) {
    auto t0 = Clock::now();
    benchmark::DoNotOptimize(f());
    total += std::chrono::duration<double>(Clock::now() - t0).count();
    ++iters;
  }
  seconds()[name] = total / static_cast<double>(iters);
}

void BM_FourierBatched(benchmark::State& state) {
  const auto& in = inputs();
  timed(state, "fourier/batched", [&] { return svcca::fourier_cca(in.x, in.y).correlations; });
}
void BM_FourierLoopAll(benchmark::State& state) {
  const auto& in = inputs();
  timed(state, "fourier/loop_all", [&] { return loop_fourier_cca(in.x, in.y, false); });
}
void BM_FourierLoopHalf(benchmark::State& state) {
  const auto& in = inputs();
  timed(state, "fourier/loop_half", [&] { return loop_fourier_cca(in.x, in.y, true); });
}
void BM_FoldCca(benchmark::State& state) {
  const auto& in = inputs();
  timed(state, "fold/cca", [&] {
    return svcca::cca(svcca::fold_positions(in.x), svcca::fold_positions(in.y)).correlations;
  });
}

BENCHMARK(BM_FourierBatched)->Name("fourier/batched")->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK(BM_FourierLoopAll)
    ->Name("fourier/loop_all")
    ->Unit(benchmark::kMillisecond)
    ->Iterations(2);
BENCHMARK(BM_FourierLoopHalf)
    ->Name("fourier/loop_half")
    ->Unit(benchmark::kMillisecond)
    ->Iterations(2);
BENCHMARK(BM_FoldCca)->Name("fold/cca")->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  auto& s = seconds();
  auto ratio = [&](const char* a, const char* b) {
    if (!s.count(a) || !s.count(b)) return;
    std::printf("  %-18s / %-18s = %6.2fx\n", a, b, s[a] / s[b]);
  };
  std::printf("\nSummary (x: [%lld, 64, 16, 16] float32, threads %d):\n",
              static_cast<long long>(inputs().x.size(0)), at::get_num_threads());
  for (const auto& kv : s) std::printf("  %-18s %9.1f ms\n", kv.first.c_str(), 1e3 * kv.second);
  ratio("fourier/loop_all", "fourier/batched");
  ratio("fourier/loop_half", "fourier/batched");
  ratio("fold/cca", "fourier/batched");
  return 0;
}
