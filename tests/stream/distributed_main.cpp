// Two-process check of svcca::all_reduce over c10d/Gloo on loopback: each rank streams half of the
// rows (different batch sizes), all_reduce combines them, and every result must equal the
// single-process numbers. Run without arguments it is the launcher: it starts itself twice
// (fork/exec, a FileStore in a fresh temporary directory, so no port is needed), kills both after
// a timeout, and exits 0 only when both ranks pass. Registered with CTest (stream_distributed).
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "svcca/svcca.h"

namespace {

constexpr int kWorld = 2;
constexpr int kTimeoutSeconds = 120;
constexpr int64_t kRows = 600;
constexpr int64_t kSplit = 233;  // rank 0 gets rows [0, kSplit), rank 1 the rest
constexpr double kRtol = 1e-10;  // tests/support/support.h: tol::kStreamed64
constexpr double kAtol = 1e-12;

int failures = 0;

void expect_close(const char* what, const at::Tensor& actual, const at::Tensor& expected,
                  int rank) {
  at::Tensor a = actual.to(at::kDouble).cpu();
  at::Tensor e = expected.to(at::kDouble).cpu();
  bool ok = a.sizes() == e.sizes() && a.scalar_type() == e.scalar_type();
  double worst = 0.0;
  if (ok) {
    at::Tensor diff = (a - e).abs();
    ok = (diff <= kAtol + kRtol * e.abs()).all().item<bool>();
    worst = diff.numel() ? diff.max().item<double>() : 0.0;
  }
  std::cout << "rank " << rank << ": " << what << (ok ? " ok" : " MISMATCH") << " (max abs err "
            << worst << ")" << std::endl;
  if (!ok) ++failures;
}

// The same data on every rank (seeded): x with a large mean and one constant feature, y
// correlated with x.
void make_data(at::Tensor& x, at::Tensor& y) {
  at::manual_seed(7);
  auto o = at::TensorOptions().dtype(at::kDouble);
  x = at::randn({kRows, 12}, o) * at::linspace(0.5, 2.0, 12, o) + 300.0;
  x.select(1, 5).fill_(0.3);
  y = at::mm(x.narrow(1, 0, 7) - 300.0, at::randn({7, 9}, o)) + at::randn({kRows, 9}, o);
}

int worker(int rank, const std::string& store_path) {
  at::Tensor x, y;
  make_data(x, y);
  const int64_t begin = rank == 0 ? 0 : kSplit;
  const int64_t end = rank == 0 ? kSplit : kRows;
  const int64_t batch = rank == 0 ? 7 : 50;

  svcca::CovarianceAccumulator acc;
  svcca::MinibatchCkaOptions mo;
  mo.kernel = svcca::CkaKernel::kRbf;
  mo.sigma = 4.0;
  svcca::MinibatchCkaAccumulator mb(mo);
  for (int64_t s = begin; s < end; s += batch) {
    const int64_t b = std::min(batch, end - s);
    acc.update(x.narrow(0, s, b), y.narrow(0, s, b));
  }
  // Minibatch CKA: fixed batches of 40 rows, split between the ranks.
  for (int64_t s = 0, i = 0; s + 40 <= kRows; s += 40, ++i) {
    if (i % kWorld == rank) mb.update(x.narrow(0, s, 40), y.narrow(0, s, 40));
  }

  auto store = c10::make_intrusive<c10d::FileStore>(store_path, kWorld);
  auto options = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(30));
  options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, kWorld, options);

  svcca::all_reduce(acc, *pg);
  svcca::all_reduce(mb, *pg);

  if (acc.n() != kRows) {
    std::cout << "rank " << rank << ": n " << acc.n() << " != " << kRows << std::endl;
    ++failures;
  }
  auto c = svcca::cca(x, y);
  expect_close("cca correlations", acc.cca().correlations, c.correlations, rank);
  expect_close("r2_cca", acc.r2_cca(), svcca::mean_squared_correlation(c.correlations), rank);
  expect_close("svcca score", acc.svcca().score, svcca::svcca(x, y).score, rank);
  expect_close("pwcca score", acc.pwcca().score, svcca::pwcca(x, y).score, rank);
  expect_close("linear cka", acc.linear_cka(), svcca::linear_cka(x, y), rank);
  if (!at::equal(acc.cca().x_mask, c.x_mask)) {
    std::cout << "rank " << rank << ": constant-feature mask differs" << std::endl;
    ++failures;
  }
  svcca::MinibatchCkaAccumulator single(mo);
  for (int64_t s = 0; s + 40 <= kRows; s += 40)
    single.update(x.narrow(0, s, 40), y.narrow(0, s, 40));
  expect_close("minibatch cka", mb.cka(), single.cka(), rank);

  // Ranks in different power-of-two units (rank 1's x rows at 1e200, rank 0's y rows at 1e-200)
  // reduce to what one process streaming the same rows gives.
  at::Tensor rows_x = at::ones({kRows, 1}, at::kDouble), rows_y = at::ones({kRows, 1}, at::kDouble);
  rows_x.narrow(0, kSplit, kRows - kSplit).fill_(1e200);
  rows_y.narrow(0, 0, kSplit).fill_(1e-200);
  // Centered first: rows at 0 far from the others' mean would be ill-conditioned whatever the
  // scaling.
  const at::Tensor xs = (x - x.mean(0)) * rows_x, ys = (y - y.mean(0)) * rows_y;
  svcca::CovarianceAccumulator scaled, scaled_one;
  svcca::MinibatchCkaAccumulator scaled_mb, scaled_mb_one;
  for (int64_t s = begin; s < end; s += batch) {
    const int64_t b = std::min(batch, end - s);
    scaled.update(xs.narrow(0, s, b), ys.narrow(0, s, b));
  }
  scaled_one.update(xs, ys);
  for (int64_t s = 0, i = 0; s + 40 <= kRows; s += 40, ++i) {
    if (i % kWorld == rank) scaled_mb.update(xs.narrow(0, s, 40), ys.narrow(0, s, 40));
    scaled_mb_one.update(xs.narrow(0, s, 40), ys.narrow(0, s, 40));
  }
  svcca::all_reduce(scaled, *pg);
  svcca::all_reduce(scaled_mb, *pg);
  expect_close("scaled cca", scaled.cca().correlations, scaled_one.cca().correlations, rank);
  expect_close("scaled linear cka", scaled.linear_cka(), scaled_one.linear_cka(), rank);
  expect_close("scaled minibatch cka", scaled_mb.cka(), scaled_mb_one.cka(), rank);

  // A mismatch must throw on every rank, not hang: rank 1 streams one feature fewer.
  svcca::CovarianceAccumulator bad;
  bad.update(x.narrow(1, 0, rank == 0 ? 12 : 11), y);
  try {
    svcca::all_reduce(bad, *pg);
    std::cout << "rank " << rank << ": mismatched all_reduce did not throw" << std::endl;
    ++failures;
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    const bool ok =
        msg.find("must have the same layers, feature counts and dtypes") != std::string::npos;
    std::cout << "rank " << rank << ": mismatched all_reduce threw"
              << (ok ? "" : " the wrong message: " + msg) << std::endl;
    if (!ok) ++failures;
  }
  return failures == 0 ? 0 : 1;
}

