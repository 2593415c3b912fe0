// Tests of bootstrap intervals and permutation tests: each resample equals the one-shot measure
// on the drawn rows, coverage on data with a known population value, p-values uniform under
// independence and 1 / (m + 1) for identical layers, seeds, grids, and every rejected input.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "support/support.h"
#include "svcca/report/heatmap.h"
#include "svcca/report/report.h"
#include "svcca/svcca.h"

namespace svcca {
namespace {

using testing::AllClose;
namespace tol = testing::tol;

const std::vector<std::string> kMeasures = {"cka",   "debiased-cka", "rbf-cka",   "cca",
                                            "svcca", "pwcca",        "procrustes"};

// The one-shot measure of (x, y) under the options inference uses by default (rbf-cka with an
// absolute sigma: the median rule is re-estimated on resampled rows, the resampler keeps the
// full sample's bandwidth).
double one_shot(const std::string& m, const at::Tensor& x, const at::Tensor& y,
                const GridOptions& o) {
  if (m == "cka") return linear_cka(x, y).item<double>();
  if (m == "debiased-cka") return linear_cka(x, y, {/*debiased=*/true}).item<double>();
  if (m == "rbf-cka") return rbf_cka(x, y, o.rbf).item<double>();
  if (m == "cca") return cca(x, y, o.cca).correlations.mean().item<double>();
  if (m == "svcca") return svcca(x, y, o.svcca).score.item<double>();
  if (m == "pwcca") return pwcca(x, y, o.pwcca).score.item<double>();
  return procrustes(x, y).item<double>();
}

GridOptions rbf_sigma() {
  GridOptions o;
  o.rbf.sigma = 3.0;
  return o;
}

// Two related layers: a shared latent signal plus noise.
std::pair<at::Tensor, at::Tensor> related(int64_t n, int64_t p1, int64_t p2, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  auto o = at::TensorOptions().dtype(at::kDouble);
  at::Tensor z = at::randn({n, 3}, g, o);
  at::Tensor x = at::mm(z, at::randn({3, p1}, g, o)) + 0.7 * at::randn({n, p1}, g, o);
  at::Tensor y = at::mm(z, at::randn({3, p2}, g, o)) + 0.7 * at::randn({n, p2}, g, o);
  return {x, y};
}

at::Tensor drawn(const at::Tensor& w) {
  at::Tensor c = w.to(at::kLong);
  return at::repeat_interleave(at::arange(w.size(0), c.options()), c);
}

class InferenceTest : public testing::SeedingFixture {};

// Every measure: each bootstrap resample is the one-shot measure on the rows it draws (with
// their multiplicities), and the estimate the one-shot measure on all rows.
TEST_F(InferenceTest, ResampleEqualsOneShotOnDrawnRows) {
  auto [x, y] = related(40, 5, 4, 1);
  const int64_t b = 6;
  for (const auto& m : kMeasures) {
    SCOPED_TRACE(m);
    BootstrapOptions o;
    o.resamples = b;
    o.seed = 7;
    o.measure_options = rbf_sigma();
    BootstrapResult r = bootstrap(x, y, m, o);
    EXPECT_NEAR(r.estimate, one_shot(m, x, y, o.measure_options), tol::kDecomp64.atol + 1e-8);
    at::Tensor w = detail::Draws(7).bootstrap_weights(40, b);
    std::vector<double> expected;
    for (int64_t k = 0; k < b; ++k) {
      at::Tensor rows = drawn(w.select(1, k));
      expected.push_back(
          one_shot(m, x.index_select(0, rows), y.index_select(0, rows), o.measure_options));
    }
    EXPECT_ALLCLOSE(r.resamples, at::tensor(expected, at::kDouble), tol::kDecomp64);
  }
  // Linear CKA's three paths: narrow x narrow (feature side, above), wide x narrow and wide x
  // wide (Gram side: p^2 > n).
  // (mid: p <= n / 4, so K w is taken from its centered columns.)
  auto [wide, other] = related(40, 12, 9, 9);
  const at::Tensor mid = related(40, 10, 3, 11).first + 0.1 * wide.narrow(1, 0, 10);
  for (const at::Tensor& second : {y, other, mid}) {
    BootstrapOptions o;
    o.resamples = b;
    o.seed = 7;
    BootstrapResult r = bootstrap(wide, second, "cka", o);
    at::Tensor w = detail::Draws(7).bootstrap_weights(40, b);
    std::vector<double> expected;
    for (int64_t k = 0; k < b; ++k) {
      at::Tensor rows = drawn(w.select(1, k));
      expected.push_back(
          linear_cka(wide.index_select(0, rows), second.index_select(0, rows)).item<double>());
    }
    EXPECT_ALLCLOSE(r.resamples, at::tensor(expected, at::kDouble), tol::kDecomp64);
    EXPECT_NEAR(permutation_test(wide, second, "cka", {5, 1}).estimate,
                linear_cka(wide, second).item<double>(), 1e-10);
  }
  // svcca with a layer wider than n (p > n: the one-shot measure on the drawn rows).
  at::Tensor very_wide = at::cat({wide, wide.square(), wide.sin(), wide.cos(), wide.exp()}, 1);
  BootstrapOptions o;
  o.resamples = 4;
  BootstrapResult r = bootstrap(very_wide, y, "svcca", o);
  at::Tensor w = detail::Draws(0).bootstrap_weights(40, 4);
  for (int64_t k = 0; k < 4; ++k) {
    at::Tensor rows = drawn(w.select(1, k));
    EXPECT_NEAR(
        r.resamples[k].item<double>(),
        svcca::svcca(very_wide.index_select(0, rows), y.index_select(0, rows)).score.item<double>(),
        1e-12);
  }
}

// Resamples on several threads (each with a single-threaded BLAS) give the serial values, BCa's
// jackknife included, for every measure that runs them concurrently; an error on a worker
// reaches the caller.
TEST_F(InferenceTest, WorkersGiveTheSerialValues) {
  auto [x, y] = related(60, 6, 5, 3);
  for (const std::string m : {"cca", "svcca", "pwcca", "procrustes"}) {
    SCOPED_TRACE(m);
    BootstrapOptions o;
    o.resamples = 9;
    o.seed = 4;
    o.method = IntervalMethod::kBca;
    o.workers = 1;
    const BootstrapResult serial = bootstrap(x, y, m, o);
    for (int64_t w : {2, 3, 0}) {
      SCOPED_TRACE(w);
      o.workers = w;
      const BootstrapResult r = bootstrap(x, y, m, o);
      EXPECT_ALLCLOSE(r.resamples, serial.resamples, tol::kDecomp64);
      EXPECT_NEAR(r.low, serial.low, tol::kDecomp64.atol + 1e-10);
      EXPECT_NEAR(r.high, serial.high, tol::kDecomp64.atol + 1e-10);
    }
    // Permutations too, in chunks on the workers.
    PermutationOptions po;
    po.permutations = 23;
    po.seed = 2;
    po.workers = 1;
    const PermutationResult one = permutation_test(x, y, m, po);
    po.workers = 3;
    const PermutationResult three = permutation_test(x, y, m, po);
    EXPECT_ALLCLOSE(three.null, one.null, tol::kDecomp64);
    EXPECT_EQ(three.null.numel(), 23);
    EXPECT_EQ(three.exceed, one.exceed);
  }
  auto r = detail::make_resampler("t", "cca", GridOptions{});
  auto lx = r->layer("t", "x", x);
  auto ly = r->layer("t", "y", y);
  EXPECT_EQ(detail::resample_workers(*r, {lx.get(), ly.get()}, at::kCPU, 0, 3), 3);
  EXPECT_EQ(detail::resample_workers(*r, {lx.get(), ly.get()}, at::kCPU, 0, 1), 1);
  // A budget with room for the layers and one batch's draws only: serial; for three: 3.
  const int64_t held = lx->bytes() + ly->bytes();
  EXPECT_EQ(detail::resample_workers(*r, {lx.get(), ly.get()}, at::kCPU, 2 * held, 3), 1);
  EXPECT_EQ(detail::resample_workers(*r, {lx.get(), ly.get()}, at::kCPU, 4 * held, 3), 3);
  auto cka = detail::make_resampler("t", "cka", GridOptions{});
  auto kx = cka->layer("t", "x", x);
  EXPECT_EQ(detail::resample_workers(*cka, {kx.get()}, at::kCPU, 0, 3), 1);

  // A resampler that throws on one batch: the error is rethrown after the workers stop.
  struct Throwing : detail::Resampler {
    const detail::Resampler& inner;
    explicit Throwing(const detail::Resampler& r) : inner(r) {}
    std::shared_ptr<const detail::ResampleLayer> layer(const char* fn, const std::string& name,
                                                       const at::Tensor& mat) const override {
      return inner.layer(fn, name, mat);
    }
    int64_t batch() const override { return inner.batch(); }
    std::shared_ptr<const detail::ResampleDraw> draw(const detail::ResampleLayer& l,
                                                     const at::Tensor& w) const override {
      TORCH_CHECK_VALUE(w[0][0].item<double>() != 7.0, "batch with weight 7");
      return inner.draw(l, w);
    }
    at::Tensor values(const detail::ResampleLayer& a, const detail::ResampleDraw& da,
                      const detail::ResampleLayer& b, const detail::ResampleDraw& db,
                      const at::Tensor& w) const override {
      return inner.values(a, da, b, db, w);
    }
    at::Tensor permuted(const detail::ResampleLayer& a, const detail::ResampleLayer& b,
                        const at::Tensor& p) const override {
      return inner.permuted(a, b, p);
    }
    bool symmetric() const override { return true; }
    bool concurrent() const override { return true; }
  };
  Throwing t(*r);
  at::Tensor w = at::ones({60, 12}, at::kDouble);
  w[0][5] = 7.0;
  w[1][5] = 0.0;
  EXPECT_THROWS_WITH(detail::resampled_cells(t, {lx.get(), ly.get()}, {{0, 1}}, w, at::kCPU, 3),
                     "batch with weight 7");
  w[0][5] = 1.0;
  w[1][5] = 1.0;
  EXPECT_ALLCLOSE(detail::resampled_cells(t, {lx.get(), ly.get()}, {{0, 1}}, w, at::kCPU, 3),
                  detail::resampled_cells(*r, {lx.get(), ly.get()}, {{0, 1}}, w, at::kCPU, 1),
                  tol::kDecomp64);
}

// Columns constant on some resamples (a feature that fires on one example only, one that varies
// by a part in 1e9 of its value), in float64 and float32: each resample still equals the
// one-shot measure on its drawn rows, which drops exactly the columns constant there.
TEST_F(InferenceTest, ColumnsConstantOnAResampleAreDroppedExactly) {
  auto [x, y] = related(50, 5, 4, 5);
  // Bootstraps (xs, y) with measure m and compares every resample with the one-shot measure on
  // its drawn rows, or with NaN where undefined(multiplicities) says the layer is constant there;
  // returns how many resamples were undefined.
  auto check = [&](const at::Tensor& xs, const std::string& m, int64_t resamples, uint64_t seed,
                   const std::function<bool(const at::Tensor&)>& undefined) {
    BootstrapOptions o;
    o.resamples = resamples;
    o.seed = seed;
    const BootstrapResult r = bootstrap(xs, y, m, o);
    const at::Tensor w = detail::Draws(seed).bootstrap_weights(50, resamples);
    int64_t count = 0;
    for (int64_t k = 0; k < resamples; ++k) {
      const at::Tensor wk = w.select(1, k);
      if (undefined(wk)) {
        ++count;
        EXPECT_TRUE(std::isnan(r.resamples[k].item<double>())) << k;
        continue;
      }
      const at::Tensor rows = drawn(wk);
      EXPECT_NEAR(r.resamples[k].item<double>(),
                  one_shot(m, xs.index_select(0, rows), y.index_select(0, rows), GridOptions{}),
                  tol::kDecomp64.atol + 1e-9);
    }
    EXPECT_EQ(r.invalid, count);
    return count;
  };
  x.select(1, 1).zero_();
  x[7][1] = 2.5;  // nonzero on example 7 only
  x.select(1, 3).fill_(1e6);
  x[11][3] = 1e6 + 1e-3;  // varies, but below the screen's bound
  x[12][3] = 1e6 - 2e-3;
  const auto never = [](const at::Tensor&) { return false; };
  for (const at::ScalarType dtype : {at::kDouble, at::kFloat}) {
    for (const std::string m : {"cca", "svcca"}) {
      SCOPED_TRACE(m + (dtype == at::kDouble ? " float64" : " float32"));
      check(x.to(dtype), m, 12, 3, never);  // float32 rounds column 3 to a constant
      // Some resamples leave example 7 out: its column is constant there.
      const at::Tensor w = detail::Draws(3).bootstrap_weights(50, 12);
      EXPECT_GT((w[7] == 0).sum().item<int64_t>(), 0);
    }
  }
  // Every column of `sparse` fires on examples 7 and 9 only: a resample drawing neither has no
  // non-constant column left (NaN, never a correlation of rounding noise), the others equal the
  // one-shot measure.
  at::Tensor sparse = at::zeros({50, 2}, at::kDouble);
  sparse[7][0] = 2.5;
  sparse[7][1] = 0.3;
  sparse[9][1] = 1.5;
  const auto neither = [](const at::Tensor& wk) {
    return wk[7].item<double>() == 0.0 && wk[9].item<double>() == 0.0;
  };
  for (const std::string m : {"cca", "svcca"}) {
    SCOPED_TRACE(m);
    EXPECT_GT(check(sparse, m, 40, 5, neither), 0);
  }
}

// The leave-one-out weights of BCa give the measure without that example (N = n - 1 in the
// weighted formulas, debiased CKA included).
// A resample of n rows holds about 0.63 n distinct ones: layers whose kept directions add up to
// more than that minus 1 have their spans intersect on every such resample, which forces
// correlations to 1 (the one-shot rule counts n - 1, duplicates included, and would pass it).
// Those resamples are undefined unless allow_forced_correlations, and then they are inflated.
TEST_F(InferenceTest, ResamplesThatForceCorrelationsAreUndefined) {
  const auto independent = [](int64_t n, uint64_t seed) {
    auto g = at::detail::createCPUGenerator(seed);
    return std::make_pair(at::randn({n, 20}, g, at::kDouble), at::randn({n, 20}, g, at::kDouble));
  };
  for (const std::string m : {"cca", "svcca", "pwcca"}) {
    SCOPED_TRACE(m);
    BootstrapOptions o;
    o.resamples = 30;
    o.seed = 4;
    o.measure_options.svcca.dims = 20;
    // n = 50: 40 directions fit in n - 1 = 49, not in the ~32 distinct rows of a resample.
    auto [x, y] = independent(50, 12);
    EXPECT_THROWS_WITH(bootstrap(x, y, m, o), "would force correlations to 1");
    for (CcaOptions* c :
         {&o.measure_options.cca, &o.measure_options.svcca.cca, &o.measure_options.pwcca.cca}) {
      c->allow_forced_correlations = true;
    }
    const BootstrapResult forced = bootstrap(x, y, m, o);
    EXPECT_EQ(forced.invalid, 0);
    EXPECT_GT(forced.low, forced.estimate);  // every resample inflated above the estimate
    // n = 200 (~126 distinct rows): every resample is defined without the option.
    auto [x2, y2] = independent(200, 13);
    o.measure_options = GridOptions{};
    o.measure_options.svcca.dims = 20;
    EXPECT_EQ(bootstrap(x2, y2, m, o).invalid, 0);
  }
  // In a grid the pair's cells have no interval, every resample counted as invalid; a layer
  // against itself (the diagonal) is exempt, as in the grid's own rule.
  auto [x, y] = independent(50, 12);
  const NamedActivations layers{{"x", x}, {"y", y}};
  for (GridMeasure gm : {GridMeasure::kCca, GridMeasure::kSvcca, GridMeasure::kPwcca}) {
    GridOptions go;
    go.measure = gm;
    go.svcca.dims = 20;
    Grid g = similarity_grid(layers, go);
    GridInferenceOptions io;
    io.resamples = 30;
    add_grid_inference(g, layers, {}, go, io);
    SCOPED_TRACE(to_string(gm));
    EXPECT_EQ(g.inference.invalid[0][1].item<double>(), 30.0);
    EXPECT_TRUE(std::isnan(g.inference.low[0][1].item<double>()));
    EXPECT_EQ(g.inference.invalid[0][0].item<double>(), 0.0);
    EXPECT_FALSE(std::isnan(g.inference.low[1][1].item<double>()));
    EXPECT_EQ(grid_to_json(g)["inference"]["invalid"][1][0].get<double>(), 30.0);
  }
  // The diagonal of a wide layer (p > n: svcca's resamples run the one-shot measure) is exempt
  // too: each resample of it is 1.
  GridOptions go;
  go.measure = GridMeasure::kSvcca;
  go.svcca.dims = 26;  // 2 x 26 > n - 1: the one-shot rule would refuse the pair of copies
  const NamedActivations wide{{"w", at::randn({50, 70}, at::kDouble)}};
  Grid g = similarity_grid(wide, go);
  GridInferenceOptions io;
  io.resamples = 30;
  add_grid_inference(g, wide, {}, go, io);
  EXPECT_EQ(g.inference.invalid[0][0].item<double>(), 0.0);
  EXPECT_NEAR(g.inference.low[0][0].item<double>(), 1.0, tol::kDecomp64.atol + 1e-10);
}

TEST_F(InferenceTest, JackknifeEqualsOneShotWithoutTheExample) {
  auto [x, y] = related(30, 4, 3, 2);
  for (const std::string m : {"cka", "debiased-cka", "cca", "procrustes"}) {
    SCOPED_TRACE(m);
    auto r = detail::make_resampler("test", m, GridOptions{});
    auto lx = r->layer("test", "x", x);
    auto ly = r->layer("test", "y", y);
    at::Tensor got = detail::resampled_cells(*r, {lx.get(), ly.get()}, {{0, 1}},
                                             detail::jackknife_weights(30, 3, 4), x.device())[0];
    std::vector<double> expected;
    for (int64_t i = 3; i < 7; ++i) {
      at::Tensor keep = at::cat({at::arange(i, at::kLong), at::arange(i + 1, 30, at::kLong)});
      expected.push_back(
          one_shot(m, x.index_select(0, keep), y.index_select(0, keep), GridOptions{}));
    }
    EXPECT_ALLCLOSE(got, at::tensor(expected, at::kDouble), tol::kDecomp64);
  }
}

// Coverage (issue 14, item 5): linear CKA of jointly Gaussian layers x ~ N(0, I_2), y = x A + e,
// e ~ N(0, s^2 I_2), whose population value is ||Sxy||_F^2 / (||Sxx||_F ||Syy||_F) with
// Sxx = I, Sxy = A, Syy = A^T A + s^2 I. At n = 500, nominal 95 % percentile intervals must
// cover it in at least 90 % of 400 seeded trials (200 resamples each, the cheap Gram path).
TEST_F(InferenceTest, PercentileIntervalsCoverThePopulationCka) {
  auto o64 = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor a = at::tensor({1.0, 0.5, -0.3, 0.8}, o64).reshape({2, 2});
  const double s = 1.2;
  const at::Tensor syy = at::mm(a.t(), a) + s * s * at::eye(2, o64);
  const double population =
      a.square().sum().item<double>() / (std::sqrt(2.0) * syy.square().sum().sqrt().item<double>());
  const int64_t trials = 400, n = 500;
  int64_t covered = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t t = 0; t < trials; ++t) {
    at::Generator g = at::detail::createCPUGenerator(1000 + t);
    at::Tensor x = at::randn({n, 2}, g, o64);
    at::Tensor y = at::mm(x, a) + s * at::randn({n, 2}, g, o64);
    BootstrapOptions o;
    o.resamples = 200;
    o.seed = static_cast<uint64_t>(t);
    BootstrapResult r = bootstrap(x, y, "cka", o);
    covered += (r.low <= population && population <= r.high) ? 1 : 0;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(covered, trials * 9 / 10) << "population CKA " << population;
  EXPECT_LE(covered, trials) << seconds;
  RecordProperty("coverage", std::to_string(covered) + "/" + std::to_string(trials));
  RecordProperty("seconds", std::to_string(seconds));
}

// Kolmogorov-Smirnov distance of p-values from the uniform distribution.
double ks_uniform(std::vector<double> p) {
  std::sort(p.begin(), p.end());
  double d = 0.0;
  const double m = static_cast<double>(p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    d = std::max({d, (static_cast<double>(i) + 1.0) / m - p[i], p[i] - static_cast<double>(i) / m});
  }
  return d;
}

// Under independence the p-values are uniform: KS against uniform over 400 trials, below the
// 1 % critical value 1.63 / sqrt(400) plus the p-values' grid step 1 / (m + 1).
TEST_F(InferenceTest, PermutationPValuesUniformUnderIndependence) {
  auto o64 = at::TensorOptions().dtype(at::kDouble);
  for (const std::string m : {"cka", "cca"}) {
    SCOPED_TRACE(m);
    std::vector<double> p;
    const int64_t perms = 99;
    for (int64_t t = 0; t < 400; ++t) {
      at::Generator g = at::detail::createCPUGenerator(5000 + t);
      at::Tensor x = at::randn({24, 3}, g, o64);
      at::Tensor y = at::randn({24, 2}, g, o64);
      p.push_back(permutation_test(x, y, m, {perms, static_cast<uint64_t>(t)}).p_value);
    }
    EXPECT_LT(ks_uniform(p), 1.63 / std::sqrt(400.0) + 1.0 / (perms + 1.0));
  }
}

// Identical layers (or an orthogonal rotation, or a rescaling): no permutation reaches the
// estimate, so p = 1 / (m + 1); the null mean is that of unrelated layers.
TEST_F(InferenceTest, IdenticalLayersGiveTheSmallestPValue) {
  auto [x, unused] = related(30, 4, 4, 3);
  auto q = testing::orthonormal_columns(4, 4, at::TensorOptions().dtype(at::kDouble));
  for (const auto& m : kMeasures) {
    SCOPED_TRACE(m);
    PermutationOptions o;
    o.permutations = 49;
    o.measure_options = rbf_sigma();
    at::Tensor y = m == "pwcca" ? x : at::mm(x, q) * 2.0;
    PermutationResult r = permutation_test(x, y, m, o);
    EXPECT_DOUBLE_EQ(r.p_value, 1.0 / 50.0);
    EXPECT_EQ(r.exceed, 0);
    EXPECT_LT(r.null_mean, r.estimate);
    EXPECT_EQ(r.null.numel(), 49);
  }
}

// The debiasing context: biased CKA of independent Gaussians at n = 32 has a null mean
// far from 0 (about 0.2 for p = 32 features each); debiased CKA's is near 0.
TEST_F(InferenceTest, NullMeanShowsTheBiasOfCkaAtSmallN) {
  at::Tensor x = at::randn({32, 32}, at::kDouble);
  at::Tensor y = at::randn({32, 32}, at::kDouble);
  PermutationResult biased = permutation_test(x, y, "cka", {200, 1});
  PermutationResult debiased = permutation_test(x, y, "debiased-cka", {200, 1});
  EXPECT_GT(biased.null_mean, 0.15);
  EXPECT_LT(std::abs(debiased.null_mean), 0.05);
}

TEST_F(InferenceTest, SameSeedSameNumbersOtherSeedOthers) {
  auto [x, y] = related(50, 4, 3, 4);
  for (const std::string m : {"cka", "svcca"}) {
    BootstrapOptions o;
    o.resamples = 20;
    o.seed = 11;
    BootstrapResult a = bootstrap(x, y, m, o);
    BootstrapResult b = bootstrap(x, y, m, o);
    EXPECT_TRUE(at::equal(a.resamples, b.resamples));
    EXPECT_EQ(a.low, b.low);
    EXPECT_EQ(a.high, b.high);
    o.seed = 12;
    EXPECT_FALSE(at::equal(bootstrap(x, y, m, o).resamples, a.resamples));
    PermutationResult p = permutation_test(x, y, m, {30, 5});
    EXPECT_TRUE(at::equal(p.null, permutation_test(x, y, m, {30, 5}).null));
    EXPECT_FALSE(at::equal(p.null, permutation_test(x, y, m, {30, 6}).null));
  }
  // The draws themselves: fixed by the standard's mt19937_64, not by a library distribution.
  at::Tensor w = detail::Draws(0).bootstrap_weights(10, 3);
  EXPECT_TRUE(at::equal(w.sum(0), at::full({3}, 10.0, at::kDouble)));
  at::Tensor perm = detail::Draws(0).permutations(10, 2);
  EXPECT_TRUE(at::equal(std::get<0>(perm.sort(1)), at::arange(10, at::kLong).expand({2, 10})));
}

// The paired difference uses the same resamples for both similarities.
TEST_F(InferenceTest, DifferenceIsPairedOnTheSameResamples) {
  auto [a, c] = related(60, 4, 4, 5);
  at::Tensor b = at::randn({60, 3}, at::kDouble);
  BootstrapOptions o;
  o.resamples = 100;
  o.seed = 3;
  BootstrapResult d = bootstrap_difference(a, b, c, "cka", o);
  BootstrapResult ac = bootstrap(a, c, "cka", o);
  BootstrapResult bc = bootstrap(b, c, "cka", o);
  EXPECT_NEAR(d.estimate, ac.estimate - bc.estimate, 1e-12);
  EXPECT_ALLCLOSE(d.resamples, ac.resamples - bc.resamples, tol::kClosedForm64);
  EXPECT_GT(d.low, 0.0);  // a is related to c, b is not
  EXPECT_LE(d.low, d.estimate);
  EXPECT_GE(d.high, d.estimate);
}

TEST_F(InferenceTest, IntervalQuantilesAndBca) {
  // Percentile: numpy's linear interpolation; values 0..100 at level 0.9 give [5, 95].
  at::Tensor v = at::arange(101, at::kDouble);
  detail::Interval iv;
  std::string why;
  ASSERT_TRUE(detail::interval_of(50.0, v, {}, 0.9, IntervalMethod::kPercentile, &iv, &why));
  EXPECT_DOUBLE_EQ(iv.low, 5.0);
  EXPECT_DOUBLE_EQ(iv.high, 95.0);
  // BCa with no bias (estimate at the median) and no acceleration (a symmetric jackknife) is the
  // percentile interval.
  at::Tensor jack = at::tensor({-1.0, 1.0, -2.0, 2.0}, at::kDouble);
  ASSERT_TRUE(detail::interval_of(50.0, v, jack, 0.9, IntervalMethod::kBca, &iv, &why));
  EXPECT_NEAR(iv.low, 5.0, 1e-9);
  EXPECT_NEAR(iv.high, 95.0, 1e-9);
  // An estimate below most resamples moves the BCa interval down.
  ASSERT_TRUE(detail::interval_of(30.0, v, jack, 0.9, IntervalMethod::kBca, &iv, &why));
  EXPECT_LT(iv.high, 95.0);
  EXPECT_NEAR(detail::normal_quantile(0.975), 1.959963984540054, 1e-14);
  EXPECT_NEAR(detail::normal_quantile(0.001), -3.090232306167813, 1e-13);
  // BCa end to end: the interval holds the estimate's neighbourhood and differs from percentile.
  auto [x, y] = related(40, 3, 3, 6);
  BootstrapOptions o;
  o.resamples = 200;
  BootstrapResult p = bootstrap(x, y, "cka", o);
  o.method = IntervalMethod::kBca;
  BootstrapResult b = bootstrap(x, y, "cka", o);
  EXPECT_TRUE(at::equal(p.resamples, b.resamples));
  EXPECT_NE(p.low, b.low);
  EXPECT_LT(b.low, b.estimate);
  EXPECT_GT(b.high, b.estimate);
}

// A resample on which a layer is constant is NaN, counted, and left out of the interval.
TEST_F(InferenceTest, DegenerateResamplesAreCountedNotAveraged) {
  at::Tensor x = at::zeros({8, 1}, at::kDouble);
  x[7][0] = 1.0;  // one example differs: resamples without it are constant
  at::Tensor y = at::randn({8, 2}, at::kDouble);
  BootstrapOptions o;
  o.resamples = 200;
  BootstrapResult r = bootstrap(x, y, "cka", o);
  EXPECT_GT(r.invalid, 0);
  EXPECT_EQ(at::isnan(r.resamples).sum().item<int64_t>(), r.invalid);
  EXPECT_TRUE(std::isfinite(r.low) && std::isfinite(r.high));
  // Fewer than two defined values: no interval, and the reason says how many were defined.
  detail::Interval iv;
  std::string why;
  EXPECT_FALSE(detail::interval_of(0.5, at::tensor({std::nan(""), 0.3, std::nan("")}, at::kDouble),
                                   {}, 0.95, IntervalMethod::kPercentile, &iv, &why));
  EXPECT_NE(why.find("only 1 of 3 resamples have a defined value"), std::string::npos) << why;
}

TEST_F(InferenceTest, RejectsBadArguments) {
  auto [x, y] = related(20, 3, 3, 7);
  BootstrapOptions o;
  for (int64_t r : {0, 1, -3}) {
    o.resamples = r;
    EXPECT_THROWS_WITH_TYPE(bootstrap(x, y, "cka", o), c10::ValueError,
                            "bootstrap: resamples must be >= 2 (an interval needs two values)");
  }
  o.resamples = 10;
  for (double level : {0.0, 1.0, 1.5, -0.2, std::nan("")}) {
    o.level = level;
    EXPECT_THROWS_WITH_TYPE(bootstrap(x, y, "cka", o), c10::ValueError,
                            "bootstrap: level must lie in (0, 1)");
  }
  o.level = 0.9;
  o.workers = -1;
  EXPECT_THROWS_WITH_TYPE(bootstrap(x, y, "cca", o), c10::ValueError,
                          "bootstrap: workers must be >= 0 (0: as many as the BLAS's threads), "
                          "but got -1");
  EXPECT_THROWS_WITH(permutation_test(x, y, "cca", {10, 0, {}, -1}),
                     "permutation_test: workers must be >= 0");
  GridInferenceOptions bad_workers{10};
  bad_workers.workers = -2;
  EXPECT_THROWS_WITH(InferenceGridBuilder({"a"}, {}, GridOptions{}, bad_workers),
                     "grid inference: workers must be >= 0");
  o.workers = 0;
  EXPECT_THROWS_WITH(bootstrap(x, y, "minibatch-cka", o), "bootstrap: measure must be one of");
  EXPECT_THROWS_WITH(bootstrap(x, y.narrow(0, 0, 10), "cka", o), "same number of examples");
  EXPECT_THROWS_WITH(bootstrap(x.narrow(0, 0, 1), y.narrow(0, 0, 1), "cka", o), "bootstrap:");
  EXPECT_THROWS_WITH(bootstrap(x.narrow(0, 0, 3), y.narrow(0, 0, 3), "debiased-cka", o),
                     "bootstrap:");
  EXPECT_THROWS_WITH(bootstrap(x.narrow(0, 0, 4), y.narrow(0, 0, 4), "cca", o),
                     "bootstrap: x must have at least p + 2 = 5 examples for cca");
  at::Tensor bad = x.clone();
  bad[0][0] = std::nan("");
  EXPECT_THROWS_WITH(bootstrap(bad, y, "cka", o), "bootstrap:");
  EXPECT_THROWS_WITH_TYPE(permutation_test(x, y, "cka", {0, 0}), c10::ValueError,
                          "permutation_test: permutations must be >= 1, but got 0");
  EXPECT_THROWS_WITH(permutation_test(x, y, "nope", {10, 0}),
                     "permutation_test: measure must be one of \"cka\"");
  EXPECT_THROWS_WITH(bootstrap_difference(x, y.narrow(0, 0, 10), y, "cka", o),
                     "bootstrap_difference:");
  EXPECT_THROWS_WITH(parse_interval_method("f", "--ci-method", "normal"),
                     "f: --ci-method must be one of \"percentile\", \"bca\", but got \"normal\"");
  GridOptions fold;
  fold.conv = GridConv::kFold;
  EXPECT_THROWS_WITH(InferenceGridBuilder({"a"}, {}, fold, {10}),
                     "grid inference: conv must be \"flatten\", \"pool\" or \"cls\"");
  GridOptions mb;
  mb.measure = GridMeasure::kMinibatchCka;
  EXPECT_THROWS_WITH(InferenceGridBuilder({"a"}, {}, mb, {10}), "minibatch-cka");
  EXPECT_THROWS_WITH(InferenceGridBuilder({"a"}, {}, GridOptions{}, {0, 0.95}),
                     "grid inference: resamples or permutations must be >= 1");
  // A memory budget the Gram matrices exceed: a clear error, not an allocation failure later.
  GridOptions small;
  small.memory_bytes = 20 * 20 * 8;  // one [20, 20] Gram matrix
  InferenceGridBuilder b({"a", "b"}, {}, small, {10});
  at::Tensor wide = at::randn({20, 30}, at::kDouble);
  b.add("a", wide);
  EXPECT_THROWS_WITH(b.add("b", wide),
                     "grid inference: the layers' resampling state must fit memory_bytes = 3200");
}

// Every cell of a grid equals the pair call on the same seed; symmetric cells mirror; a
// constant layer's cells carry the grid's reason and no interval.
TEST_F(InferenceTest, GridCellsEqualPairCalls) {
  auto [x, y] = related(40, 4, 3, 8);
  at::Tensor z = at::randn({40, 2, 2, 2}, at::kDouble);
  at::Tensor k = at::ones({40, 3}, at::kDouble);
  NamedActivations layers = {{"x", x}, {"y", y}, {"z", z}, {"k", k}};
  for (GridMeasure gm : {GridMeasure::kLinearCka, GridMeasure::kSvcca, GridMeasure::kPwcca}) {
    GridOptions go;
    go.measure = gm;
    SCOPED_TRACE(to_string(gm));
    Grid g = similarity_grid(layers, go);
    GridInferenceOptions io;
    io.resamples = 30;
    io.permutations = 19;
    io.seed = 4;
    add_grid_inference(g, layers, {}, go, io);
    const GridInference& inf = g.inference;
    ASSERT_TRUE(inf.low.defined() && inf.p_value.defined());
    BootstrapOptions bo;
    bo.resamples = 30;
    bo.seed = 4;
    bo.measure_options = go;
    const at::Tensor zf = per_example_features(z, go).reshape({40, -1});
    BootstrapResult r = bootstrap(x, zf, to_string(gm), bo);
    EXPECT_NEAR(inf.low[0][2].item<double>(), r.low, 1e-12);
    EXPECT_NEAR(inf.high[0][2].item<double>(), r.high, 1e-12);
    PermutationResult p = permutation_test(x, zf, to_string(gm), {19, 4, go});
    EXPECT_NEAR(inf.p_value[0][2].item<double>(), p.p_value, 1e-12);
    EXPECT_NEAR(inf.null_mean[0][2].item<double>(), p.null_mean, 1e-12);
    if (gm != GridMeasure::kPwcca) {
      EXPECT_EQ(inf.low[2][0].item<double>(), inf.low[0][2].item<double>());
    }
    EXPECT_TRUE(std::isnan(inf.low[3][0].item<double>()));  // the constant layer
    EXPECT_TRUE(std::isnan(inf.p_value[0][3].item<double>()));
    EXPECT_DOUBLE_EQ(inf.p_value[1][1].item<double>(), 1.0 / 20.0);
  }
}

// Reports: the JSON's inference field, the long CSV, and the heatmaps' marks on uncertain cells
// (interval wider than HeatmapOptions::wide_interval, or p-value above 1 - level).
TEST_F(InferenceTest, ReportsCarryIntervalsAndMarkUncertainCells) {
  auto [x, y] = related(30, 3, 3, 11);
  at::Tensor noise = at::randn({30, 2}, at::kDouble);
  NamedActivations layers = {{"x", x}, {"y", y}, {"noise", noise}};
  Grid g = similarity_grid(layers);
  GridInferenceOptions io;
  io.resamples = 40;
  io.permutations = 19;
  add_grid_inference(g, layers, {}, GridOptions{}, io);
  const nlohmann::json j = grid_to_json(g);
  ASSERT_TRUE(j.contains("inference"));
  EXPECT_EQ(j["inference"]["resamples"], 40);
  EXPECT_EQ(j["inference"]["low"].size(), 3u);
  EXPECT_DOUBLE_EQ(j["inference"]["p_value"][0][2].get<double>(),
                   g.inference.p_value[0][2].item<double>());
  const std::string csv = grid_cells_csv(g);
  EXPECT_EQ(csv.rfind("layer,layer,value,low,high,standard_error,invalid,p_value,null_mean\r\n", 0),
            0u)
      << csv.substr(0, 80);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 1 + 9);
  HeatmapOptions ho;
  const std::vector<bool> u = detail::uncertain_cells(g, ho);
  const auto marked = std::count(u.begin(), u.end(), true);
  EXPECT_GT(marked, 0);  // the noise layer's cells: p-values far above 0.05
  EXPECT_LT(marked, 9);  // the diagonal: interval [1, 1], p = 1 / 20
  const std::string svg = heatmap_svg(g, ho);
  size_t circles = 0;
  for (size_t at = svg.find("<circle"); at != std::string::npos; at = svg.find("<circle", at + 1))
    ++circles;
  EXPECT_EQ(static_cast<int64_t>(circles), marked);
  EXPECT_NE(svg.find("o: CI wider than 0.1 or p &gt; 0.05"), std::string::npos);
  // Nothing changes without inference.
  Grid plain = similarity_grid(layers);
  EXPECT_FALSE(grid_to_json(plain).contains("inference"));
  EXPECT_EQ(heatmap_svg(plain, ho).find("<circle"), std::string::npos);
  // A malformed inference tensor is an error naming it.
  g.inference.low = at::zeros({2, 2}, at::kDouble);
  EXPECT_THROWS_WITH(grid_to_json(g), "grid_to_json: grid.inference.low must be [3, 3]");
}

// The ops (torch_ext/inference_ops.cpp) through the dispatcher equal the direct calls (the
// dispatcher_test pattern; kept here with the other inference tests).
TEST_F(InferenceTest, OpsThroughTheDispatcherEqualDirectCalls) {
  auto [x, y] = related(40, 4, 3, 10);
  auto find = [](const char* name) {
    return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
  };
  using BootSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, int64_t>(
      const at::Tensor&, const at::Tensor&, c10::string_view, int64_t, double, int64_t,
      c10::string_view, double, c10::optional<int64_t>, double, c10::optional<double>, int64_t,
      bool);
  auto b =
      find("svcca::bootstrap")
          .typed<BootSig>()
          .call(x, y, "svcca", 25, 0.9, 3, "bca", 0.99, c10::nullopt, 0.0, c10::nullopt, 2, false);
  BootstrapOptions o;
  o.resamples = 25;
  o.level = 0.9;
  o.seed = 3;
  o.method = IntervalMethod::kBca;
  o.workers = 1;  // the op ran 2 workers: the same numbers
  BootstrapResult d = bootstrap(x, y, "svcca", o);
  // Equal to rounding: a worker's BLAS calls run single-threaded.
  EXPECT_NEAR(std::get<1>(b).item<double>(), d.low, 1e-10);
  EXPECT_NEAR(std::get<2>(b).item<double>(), d.high, 1e-10);
  EXPECT_ALLCLOSE(std::get<4>(b), d.resamples, tol::kDecomp64);
  using PermSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, int64_t>(
      const at::Tensor&, const at::Tensor&, c10::string_view, int64_t, int64_t, double,
      c10::optional<int64_t>, double, c10::optional<double>, int64_t, bool);
  auto p = find("svcca::permutation_test")
               .typed<PermSig>()
               .call(x, y, "cca", 30, 2, 0.99, c10::nullopt, 0.0, c10::nullopt, 3, false);
  PermutationResult pd = permutation_test(x, y, "cca", {30, 2});
  EXPECT_EQ(std::get<1>(p).item<double>(), pd.p_value);
  EXPECT_ALLCLOSE(std::get<3>(p), pd.null, tol::kDecomp64);
}

}  // namespace
}  // namespace svcca
