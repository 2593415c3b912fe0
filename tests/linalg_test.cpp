// Tests of the shared numerics: centering, covariance and per-layer factors.
#include "svcca/linalg.h"

#include "support/support.h"

namespace svcca {
namespace {

using namespace svcca::detail;

class LinalgTest : public testing::SeedingFixture {};

TEST_F(LinalgTest, CovarianceMatchesDefinition) {
  at::Tensor x = at::randn({40, 3}, at::kDouble) + 5.0;
  auto c = center(x, at::kDouble);
  EXPECT_ALLCLOSE(c.mean, x.mean(0), testing::tol::kClosedForm64);
  at::Tensor expected = at::cov(x.t());
  EXPECT_ALLCLOSE(cross_covariance(c.data, c.data), expected, testing::tol::kClosedForm64);
}

TEST_F(LinalgTest, BlockedCovarianceEqualsTheFullProduct) {
  // Sizes below, at and above the blocking threshold, with a ragged last block.
  for (int64_t p : {5, 127, 128, 300, 1029}) {
    at::Tensor x = at::randn({200, p}, at::kDouble);
    auto c = center(x, at::kDouble);
    at::Tensor cov = covariance(c.data);
    EXPECT_ALLCLOSE(cov, cross_covariance(c.data, c.data), testing::tol::kClosedForm64) << p;
  }
}

TEST_F(LinalgTest, FactorsWhitenTheCovariance) {
  at::Tensor x = at::randn({200, 5}, at::kDouble);
  auto c = center(x, at::kDouble);
  at::Tensor cov = cross_covariance(c.data, c.data);
  auto f = factor_layer("test", "x", cov, non_constant_columns(x), FactorOptions{});
  EXPECT_EQ(f.rank, 5);
  EXPECT_TRUE(f.all_kept);
  EXPECT_ALLCLOSE(at::mm(f.whitening.t(), at::mm(cov, f.whitening)), at::eye(5, at::kDouble),
                  testing::tol::kDecomp64);
  // Descending eigenvalues.
  EXPECT_TRUE((f.eigenvalues.narrow(0, 0, 4) >= f.eigenvalues.narrow(0, 1, 4)).all().item<bool>());
}

TEST_F(LinalgTest, RidgeIsRelativeToLargestVariance) {
  at::Tensor cov = at::diag(at::tensor({4.0, 1.0}, at::kDouble));
  FactorOptions o;
  o.epsilon = 0.5;  // ridge 0.5 * 4 = 2
  auto f = factor_layer("test", "x", cov, at::Tensor(), o);
  at::Tensor w2 = f.whitening.square().sum(1);
  EXPECT_ALLCLOSE(w2, at::tensor({1.0 / 6.0, 1.0 / 3.0}, at::kDouble), testing::tol::kClosedForm64);
}

TEST_F(LinalgTest, ExactConstantDetectionIgnoresScale) {
  at::Tensor x = at::randn({30, 3}, at::kDouble);
  x.select(1, 1).fill_(0.1);  // mean of 0.1s is not exactly 0.1: variance is not exactly 0
  at::Tensor nc = non_constant_columns(x);
  EXPECT_TRUE(nc.equal(at::tensor({1, 0, 1}).to(at::kBool)));
}

TEST_F(LinalgTest, ScatterRowsPlacesKeptRows) {
  at::Tensor cov = at::diag(at::tensor({1.0, 0.0, 2.0}, at::kDouble));
  auto f = factor_layer("test", "x", cov, at::Tensor(), FactorOptions{});
  EXPECT_FALSE(f.all_kept);
  at::Tensor a = at::ones({2, 2}, at::kDouble);
  at::Tensor s = scatter_rows(a, f);
  EXPECT_TRUE(s.equal(at::tensor({1.0, 1.0, 0.0, 0.0, 1.0, 1.0}, at::kDouble).reshape({3, 2})));
}

}  // namespace
}  // namespace svcca
