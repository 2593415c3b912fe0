// Google Benchmark of capture overhead: a scripted torchvision resnet18 (random weights, eval mode,
// no grad) at batch 64 x 3 x 224 x 224, forward against the tapped method:
//   capture/forward          module.forward (no taps),
//   capture/tapped_all       TappedModule::run recording every layer (75 records, detached),
//                            records written into the TappedModule's buffer pool (the default),
//   capture/tapped_all_nopool the same with CaptureOptions::reuse_buffers = false (every copy
//                            fresh, in-place rewrites of recorded values run out of place),
//   capture/tapped_one       TappedModule::run recording only "layer4" (every other tap is a
//                            hash lookup),
//   capture/tapped_no_record forward_tapped without a recording (taps are no-ops).
// The summary prints each variant's time over forward's (goal for tapped_all: within 1.15x),
// from Google Benchmark's means and from an interleaved pass (forward and tapped_all alternating,
// ratio of medians of wall and of process CPU time), which is steadier on a shared machine, with
// the page faults per run and the pool's size; likewise for tapped_all_nopool when selected.
// The model is written into the build directory on the first run by benchmarks/make_resnet18.py
// (Debian's python3-torchvision). Env SVCCA_CAPTURE_BENCH_BATCH overrides the batch (64).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <torch/csrc/jit/serialization/import.h>

#include <sys/resource.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "svcca/capture/capture.h"

namespace {

using Clock = std::chrono::steady_clock;

int64_t batch() {
  const char* env = std::getenv("SVCCA_CAPTURE_BENCH_BATCH");
  return env ? std::atoll(env) : 64;
}

struct Setup {
  svcca::TappedModule tapped;
  at::Tensor x;
};

// The scripted resnet18, made by benchmarks/make_resnet18.py on first use.
std::string model_path() {
  const std::string path = SVCCA_CAPTURE_BENCH_MODEL;
  if (!std::ifstream(path).good()) {
    const std::string cmd = std::string(SVCCA_MAKE_RESNET18) + " '" + path + "'";
    std::printf("making %s: %s\n", path.c_str(), cmd.c_str());
    if (std::system(cmd.c_str()) != 0) {
      std::fprintf(stderr, "capture_bench: making the model failed (needs python3-torchvision)\n");
      std::exit(2);
    }
  }
  return path;
}

Setup& setup() {
  static Setup s = [] {
    torch::jit::Module m = torch::jit::load(model_path());
    m.eval();
    at::manual_seed(0);
    Setup out{svcca::TappedModule(m), at::randn({batch(), 3, 224, 224})};
    // The profiling executor specializes each method over its first runs: warm both up.
    at::NoGradGuard g;
    for (int i = 0; i < 2; ++i) {
      out.tapped.module().forward({out.x});
      out.tapped.run({out.x});
    }
    return out;
  }();
  return s;
}

std::map<std::string, double>& seconds() {
  static std::map<std::string, double> m;
  return m;
}

enum class Variant { kForward, kTappedAll, kTappedAllNoPool, kTappedOne, kTappedNoRecord };

// Process CPU time (all threads, user + system): steadier than wall time when other jobs share
// the cores, and it still counts the page faults of fresh capture memory.
double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Minor page faults of the process so far: fresh memory the kernel had to map.
double page_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_minflt);
}

double last_cpu = 0;     // CPU seconds of the last run_once
double last_faults = 0;  // page faults of the last run_once

double run_once(Variant v) {
  Setup& s = setup();
  at::NoGradGuard g;
  const double c0 = cpu_seconds();
  const double f0 = page_faults();
  const auto t0 = Clock::now();
  switch (v) {
    case Variant::kForward:
      benchmark::DoNotOptimize(s.tapped.module().forward({s.x}));
      break;
    case Variant::kTappedAll: {
      svcca::Capture c = s.tapped.run({s.x});
      benchmark::DoNotOptimize(c.records.data());
      break;
    }
    case Variant::kTappedAllNoPool: {
      svcca::CaptureOptions o;
      o.reuse_buffers = false;
      svcca::Capture c = s.tapped.run({s.x}, {}, o);
      benchmark::DoNotOptimize(c.records.data());
      break;
    }
    case Variant::kTappedOne: {
      svcca::Capture c = s.tapped.run({s.x}, {"layer4"});
      benchmark::DoNotOptimize(c.records.data());
      break;
    }
    case Variant::kTappedNoRecord:
      benchmark::DoNotOptimize(s.tapped.module().get_method("forward_tapped")({s.x}));
      break;
  }
  // Captures are freed inside the timed region: holding and releasing them is part of the cost.
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  last_cpu = cpu_seconds() - c0;
  last_faults = page_faults() - f0;
  return wall;
}

