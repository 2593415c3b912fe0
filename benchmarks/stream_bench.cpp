// Streaming benchmark of svcca::CovarianceAccumulator: memory and time per row.
//
// Part 1 (memory): streams --rows rows (default 1,000,000) of [*, --features] x [*, --features]
// (default 512) float32 activations in batches of --batch (default 10,000), each batch generated
// just before its update and freed after, and reports the peak resident memory above the baseline
// measured before the first batch (VmHWM - VmRSS from /proc/self/status). Goal: < 300 MB.
// Part 2 (time): the same --compare rows (default 200,000; a single float64 batch of 1e6 x 512
// would be 4 GB per side) as one update() against --batch-row updates; reports time per row and the
// ratio. Goal: streaming within 1.2x of the single batch. Inputs are float32 (accumulated in
// float64, the default policy).
//   svcca_stream_bench [--rows=N] [--batch=B] [--features=P] [--compare=N] [--threads=T]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "proc_status.h"
#include "svcca/stream/covariance_accumulator.h"

namespace {

using svcca_bench::status_mb;

int64_t flag(int argc, char** argv, const char* name, int64_t fallback) {
  const std::string prefix = std::string("--") + name + "=";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) {
      return std::atoll(argv[i] + prefix.size());
    }
  }
  return fallback;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t rows = flag(argc, argv, "rows", 1000000);
  const int64_t batch = flag(argc, argv, "batch", 10000);
  const int64_t p = flag(argc, argv, "features", 512);
  const int64_t compare = flag(argc, argv, "compare", 200000);
  at::set_num_threads(static_cast<int>(flag(argc, argv, "threads", 2)));
  at::manual_seed(0);

  // Part 1: memory while streaming.
  {
    at::Tensor warm = at::randn({8, p});  // initialize ATen before the baseline
    const double baseline = status_mb("VmRSS");
    svcca::CovarianceAccumulator acc;
    const auto t0 = std::chrono::steady_clock::now();
    double update_s = 0;
    for (int64_t s = 0; s < rows; s += batch) {
      const int64_t b = std::min(batch, rows - s);
      at::Tensor x = at::randn({b, p});
      at::Tensor y = at::randn({b, p}) + x * 0.5;
      const auto u0 = std::chrono::steady_clock::now();
      acc.update(x, y);
      update_s += seconds_since(u0);
    }
    const double total_s = seconds_since(t0);
    const double peak = status_mb("VmHWM");
    const double r2 = acc.linear_cka().item<double>();
    std::printf("stream: %lld rows of [*, %lld] x [*, %lld] float32 in batches of %lld\n",
                static_cast<long long>(rows), static_cast<long long>(p), static_cast<long long>(p),
                static_cast<long long>(batch));
    std::printf(
        "  baseline RSS %.1f MB, peak RSS %.1f MB, peak above baseline %.1f MB (goal < 300)\n",
        baseline, peak, peak - baseline);
    std::printf(
        "  update time %.2f s (%.3f us/row), with data generation %.2f s; linear CKA %.6f\n",
        update_s, 1e6 * update_s / static_cast<double>(rows), total_s, r2);
  }

  // Part 2: time per row, streamed against one batch of the same rows.
  {
    at::Tensor x = at::randn({compare, p});
    at::Tensor y = at::randn({compare, p}) + x * 0.5;
    double single_s = 1e300, stream_s = 1e300;
    for (int rep = 0; rep < 2; ++rep) {  // best of 2
      svcca::CovarianceAccumulator one;
      auto t0 = std::chrono::steady_clock::now();
      one.update(x, y);
      single_s = std::min(single_s, seconds_since(t0));
      svcca::CovarianceAccumulator many;
      t0 = std::chrono::steady_clock::now();
      for (int64_t s = 0; s < compare; s += batch) {
        const int64_t b = std::min(batch, compare - s);
        many.update(x.narrow(0, s, b), y.narrow(0, s, b));
      }
      stream_s = std::min(stream_s, seconds_since(t0));
    }
    std::printf(
        "compare: %lld rows float32, one update %.3f s (%.3f us/row), batches of %lld "
        "%.3f s (%.3f us/row): ratio %.3f (goal <= 1.2)\n",
        static_cast<long long>(compare), single_s, 1e6 * single_s / static_cast<double>(compare),
        static_cast<long long>(batch), stream_s, 1e6 * stream_s / static_cast<double>(compare),
        stream_s / single_s);
  }
  return 0;
}
