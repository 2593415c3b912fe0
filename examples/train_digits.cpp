// train_digits: trains the bundled scripted digits CNN in C++ with a TrainingMonitor, prints and
// saves the layer x time table, then trains again freezing the layers the monitor suggests.
//
// The paper's claim under test (Raghu et al. 2017, section 4.1): lower layers converge to their
// final representation before higher ones, so they can be frozen early ("freeze training").
// Run 1 trains every layer and records, every --every steps, each layer's SVD-reduced activations
// on a fixed probe set (kProbe training images); the table is each layer's linear CKA to its
// final state, and the program says whether the layers reached --threshold in input-to-output
// order. Run 2 starts from the same weights and data order and, whenever the monitor says that a
// prefix of the network (from the input) has stayed within --threshold of its latest state for
// --window records, stops computing gradients for that prefix (the output layer always trains).
// Both runs report test accuracy and the CPU time of training and of the monitor.
//
//   train_digits [--models DIR] [--out DIR] [--epochs 8] [--every 10] [--threshold 0.999]
//                [--window 10] [--threads 1]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/jit/serialization/import.h>
#include <torch/optim/adam.h>

#include <dlfcn.h>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "svcca/grid/monitor.h"
#include "svcca/inference/bootstrap.h"
#include "svcca/inference/resampling.h"
#include "svcca/report/report.h"

namespace {

// Probe examples: enough for stable CKA estimates; the monitor's cost grows as n^2 p (Gram) and
// n^3 (its eigendecomposition) for layers wider than n.
constexpr int64_t kProbe = 256;

struct Args {
  std::string models = SVCCA_MODELS_DIR;
  std::string out = "out/train_digits";
  int64_t epochs = 8;
  int64_t every = 10;
  double threshold = 0.999;
  int64_t window = 10;
  int threads = 1;
};

const char* kUsage =
    "usage: train_digits [--models DIR] [--out DIR] [--epochs N] [--every K] [--threshold T]\n"
    "                    [--window W] [--threads N]\n"
    "  --models     folder holding digits/ (default: the repository's models/)\n"
    "  --out        where the tables go (default: out/train_digits)\n"
    "  --epochs     epochs of each run (default 8; batch 32, 45 steps an epoch)\n"
    "  --every      monitor every K steps (default 10)\n"
    "  --threshold  CKA to the latest state that counts as converged (default 0.999)\n"
    "  --window     records a layer must stay above the threshold (default 10)\n"
    "  --threads    intra-op and BLAS threads (default 1: steadier timings on a shared machine)\n";

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value\n" + kUsage);
    const std::string v = argv[++i];
    if (flag == "--models") {
      a.models = v;
      continue;
    }
    if (flag == "--out") {
      a.out = v;
      continue;
    }
    try {
      if (flag == "--epochs")
        a.epochs = std::stoll(v);
      else if (flag == "--every")
        a.every = std::stoll(v);
      else if (flag == "--threshold")
        a.threshold = std::stod(v);
      else if (flag == "--window")
        a.window = std::stoll(v);
      else if (flag == "--threads")
        a.threads = std::stoi(v);
      else
        throw std::runtime_error("unknown flag " + flag + "\n" + kUsage);
    } catch (const std::logic_error&) {  // stoll/stod: invalid_argument, out_of_range
      throw std::invalid_argument(flag + " must be a number, but got " + v);
    }
  }
  if (!(a.threshold >= 0.0 && a.threshold <= 1.0)) {
    throw std::invalid_argument("--threshold must be in [0, 1], but got " +
                                std::to_string(a.threshold));
  }
  if (a.epochs < 1 || a.every < 1 || a.window < 1 || a.threads < 1) {
    throw std::invalid_argument("--epochs, --every, --window and --threads must be >= 1");
  }
  return a;
}

struct Data {
  at::Tensor train_x, train_y, test_x, test_y;  // float [N, 1, 8, 8] in [0, 1], int64 [N]
};

