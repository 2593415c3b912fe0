// Tests of svcca::svcca: reduction rules, equivalence with CCA, rank handling.
#include "svcca/measures/svcca.h"

#include "support/support.h"

namespace svcca {
namespace {

using testing::MatrixTest;

class SvccaTest : public MatrixTest {
 protected:
  // [n, p] whose centered singular values are proportional to `s` (orthogonal directions).
  at::Tensor with_spectrum(int64_t n, const std::vector<double>& s) {
    const int64_t p = static_cast<int64_t>(s.size());
    at::Tensor w = testing::whitened_columns(n, p, opts());
    at::Tensor mixed =
        at::mm(w * at::tensor(s, opts()), testing::orthonormal_columns(p, p, opts()).t());
    return mixed + 2.0;
  }
};

TEST_P(SvccaTest, KeepingEveryDirectionEqualsMeanCca) {
  at::Tensor x = at::randn({300, 6}, opts());
  at::Tensor y = x.narrow(1, 0, 4) + at::randn({300, 4}, opts());
  SvccaOptions o;
  o.fraction = 1.0;
  auto r = svcca::svcca(in(x), in(y), o);
  auto c = cca(in(x), in(y));
  EXPECT_EQ(r.x_dims, 6);
  EXPECT_EQ(r.y_dims, 4);
  EXPECT_ALLCLOSE(r.correlations, c.correlations, tol());
  EXPECT_ALLCLOSE(r.score, c.correlations.mean(), tol());
}

TEST_P(SvccaTest, ExactRankInputsKeepRankDirections) {
  at::Tensor x = at::mm(at::randn({200, 3}, opts()), at::randn({3, 10}, opts()));
  at::Tensor y = at::randn({200, 5}, opts());
  SvccaOptions o;
  o.fraction = 1.0;
  auto r = svcca::svcca(in(x), in(y), o);
  EXPECT_EQ(r.x_dims, 3);
  o.fraction = 0.99;
  o.dims = 8;  // more than the rank: clipped to it
  EXPECT_EQ(svcca::svcca(in(x), in(y), o).x_dims, 3);
}

TEST_P(SvccaTest, FixedDimsEqualsCcaOfTopSvdProjections) {
  at::Tensor x = with_spectrum(400, {5, 4, 3, 2, 1, 0.5, 0.2});
  at::Tensor y = at::mm(x, at::randn({7, 6}, opts())) + at::randn({400, 6}, opts());
  SvccaOptions o;
  o.dims = 3;
  auto r = svcca::svcca(in(x), in(y), o);
  auto project = [](const at::Tensor& a, int64_t k) {
    at::Tensor c = a - a.mean(0);
    at::Tensor vh = std::get<2>(at::linalg_svd(c, false));
    return at::mm(c, vh.narrow(0, 0, k).t());
  };
  auto expected = cca(in(project(x, 3)), in(project(y, 3)));
  EXPECT_EQ(r.x_dims, 3);
  EXPECT_EQ(r.y_dims, 3);
  EXPECT_ALLCLOSE(r.correlations, expected.correlations, tol());
}

TEST_P(SvccaTest, VarianceAndSingularValueMassRulesFollowTheirDefinitions) {
  // Singular values 4, 2, 1, 1: variance fractions 16/22, 20/22, 21/22, 1; mass 4/8, 6/8, 7/8, 1.
  at::Tensor x = with_spectrum(500, {4, 2, 1, 1});
  at::Tensor y = at::randn({500, 4}, opts());
  SvccaOptions o;
  o.fraction = 0.9;
  o.keep = SvccaKeep::kVariance;  // 20/22 = 0.909 >= 0.9 at k = 2
  EXPECT_EQ(svcca::svcca(in(x), in(y), o).x_dims, 2);
  o.keep = SvccaKeep::kSingularValueMass;  // 7/8 = 0.875 < 0.9: needs k = 4
  EXPECT_EQ(svcca::svcca(in(x), in(y), o).x_dims, 4);
  o.fraction = 0.7;  // variance: 16/22 = 0.727 at k = 1; mass: 6/8 at k = 2
  EXPECT_EQ(svcca::svcca(in(x), in(y), o).x_dims, 2);
  o.keep = SvccaKeep::kVariance;
  EXPECT_EQ(svcca::svcca(in(x), in(y), o).x_dims, 1);
}

TEST_P(SvccaTest, MoreFeaturesThanExamplesIsAccepted) {
  at::Tensor z = at::randn({60, 4}, opts());
  at::Tensor x = at::mm(z, at::randn({4, 100}, opts())) + 0.01 * at::randn({60, 100}, opts());
  at::Tensor y = at::mm(z, at::randn({4, 80}, opts())) + 0.01 * at::randn({60, 80}, opts());
  SvccaOptions o;
  o.dims = 4;
  auto r = svcca::svcca(in(x), in(y), o);
  EXPECT_EQ(r.correlations.numel(), 4);
  EXPECT_GT(r.score.item<double>(), 0.99);
  EXPECT_EQ(r.score.scalar_type(), GetParam().dtype);
  EXPECT_EQ(r.score.dim(), 0);
}

INSTANTIATE_TEST_SUITE_P(Matrix, SvccaTest, ::testing::ValuesIn(testing::dtype_device_matrix()),
                         testing::dtype_device_name);

}  // namespace
}  // namespace svcca
