// Tests of the streaming accumulators: streamed == one-shot in any order and batch sizes, merge,
// save/load, and every rejected input.
#include "svcca/stream/covariance_accumulator.h"

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <unistd.h>

#include "support/support.h"
#include "svcca/measures/cka.h"
#include "svcca/stream/minibatch_cka.h"

namespace svcca {
namespace {

using testing::AllClose;
namespace tol = testing::tol;

// x: [n, 10] with a large mean (stresses cancellation), one exactly constant feature (0.1 is not
// representable: exact detection matters) and y: [n, 8] correlated with x.
struct Data {
  at::Tensor x, y;
};
Data make_data(int64_t n, at::ScalarType dtype = at::kDouble) {
  auto o = at::TensorOptions().dtype(at::kDouble);
  at::Tensor x = at::randn({n, 10}, o) * at::linspace(0.5, 3.0, 10, o) + 1000.0;
  x.select(1, 3).fill_(0.1);
  at::Tensor y =
      at::mm(x.narrow(1, 0, 6) - 1000.0, at::randn({6, 8}, o)) + 2.0 * at::randn({n, 8}, o) - 40.0;
  return {x.to(dtype), y.to(dtype)};
}

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "svcca_stream_" + std::to_string(::getpid()) + "_" + name;
}

// Streams rows of x and y, in the order `perm`, in batches of the sizes in `sizes` (cycled).
CovarianceAccumulator stream(const at::Tensor& x, const at::Tensor& y, const at::Tensor& perm,
                             const std::vector<int64_t>& sizes,
                             CovarianceAccumulatorOptions options = {}) {
  CovarianceAccumulator acc(options);
  const int64_t n = x.size(0);
  at::Tensor xp = x.index_select(0, perm);
  at::Tensor yp = y.index_select(0, perm);
  size_t k = 0;
  for (int64_t start = 0; start < n; ++k) {
    const int64_t b = std::min(sizes[k % sizes.size()], n - start);
    acc.update(xp.narrow(0, start, b), yp.narrow(0, start, b));
    start += b;
  }
  return acc;
}

void expect_state_equal(const CovarianceAccumulator& a, const CovarianceAccumulator& b) {
  auto sa = a.state();
  auto sb = b.state();
  ASSERT_EQ(sa.size(), sb.size());
  for (const auto& kv : sa) {
    ASSERT_TRUE(sb.count(kv.first)) << kv.first;
    EXPECT_TRUE(at::equal(kv.second, sb.at(kv.first))) << kv.first;
    EXPECT_EQ(kv.second.scalar_type(), sb.at(kv.first).scalar_type()) << kv.first;
  }
}

// Every result of the accumulator equals the one-shot function on x and y to `t`.
void expect_matches_one_shot(const CovarianceAccumulator& acc, const at::Tensor& x,
                             const at::Tensor& y, testing::Tol t) {
  auto c1 = cca(x, y);
  auto c2 = acc.cca();
  EXPECT_ALLCLOSE(c2.correlations, c1.correlations, t);
  EXPECT_TRUE(at::equal(c2.x_mask, c1.x_mask));
  EXPECT_TRUE(at::equal(c2.y_mask, c1.y_mask));
  EXPECT_EQ(c2.x_rank, c1.x_rank);
  EXPECT_ALLCLOSE(acc.r2_cca(), mean_squared_correlation(c1.correlations), t);

  auto s1 = svcca::svcca(x, y);
  auto s2 = acc.svcca();
  EXPECT_ALLCLOSE(s2.score, s1.score, t);
  EXPECT_ALLCLOSE(s2.correlations, s1.correlations, t);
  EXPECT_EQ(s2.x_dims, s1.x_dims);
  EXPECT_EQ(s2.y_dims, s1.y_dims);

  for (auto w : {PwccaWeighting::kReference, PwccaWeighting::kCanonicalVariates}) {
    PwccaOptions o;
    o.weighting = w;
    auto p1 = pwcca(x, y, o);
    auto p2 = acc.pwcca(o);
    EXPECT_ALLCLOSE(p2.score, p1.score, t);
    EXPECT_ALLCLOSE(p2.weights, p1.weights, t);
  }
  EXPECT_ALLCLOSE(acc.linear_cka(), linear_cka(x, y), t);
}

class StreamTest : public testing::SeedingFixture {};

TEST_F(StreamTest, AnyOrderAnyBatchSizesEqualsOneShot) {
  auto d = make_data(400);
  for (bool shuffle : {false, true}) {
    at::Tensor perm = shuffle ? at::randperm(400, at::kLong) : at::arange(400, at::kLong);
    for (const auto& sizes : std::vector<std::vector<int64_t>>{{7}, {50}, {400}, {1, 13, 120}}) {
      SCOPED_TRACE(::testing::Message() << "shuffle " << shuffle << ", first size " << sizes[0]);
      auto acc = stream(d.x, d.y, perm, sizes);
      EXPECT_EQ(acc.n(), 400);
      expect_matches_one_shot(acc, d.x, d.y, tol::kStreamed64);
    }
  }
}

TEST_F(StreamTest, MomentsEqualOneShotMoments) {
  auto d = make_data(300);
  auto acc = stream(d.x, d.y, at::randperm(300, at::kLong), {7});
  auto m1 = detail::pair_moments(d.x, d.y, Precision::kFloat64);
  auto m2 = acc.pair_moments("x", "y");
  EXPECT_EQ(m2.n, m1.n);
  // Moments in data units: each side's moments times its scale (pair_moments rescales).
  auto in_units = [](const detail::PairMoments& m) {
    return std::vector<at::Tensor>{m.x_mean * m.x_scale, m.sxx * (m.x_scale * m.x_scale),
                                   m.syy * (m.y_scale * m.y_scale),
                                   m.sxy * (m.x_scale * m.y_scale)};
  };
  const auto u1 = in_units(m1);
  const auto u2 = in_units(m2);
  for (size_t i = 0; i < u1.size(); ++i) EXPECT_ALLCLOSE(u2[i], u1[i], tol::kStreamed64);
  EXPECT_TRUE(at::equal(m2.x_non_constant, m1.x_non_constant));
  EXPECT_FALSE(m2.x_non_constant[3].item<bool>());
  EXPECT_FALSE(m2.x_centered.defined());
  // The input dtypes travel with the moments (the default rank rule floors at their rounding).
  EXPECT_EQ(m2.x_input_dtype, m1.x_input_dtype);
  EXPECT_EQ(m2.y_input_dtype, at::kDouble);
}

// float32 rounding directions (see CcaRoundingTest) are dropped from streamed moments as from
// the one-shot ones: same rank, and the layer's CCA with itself is 1.
TEST_F(StreamTest, Float32RoundingNoiseIsNotADirection) {
  at::Tensor z = at::randn({1000, 3}, at::kFloat);
  at::Tensor x = at::cat({z, at::mm(z, at::randn({3, 3}, at::kFloat))}, 1) + 100.0;
  auto acc = stream(x, x, at::arange(1000, at::kLong), {90});
  EXPECT_EQ(acc.cca().x_rank, 3);
  EXPECT_EQ(acc.cca().x_rank, cca(x, x).x_rank);
  EXPECT_ALLCLOSE(acc.cca().correlations, at::ones({3}, at::kFloat), tol::kFloat32);
}

TEST_F(StreamTest, Float32InputsGiveFloat32ResultsEqualToOneShot) {
  auto d = make_data(300, at::kFloat);
  auto acc = stream(d.x, d.y, at::randperm(300, at::kLong), {50});
  EXPECT_EQ(acc.cca().correlations.scalar_type(), at::kFloat);
  // Both paths compute in float64 from the same float32 rows.
  expect_matches_one_shot(acc, d.x, d.y, tol::kFloat32);
}

TEST_F(StreamTest, LayerGridServesEveryKeptPairInEitherOrder) {
  auto o = at::TensorOptions().dtype(at::kDouble);
  at::Tensor a = at::randn({200, 5}, o);
  at::Tensor b = a.narrow(1, 0, 3) * 2.0 + at::randn({200, 3}, o);
  at::Tensor c = at::randn({200, 4}, o) + a.narrow(1, 1, 4);
  CovarianceAccumulatorOptions opt;
  opt.layers = {"layer1.0", "layer2", "fc"};
  CovarianceAccumulator acc(opt);
  for (int64_t s = 0; s < 200; s += 30) {
    const int64_t k = std::min<int64_t>(30, 200 - s);
    acc.update(std::map<std::string, at::Tensor>{
        {"fc", c.narrow(0, s, k)}, {"layer1.0", a.narrow(0, s, k)}, {"layer2", b.narrow(0, s, k)}});
  }
  EXPECT_ALLCLOSE(acc.cca("layer2", "fc").correlations, cca(b, c).correlations, tol::kStreamed64);
  EXPECT_ALLCLOSE(acc.cca("fc", "layer1.0").correlations, cca(c, a).correlations, tol::kStreamed64);
  EXPECT_ALLCLOSE(acc.pwcca("fc", "layer2").score, pwcca(c, b).score, tol::kStreamed64);
  EXPECT_ALLCLOSE(acc.linear_cka("layer1.0", "layer1.0"), at::scalar_tensor(1.0, o),
                  tol::kStreamed64);

  CovarianceAccumulatorOptions only;
  only.layers = opt.layers;
  only.pairs = {{"layer1.0", "fc"}};
  CovarianceAccumulator sparse(only);
  sparse.update({a, b, c});
  EXPECT_ALLCLOSE(sparse.cca("fc", "layer1.0").correlations, cca(c, a).correlations,
                  tol::kStreamed64);
  EXPECT_THROWS_WITH(sparse.cca("layer1.0", "layer2"),
                     "the pair (layer1.0, layer2) must be among the accumulator's pairs");
  EXPECT_THROWS_WITH(sparse.cca("layer1.0", "conv"), "layer must be one of [layer1.0, layer2, fc]");
}

TEST_F(StreamTest, MergeEqualsOneAccumulator) {
  auto d = make_data(360);
  at::Tensor perm = at::randperm(360, at::kLong);
  auto whole = stream(d.x, d.y, perm, {50});
  std::vector<CovarianceAccumulator> parts;
  const std::vector<std::pair<int64_t, int64_t>> ranges = {{0, 17}, {17, 200}, {200, 360}};
  for (const auto& r : ranges) {
    at::Tensor idx = perm.narrow(0, r.first, r.second - r.first);
    parts.push_back(stream(d.x.index_select(0, idx), d.y.index_select(0, idx),
                           at::arange(idx.numel(), at::kLong), {7}));
  }
  CovarianceAccumulator merged;
  merged.merge(parts[2]);  // into an empty accumulator
  merged.merge(parts[0]);
  merged.merge(CovarianceAccumulator());  // an empty one changes nothing
  merged.merge(parts[1]);
  EXPECT_EQ(merged.n(), 360);
  auto sm = merged.state();
  auto sw = whole.state();
  for (const auto& kv : sw) {
    if (kv.first.rfind("min", 0) == 0 || kv.first.rfind("max", 0) == 0) {
      EXPECT_TRUE(at::equal(sm.at(kv.first), kv.second)) << kv.first;  // exact
    } else {
      EXPECT_ALLCLOSE(sm.at(kv.first), kv.second, tol::kStreamed64) << kv.first;
    }
  }
  expect_matches_one_shot(merged, d.x, d.y, tol::kStreamed64);
  // Merging did not change the source.
  EXPECT_EQ(parts[2].n(), 160);
}

TEST_F(StreamTest, SaveLoadRoundTripIsExactAndKeepsStreaming) {
  auto d = make_data(300);
  CovarianceAccumulatorOptions opt;
  opt.layers = {"enc", "dec"};
  CovarianceAccumulator acc(opt);
  acc.update(d.x.narrow(0, 0, 120), d.y.narrow(0, 0, 120));
  const std::string path = temp_path("roundtrip.svst");
  acc.save(path);
  auto loaded = CovarianceAccumulator::load(path);
  EXPECT_EQ(loaded.options().layers, opt.layers);
  EXPECT_EQ(loaded.n(), 120);
  expect_state_equal(loaded, acc);
  loaded.update(d.x.narrow(0, 120, 180), d.y.narrow(0, 120, 180));
  expect_matches_one_shot(loaded, d.x, d.y, tol::kStreamed64);
  // No temporary file is left behind.
  std::ifstream tmp(path + ".tmp." + std::to_string(::getpid()));
  EXPECT_FALSE(tmp.good());
  std::remove(path.c_str());

  // An empty accumulator round-trips too.
  CovarianceAccumulator empty;
  empty.save(path);
  EXPECT_TRUE(CovarianceAccumulator::load(path).empty());
  std::remove(path.c_str());
}

TEST_F(StreamTest, LoadRejectsMissingCorruptTruncatedAndForeignFiles) {
  auto d = make_data(50);
  CovarianceAccumulator acc;
  acc.update(d.x, d.y);
  const std::string path = temp_path("bad.svst");
  acc.save(path);
  std::ifstream in(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  auto write = [&](const std::vector<char>& b) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(b.data(), static_cast<std::streamsize>(b.size()));
  };
  EXPECT_THROWS_WITH_TYPE(CovarianceAccumulator::load(temp_path("missing.svst")), c10::ValueError,
                          "cannot be opened");
  auto corrupt = bytes;
  corrupt[bytes.size() / 2] ^= 0x5a;
  write(corrupt);
  EXPECT_THROWS_WITH(CovarianceAccumulator::load(path), "does not match its checksum");
  write(std::vector<char>(bytes.begin(), bytes.begin() + bytes.size() - 100));
  EXPECT_THROWS_WITH(CovarianceAccumulator::load(path), "is truncated or padded");
  write(std::vector<char>(bytes.begin(), bytes.begin() + 10));
  EXPECT_THROWS_WITH(CovarianceAccumulator::load(path), "is truncated");
  auto foreign = bytes;
  foreign[0] = 'P';
  write(foreign);
  EXPECT_THROWS_WITH(CovarianceAccumulator::load(path), "does not start with the svcca stream");
  auto future = bytes;
  future[8] = 9;
  write(future);
  EXPECT_THROWS_WITH(CovarianceAccumulator::load(path), "must hold format version 1");
  std::remove(path.c_str());
}

TEST_F(StreamTest, RejectedBatchLeavesStateUnchanged) {
  auto d = make_data(100);
  CovarianceAccumulator acc;
  acc.update(d.x.narrow(0, 0, 60), d.y.narrow(0, 0, 60));
  const auto before = acc.state();
  auto unchanged = [&]() {
    auto after = acc.state();
    if (after.size() != before.size()) return false;
    for (const auto& kv : before) {
      if (!at::equal(kv.second, after.at(kv.first))) return false;
    }
    return acc.n() == 60;
  };
  at::Tensor x = d.x.narrow(0, 60, 40).clone();
  at::Tensor y = d.y.narrow(0, 60, 40).clone();

  EXPECT_THROWS_WITH_TYPE(acc.update(x, y.narrow(0, 0, 39)), c10::ValueError,
                          "CovarianceAccumulator::update: x and y must have the same number of "
                          "rows (dim 0), but got x with shape [40, 10] and y with shape [39, 8]");
  EXPECT_TRUE(unchanged());
  EXPECT_THROWS_WITH_TYPE(acc.update(x.narrow(1, 0, 9), y), c10::ValueError,
                          "x must have 10 features (dim 1) as in earlier batches, but got shape "
                          "[40, 9]");
  EXPECT_TRUE(unchanged());
  EXPECT_THROWS_WITH_TYPE(acc.update(x, y.to(at::kFloat)), c10::TypeError,
                          "y must have dtype Double as in earlier batches, but got dtype Float");
  EXPECT_TRUE(unchanged());
  at::Tensor nan_y = y.clone();
  nan_y[5][2] = std::nan("");
  EXPECT_THROWS_WITH_TYPE(acc.update(x, nan_y), c10::ValueError,
                          "y must contain only finite values, but got 1 NaN and 0 Inf");
  EXPECT_TRUE(unchanged());
  at::Tensor inf_x = x.clone();
  inf_x[0][0] = std::numeric_limits<double>::infinity();
  EXPECT_THROWS_WITH(acc.update(inf_x, y), "x must contain only finite values");
  EXPECT_TRUE(unchanged());
  EXPECT_THROWS_WITH(acc.update(std::vector<at::Tensor>{x}),
                     "batches must hold one tensor per layer (2: x, y), but got 1");
  EXPECT_THROWS_WITH(acc.update(std::map<std::string, at::Tensor>{{"x", x}, {"z", y}}),
                     "\"y\" is missing");
  EXPECT_THROWS_WITH(acc.update(x.select(1, 0), y), "x must be a 2-D tensor");
  EXPECT_TRUE(unchanged());
  // A valid batch after the rejections gives the one-shot result.
  acc.update(x, y);
  expect_matches_one_shot(acc, d.x, d.y, tol::kStreamed64);
}

TEST_F(StreamTest, MergeRejectsDifferentShapesDtypesAndLayers) {
  auto d = make_data(40);
  CovarianceAccumulator acc;
  acc.update(d.x, d.y);
  CovarianceAccumulator narrower;
  narrower.update(d.x.narrow(1, 0, 9), d.y);
  EXPECT_THROWS_WITH(acc.merge(narrower),
                     "CovarianceAccumulator::merge: other must have 10 features in layer x, but "
                     "got 9");
  CovarianceAccumulator float_input;
  float_input.update(d.x.to(at::kFloat), d.y);
  EXPECT_THROWS_WITH_TYPE(acc.merge(float_input), c10::TypeError,
                          "other must have seen dtype Double in layer x, but got Float");
  CovarianceAccumulatorOptions f32;
  f32.dtype = at::kFloat;
  CovarianceAccumulator float_acc(f32);
  EXPECT_THROWS_WITH_TYPE(acc.merge(float_acc), c10::TypeError,
                          "other must accumulate in dtype Double, but got Float");
  CovarianceAccumulatorOptions abc;
  abc.layers = {"a", "b", "c"};
  EXPECT_THROWS_WITH(acc.merge(CovarianceAccumulator(abc)),
                     "other must have the same layers [x, y], but got [a, b, c]");
  EXPECT_EQ(acc.n(), 40);
}

TEST_F(StreamTest, ResultsBeforeEnoughRowsSayHowManyAreNeeded) {
  auto d = make_data(40);
  CovarianceAccumulator acc;
  EXPECT_THROWS_WITH(acc.cca(),
                     "CovarianceAccumulator::cca: the accumulator must have seen at least 2 rows, "
                     "but got 0");
  acc.update(d.x.narrow(0, 0, 1), d.y.narrow(0, 0, 1));
  EXPECT_THROWS_WITH(acc.linear_cka(), "must have seen at least 2 rows, but got 1");
  acc.update(d.x.narrow(0, 1, 10), d.y.narrow(0, 1, 10));
  EXPECT_THROWS_WITH_TYPE(acc.cca(), c10::ValueError,
                          "x must have more examples than features (at least 12 rows for 10 "
                          "features), but the accumulator has seen 11 rows");
  EXPECT_THROWS_WITH(acc.pwcca(), "at least 12 rows for 10 features");
  EXPECT_THROWS_WITH(acc.r2_cca(), "at least 12 rows for 10 features");
  // svcca reduces first, so it works with fewer rows than features, when the kept directions
  // fit in n - 1 (5 + 5 <= 10; the default 99% keeps 6 + 6 and would force correlations).
  SvccaOptions five;
  five.dims = 5;
  EXPECT_NO_THROW(acc.svcca(five));
  EXPECT_THROWS_WITH(acc.svcca(), "x keeps 6 directions and y keeps 6, but n = 11");
  acc.update(d.x.narrow(0, 11, 1), d.y.narrow(0, 11, 1));
  // 12 rows: enough for each side alone, not for the pair (9 + 8 directions > 11).
  EXPECT_THROWS_WITH(acc.cca(), "rx + ry = 17 > n - 1");
  acc.update(d.x.narrow(0, 12, 28), d.y.narrow(0, 12, 28));
  EXPECT_NO_THROW(acc.cca());
}

TEST_F(StreamTest, OptionsAndStateAreValidated) {
  CovarianceAccumulatorOptions o;
  o.layers = {"a", "a"};
  EXPECT_THROWS_WITH(CovarianceAccumulator{o}, "layers must be unique, but got [a, a]");
  o.layers = {"a", "b"};
  o.pairs = {{"a", "a"}};
  EXPECT_THROWS_WITH(CovarianceAccumulator{o}, "pairs must join two different layers");
  o.pairs = {};
  o.dtype = at::kHalf;
  EXPECT_THROWS_WITH_TYPE(CovarianceAccumulator{o}, c10::TypeError,
                          "dtype must be float32 or float64, but got Half");

  auto d = make_data(30);
  CovarianceAccumulator acc;
  acc.update(d.x, d.y);
  auto s = acc.state();
  CovarianceAccumulator other;
  other.set_state(s);
  expect_state_equal(other, acc);
  s["comoment.1"] = s["comoment.1"].narrow(0, 0, 7);
  EXPECT_THROWS_WITH(other.set_state(s),
                     "state[\"comoment.1\"] must have shape [8, 8], but got [7, 8]");
  s.erase("comoment.1");
  EXPECT_THROWS_WITH(other.set_state(s), "state must hold the tensor \"comoment.1\"");
  expect_state_equal(other, acc);
}

// ---- Minibatch CKA ------------------------------------------------------------------------

TEST_F(StreamTest, MinibatchCkaRejectsBatchesOfFewerThanFourRows) {
  auto d = make_data(40);
  MinibatchCkaAccumulator acc;
  EXPECT_THROWS_WITH_TYPE(acc.update(d.x.narrow(0, 0, 3), d.y.narrow(0, 0, 3)), c10::ValueError,
                          "MinibatchCkaAccumulator::update: x and y must have at least 4 rows per "
                          "batch (the unbiased HSIC_1 divides by b (b - 3)), but got 3");
  EXPECT_EQ(acc.n_batches(), 0);
  EXPECT_THROWS_WITH(acc.cka(), "must have seen at least 1 batch (of >= 4 rows), but got 0");
  acc.update(d.x.narrow(0, 0, 4), d.y.narrow(0, 0, 4));
  at::Tensor nan_x = d.x.narrow(0, 4, 10).clone();
  nan_x[1][1] = std::nan("");
  EXPECT_THROWS_WITH(acc.update(nan_x, d.y.narrow(0, 4, 10)), "x must contain only finite values");
  EXPECT_THROWS_WITH(acc.update(d.x.narrow(0, 4, 10).narrow(1, 0, 9), d.y.narrow(0, 4, 10)),
                     "x must have 10 features (dim 1) as in earlier batches");
  EXPECT_THROWS_WITH_TYPE(acc.update(d.x.narrow(0, 4, 10), d.y.narrow(0, 4, 10).to(at::kFloat)),
                          c10::TypeError,
                          "y must have dtype Double as in earlier batches, but got dtype Float");
  EXPECT_EQ(acc.n_batches(), 1);
  EXPECT_EQ(acc.n(), 4);
}

TEST_F(StreamTest, MinibatchCkaOfOneFullBatchIsTheDebiasedEstimator) {
  auto d = make_data(120);
  MinibatchCkaAccumulator linear;
  linear.update(d.x, d.y);
  LinearCkaOptions lo;
  lo.debiased = true;
  EXPECT_ALLCLOSE(linear.cka(), linear_cka(d.x, d.y, lo), tol::kStreamed64);

  MinibatchCkaOptions fixed;
  fixed.kernel = CkaKernel::kRbf;
  fixed.sigma = 30.0;
  MinibatchCkaAccumulator rbf(fixed);
  rbf.update(d.x, d.y);
  RbfCkaOptions ro;
  ro.sigma = 30.0;
  ro.debiased = true;
  EXPECT_ALLCLOSE(rbf.cka(), rbf_cka(d.x, d.y, ro), tol::kStreamed64);

  MinibatchCkaOptions median;
  median.kernel = CkaKernel::kRbf;
  median.threshold = 0.7;
  MinibatchCkaAccumulator rbf_median(median);
  rbf_median.update(d.x, d.y);
  RbfCkaOptions rm;
  rm.threshold = 0.7;
  rm.debiased = true;
  EXPECT_ALLCLOSE(rbf_median.cka(), rbf_cka(d.x, d.y, rm), tol::kStreamed64);
}

TEST_F(StreamTest, MinibatchCkaAveragesPerBatchHsicInAnyOrderAndMerges) {
  auto d = make_data(200);
  MinibatchCkaOptions o;
  o.kernel = CkaKernel::kRbf;
  o.sigma = 20.0;
  const std::vector<std::pair<int64_t, int64_t>> batches = {{0, 30}, {30, 80}, {80, 84}, {84, 200}};
  MinibatchCkaAccumulator forward(o), backward(o), first(o), second(o);
  double sum_xy = 0, sum_xx = 0, sum_yy = 0;
  for (size_t i = 0; i < batches.size(); ++i) {
    const auto& b = batches[i];
    at::Tensor xb = d.x.narrow(0, b.first, b.second - b.first);
    at::Tensor yb = d.y.narrow(0, b.first, b.second - b.first);
    forward.update(xb, yb);
    (i < 2 ? first : second).update(xb, yb);
    MinibatchCkaAccumulator one(o);
    one.update(xb, yb);
    sum_xy += one.hsic_xy().item<double>();
    sum_xx += one.hsic_xx().item<double>();
    sum_yy += one.hsic_yy().item<double>();
  }
  for (size_t i = batches.size(); i-- > 0;) {
    const auto& b = batches[i];
    backward.update(d.x.narrow(0, b.first, b.second - b.first),
                    d.y.narrow(0, b.first, b.second - b.first));
  }
  auto o64 = at::TensorOptions().dtype(at::kDouble);
  const double k = static_cast<double>(batches.size());
  EXPECT_ALLCLOSE(forward.hsic_xy(), at::scalar_tensor(sum_xy / k, o64), tol::kStreamed64);
  EXPECT_ALLCLOSE(forward.hsic_xx(), at::scalar_tensor(sum_xx / k, o64), tol::kStreamed64);
  EXPECT_ALLCLOSE(forward.cka(), at::scalar_tensor(sum_xy / std::sqrt(sum_xx * sum_yy), o64),
                  tol::kStreamed64);
  EXPECT_ALLCLOSE(backward.cka(), forward.cka(), tol::kStreamed64);
  first.merge(second);
  EXPECT_EQ(first.n_batches(), 4);
  EXPECT_EQ(first.n(), 200);
  EXPECT_ALLCLOSE(first.cka(), forward.cka(), tol::kStreamed64);

  const std::string path = temp_path("minibatch.svst");
  forward.save(path);
  auto loaded = MinibatchCkaAccumulator::load(path);
  EXPECT_TRUE(at::equal(loaded.cka(), forward.cka()));
  EXPECT_EQ(loaded.n_batches(), 4);
  EXPECT_THROWS_WITH(
      CovarianceAccumulator::load(path),
      "must hold a covariance accumulator, but \"" + path + "\" holds minibatch_cka");
  std::remove(path.c_str());

  MinibatchCkaAccumulator linear;
  EXPECT_THROWS_WITH(first.merge(linear), "other must use the same kernel and bandwidth");
}

}  // namespace
}  // namespace svcca