int launch(const char* self) {
  char dir_template[] = "/tmp/svcca_dist_XXXXXX";
  const char* dir = ::mkdtemp(dir_template);
  if (dir == nullptr) {
    std::perror("mkdtemp");
    return 2;
  }
  const std::string store = std::string(dir) + "/store";
  std::vector<pid_t> pids;
  for (int r = 0; r < kWorld; ++r) {
    pid_t pid = ::fork();
    if (pid == 0) {
      const std::string rank = std::to_string(r);
      ::execl(self, self, "--rank", rank.c_str(), "--store", store.c_str(),
              static_cast<char*>(nullptr));
      std::perror("execl");
      std::_Exit(127);
    }
    pids.push_back(pid);
  }
  int status_all = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(kTimeoutSeconds);
  size_t done = 0;
  std::vector<bool> finished(pids.size(), false);
  while (done < pids.size()) {
    for (size_t i = 0; i < pids.size(); ++i) {
      if (finished[i]) continue;
      int status = 0;
      if (::waitpid(pids[i], &status, WNOHANG) == pids[i]) {
        finished[i] = true;
        ++done;
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!ok) status_all = 1;
        std::cout << "launcher: rank " << i << (ok ? " passed" : " FAILED") << std::endl;
      }
    }
    if (std::chrono::steady_clock::now() > deadline) {
      std::cout << "launcher: timeout after " << kTimeoutSeconds << " s; killing the ranks"
                << std::endl;
      for (size_t i = 0; i < pids.size(); ++i) {
        if (!finished[i]) {
          ::kill(pids[i], SIGKILL);
          ::waitpid(pids[i], nullptr, 0);
        }
      }
      status_all = 1;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::remove(store.c_str());
  ::rmdir(dir);
  return status_all;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc == 5 && std::string(argv[1]) == "--rank" && std::string(argv[3]) == "--store") {
      return worker(std::atoi(argv[2]), argv[4]);
    }
    if (argc != 1) {
      std::cerr << "usage: " << argv[0] << " [--rank R --store PATH]" << std::endl;
      return 2;
    }
    return launch("/proc/self/exe");
  } catch (const c10::Error& e) {
    std::cerr << "error: " << e.what_without_backtrace() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << std::endl;
  }
  return 1;
}