Data load_data(const std::string& path) {
  if (!std::ifstream(path).good()) {
    throw std::runtime_error("cannot read " + path +
                             " (make it with models/make_digits.py, or pass --models)");
  }
  torch::jit::Module m = torch::jit::load(path);
  auto images = [&](const char* name) { return m.attr(name).toTensor().to(at::kFloat) / 16.0; };
  auto labels = [&](const char* name) { return m.attr(name).toTensor().to(at::kLong); };
  return {images("train_images"), labels("train_labels"), images("test_images"),
          labels("test_labels")};
}

// OpenBLAS (Debian's BLAS/LAPACK for LibTorch) keeps its own thread pool, which
// at::set_num_threads does not reach; found at run time, so other BLAS builds still link.
void set_blas_threads(int threads) {
  using SetThreads = void (*)(int);
  if (auto f = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
    f(threads);
  }
}

// CPU time of this thread: with one intra-op and one BLAS thread, the forward, the backward (the
// autograd engine runs CPU graphs on the calling thread) and the monitor all run here, so this
// measures their work and not the other programs sharing the machine, as wall time would.
double thread_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

double accuracy(torch::jit::Module& net, const at::Tensor& x, const at::Tensor& y) {
  at::NoGradGuard no_grad;
  net.eval();
  const double acc =
      net.forward({x}).toTensor().argmax(1).eq(y).to(at::kDouble).mean().item<double>();
  net.train();
  return acc;
}

struct RunResult {
  svcca::TrainingMonitor monitor;
  double test_accuracy = 0.0;
  double train_seconds = 0.0;    // thread CPU time of forward, backward and optimizer steps
  double monitor_seconds = 0.0;  // thread CPU time of record() and the freeze decisions
  std::vector<std::pair<std::string, int64_t>> frozen;  // layer, step it was frozen at
  int64_t steps = 0;                                    // optimizer steps taken
};

// One training run from the bundled untrained checkpoint; freezes layers when `freeze`.
RunResult train(const Args& args, const Data& data, bool freeze) {
  svcca::TappedModule tapped = svcca::TappedModule::load(args.models + "/digits/cnn_epoch0.pt");
  torch::jit::Module net = tapped.module();
  // The probe: the first kProbe training images (no test image takes part in any decision).
  svcca::MonitorOptions options;
  options.summary_dims = 32;
  RunResult r{svcca::TrainingMonitor(tapped, data.train_x.narrow(0, 0, kProbe), options),
              0.0,
              0.0,
              0.0,
              {},
              0};

  std::vector<at::Tensor> params;
  std::map<std::string, std::vector<at::Tensor>> params_of;  // layer -> its parameters
  for (const auto& p : net.named_parameters()) {
    params.push_back(p.value);
    params_of[p.name.substr(0, p.name.find('.'))].push_back(p.value);
  }
  torch::optim::Adam opt(params, torch::optim::AdamOptions(3e-3));
  at::manual_seed(7);  // the same batch order in both runs
  const int64_t n = data.train_x.size(0);
  constexpr int64_t kBatch = 32;
  std::set<std::string> frozen;
  int64_t step = 0;
  net.train();
  for (int64_t epoch = 0; epoch < args.epochs; ++epoch) {
    const at::Tensor perm = at::randperm(n, at::kLong);
    for (int64_t i = 0; i < n; i += kBatch, ++step) {
      if (step % args.every == 0) {
        const double t0 = thread_seconds();
        r.monitor.record(step);
        if (freeze) {
          for (const auto& name : r.monitor.freeze_suggestion(args.threshold, args.window)) {
            // The classifier keeps training to the end: freeze training fixes the feature
            // layers below it (Raghu et al.), and a frozen output layer would end training.
            if (name == r.monitor.layers().back()) break;
            if (!frozen.insert(name).second) continue;
            for (auto& p : params_of[name]) {
              p.set_requires_grad(false);
              p.mutable_grad() = at::Tensor();  // Adam skips parameters without a gradient
            }
            r.frozen.emplace_back(name, step);
          }
        }
        r.monitor_seconds += thread_seconds() - t0;
      }
      const double t0 = thread_seconds();
      const at::Tensor idx = perm.narrow(0, i, std::min(kBatch, n - i));
      const at::Tensor logits = net.forward({data.train_x.index_select(0, idx)}).toTensor();
      const at::Tensor loss = at::cross_entropy_loss(logits, data.train_y.index_select(0, idx));
      opt.zero_grad();
      loss.backward();
      opt.step();
      r.train_seconds += thread_seconds() - t0;
    }
  }
  r.steps = step;
  if (r.monitor.steps().back() != step) {
    const double t0 = thread_seconds();
    r.monitor.record(step);  // the final state: what "similarity to the latest" refers to
    r.monitor_seconds += thread_seconds() - t0;
  }
  r.test_accuracy = accuracy(net, data.test_x, data.test_y);
  return r;
}

