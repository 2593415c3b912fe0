// Tests of TrainingMonitor on the bundled digits CNN (models/digits): summaries against an
// independent SVD, grids against the raw activations, dynamics, convergence, the training-flag
// guarantees, save/load, and every rejected input.
#include "svcca/grid/monitor.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include <unistd.h>

#include "support/support.h"

namespace svcca {
namespace {

using testing::AllClose;
namespace tol = testing::tol;

const std::vector<std::string> kLayers = {"conv1", "conv2", "conv3", "fc1", "fc2"};
const std::vector<int> kEpochs = {0, 1, 2, 4, 8};

std::string model_path(int epoch) {
  return std::string(SVCCA_MODELS_DIR) + "/digits/cnn_epoch" + std::to_string(epoch) + ".pt";
}
TappedModule load_cnn(int epoch) {
  return TappedModule::load(model_path(epoch));
}

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "svcca_monitor_" + std::to_string(::getpid()) + "_" + name;
}

// Every submodule's training flag, in modules() order.
std::vector<bool> training_flags(const torch::jit::Module& m) {
  std::vector<bool> out;
  for (const auto& sub : m.modules()) out.push_back(sub.is_training());
  return out;
}

class MonitorTest : public testing::SeedingFixture {
 protected:
  // Digit-like images in [0, 1]: enough for the CNN, and no data file needed.
  at::Tensor probe(int64_t n) { return at::rand({n, 1, 8, 8}, at::kFloat); }
};

TEST_F(MonitorTest, LayersAndSummaryShapes) {
  TrainingMonitor m(load_cnn(0), probe(100));
  EXPECT_EQ(m.layers(), kLayers);
  EXPECT_EQ(m.examples(), 100);
  m.record(0);
  EXPECT_EQ(m.steps(), std::vector<int64_t>{0});
  // conv*: p = 512, 1024, 512 > k = 32; fc1: p = 32 = k (kept whole); fc2: p = 10.
  const std::vector<int64_t> cols = {32, 32, 32, 32, 10};
  for (size_t i = 0; i < kLayers.size(); ++i) {
    at::Tensor s = m.summary(kLayers[i], 0);
    EXPECT_EQ(s.sizes(), (std::vector<int64_t>{100, cols[i]})) << kLayers[i];
    EXPECT_EQ(s.scalar_type(), at::kDouble);
    EXPECT_TRUE(s.device().is_cpu());
  }
  MonitorOptions o;
  o.layers = {"conv*"};
  TrainingMonitor convs(load_cnn(0), probe(100), o);
  EXPECT_EQ(convs.layers(), (std::vector<std::string>{"conv1", "conv2", "conv3"}));
}

// The summary is U_k S_k of the centered activations: its Gram matrix equals that of the rank-k
// truncated SVD from at::linalg_svd (signs of U do not matter), for both reduction paths
// (p <= n: eigh of X^T X; p > n: eigh of X X^T). A layer with p <= k is the centered data.
TEST_F(MonitorTest, SummaryIsTruncatedSvd) {
  const at::Tensor x = probe(200);
  MonitorOptions o;
  o.summary_dims = 6;
  TappedModule model = load_cnn(2);
  TrainingMonitor m(model, x, o);
  m.record(7);
  Capture cap;
  {
    at::NoGradGuard g;
    cap = model.run({x});
  }
  for (const char* name : {"conv2", "fc1", "fc2"}) {  // p = 1024 > n, 32 <= n, 10 > k
    at::Tensor a = cap.values(name).front().to(at::kDouble).reshape({200, -1});
    a = a - a.mean(0, true);
    auto [u, s, vh] = at::linalg_svd(a, false);
    const int64_t k = 6;
    at::Tensor uk = u.narrow(1, 0, k) * s.narrow(0, 0, k);
    at::Tensor summary = m.summary(name, 7);
    EXPECT_EQ(summary.size(1), k) << name;
    EXPECT_ALLCLOSE(at::mm(summary, summary.t()), at::mm(uk, uk.t()), tol::kDecomp64) << name;
  }
  o.summary_dims = 32;
  TrainingMonitor whole(model, x, o);
  whole.record(0);
  at::Tensor fc2 = cap.values("fc2").front().to(at::kDouble);
  EXPECT_ALLCLOSE(whole.summary("fc2", 0), fc2 - fc2.mean(0, true), tol::kClosedForm64);
}

// With k >= n - 1 the summaries keep the whole rank of every layer, so the monitor's grid is
// linear CKA of the (flattened) activations themselves, computed here independently.
TEST_F(MonitorTest, GridEqualsGridOfActivationsWhenNothingIsTruncated) {
  const at::Tensor x = probe(40);
  MonitorOptions o;
  o.summary_dims = 64;
  TappedModule model = load_cnn(4);
  TrainingMonitor m(model, x, o);
  m.record(3);
  const Grid g = m.grid(3);
  EXPECT_EQ(g.rows, kLayers);
  EXPECT_EQ(g.cols, kLayers);
  Capture cap;
  {
    at::NoGradGuard no_grad;
    cap = model.run({x});
  }
  const int64_t L = static_cast<int64_t>(kLayers.size());
  at::Tensor expected = at::empty({L, L}, at::kDouble);
  for (int64_t i = 0; i < L; ++i) {
    for (int64_t j = 0; j < L; ++j) {
      at::Tensor a = cap.values(kLayers[i]).front().to(at::kDouble).reshape({40, -1});
      at::Tensor b = cap.values(kLayers[j]).front().to(at::kDouble).reshape({40, -1});
      a = a - a.mean(0, true);
      b = b - b.mean(0, true);
      // ||A^T B||_F^2 / (||A^T A||_F ||B^T B||_F), in the n x n Gram form.
      at::Tensor ka = at::mm(a, a.t());
      at::Tensor kb = at::mm(b, b.t());
      expected[i][j] = (ka * kb).sum() / (ka.norm() * kb.norm());
    }
  }
  EXPECT_ALLCLOSE(g.values, expected, tol::kDecomp64);
  EXPECT_EQ(g.examples, 40);
}

// Checkpoints recorded as steps: the last column of the dynamics is each layer's similarity to
// itself (1), every value lies in [0, 1], and the untrained net is least like the trained one.
TEST_F(MonitorTest, DynamicsOverCheckpoints) {
  TrainingMonitor m(load_cnn(0), probe(120));
  for (int e : kEpochs) m.record(e, load_cnn(e));
  EXPECT_EQ(m.steps(), (std::vector<int64_t>{0, 1, 2, 4, 8}));
  const Grid d = m.dynamics();
  EXPECT_EQ(d.rows, kLayers);
  EXPECT_EQ(d.cols, (std::vector<std::string>{"0", "1", "2", "4", "8"}));
  EXPECT_EQ(d.measure, "cka-to-latest");
  EXPECT_EQ(d.col_label, "step");
  EXPECT_EQ(d.values.sizes(), (std::vector<int64_t>{5, 5}));
  EXPECT_ALLCLOSE(d.values.select(1, 4), at::ones({5}, at::kDouble), tol::kDecomp64);
  EXPECT_TRUE((d.values >= -1e-12).all().item<bool>());
  EXPECT_TRUE((d.values <= 1 + 1e-12).all().item<bool>());
  for (int64_t i = 0; i < 5; ++i) {
    EXPECT_LT(d.values[i][0].item<double>(), d.values[i][3].item<double>()) << kLayers[i];
  }
  // The same dynamics from a grid of two steps: cell (layer, layer) of a two-model grid.
  const Grid last = similarity_grid({{"fc1", m.summary("fc1", 2)}}, {{"fc1", m.summary("fc1", 8)}});
  EXPECT_NEAR(last.values.item<double>(), d.values[3][2].item<double>(), 1e-12);
}

// A layer whose weights never change has similarity exactly 1 to its latest state at every step,
// so it converges at the first step; layers that keep learning do not.
TEST_F(MonitorTest, UnchangedLayerConverges) {
  const TappedModule final_model = load_cnn(8);
  const auto conv1 = final_model.module().attr("conv1").toModule();
  TrainingMonitor m(load_cnn(0), probe(120));
  for (int e : kEpochs) {
    TappedModule model = load_cnn(e);
    auto c = model.module().attr("conv1").toModule();
    c.setattr("weight", conv1.attr("weight").toTensor().clone());
    c.setattr("bias", conv1.attr("bias").toTensor().clone());
    m.record(e, model);
  }
  const Grid d = m.dynamics();
  EXPECT_ALLCLOSE(d.values.select(0, 0), at::ones({5}, at::kDouble), tol::kDecomp64);
  const auto done = m.converged(0.999, 4);
  ASSERT_FALSE(done.empty());
  EXPECT_EQ(done.front(), "conv1");
  EXPECT_EQ(std::count(done.begin(), done.end(), "fc2"), 0);
  const auto freeze = m.freeze_suggestion(0.999, 4);
  ASSERT_FALSE(freeze.empty());
  EXPECT_EQ(freeze.front(), "conv1");
  const auto since = m.convergence_steps(0.999);
  EXPECT_EQ(since.front(), 0);
  EXPECT_GT(since.back(), 0);
  // Threshold 0 is met by any CKA value: everything converged over any window that fits.
  EXPECT_EQ(m.converged(0.0, 4), kLayers);
  // Fewer records than window + 1: no suggestion yet.
  EXPECT_TRUE(m.converged(0.0, 5).empty());
  EXPECT_TRUE(m.freeze_suggestion(0.0, 5).empty());
}

TEST_F(MonitorTest, ConvergenceStepsFollowTheDefinition) {
  TrainingMonitor m(load_cnn(0), probe(120));
  for (int e : kEpochs) m.record(e, load_cnn(e));
  const Grid d = m.dynamics();
  for (double threshold : {0.5, 0.8, 0.95}) {
    const auto since = m.convergence_steps(threshold);
    for (int64_t i = 0; i < 5; ++i) {
      int64_t first = 4;
      while (first > 0 && d.values[i][first - 1].item<double>() >= threshold) --first;
      EXPECT_EQ(since[static_cast<size_t>(i)], kEpochs[static_cast<size_t>(first)])
          << kLayers[static_cast<size_t>(i)] << " at " << threshold;
    }
  }
}

TEST_F(MonitorTest, RecordRestoresTrainingFlags) {
  TappedModule model = load_cnn(1);
  TrainingMonitor m(model, probe(50));
  model.module().train();
  m.record(0);
  EXPECT_TRUE(model.module().is_training());
  for (bool f : training_flags(model.module())) EXPECT_TRUE(f);

  model.module().eval();
  m.record(1);
  for (bool f : training_flags(model.module())) EXPECT_FALSE(f);

  // Mixed flags (say, a frozen batch-norm layer kept in eval mode) come back exactly.
  model.module().train();
  auto conv2 = model.module().attr("conv2").toModule();
  conv2.eval();
  const auto before = training_flags(model.module());
  m.record(2);
  EXPECT_EQ(training_flags(model.module()), before);
  EXPECT_FALSE(conv2.is_training());
  EXPECT_TRUE(model.module().is_training());
}

// A scripted net whose one submodule "inner" (class `inner_class`, in training mode) has the
// forward `inner_forward`; the net's forward calls it.
torch::jit::Module wrap_inner(const std::string& inner_class, const std::string& inner_forward) {
  torch::jit::Module inner(inner_class);
  inner.register_attribute("training", c10::BoolType::get(), true);
  inner.define(inner_forward);
  torch::jit::Module net(inner_class + "Net");
  net.register_attribute("training", c10::BoolType::get(), true);
  net.register_module("inner", inner);
  net.define(R"(
def forward(self, x):
    return self.inner.forward(x)
)");
  return net;
}

// The model runs in eval mode during record(): a submodule that returns a constant in training
// mode and its input in eval mode shows which one ran.
TEST_F(MonitorTest, RecordRunsInEvalMode) {
  torch::jit::Module net = wrap_inner("svcca_test.ModeProbe", R"(
def forward(self, x):
    if self.training:
        return x * 0.0 + 1.0
    return x
)");
  const at::Tensor x = at::randn({20, 3}, at::kDouble);
  TrainingMonitor m(net, x);
  net.train();
  m.record(0);
  EXPECT_ALLCLOSE(m.summary("inner", 0), x - x.mean(0, true), tol::kClosedForm64);
  EXPECT_TRUE(net.is_training());
  EXPECT_TRUE(net.attr("inner").toModule().is_training());
}

// A layer that is constant on the probe (here: always zero) has no CKA; the grids say so
// instead of returning NaN.
TEST_F(MonitorTest, ConstantLayerGivesNullCellsWithTheReason) {
  torch::jit::Module net = wrap_inner("svcca_test.Zero", R"(
def forward(self, x):
    return x * 0.0
)");
  TrainingMonitor m(net, at::randn({20, 3}, at::kDouble));
  m.record(0);
  m.record(1);
  // Null cells with the reason, never a silent NaN or a lost grid.
  for (const Grid& g : {m.dynamics(), m.grid(1)}) {
    EXPECT_TRUE(at::isnan(g.values).all().item<bool>());
    ASSERT_EQ(g.undefined.size(), 1u);
    EXPECT_NE(g.undefined[0].reason.find("constant"), std::string::npos) << g.undefined[0].reason;
    EXPECT_EQ(static_cast<int64_t>(g.undefined[0].cells.size()), g.values.numel());
  }
  EXPECT_EQ(m.convergence_steps(0.9), std::vector<int64_t>{-1});
  EXPECT_TRUE(m.converged(0.9, 1).empty());
}

TEST_F(MonitorTest, TrainingFlagsRestoredWhenTheModelThrows) {
  TappedModule model = load_cnn(1);
  TrainingMonitor m(model, probe(50));
  m.record(0);
  model.module().train();
  auto conv1 = model.module().attr("conv1").toModule();
  conv1.eval();
  const auto before = training_flags(model.module());
  // A weight with 2 input channels: the 1-channel probe makes conv1 throw inside the run.
  const at::Tensor good = conv1.attr("weight").toTensor();
  conv1.setattr("weight", at::randn({8, 2, 3, 3}));
  EXPECT_THROWS_WITH(m.record(1), "channels");
  EXPECT_EQ(training_flags(model.module()), before);
  EXPECT_EQ(m.steps(), std::vector<int64_t>{0});  // nothing half-recorded
  conv1.setattr("weight", good);
  m.record(1);
  EXPECT_EQ(m.steps(), (std::vector<int64_t>{0, 1}));
}

TEST_F(MonitorTest, NoGradientsDuringRecord) {
  TappedModule model = load_cnn(1);
  TrainingMonitor m(model, probe(50));
  for (const auto& p : model.module().parameters()) EXPECT_FALSE(p.grad().defined());
  m.record(0);
  for (const auto& p : model.module().parameters()) EXPECT_FALSE(p.grad().defined());
  EXPECT_FALSE(m.summary("fc2", 0).requires_grad());
}

TEST_F(MonitorTest, SaveLoadRoundTrip) {
  TrainingMonitor m(load_cnn(0), probe(60));
  for (int e : {0, 2, 8}) m.record(e, load_cnn(e));
  const std::string path = temp_path("roundtrip.svst");
  m.save(path);
  TrainingMonitor loaded(load_cnn(0), probe(60));
  loaded.load(path);
  EXPECT_EQ(loaded.steps(), m.steps());
  EXPECT_ALLCLOSE(loaded.dynamics().values, m.dynamics().values, tol::kClosedForm64);
  EXPECT_ALLCLOSE(loaded.summary("conv3", 2), m.summary("conv3", 2), tol::kClosedForm64);
  // Recording continues after the loaded steps.
  EXPECT_THROWS_WITH(loaded.record(8), "greater than the last recorded step 8");
  loaded.record(9);

  MonitorOptions o;
  o.layers = {"fc*"};
  TrainingMonitor other_layers(load_cnn(0), probe(60), o);
  EXPECT_THROWS_WITH(other_layers.load(path), "layers must equal");
  TrainingMonitor other_n(load_cnn(0), probe(61));
  EXPECT_THROWS_WITH(other_n.load(path), "probe examples must equal");
  EXPECT_THROWS_WITH(m.load(temp_path("missing.svst")), "TrainingMonitor::load");
  std::remove(path.c_str());
}

TEST_F(MonitorTest, OtherMeasures) {
  MonitorOptions o;
  o.grid.measure = GridMeasure::kSvcca;
  o.summary_dims = 8;
  TrainingMonitor m(load_cnn(0), probe(60), o);
  for (int e : {0, 4, 8}) m.record(e, load_cnn(e));
  const Grid d = m.dynamics();
  EXPECT_EQ(d.measure, "svcca-to-latest");
  EXPECT_ALLCLOSE(d.values.select(1, 2), at::ones({5}, at::kDouble), tol::kDecomp64);
  EXPECT_TRUE(at::isfinite(d.values).all().item<bool>());

  o.grid.measure = GridMeasure::kLinearCka;
  o.grid.conv = GridConv::kPool;  // conv layers become [n, channels]
  TrainingMonitor pooled(load_cnn(0), probe(60), o);
  pooled.record(0);
  EXPECT_EQ(pooled.summary("conv1", 0).size(1), 8);
  EXPECT_EQ(pooled.summary("conv3", 0).size(1), 8);  // 32 channels reduced to k = 8
}

TEST_F(MonitorTest, RejectsBadInput) {
  // The probe the model cannot take: flat vectors, and the wrong number of channels.
  EXPECT_THROWS_WITH(TrainingMonitor(load_cnn(0), at::rand({50, 64})),
                     "must accept the probe, but it rejected probe of shape [50, 64]");
  EXPECT_THROWS_WITH(TrainingMonitor(load_cnn(0), at::rand({50, 3, 8, 8})), "[50, 3, 8, 8]");
  // Too few examples for the measure.
  EXPECT_THROWS_WITH(TrainingMonitor(load_cnn(0), at::rand({1, 1, 8, 8})),
                     "probe must have at least 2 examples for the measure cka, but got 1");
  MonitorOptions cca;
  cca.grid.measure = GridMeasure::kCca;
  EXPECT_THROWS_WITH(TrainingMonitor(load_cnn(0), at::rand({20, 1, 8, 8}), cca),
                     "at least 34 examples for the measure cca (summary_dims + 2");
  EXPECT_THROWS_WITH(TrainingMonitor(load_cnn(0), at::Tensor()), "probe must be a defined");
  EXPECT_THROWS_WITH(TrainingMonitor(load_cnn(0), at::rand({0, 1, 8, 8})), "at least one example");
  MonitorOptions bad;
  bad.summary_dims = 0;
  EXPECT_THROWS_WITH(TrainingMonitor(load_cnn(0), probe(50), bad), "summary_dims must be >= 1");
  bad = {};
  bad.grid.conv = GridConv::kFold;
  EXPECT_THROWS_WITH(TrainingMonitor(load_cnn(0), probe(50), bad), "but got fold");
  bad = {};
  bad.layers = {"conv9"};
  EXPECT_THROWS_WITH(TrainingMonitor(load_cnn(0), probe(50), bad), "conv9");

  TrainingMonitor m(load_cnn(0), probe(50));
  EXPECT_THROWS_WITH(m.dynamics(), "at least one step must be recorded");
  EXPECT_THROWS_WITH(m.convergence_steps(0.9), "at least one step must be recorded");
  for (int64_t s : {0, 10, 20, 30, 40, 50, 60}) m.record(s);
  EXPECT_THROWS_WITH(m.record(60),
                     "step must be greater than the last recorded step 60, but got 60");
  EXPECT_THROWS_WITH(m.grid(15),
                     "step must be a recorded step (7 recorded: 0, 10, 20, ..., 50, 60), "
                     "but got 15");
  EXPECT_THROWS_WITH(m.summary("conv1", 15), "but got 15");
  EXPECT_THROWS_WITH(m.summary("conv7", 0), "layer must be a monitored layer, but got conv7");
  EXPECT_THROWS_WITH(m.converged(1.5, 2), "threshold");
  EXPECT_THROWS_WITH(m.converged(0.9, 0), "window must be >= 1, but got 0");
  EXPECT_THROWS_WITH(m.convergence_steps(-0.1), "threshold");
}

}  // namespace
}  // namespace svcca
