// Linear CKA at scale: time and peak memory of the feature-space form (no n x n matrix) against
// the Gram form, each configuration measured in a fresh child process so that peak resident
// memory (VmHWM from /proc/self/status, minus the resident size once the inputs exist) belongs to
// that one call.
//   svcca_cka_bench                       the table: features at n = 100000, p = 2048, and
//                                         both forms at n = 10000 and 20000 (Gram fits there)
//   svcca_cka_bench FORM N P [THREADS]    one measurement (FORM: features | gram)
// Inputs are float32 [n, p] (x random, y a noisy linear map of x); the numerics run in float64
// (the default policy). Set OPENBLAS_CORETYPE for both forms alike if you set it at all.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "proc_status.h"
#include "svcca/measures/cka.h"

namespace {

using svcca_bench::status_mb;

int measure(const std::string& form, int64_t n, int64_t p, int threads) {
  at::set_num_threads(threads);
  at::manual_seed(0);
  at::Tensor x = at::randn({n, p}, at::kFloat);
  at::Tensor y = at::mm(x, at::randn({p, p}, at::kFloat)) * 0.05f + at::randn({n, p}, at::kFloat);
  const double baseline = status_mb("VmRSS");
  svcca::LinearCkaOptions o;
  o.form = form == "gram" ? svcca::CkaForm::kGram : svcca::CkaForm::kFeatures;
  const auto start = std::chrono::steady_clock::now();
  const double value = svcca::linear_cka(x, y, o).item<double>();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double peak = status_mb("VmHWM");
  std::printf("%-9s %7lld %5lld %10.2f %14.0f %12.0f %10.6f\n", form.c_str(),
              static_cast<long long>(n), static_cast<long long>(p), seconds, peak - baseline,
              static_cast<double>(n) * n * 8 / 1048576.0, value);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 4 ? std::atoi(argv[4]) : 2;
  if (argc >= 4) return measure(argv[1], std::atoll(argv[2]), std::atoll(argv[3]), threads);
  const char* core = std::getenv("OPENBLAS_CORETYPE");
  std::printf("linear CKA, float32 inputs, float64 numerics, %d threads, OPENBLAS_CORETYPE=%s\n",
              threads, core ? core : "(unset)");
  std::printf("%-9s %7s %5s %10s %14s %12s %10s\n", "form", "n", "p", "time [s]", "peak +MB",
              "n*n f64 MB", "cka");
  std::fflush(stdout);
  // /proc/self/exe would name the shell inside std::system: resolve it here.
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const char* runs[] = {"gram 10000 2048", "features 10000 2048", "gram 20000 2048",
                        "features 20000 2048", "features 100000 2048"};
  int failures = 0;
  for (const char* run : runs) failures += std::system((self + " " + run).c_str()) != 0;
  return failures == 0 ? 0 : 1;
}