void BM_capture(benchmark::State& state, Variant v, const char* name) {
  setup();
  // The unpooled variant starts without the pooled variant's buffers, as a fresh process would.
  if (v == Variant::kTappedAllNoPool) setup().tapped.release_buffers();
  double total = 0;
  for (auto _ : state) {
    const double t = run_once(v);
    state.SetIterationTime(t);
    total += t;
  }
  seconds()[name] = total / static_cast<double>(state.iterations());
  state.counters["batch"] = static_cast<double>(batch());
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

BENCHMARK_CAPTURE(BM_capture, forward, Variant::kForward, "forward")
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(5);
BENCHMARK_CAPTURE(BM_capture, tapped_all, Variant::kTappedAll, "tapped_all")
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(5);
BENCHMARK_CAPTURE(BM_capture, tapped_all_nopool, Variant::kTappedAllNoPool, "tapped_all_nopool")
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(5);
BENCHMARK_CAPTURE(BM_capture, tapped_one, Variant::kTappedOne, "tapped_one")
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(5);
BENCHMARK_CAPTURE(BM_capture, tapped_no_record, Variant::kTappedNoRecord, "tapped_no_record")
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(5);

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();

  auto& s = seconds();
  std::printf("\nresnet18, batch %lld, %d threads: capture overhead (time / forward's time)\n",
              static_cast<long long>(batch()), at::get_num_threads());
  if (s.count("forward")) {
    for (const char* k : {"tapped_all", "tapped_all_nopool", "tapped_one", "tapped_no_record"}) {
      if (s.count(k)) std::printf("  %-18s %.3fx  (means)\n", k, s[k] / s["forward"]);
    }
  }
  // Interleaved passes: tapped_all always; tapped_all_nopool when the filter selected it (run
  // it alone, --benchmark_filter='forward|nopool', for a process whose allocator never saw the
  // pool).
  std::vector<std::pair<const char*, Variant>> passes{{"tapped_all", Variant::kTappedAll}};
  if (s.count("tapped_all_nopool")) {
    passes.emplace_back("tapped_all_nopool", Variant::kTappedAllNoPool);
    if (!s.count("tapped_all")) passes.erase(passes.begin());
  }
  for (const auto& [label, variant] : passes) {
    if (variant == Variant::kTappedAllNoPool) setup().tapped.release_buffers();
    std::vector<double> fwd, all, fwd_cpu, all_cpu, fwd_faults, all_faults;
    for (int i = 0; i < 5; ++i) {
      fwd.push_back(run_once(Variant::kForward));
      fwd_cpu.push_back(last_cpu);
      fwd_faults.push_back(last_faults);
      all.push_back(run_once(variant));
      all_cpu.push_back(last_cpu);
      all_faults.push_back(last_faults);
    }
    std::printf("  %-18s %.3fx  (interleaved wall time, medians %.0f ms vs %.0f ms)\n", label,
                median(all) / median(fwd), 1e3 * median(all), 1e3 * median(fwd));
    std::printf(
        "  %-18s %.3fx  (interleaved CPU time, medians %.0f ms vs %.0f ms; goal <= 1.15x)\n", label,
        median(all_cpu) / median(fwd_cpu), 1e3 * median(all_cpu), 1e3 * median(fwd_cpu));
    std::printf("  %-18s page faults per run (medians): %.0fk vs forward's %.0fk\n", label,
                median(all_faults) / 1e3, median(fwd_faults) / 1e3);
    std::printf("  %-18s record buffer pool afterwards: %.0f MB\n", label,
                static_cast<double>(setup().tapped.pooled_bytes()) / 1e6);
  }
  return 0;
}
