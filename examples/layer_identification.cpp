// layer_identification: Kornblith et al. (2019), Table 2, on the bundled 8x8 digits. Trains
// --nets architecturally identical CNNs (models/digits' DigitsCnn, weights re-initialised from
// seeds 0, 1, ...), captures their five layers on the 359 test images, and for every layer of
// every net asks whether the most similar layer of every other net is the corresponding one, by
// each measure. Each accuracy comes with a bootstrap interval over the test images: every
// similarity is evaluated on the same resamples (svcca::detail::resampled_cells), and the
// accuracy is recomputed on each.
//
//   layer_identification [--models DIR] [--nets 10] [--epochs 4] [--resamples 200]
//                        [--pwcca-resamples 20] [--threads 1]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/jit/serialization/import.h>
#include <torch/optim/adam.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "svcca/capture/capture.h"
#include "svcca/grid/grid.h"
#include "svcca/inference/bootstrap.h"
#include "svcca/inference/resampling.h"

namespace {

struct Args {
  std::string models = SVCCA_MODELS_DIR;
  int64_t nets = 10;
  int64_t epochs = 4;
  int64_t resamples = 200;
  int64_t pwcca_resamples = 20;  // pwcca reruns the measure per resample: fewer by default
  int threads = 1;  // tiny ops: more threads only wait for each other on a shared machine
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::printf(
          "usage: layer_identification [--models DIR] [--nets N] [--epochs E] [--resamples B]\n"
          "                            [--pwcca-resamples B] [--threads T]\n");
      std::exit(0);
    }
    if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value");
    const std::string v = argv[++i];
    if (flag == "--models") {
      a.models = v;
    } else if (flag == "--nets") {
      a.nets = std::stoll(v);
    } else if (flag == "--epochs") {
      a.epochs = std::stoll(v);
    } else if (flag == "--resamples") {
      a.resamples = std::stoll(v);
    } else if (flag == "--pwcca-resamples") {
      a.pwcca_resamples = std::stoll(v);
    } else if (flag == "--threads") {
      a.threads = std::stoi(v);
    } else {
      throw std::invalid_argument("unknown flag " + flag);
    }
  }
  if (a.nets < 2 || a.epochs < 1 || a.resamples < 2 || a.pwcca_resamples < 2 || a.threads < 1) {
    throw std::invalid_argument(
        "--nets must be >= 2, --epochs and --threads >= 1, --resamples >= 2");
  }
  return a;
}

struct Data {
  at::Tensor train_x, train_y, test_x, test_y;
};

Data load_data(const std::string& path) {
  if (!std::ifstream(path).good()) throw std::runtime_error("cannot read " + path);
  torch::jit::Module m = torch::jit::load(path);
  auto images = [&](const char* name) { return m.attr(name).toTensor().to(at::kFloat) / 16.0; };
  auto labels = [&](const char* name) { return m.attr(name).toTensor().to(at::kLong); };
  return {images("train_images"), labels("train_labels"), images("test_images"),
          labels("test_labels")};
}

// PyTorch's default initialisation of Conv2d and Linear (kaiming_uniform with a = sqrt(5), i.e.
// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases), from `seed`.
void reinitialise(torch::jit::Module& net, uint64_t seed) {
  at::NoGradGuard no_grad;
  at::Generator g = at::detail::createCPUGenerator(seed);
  int64_t fan_in = 1;
  for (const auto& p : net.named_parameters()) {
    at::Tensor t = p.value;
    if (t.dim() >= 2) fan_in = t.numel() / t.size(0);
    const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
    t.uniform_(-bound, bound, g);
  }
}

double train(torch::jit::Module& net, const Data& d, int64_t epochs, uint64_t seed) {
  std::vector<at::Tensor> params;
  for (const auto& p : net.parameters()) params.push_back(p);
  torch::optim::Adam opt(params, torch::optim::AdamOptions(3e-3));
  at::Generator g = at::detail::createCPUGenerator(1000 + seed);
  const int64_t n = d.train_x.size(0);
  net.train();
  for (int64_t e = 0; e < epochs; ++e) {
    const at::Tensor perm = at::randperm(n, g, at::kLong);
    for (int64_t i = 0; i < n; i += 32) {
      const at::Tensor idx = perm.narrow(0, i, std::min<int64_t>(32, n - i));
      const at::Tensor loss = at::cross_entropy_loss(
          net.forward({d.train_x.index_select(0, idx)}).toTensor(), d.train_y.index_select(0, idx));
      opt.zero_grad();
      loss.backward();
      opt.step();
    }
  }
  at::NoGradGuard no_grad;
  net.eval();
  return net.forward({d.test_x})
      .toTensor()
      .argmax(1)
      .eq(d.test_y)
      .to(at::kDouble)
      .mean()
      .item<double>();
}

