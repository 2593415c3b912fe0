// Tests of svcca::cca: closed forms first, then invariances, over the dtype x device matrix.
#include "svcca/measures/cca.h"
#include "svcca/measures/pwcca.h"
#include "svcca/measures/svcca.h"

#include "support/support.h"

namespace svcca {
namespace {

using testing::AllClose;
using testing::MatrixTest;

class CcaTest : public MatrixTest {};

TEST_P(CcaTest, OneFeatureEachGivesAbsolutePearson) {
  at::Tensor x = at::randn({300, 1}, opts());
  at::Tensor y = -0.6 * x + 0.8 * at::randn({300, 1}, opts());
  auto r = cca(in(x), in(y));
  const double expected = std::abs(testing::pearson(in(x), in(y)));
  EXPECT_ALLCLOSE(r.correlations, at::full({1}, expected, opts().dtype(GetParam().dtype)),
                  tol(/*closed_form=*/true));
}

TEST_P(CcaTest, InvertibleMapGivesAllOnes) {
  at::Tensor x = at::randn({200, 6}, opts());
  at::Tensor y = at::mm(x, testing::well_conditioned(6, opts())) + 3.0;
  auto r = cca(in(x), in(y));
  EXPECT_ALLCLOSE(r.correlations, at::ones({6}, opts().dtype(GetParam().dtype)), tol());
}

TEST_P(CcaTest, SharedSubspaceGivesExactlyKOnesThenZeros) {
  // X = [Z, U], Y = [Z, V] with mutually orthogonal centered columns.
  at::Tensor w = testing::whitened_columns(120, 3 + 4 + 5, opts());
  at::Tensor x = at::cat({w.narrow(1, 0, 3), w.narrow(1, 3, 4)}, 1);
  at::Tensor y = at::cat({w.narrow(1, 0, 3), w.narrow(1, 7, 5)}, 1);
  auto r = cca(in(x), in(y));
  at::Tensor expected = at::cat({at::ones({3}, opts()), at::zeros({4}, opts())});
  EXPECT_ALLCLOSE(r.correlations, in(expected), tol());
}

TEST_P(CcaTest, CanonicalVariatesAreWhitenedAndCorrelateByRho) {
  at::Tensor x = at::randn({400, 5}, opts());
  at::Tensor y = at::mm(x.narrow(1, 0, 3), at::randn({3, 4}, opts())) + at::randn({400, 4}, opts());
  auto r = cca(in(x), in(y));
  at::Tensor xc = x - x.mean(0);
  at::Tensor yc = y - y.mean(0);
  at::Tensor hx = at::mm(xc, r.x_weights.to(at::kDouble));
  at::Tensor hy = at::mm(yc, r.y_weights.to(at::kDouble));
  const int64_t k = r.correlations.numel();
  ASSERT_EQ(k, 4);
  at::Tensor eye = at::eye(k, opts());
  // float32 weights are rounded once: compare in the input-dtype tolerance.
  EXPECT_ALLCLOSE(at::mm(hx.t(), hx) / 399.0, eye, tol());
  EXPECT_ALLCLOSE(at::mm(hy.t(), hy) / 399.0, eye, tol());
  EXPECT_ALLCLOSE(at::mm(hx.t(), hy) / 399.0, at::diag(r.correlations.to(at::kDouble)), tol());
}

TEST_P(CcaTest, InvariantToInvertibleMapsScalingAndTranslation) {
  at::Tensor x = at::randn({250, 4}, opts());
  at::Tensor y = 0.5 * x.narrow(1, 0, 3) + at::randn({250, 3}, opts());
  auto base = cca(in(x), in(y));
  at::Tensor a = testing::well_conditioned(4, opts());
  EXPECT_ALLCLOSE(cca(in(at::mm(x, a) - 7.0), in(y)).correlations, base.correlations, tol());
  EXPECT_ALLCLOSE(cca(in(x * 1e3), in(y * 1e-3 + 5.0)).correlations, base.correlations, tol());
  EXPECT_ALLCLOSE(cca(in(y), in(x)).correlations, base.correlations, tol());
}

TEST_P(CcaTest, RankDeficientInputIsExactOverItsRank) {
  // x has 6 features spanning 3 directions: the CCA is that of its 3-D span.
  at::Tensor z = at::randn({300, 3}, opts());
  at::Tensor x = at::cat({z, at::mm(z, at::randn({3, 3}, opts()))}, 1);
  at::Tensor y = at::mm(z, at::randn({3, 4}, opts())) + at::randn({300, 4}, opts());
  auto r = cca(in(x), in(y));
  EXPECT_EQ(r.x_rank, 3);
  EXPECT_ALLCLOSE(r.correlations, cca(in(z), in(y)).correlations, tol());
}

TEST_P(CcaTest, ConstantFeaturesAreDroppedWithZeroWeights) {
  at::Tensor x = at::randn({200, 4}, opts());
  at::Tensor y = x.narrow(1, 0, 2) + at::randn({200, 2}, opts());
  at::Tensor x_const =
      at::cat({x.narrow(1, 0, 2), at::full({200, 1}, 0.1, opts()), x.narrow(1, 2, 2)}, 1);
  auto r = cca(in(x_const), in(y));
  EXPECT_ALLCLOSE(r.correlations, cca(in(x), in(y)).correlations, tol());
  EXPECT_FALSE(r.x_mask[2].item<bool>());
  EXPECT_EQ(r.x_mask.sum().item<int64_t>(), 4);
  EXPECT_EQ(r.x_weights[2].abs().max().item<double>(), 0.0);
}

TEST_P(CcaTest, VarianceCutoffIsRelativeToLargestVariance) {
  at::Tensor x = at::randn({200, 3}, opts()) * at::tensor({1.0, 1e-3, 1.0}, opts());
  at::Tensor y = x + at::randn({200, 3}, opts());
  CcaOptions o;
  o.variance_cutoff = 1e-5;  // variance 1e-6 relative: dropped
  auto r = cca(in(x), in(y), o);
  EXPECT_FALSE(r.x_mask[1].item<bool>());
  EXPECT_EQ(r.x_rank, 2);
  o.variance_cutoff = 1e-7;  // kept
  EXPECT_EQ(cca(in(x), in(y), o).x_rank, 3);
}

TEST_P(CcaTest, ResultsComeBackInInputDtypeOnInputDevice) {
  at::Tensor x = in(at::randn({50, 3}, opts()));
  at::Tensor y = in(at::randn({50, 2}, opts()));
  auto r = cca(x, y);
  for (const at::Tensor& t : {r.correlations, r.x_weights, r.y_weights}) {
    EXPECT_EQ(t.scalar_type(), GetParam().dtype);
    EXPECT_EQ(t.device().type(), GetParam().device);
  }
  EXPECT_EQ(r.x_mask.scalar_type(), at::kBool);
  EXPECT_EQ(r.x_weights.sizes(), (at::IntArrayRef{3, 2}));
}

TEST_P(CcaTest, InputPrecisionStaysCloseToFloat64) {
  at::Tensor x = at::randn({300, 5}, opts());
  at::Tensor y = x.narrow(1, 0, 4) + at::randn({300, 4}, opts());
  CcaOptions o;
  o.precision = Precision::kInput;
  auto r = cca(in(x), in(y), o);
  EXPECT_ALLCLOSE(r.correlations, in(cca(x, y).correlations), tol());
}

TEST_P(CcaTest, SummariesFollowTheirDefinitions) {
  at::Tensor rho = in(at::tensor({0.9, 0.5, 0.3, 0.1}, opts()));
  EXPECT_NEAR(mean_correlation(rho).item<double>(), 0.45, 1e-6);
  EXPECT_NEAR(mean_squared_correlation(rho).item<double>(), (0.81 + 0.25 + 0.09 + 0.01) / 4, 1e-6);
  EXPECT_NEAR(top_k_mean(rho, 2).item<double>(), 0.7, 1e-6);
  EXPECT_NEAR(top_k_mean(rho, 10).item<double>(), 0.45, 1e-6);
  // prefix sums 0, .9, 1.4, 1.7 of total 1.8: 0.75 reached first at i = 2 (1.4/1.8 = .78).
  EXPECT_NEAR(threshold_mean(rho, 0.75).item<double>(), 0.7, 1e-6);
  EXPECT_NEAR(threshold_mean(rho, 1.0).item<double>(), 0.45, 1e-6);
}

// float32 values carry 24 bits: x = 100 + [z, z A] built in float32 spans 4 directions plus the
// rounding of its values (about 1e-11 of its largest variance here, far above p * eps64). The
// default rank rule drops what is below the rounding level of the input dtype, so the float32
// layer has the float64 layer's rank and its CCA with itself is exactly 1 (before the floor it
// kept 8 directions and gave 0.99983). An explicit rank_rtol is used as given.
TEST(CcaRoundingTest, Float32RoundingNoiseIsNotADirection) {
  at::manual_seed(0);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  at::Tensor z = at::randn({2000, 4}, f64);
  at::Tensor a = at::randn({4, 4}, f64);
  at::Tensor x64 = at::cat({z, at::mm(z, a)}, 1) + 100.0;
  at::Tensor z32 = z.to(at::kFloat);
  at::Tensor x32 = at::cat({z32, at::mm(z32, a.to(at::kFloat))}, 1) + 100.0;
  at::Tensor y = at::mm(z, at::randn({4, 3}, f64)) + at::randn({2000, 3}, f64);

  auto self64 = cca(x64, x64);
  auto self32 = cca(x32, x32);
  EXPECT_EQ(self64.x_rank, 4);
  EXPECT_EQ(self32.x_rank, 4);
  EXPECT_ALLCLOSE(self32.correlations, at::ones({4}, at::kFloat), testing::tol::kFloat32);
  // Against another layer: the float32 layer's CCA is the float64 one's, direction for direction.
  EXPECT_ALLCLOSE(cca(x32, y.to(at::kFloat)).correlations, cca(x64, y).correlations.to(at::kFloat),
                  testing::tol::kFloat32);
  // SVCCA (99% of the variance) and PWCCA go through the same factors.
  EXPECT_ALLCLOSE(pwcca(x32, x32).score, at::ones({}, at::kFloat), testing::tol::kFloat32);

  CcaOptions explicit_rtol;
  explicit_rtol.rank_rtol = 1e-15;
  EXPECT_EQ(cca(x32, x32, explicit_rtol).x_rank, 8);
  EXPECT_EQ(cca(x64, x64, explicit_rtol).x_rank, 4);

  // A layer whose whole variation is a few float32 steps (6e-5 apart at 1000) is rounding noise:
  // a clear error, not a CCA of noise.
  at::Tensor flat =
      (at::full({300, 3}, 1000.0, f64) + 1e-4 * at::randn({300, 3}, f64)).to(at::kFloat);
  EXPECT_THROWS_WITH_TYPE(cca(flat, y.narrow(0, 0, 300).to(at::kFloat)), c10::ValueError,
                          "x must have a covariance of rank >= 1");
  EXPECT_THROWS_WITH(cca(flat, y.narrow(0, 0, 300).to(at::kFloat)), "rounding level");
}

// x3 = x0 + x1 + 1e-6 noise: the kept eigenvalues of x span 1e12, so whitening from the
// covariance alone is accurate to about eps * 1e12 = 2e-4 in the small direction (the layer's
// CCA with itself came out 0.9973). Such layers are re-orthonormalized against their data: the
// correlations match a QR-based CCA of the data to float64 decomposition accuracy, and the
// canonical variates are white.
TEST(CcaConditioningTest, IllConditionedLayerIsRefinedAgainstItsData) {
  at::manual_seed(0);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  at::Tensor x = at::mm(at::randn({1000, 4}, f64), at::randn({4, 4}, f64));
  x.select(1, 3).copy_(x.select(1, 0) + x.select(1, 1) + 1e-6 * at::randn({1000}, f64));
  at::Tensor y = x.narrow(1, 2, 2) + at::randn({1000, 2}, f64);
  y = at::cat({y, x.select(1, 3).unsqueeze(1) - x.select(1, 0).unsqueeze(1) -
                      x.select(1, 1).unsqueeze(1) + 1e-6 * at::randn({1000, 1}, f64)},
              1);
  auto self = cca(x, x);
  ASSERT_EQ(self.x_rank, 4);
  EXPECT_TRUE(detail::ill_conditioned(
      detail::factor_pair("test", detail::pair_moments(x, x, Precision::kFloat64), {}).x));
  EXPECT_ALLCLOSE(self.correlations, at::ones({4}, f64), testing::tol::kDecomp64);

  // Reference: the singular values of Qx^T Qy, Q from the QR of the centered data.
  auto q = [](const at::Tensor& a) { return std::get<0>(at::linalg_qr(a - a.mean(0), "reduced")); };
  at::Tensor expected = at::linalg_svdvals(at::mm(q(x).t(), q(y)));
  auto r = cca(x, y);
  EXPECT_ALLCLOSE(r.correlations, expected, testing::tol::kDecomp64);
  at::Tensor hx = at::mm(x - x.mean(0), r.x_weights);
  at::Tensor hy = at::mm(y - y.mean(0), r.y_weights);
  EXPECT_ALLCLOSE(at::mm(hx.t(), hx) / 999.0, at::eye(3, f64), testing::tol::kIllConditioned64);
  EXPECT_ALLCLOSE(at::mm(hx.t(), hy) / 999.0, at::diag(r.correlations),
                  testing::tol::kIllConditioned64);
  SvccaOptions all;
  all.fraction = 1.0;
  EXPECT_ALLCLOSE(svcca(x, x, all).score, at::ones({}, f64), testing::tol::kDecomp64);
  // With a ridge the whitening is regularized on purpose and left alone: the CCA of x with
  // itself is lambda / (lambda + epsilon * largest variance) per eigen-direction.
  CcaOptions ridge;
  ridge.epsilon = 1e-3;
  at::Tensor cov = at::cov(x.t());
  at::Tensor lam = std::get<0>(at::linalg_eigh(cov)).flip(0);
  at::Tensor shrunk = lam / (lam + 1e-3 * cov.diagonal().max());
  EXPECT_ALLCLOSE(cca(x, x, ridge).correlations, shrunk, testing::tol::kDecomp64);
}

INSTANTIATE_TEST_SUITE_P(Matrix, CcaTest, ::testing::ValuesIn(testing::dtype_device_matrix()),
                         testing::dtype_device_name);

}  // namespace
}  // namespace svcca