void print_table(const svcca::Grid& d) {
  // Steps down, layers across: 5 columns fit a terminal, 30-odd steps do not.
  std::printf("%8s", "step");
  for (const auto& l : d.rows) std::printf(" %8s", l.c_str());
  std::printf("\n");
  auto v = d.values.accessor<double, 2>();
  for (size_t t = 0; t < d.cols.size(); ++t) {
    std::printf("%8s", d.cols[t].c_str());
    for (size_t i = 0; i < d.rows.size(); ++i) {
      std::printf(" %8.4f", v[static_cast<int64_t>(i)][static_cast<int64_t>(t)]);
    }
    std::printf("\n");
  }
}

// Bootstrap intervals on each layer's convergence step: the probe examples resampled (200
// resamples, seed 0), each layer's CKA to its final state recomputed at every recorded step from
// the summaries (svcca/inference/resampling.h: the same resamples for every step and layer), and
// the convergence step (the first recorded step from which the CKA stays >= threshold) taken on
// each resample; the 2.5 % and 97.5 % quantiles of those steps.
void print_convergence_intervals(const svcca::TrainingMonitor& monitor, double threshold) {
  constexpr int64_t kResamples = 200;
  const std::vector<int64_t> steps = monitor.steps();
  const int64_t n = monitor.examples(), t_count = static_cast<int64_t>(steps.size());
  auto r = svcca::detail::make_resampler("train_digits", "cka", svcca::GridOptions{});
  const at::Tensor w = svcca::detail::Draws(0).bootstrap_weights(n, kResamples);
  std::printf("95 %% bootstrap intervals of those steps (%lld resamples of the probe):",
              static_cast<long long>(kResamples));
  for (size_t li = 0; li < monitor.layers().size(); ++li) {
    const std::string& layer = monitor.layers()[li];
    std::vector<std::shared_ptr<const svcca::detail::ResampleLayer>> held;
    std::vector<const svcca::detail::ResampleLayer*> layers;
    std::vector<std::pair<int64_t, int64_t>> cells;
    for (int64_t t = 0; t < t_count; ++t) {
      held.push_back(r->layer("train_digits", layer, monitor.summary(layer, steps[t])));
      layers.push_back(held.back().get());
    }
    for (int64_t t = 0; t < t_count; ++t) cells.emplace_back(t, t_count - 1);
    const at::Tensor v = svcca::detail::resampled_cells(*r, layers, cells, w, at::kCPU);
    std::vector<double> since;
    for (int64_t b = 0; b < kResamples; ++b) {
      int64_t s = t_count - 1;
      while (s > 0 && v[s - 1][b].item<double>() >= threshold) --s;
      since.push_back(static_cast<double>(steps[s]));
    }
    svcca::detail::Interval iv;
    std::string why;
    if (svcca::detail::interval_of(since.front(), at::tensor(since, at::kDouble), {}, 0.95,
                                   svcca::IntervalMethod::kPercentile, &iv, &why)) {
      std::printf(" %s [%.0f, %.0f]%s", layer.c_str(), iv.low, iv.high,
                  li + 1 < monitor.layers().size() ? "," : "\n");
    } else {
      std::printf(" %s (no interval)%s", layer.c_str(),
                  li + 1 < monitor.layers().size() ? "," : "\n");
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args args = parse(argc, argv);
    at::set_num_threads(args.threads);
    set_blas_threads(args.threads);
    const Data data = load_data(args.models + "/digits/data.pt");
    std::printf("digits: %lld training and %lld test images; probe: %lld training images\n",
                static_cast<long long>(data.train_x.size(0)),
                static_cast<long long>(data.test_x.size(0)), static_cast<long long>(kProbe));

    std::printf("\n== run 1: every layer trains (%lld epochs, monitor every %lld steps) ==\n",
                static_cast<long long>(args.epochs), static_cast<long long>(args.every));
    RunResult full = train(args, data, /*freeze=*/false);
    const svcca::Grid d = full.monitor.dynamics();
    std::printf(
        "linear CKA of each layer's probe activations (top 32 principal components) to "
        "its final state:\n");
    print_table(d);
    const auto files = svcca::write_grid_files(d, args.out, "dynamics");
    svcca::write_grid_files(full.monitor.grid(full.monitor.steps().back()), args.out, "grid_final");
    std::printf("saved %s (and .csv, .svg, .png; grid_final.* is the layer x layer grid)\n",
                files.front().c_str());

    const auto since = full.monitor.convergence_steps(args.threshold);
    std::printf("\nfirst step from which each layer stays >= %.3g to its final state:",
                args.threshold);
    bool ordered = true;
    for (size_t i = 0; i < since.size(); ++i) {
      std::printf(" %s %lld%s", d.rows[i].c_str(), static_cast<long long>(since[i]),
                  i + 1 < since.size() ? "," : "\n");
      if (i > 0 && since[i] < since[i - 1]) ordered = false;
    }
    print_convergence_intervals(full.monitor, args.threshold);
    if (ordered) {
      std::printf(
          "=> lower layers converged first (no layer converged before a lower one), as "
          "Raghu et al. report.\n");
    } else {
      std::printf(
          "=> NOT the paper's finding here: some layer converged before a layer below it "
          "(see the steps above).\n");
    }

    std::printf(
        "\n== run 2: freeze the converged prefix below the output layer (threshold %.3g "
        "over %lld records) ==\n",
        args.threshold, static_cast<long long>(args.window));
    RunResult frozen = train(args, data, /*freeze=*/true);
    if (frozen.frozen.empty()) std::printf("no layer met the freeze criterion\n");
    for (const auto& [name, step] : frozen.frozen) {
      std::printf("froze %s at step %lld\n", name.c_str(), static_cast<long long>(step));
    }
    std::printf("\n%-24s %10s %10s\n", "", "all train", "frozen");
    std::printf("%-24s %10.4f %10.4f\n", "test accuracy (359)", full.test_accuracy,
                frozen.test_accuracy);
    std::printf("%-24s %10lld %10lld\n", "optimizer steps", static_cast<long long>(full.steps),
                static_cast<long long>(frozen.steps));
    std::printf("%-24s %10.3f %10.3f\n", "training CPU time (s)", full.train_seconds,
                frozen.train_seconds);
    std::printf("%-24s %10.3f %10.3f\n", "monitor CPU time (s)", full.monitor_seconds,
                frozen.monitor_seconds);
    std::printf("training time saved by freezing: %.1f %% (%.3f s); accuracy change %+.4f\n",
                100.0 * (full.train_seconds - frozen.train_seconds) / full.train_seconds,
                full.train_seconds - frozen.train_seconds,
                frozen.test_accuracy - full.test_accuracy);
    return 0;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "train_digits: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_digits: %s\n", e.what());
    return 1;
  }
}