// Identification accuracy for every column of `values` ([cells, B]): the share of (net i, layer
// l, net j != i) whose most similar layer of net j is l. cell(i, l, j, m) indexes `values`.
template <class CellIndex>
at::Tensor identification(const at::Tensor& values, int64_t nets, int64_t layers, CellIndex cell) {
  const int64_t b = values.size(1);
  at::Tensor acc = at::zeros({b}, at::kDouble);
  const at::Tensor v = values.contiguous();
  const double* p = v.data_ptr<double>();
  for (int64_t k = 0; k < b; ++k) {
    int64_t right = 0, total = 0;
    bool defined = true;
    for (int64_t i = 0; i < nets; ++i) {
      for (int64_t j = 0; j < nets; ++j) {
        if (i == j) continue;
        for (int64_t l = 0; l < layers; ++l) {
          int64_t best = -1;
          double best_v = -1e300;
          for (int64_t m = 0; m < layers; ++m) {
            const double x = p[cell(i, l, j, m) * b + k];
            if (!std::isfinite(x)) defined = false;
            if (x > best_v) best_v = x, best = m;
          }
          right += best == l ? 1 : 0;
          ++total;
        }
      }
    }
    acc[k] = defined ? static_cast<double>(right) / static_cast<double>(total) : std::nan("");
  }
  return acc;
}

