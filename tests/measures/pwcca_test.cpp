// Tests of svcca::pwcca: closed forms, asymmetry, and agreement with the reference formula.
#include "svcca/measures/pwcca.h"

#include "support/support.h"
#include "svcca/compat/compat.h"

namespace svcca {
namespace {

using testing::MatrixTest;

class PwccaTest : public MatrixTest {};

TEST_P(PwccaTest, LinearMapGivesOne) {
  at::Tensor x = at::randn({300, 5}, opts());
  at::Tensor y = at::mm(x, testing::well_conditioned(5, opts())) - 1.0;
  for (auto w : {PwccaWeighting::kReference, PwccaWeighting::kCanonicalVariates}) {
    PwccaOptions o;
    o.weighting = w;
    EXPECT_NEAR(pwcca(in(x), in(y), o).score.item<double>(), 1.0, tol().rtol * 10);
  }
}

TEST_P(PwccaTest, EqualCorrelationsGiveThatCorrelation) {
  // Y = rho Z + sqrt(1 - rho^2) V with Z, V whitened and orthogonal: every correlation is rho.
  const double rho = 0.6;
  at::Tensor w = testing::whitened_columns(200, 8, opts());
  at::Tensor x = w.narrow(1, 0, 4);
  at::Tensor y = rho * x + std::sqrt(1 - rho * rho) * w.narrow(1, 4, 4);
  for (auto wt : {PwccaWeighting::kReference, PwccaWeighting::kCanonicalVariates}) {
    PwccaOptions o;
    o.weighting = wt;
    auto r = pwcca(in(x), in(y), o);
    EXPECT_ALLCLOSE(r.correlations, in(at::full({4}, rho, opts())), tol());
    EXPECT_NEAR(r.score.item<double>(), rho, tol().rtol * 10);
  }
}

TEST_P(PwccaTest, WeightsAreAProbabilityVector) {
  at::Tensor x = at::randn({300, 6}, opts());
  at::Tensor y = x.narrow(1, 0, 4) + at::randn({300, 4}, opts());
  auto r = pwcca(in(x), in(y));
  EXPECT_GE(r.weights.min().item<double>(), 0.0);
  EXPECT_NEAR(r.weights.sum().item<double>(), 1.0, tol().rtol * 10);
  EXPECT_NEAR(r.score.item<double>(), (r.weights * r.correlations).sum().item<double>(), 1e-6);
  EXPECT_TRUE(r.weights_from_y);  // y has fewer directions
  EXPECT_EQ(r.weights.numel(), 4);
}

TEST_P(PwccaTest, IsNotSymmetricOnPurpose) {
  at::Tensor x = at::randn({300, 5}, opts()).exp();
  at::Tensor y = at::mm(x, at::randn({5, 5}, opts())) + 2.0 * at::randn({300, 5}, opts());
  for (auto w : {PwccaWeighting::kReference, PwccaWeighting::kCanonicalVariates}) {
    PwccaOptions o;
    o.weighting = w;
    const double xy = pwcca(in(x), in(y), o).score.item<double>();
    const double yx = pwcca(in(y), in(x), o).score.item<double>();
    EXPECT_GT(std::abs(xy - yx), 1e-4) << "pwcca(x, y) = " << xy << ", pwcca(y, x) = " << yx;
  }
}

TEST_P(PwccaTest, ReferenceWeightingMatchesCompatComputePwccaInBothBranches) {
  if (GetParam().dtype != at::kDouble) GTEST_SKIP() << "the compat layer is float64 only";
  at::Tensor x = at::randn({500, 7}, opts()).abs() + 0.3;
  at::Tensor y = at::mm(x, at::randn({7, 5}, opts())) + 0.7 * at::randn({500, 5}, opts());
  // acts1 keeps fewer neurons (the reference's normal branch), then more (its buggy branch,
  // which compat fixes to use acts2 as intended): the modern op must agree with both.
  for (bool swap : {false, true}) {
    const at::Tensor& a = swap ? x : y;
    const at::Tensor& b = swap ? y : x;
    auto ref = compat::compute_pwcca(a.t(), b.t(), 0.0);
    auto r = pwcca(a, b);
    EXPECT_ALLCLOSE(r.score, std::get<0>(ref), tol());
    EXPECT_ALLCLOSE(r.weights, std::get<1>(ref), tol());
    EXPECT_ALLCLOSE(r.correlations, std::get<2>(ref), tol());
  }
}

INSTANTIATE_TEST_SUITE_P(Matrix, PwccaTest, ::testing::ValuesIn(testing::dtype_device_matrix()),
                         testing::dtype_device_name);

}  // namespace
}  // namespace svcca
