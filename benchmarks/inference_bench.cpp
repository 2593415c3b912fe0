// Bootstrap speed (issue 14): R resamples through svcca::bootstrap at n = 5000, p = 512 against
// one-shot calls of the measure on resampled rows (index the data, then linear_cka / svcca), and
// the 12-layer grid of svcca_grid_bench with 200 resamples per cell (InferenceGridBuilder).
// Not Google Benchmark: each side is timed once (minutes), so the baseline may run fewer calls and
// be scaled to R (the per-call time of a one-shot measure does not depend on the resample).
//   svcca_inference_bench [--resamples R] [--baseline-calls C] [--n N] [--p P] [--grid-resamples G]
//                         [--skip-grid] [--measures cka,svcca | none] [--workers W]
//                         [--grid-measures cka,svcca] [--permutations P]
// --permutations P > 0 also times permutation_test with P permutations per measure.
// Prints, per measure, seconds per resample on both sides and the ratio (goal: cka >= 20x,
// svcca >= 2x), then the grid's time. --workers: BootstrapOptions::workers (0, the default: as many
// threads as the BLAS's; 1: serial), to compare the two in one build.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "svcca/blas.h"
#include "svcca/inference/bootstrap.h"
#include "svcca/inference/grid_inference.h"
#include "svcca/inference/permutation.h"
#include "svcca/inference/resampling.h"
#include "svcca/measures/cka.h"
#include "svcca/measures/svcca.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

at::Tensor rows_of(const at::Tensor& w) {
  at::Tensor c = w.to(at::kLong);
  return at::repeat_interleave(at::arange(w.size(0), c.options()), c);
}

}  // namespace

int main(int argc, char** argv) {
  int64_t resamples = 1000, baseline = 1000, n = 5000, p = 512, grid_resamples = 200, workers = 0,
          permutations = 0;
  bool grid = true;
  std::string measures = "cka,svcca", grid_measures = "cka";
  for (int i = 1; i < argc; ++i) {
    auto next = [&] { return i + 1 < argc ? std::atoll(argv[++i]) : 0; };
    if (!std::strcmp(argv[i], "--resamples"))
      resamples = next();
    else if (!std::strcmp(argv[i], "--baseline-calls"))
      baseline = next();
    else if (!std::strcmp(argv[i], "--n"))
      n = next();
    else if (!std::strcmp(argv[i], "--p"))
      p = next();
    else if (!std::strcmp(argv[i], "--grid-measures") && i + 1 < argc)
      grid_measures = argv[++i];
    else if (!std::strcmp(argv[i], "--permutations"))
      permutations = next();
    else if (!std::strcmp(argv[i], "--workers"))
      workers = next();
    else if (!std::strcmp(argv[i], "--grid-resamples"))
      grid_resamples = next();
    else if (!std::strcmp(argv[i], "--skip-grid"))
      grid = false;
    else if (!std::strcmp(argv[i], "--measures") && i + 1 < argc)
      measures = argv[++i];
    else {
      std::fprintf(stderr, "svcca_inference_bench: unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  std::printf(
      "threads %d (BLAS %d, workers option %lld), n %lld, p %lld, %lld resamples (baseline: "
      "%lld one-shot calls, scaled to %lld)\n",
      at::get_num_threads(), svcca::detail::blas_threads(), static_cast<long long>(workers),
      static_cast<long long>(n), static_cast<long long>(p), static_cast<long long>(resamples),
      static_cast<long long>(baseline), static_cast<long long>(resamples));
  at::manual_seed(0);
  at::Tensor z = at::randn({n, 32});
  at::Tensor x = at::relu(at::mm(z, at::randn({32, p})) + 0.5 * at::randn({n, p}));
  at::Tensor y = at::relu(at::mm(z, at::randn({32, p})) + 0.5 * at::randn({n, p}));

  std::stringstream list(measures);
  std::string m;
  while (measures != "none" && std::getline(list, m, ',')) {
    svcca::BootstrapOptions o;
    o.resamples = resamples;
    o.workers = workers;
    auto t0 = Clock::now();
    svcca::BootstrapResult r = svcca::bootstrap(x, y, m, o);
    const double boot = seconds_since(t0);
    // The baseline: the same resamples' rows, indexed, then the one-shot measure.
    at::Tensor w = svcca::detail::Draws(0).bootstrap_weights(n, baseline);
    double check = 0.0;
    t0 = Clock::now();
    for (int64_t k = 0; k < baseline; ++k) {
      at::Tensor idx = rows_of(w.select(1, k));
      at::Tensor xs = x.index_select(0, idx), ys = y.index_select(0, idx);
      const double v = m == "cka" ? svcca::linear_cka(xs, ys).item<double>()
                                  : svcca::svcca(xs, ys).score.item<double>();
      if (k == 0) check = v;
    }
    const double one = seconds_since(t0) / static_cast<double>(baseline);
    const double per = boot / static_cast<double>(resamples);
    std::printf(
        "%-6s bootstrap %8.2f s (%.4f s/resample; interval [%.4f, %.4f]); one-shot "
        "%.4f s/call -> %8.2f s for %lld; ratio %.1fx (first resample %.8f vs %.8f)\n",
        m.c_str(), boot, per, r.low, r.high, one, one * static_cast<double>(resamples),
        static_cast<long long>(resamples), one / per, r.resamples[0].item<double>(), check);
    std::fflush(stdout);
    if (permutations > 0) {
      svcca::PermutationOptions po;
      po.permutations = permutations;
      po.workers = workers;
      t0 = Clock::now();
      const svcca::PermutationResult pr = svcca::permutation_test(x, y, m, po);
      const double secs = seconds_since(t0);
      std::printf("%-6s permutations %5.2f s (%.4f s/permutation; p-value %.4f)\n", m.c_str(), secs,
                  secs / static_cast<double>(permutations), pr.p_value);
      std::fflush(stdout);
    }
  }

  if (grid) {
    const std::vector<int64_t> widths = {64, 96, 128, 160, 192, 256, 256, 320, 384, 448, 512, 512};
    at::manual_seed(0);
    at::Tensor zz = at::randn({n, 32});
    svcca::NamedActivations layers;
    std::vector<std::string> names;
    for (size_t i = 0; i < widths.size(); ++i) {
      at::Tensor l =
          at::relu(at::mm(zz, at::randn({32, widths[i]})) + 0.5 * at::randn({n, widths[i]}));
      names.push_back("layer" + std::to_string(i));
      layers.push_back({names.back(), l});
    }
    svcca::GridInferenceOptions io;
    io.resamples = grid_resamples;
    io.workers = workers;
    std::stringstream glist(grid_measures);
    std::string gm;
    while (std::getline(glist, gm, ',')) {
      svcca::GridOptions go;
      go.measure = svcca::parse_grid_measure("bench", "measure", gm);
      svcca::Grid g = svcca::similarity_grid(layers, go);
      auto t0 = Clock::now();
      svcca::add_grid_inference(g, layers, {}, go, io);
      std::printf("grid   %s, 12 layers (78 cells), %lld resamples per cell: %.2f s\n", gm.c_str(),
                  static_cast<long long>(grid_resamples), seconds_since(t0));
      std::fflush(stdout);
    }
  }
  return 0;
}