// For each true layer l: which layer of the other nets was most similar, as counts
// (rows: l, cols: the layer chosen), from column 0 of `values`.
template <class CellIndex>
std::vector<std::vector<int64_t>> confusion(const at::Tensor& values, int64_t nets, int64_t layers,
                                            CellIndex cell) {
  std::vector<std::vector<int64_t>> c(layers, std::vector<int64_t>(layers, 0));
  const at::Tensor v = values.contiguous();
  const double* p = v.data_ptr<double>();
  const int64_t b = values.size(1);
  for (int64_t i = 0; i < nets; ++i) {
    for (int64_t j = 0; j < nets; ++j) {
      if (i == j) continue;
      for (int64_t l = 0; l < layers; ++l) {
        int64_t best = 0;
        for (int64_t m = 1; m < layers; ++m) {
          if (p[cell(i, l, j, m) * b] > p[cell(i, l, j, best) * b]) best = m;
        }
        ++c[l][best];
      }
    }
  }
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args args = parse(argc, argv);
    at::set_num_threads(args.threads);
    const Data data = load_data(args.models + "/digits/data.pt");
    const auto t_start = std::chrono::steady_clock::now();

    // Train the nets and capture their layers on the test images.
    std::vector<std::string> names;
    std::vector<std::vector<at::Tensor>> acts;  // [net][layer]: [n, ...]
    for (int64_t s = 0; s < args.nets; ++s) {
      svcca::TappedModule tapped = svcca::TappedModule::load(args.models + "/digits/cnn_epoch0.pt");
      torch::jit::Module net = tapped.module();
      reinitialise(net, static_cast<uint64_t>(s));
      const double acc = train(net, data, args.epochs, static_cast<uint64_t>(s));
      at::NoGradGuard no_grad;
      svcca::Capture cap = tapped.run({data.test_x});
      std::vector<at::Tensor> layers;
      names.clear();
      for (const auto& [name, t] : cap.first_values()) {
        names.push_back(name);
        layers.push_back(t.to(at::kDouble));
      }
      acts.push_back(layers);
      std::printf("net %lld: test accuracy %.3f\n", static_cast<long long>(s), acc);
    }
    const int64_t nets = args.nets, n_layers = static_cast<int64_t>(names.size());
    const int64_t n = data.test_x.size(0);
    std::printf("layers:");
    for (const auto& l : names) std::printf(" %s", l.c_str());
    std::printf("; %lld test images; %.1f s training\n\n", static_cast<long long>(n),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count());

    struct Row {
      const char* measure;
      const char* paper;  // Kornblith et al. 2019, Table 2 (10-layer CNNs on CIFAR-10), as issue 14
                          // quotes it
    };
    const std::vector<Row> rows = {{"cka", "99.3"},    {"rbf-cka", "-"},      {"debiased-cka", "-"},
                                   {"cca", "1.4-15"},  {"svcca", "9.9-15.1"}, {"pwcca", "11.1"},
                                   {"procrustes", "-"}};
    std::printf("%-13s %9s %21s %8s  %s\n", "measure", "accuracy", "95% bootstrap interval",
                "seconds", "paper (CIFAR-10, 10-layer CNNs)");
    for (const Row& row : rows) {
      const auto t0 = std::chrono::steady_clock::now();
      const std::string m = row.measure;
      svcca::GridOptions go;
      go.measure = m == "procrustes" ? svcca::GridMeasure::kCca
                                     : svcca::parse_grid_measure("example", "measure", m);
      auto r = svcca::detail::make_resampler("layer_identification", m, go);
      // The grid's conv rule: the CKA family flattens conv layers, the CCA family pools them.
      const bool flatten = m == "cka" || m == "debiased-cka" || m == "rbf-cka";
      svcca::GridOptions conv;
      conv.measure = flatten ? svcca::GridMeasure::kLinearCka : svcca::GridMeasure::kCca;
      std::vector<std::shared_ptr<const svcca::detail::ResampleLayer>> held;
      std::vector<const svcca::detail::ResampleLayer*> layers;
      for (int64_t i = 0; i < nets; ++i) {
        for (int64_t l = 0; l < n_layers; ++l) {
          at::Tensor x = svcca::per_example_features(acts[i][l], conv).reshape({n, -1});
          held.push_back(r->layer("layer_identification", names[l], x));
          layers.push_back(held.back().get());
        }
      }
      // Cells: every ordered (net i layer l, net j layer m), i != j; symmetric measures compute
      // each unordered pair once.
      std::vector<std::pair<int64_t, int64_t>> cells;
      std::vector<int64_t> index(static_cast<size_t>(nets * n_layers * nets * n_layers), -1);
      auto at = [&](int64_t i, int64_t l, int64_t j, int64_t mm) {
        return ((i * n_layers + l) * nets + j) * n_layers + mm;
      };
      for (int64_t i = 0; i < nets; ++i) {
        for (int64_t j = 0; j < nets; ++j) {
          if (i == j || (r->symmetric() && j < i)) continue;
          for (int64_t l = 0; l < n_layers; ++l) {
            for (int64_t mm = 0; mm < n_layers; ++mm) {
              index[at(i, l, j, mm)] = static_cast<int64_t>(cells.size());
              if (r->symmetric()) index[at(j, mm, i, l)] = static_cast<int64_t>(cells.size());
              cells.emplace_back(i * n_layers + l, j * n_layers + mm);
            }
          }
        }
      }
      const int64_t b = m == "pwcca" ? args.pwcca_resamples : args.resamples;
      const at::Tensor est = svcca::detail::resampled_cells(
          *r, layers, cells, at::ones({n, 1}, at::kDouble), at::kCPU);
      const at::Tensor res = svcca::detail::resampled_cells(
          *r, layers, cells, svcca::detail::Draws(0).bootstrap_weights(n, b), at::kCPU);
      auto cell = [&](int64_t i, int64_t l, int64_t j, int64_t mm) {
        return index[at(i, l, j, mm)];
      };
      const double acc = identification(est, nets, n_layers, cell)[0].item<double>();
      const at::Tensor accs = identification(res, nets, n_layers, cell);
      svcca::detail::Interval iv;
      std::string why;
      const bool ok = svcca::detail::interval_of(acc, accs, {}, 0.95,
                                                 svcca::IntervalMethod::kPercentile, &iv, &why);
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (ok) {
        std::printf("%-13s %8.1f%% %9.1f%% - %6.1f%% %8.1f  %s   (%lld resamples)\n", row.measure,
                    100.0 * acc, 100.0 * iv.low, 100.0 * iv.high, secs, row.paper,
                    static_cast<long long>(b));
      } else {
        std::printf("%-13s %8.1f%% %21s %8.1f  %s   (no interval: %s)\n", row.measure, 100.0 * acc,
                    "-", secs, row.paper, why.c_str());
      }
      const auto conf = confusion(est, nets, n_layers, cell);
      std::printf("%15s", "chosen:");
      for (int64_t l = 0; l < n_layers; ++l) {
        std::printf(" %s", names[l].c_str());
        std::string picks;
        for (int64_t mm = 0; mm < n_layers; ++mm) {
          if (conf[l][mm] > 0) {
            picks += (picks.empty() ? "" : "/") + names[mm] + " " + std::to_string(conf[l][mm]);
          }
        }
        std::printf(" -> %s%s", picks.c_str(), l + 1 < n_layers ? ";" : "\n");
      }
      std::fflush(stdout);
    }
    return 0;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "layer_identification: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "layer_identification: %s\n", e.what());
    return 1;
  }
}
