// Regression tests for the numerics hardening (issue 12): scale invariance at the extremes of
// float64 and float32, refused forced correlations, the calibrated float32 rounding floor, and
// clear errors instead of NaN in the compat and Fourier entry points.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "support/support.h"
#include "svcca/grid/grid.h"
#include "svcca/svcca.h"

namespace svcca {
namespace {

namespace tol = testing::tol;

const auto kF64 = at::TensorOptions().dtype(at::kDouble);

struct Pair {
  at::Tensor x, y;
};

// x: [n, p1] and y = x A + noise: every measure is well inside (0, 1).
Pair related_pair(int64_t n, int64_t p1, int64_t p2) {
  at::Tensor x = at::randn({n, p1}, kF64);
  at::Tensor y = at::mm(x, at::randn({p1, p2}, kF64)) + at::randn({n, p2}, kF64);
  return {x, y};
}

// Every scale-invariant measure of (x * s, y) equals that of (x, y), for s from 1e-200 to 1e200
// (before: 0 at 1e80, inf at 1e-120, NaN at 1e-200 for linear CKA; NaN for Procrustes).
class ScaleInvarianceTest : public testing::SeedingFixture,
                            public ::testing::WithParamInterface<double> {};

TEST_P(ScaleInvarianceTest, EveryMeasureIgnoresTheScaleOfALayer) {
  const double s = GetParam();
  auto [x, y] = related_pair(120, 10, 8);
  at::Tensor xs = x * s;
  ASSERT_TRUE(at::isfinite(xs).all().item<bool>());
  EXPECT_ALLCLOSE(linear_cka(xs, y), linear_cka(x, y), tol::kDecomp64);
  LinearCkaOptions deb;
  deb.debiased = true;
  EXPECT_ALLCLOSE(linear_cka(xs, y, deb), linear_cka(x, y, deb), tol::kDecomp64);
  LinearCkaOptions gram;
  gram.form = CkaForm::kGram;
  EXPECT_ALLCLOSE(linear_cka(xs, y, gram), linear_cka(x, y), tol::kDecomp64);
  EXPECT_ALLCLOSE(rbf_cka(xs, y), rbf_cka(x, y), tol::kDecomp64);
  EXPECT_ALLCLOSE(procrustes(xs, y), procrustes(x, y), tol::kDecomp64);
  EXPECT_ALLCLOSE(cca(xs, y).correlations, cca(x, y).correlations, tol::kDecomp64);
  EXPECT_ALLCLOSE(svcca::svcca(xs, y).score, svcca::svcca(x, y).score, tol::kDecomp64);
  EXPECT_ALLCLOSE(pwcca(xs, y).score, pwcca(x, y).score, tol::kDecomp64);
  // The canonical weights are in data units: the variates are the same.
  auto r = cca(xs, y);
  auto r1 = cca(x, y);
  EXPECT_ALLCLOSE(at::mm(xs - xs.mean(0), r.x_weights), at::mm(x - x.mean(0), r1.x_weights),
                  tol::kDecomp64);
  // Wide layers (p > n) take the Gram route.
  auto [wx, wy] = related_pair(40, 60, 50);
  EXPECT_ALLCLOSE(linear_cka(wx * s, wy), linear_cka(wx, wy), tol::kDecomp64);
  EXPECT_ALLCLOSE(rbf_cka(wx * s, wy), rbf_cka(wx, wy), tol::kDecomp64);
  SvccaOptions few;
  few.dims = 10;
  EXPECT_ALLCLOSE(svcca::svcca(wx * s, wy, few).score, svcca::svcca(wx, wy, few).score,
                  tol::kDecomp64);
}

INSTANTIATE_TEST_SUITE_P(Extremes, ScaleInvarianceTest,
                         ::testing::Values(1e-200, 1e-120, 1e-30, 1e30, 1e80, 1e200));

// minibatch-cka adds batches at their true relative scale: a layer at 1e200 (or 1e-200) gives
// the grid of the unscaled layers (its Gram products overflowed to inf before).
TEST(ScaleInvarianceStreamTest, MinibatchCkaOfExtremeLayers) {
  at::manual_seed(0);
  auto [x, y] = related_pair(96, 7, 5);
  auto run = [&](double s) {
    GridOptions o;
    o.measure = GridMeasure::kMinibatchCka;
    GridAccumulator acc({"x", "y"}, {}, o);
    for (int64_t b = 0; b < 96; b += 32) {
      acc.update({{"x", x.narrow(0, b, 32) * s}, {"y", y.narrow(0, b, 32)}});
    }
    return acc.result().values;
  };
  const at::Tensor base = run(1.0);
  ASSERT_TRUE(at::isfinite(base).all().item<bool>());
  for (double s : {1e-200, 1e200}) {
    SCOPED_TRACE(s);
    EXPECT_ALLCLOSE(run(s), base, tol::kDecomp64);
  }
}

// float32 computed in float32 (precision "input"): 1e10 and 1e-12 broke linear CKA (x^T x
// overflows float32's 3.4e38, or underflows).
TEST(ScaleInvarianceFloat32Test, InputPrecisionSurvivesTheFloat32Range) {
  at::manual_seed(0);
  auto [x, y] = related_pair(200, 6, 5);
  at::Tensor x32 = x.to(at::kFloat);
  at::Tensor y32 = y.to(at::kFloat);
  LinearCkaOptions in;
  in.precision = Precision::kInput;
  CcaOptions cin;
  cin.precision = Precision::kInput;
  const at::Tensor cka1 = linear_cka(x32, y32, in);
  const at::Tensor cca1 = cca(x32, y32, cin).correlations;
  for (double s : {1e-30, 1e-12, 1e10, 1e20, 1e30}) {
    SCOPED_TRACE(s);
    at::Tensor xs = x32 * s;
    ASSERT_TRUE(at::isfinite(xs).all().item<bool>());
    EXPECT_ALLCLOSE(linear_cka(xs, y32, in), cka1, tol::kFloat32);
    EXPECT_ALLCLOSE(cca(xs, y32, cin).correlations, cca1, tol::kFloat32);
    EXPECT_ALLCLOSE(procrustes(xs, y32, {Precision::kInput}),
                    procrustes(x32, y32, {Precision::kInput}), tol::kFloat32);
  }
}

// An absolute RBF sigma far below the distances: the kernel is the identity (its limit), not
// NaN from 0 / 0 on the diagonal.
TEST(RbfLimitTest, TinySigmaGivesTheIdentityKernelsLimit) {
  at::manual_seed(0);
  auto [x, y] = related_pair(50, 4, 3);
  RbfCkaOptions o;
  o.sigma = 1e-300;
  at::Tensor v = rbf_cka(x, y, o);
  EXPECT_TRUE(std::isfinite(v.item<double>()));
  // Both kernels are I: their CKA is 1.
  EXPECT_ALLCLOSE(v, at::ones({}, kF64), tol::kClosedForm64);
}

// With rx + ry > n - 1 the spans intersect: independent noise gave a mean correlation of 0.814
// (cca, 200 x 150 each) and SVCCA 1.0 at n = 10, p = 30. Refused by default, naming the counts.
TEST(ForcedCorrelationTest, PairsWhoseSpansMustIntersectAreRefused) {
  at::manual_seed(0);
  at::Tensor x = at::randn({200, 150}, kF64);
  at::Tensor y = at::randn({200, 150}, kF64);
  EXPECT_THROWS_WITH_TYPE(cca(x, y), c10::ValueError, "x keeps 150 directions and y keeps 150");
  EXPECT_THROWS_WITH(cca(x, y), "n = 200");
  EXPECT_THROWS_WITH(cca(x, y), "at least 101 canonical correlations would be 1");
  EXPECT_THROWS_WITH(pwcca(x, y), "rx + ry = 300 > n - 1");
  EXPECT_THROWS_WITH(svcca::svcca(at::randn({10, 30}, kF64), at::randn({10, 30}, kF64)),
                     "fewer SVCCA directions");
  EXPECT_THROWS_WITH(svcca::svcca(at::randn({100, 200}, kF64), at::randn({100, 200}, kF64)),
                     "n = 100");

  // The expert override computes it, and shows why it is refused: >= 101 correlations of 1.
  CcaOptions allow;
  allow.allow_forced_correlations = true;
  auto r = cca(x, y, allow);
  EXPECT_GE((r.correlations > 1.0 - 1e-8).sum().item<int64_t>(), 101);

  // At the boundary rx + ry = n - 1 it is allowed, and independent noise stays well below 1.
  at::Tensor a = at::randn({201, 100}, kF64);
  at::Tensor b = at::randn({201, 100}, kF64);
  EXPECT_LT(cca(a, b).correlations.max().item<double>(), 1.0 - 1e-6);

  // SVCCA with few enough directions is fine where the full CCA is refused.
  SvccaOptions few;
  few.dims = 20;
  EXPECT_LT(svcca::svcca(x, y, few).score.item<double>(), 0.9);
}

TEST(ForcedCorrelationTest, GridCellsAreUndefinedWithTheReason) {
  at::manual_seed(0);
  NamedActivations layers = {{"a", at::randn({100, 60}, kF64)},
                             {"b", at::randn({100, 60}, kF64)},
                             {"c", at::randn({100, 5}, kF64)}};
  GridOptions o;
  o.measure = GridMeasure::kCca;
  Grid g = similarity_grid(layers, o);
  // 60 + 60 > 99: undefined (the diagonal of a 60-feature layer too); 60 + 5 and 5 + 5 are fine.
  EXPECT_TRUE(std::isnan(g.values[0][1].item<double>()));
  EXPECT_TRUE(std::isfinite(g.values[0][2].item<double>()));
  ASSERT_FALSE(g.undefined.empty());
  bool named = false;
  for (const auto& u : g.undefined)
    named = named || u.reason.find("keeps 60 directions") != std::string::npos;
  EXPECT_TRUE(named);
}

// float32 activations whose small directions are real (variance 1e-11 of features near 1, far
// above float32 rounding at 3e-16 but below the old (p eps)^2 max E[x^2] = 2e-10 rule): the
// default rank rule keeps them, and the float32 CCA equals the float64 CCA of the same numbers.
TEST(Float32FloorTest, RealSmallDirectionsAreKept) {
  at::manual_seed(0);
  const int64_t n = 4000, p = 64;
  at::Tensor scales = at::ones({p}, kF64);
  scales.narrow(0, p - 8, 8).fill_(3e-6);
  at::Tensor z = at::randn({n, p}, kF64);
  at::Tensor x64 = at::mm(z * scales, std::get<0>(at::linalg_qr(at::randn({p, p}, kF64)))) + 1.0;
  at::Tensor x32 = x64.to(at::kFloat);
  // y sees the small directions only.
  at::Tensor y = z.narrow(1, p - 8, 8) + 0.5 * at::randn({n, 8}, kF64);
  at::Tensor y32 = y.to(at::kFloat);
  auto r32 = cca(x32, y32);
  auto r64 = cca(x32.to(at::kDouble), y32.to(at::kDouble));
  EXPECT_EQ(r32.x_rank, p);
  EXPECT_ALLCLOSE(r32.correlations, r64.correlations.to(at::kFloat), tol::kFloat32);
  // The correlations are real: about 1 / sqrt(1 + 0.25).
  EXPECT_GT(r32.correlations.min().item<float>(), 0.8f);
}

// The other side: an exactly rank-deficient float32 layer still has its float64 rank (its
// rounding is not a direction), in a wide layer too.
TEST(Float32FloorTest, RoundingOfADependentFeatureIsNotADirection) {
  at::manual_seed(0);
  at::Tensor z = at::randn({3000, 6}, kF64).to(at::kFloat);
  at::Tensor x32 = at::cat({z, at::mm(z, at::randn({6, 10}, at::kFloat))}, 1) + 50.0f;
  auto self = cca(x32, x32);
  EXPECT_EQ(self.x_rank, 6);
  EXPECT_ALLCLOSE(self.correlations, at::ones({6}, at::kFloat), tol::kFloat32);
  // Wide (p > n): the Gram side.
  at::Tensor zw = at::randn({40, 5}, kF64).to(at::kFloat);
  at::Tensor w32 = at::mm(zw, at::randn({5, 300}, at::kFloat)) + 20.0f;
  SvccaOptions all;
  all.fraction = 1.0;
  EXPECT_EQ(svcca::svcca(w32, w32, all).x_dims, 5);
}

// ---- clear errors instead of NaN ------------------------------------------------------------

TEST(CompatNanTest, ZeroPwccaWeightsAreAnError) {
  // x alternates 0, 1 and y = 1 - x: the reference's weights are 0 / 0.
  at::Tensor x = at::arange(1000, kF64).remainder(2).unsqueeze(0);
  at::Tensor y = 1.0 - x;
  EXPECT_THROWS_WITH_TYPE(compat::compute_pwcca(x, y), c10::ValueError,
                          "PWCCA weights of acts1 are all 0");
  // The native pwcca decomposes in eigen-coordinates (other signs): y = 1 - x has PWCCA 1.
  EXPECT_ALLCLOSE(pwcca(x.t(), y.t()).score, at::ones({}, kF64), tol::kClosedForm64);
}

TEST(CompatNanTest, ConstantNeuronsAreRefusedExactly) {
  at::manual_seed(0);
  // 5 neurons, each constant over 50 datapoints: their centered values are rounding only.
  at::Tensor c = at::randn({5, 1}, kF64).expand({5, 50}).contiguous();
  EXPECT_THROWS_WITH_TYPE(compat::get_cca_similarity(c, at::randn({5, 50}, kF64)), c10::ValueError,
                          "all 5 neurons are constant");
  EXPECT_THROWS_WITH(compat::get_cca_similarity(at::randn({5, 50}, kF64), c),
                     "acts2 must have at least one non-constant neuron");
}

TEST(FourierNanTest, DegenerateInputsAreErrorsAndExtremeScalesAreFine) {
  at::manual_seed(0);
  EXPECT_THROWS_WITH_TYPE(
      fourier_cca(at::randn({50, 4, 1, 1}, kF64), at::randn({50, 4, 1, 1}, kF64)), c10::ValueError,
      "only the DC frequency");
  at::Tensor a = at::randn({60, 3, 4, 4}, kF64);
  at::Tensor b = at::randn({60, 3, 4, 4}, kF64) + 0.5 * a;
  FourierCcaOptions cut;
  cut.variance_cutoff = 1.0;
  EXPECT_THROWS_WITH_TYPE(fourier_cca(a, b, cut), c10::ValueError,
                          "no channel direction is left at any frequency");
  auto r = fourier_cca(a, b);
  for (double s : {1e-200, 1e200}) {
    SCOPED_TRACE(s);
    auto rs = fourier_cca(a * s, b);
    EXPECT_ALLCLOSE(rs.mean, r.mean, tol::kDecomp64);
    EXPECT_ALLCLOSE(rs.mean_without_dc, r.mean_without_dc, tol::kDecomp64);
  }
}

}  // namespace
}  // namespace svcca
