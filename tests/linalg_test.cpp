// Tests of the shared numerics: centering, covariance and per-layer factors.
#include "svcca/linalg.h"

#include "svcca/blas.h"

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

// pair_moments' blocked CPU path (two passes, row blocks into a buffer, the mean's rounding
// corrected) gives the moments of the explicitly centered data: several blocks with a ragged last
// one, rows with a stride, an offset far above the spread, a constant column, float32 inputs in
// either precision, and the centered data re-formed on demand.
TEST_F(LinalgTest, BlockedPairMomentsEqualTheCenteredProducts) {
  for (auto in : {at::kDouble, at::kFloat}) {
    for (auto precision : {Precision::kFloat64, Precision::kInput}) {
      const bool single = in == at::kFloat && precision == Precision::kInput;
      const auto tol = single ? testing::tol::kFloat32 : testing::tol::kClosedForm64;
      const auto cdt = single ? at::kFloat : at::kDouble;
      SCOPED_TRACE(::testing::Message() << in << (single ? " float32" : " float64"));
      // x: a column slice of a wider matrix (row stride 9), offset 1000, one constant column.
      at::Tensor base = at::randn({101, 9}, at::kDouble) * 3.0 + 1000.0;
      base.select(1, 4).fill_(7.5);
      at::Tensor x = base.to(in).narrow(1, 2, 5);
      at::Tensor y = (at::randn({101, 3}, at::kDouble) * 1e-3).to(in);
      ASSERT_EQ(x.stride(0), 9);
      // 7 rows a block: 15 blocks, the last of 3 rows.
      const int64_t block_bytes = 7 * (5 + 3) * (single ? 4 : 8);
      PairMoments m = pair_moments(x, y, precision, block_bytes);
      auto xc = center(x.to(at::kDouble), at::kDouble, /*rescale=*/true);
      auto yc = center(y.to(at::kDouble), at::kDouble, /*rescale=*/true);
      EXPECT_EQ(m.x_scale, xc.scale);
      EXPECT_EQ(m.y_scale, yc.scale);
      EXPECT_ALLCLOSE(m.sxx.to(at::kDouble), cross_covariance(xc.data, xc.data), tol);
      EXPECT_ALLCLOSE(m.syy.to(at::kDouble), cross_covariance(yc.data, yc.data), tol);
      EXPECT_ALLCLOSE(m.sxy.to(at::kDouble), cross_covariance(xc.data, yc.data), tol);
      EXPECT_ALLCLOSE(m.x_mean.to(at::kDouble), xc.mean, tol);
      EXPECT_EQ(m.sxx.scalar_type(), cdt);
      EXPECT_TRUE(at::equal(m.x_non_constant, non_constant_columns(x)));
      EXPECT_FALSE(m.x_non_constant[2].item<bool>());
      EXPECT_TRUE(at::equal(m.y_non_constant, non_constant_columns(y)));
      EXPECT_ALLCLOSE(centered_data(m, false).to(at::kDouble), xc.data, tol);
      EXPECT_ALLCLOSE(centered_data(m, true).to(at::kDouble), yc.data, tol);
      // Where the build calls BLAS, no centered copy is kept (the data are re-formed on demand).
      if (have_blas()) {
        EXPECT_FALSE(m.x_centered.defined());
        EXPECT_TRUE(m.x_source.defined());
      }
      // The default block (one block here) gives the same moments.
      PairMoments one = pair_moments(x, y, precision);
      EXPECT_ALLCLOSE(one.sxx, m.sxx, tol);
      EXPECT_ALLCLOSE(one.sxy, m.sxy, tol);
    }
  }
  // Inputs the blocked path leaves to center(): a column-major layer, autograd.
  at::Tensor x = at::randn({50, 4}, at::kDouble);
  at::Tensor xt = x.t().contiguous().t();
  PairMoments m = pair_moments(xt, x, Precision::kFloat64);
  EXPECT_TRUE(m.x_centered.defined());
  EXPECT_ALLCLOSE(m.sxx, m.sxy, testing::tol::kClosedForm64);
  at::Tensor g = x.clone().requires_grad_();
  PairMoments mg = pair_moments(g, g, Precision::kFloat64);
  mg.sxy.sum().backward();
  EXPECT_TRUE(g.grad().defined());
}

// Nearly centered float64 layers (every column's mean^2 <= 3 variance) take the layers' own
// products, X^T X - n mu mu^T, without a centered copy; a layer far from centered, float32 or
// strided rows take the centered blocks. Either way the moments are those of the centered data,
// in data units to float64 accuracy (an offset of 1e4 standard deviations through the raw
// products would lose 8 digits), and constant columns are exactly zero.
TEST_F(LinalgTest, RawProductsOnlyWhereCancellationIsHarmless) {
  const auto in_data_units = [](const PairMoments& m) {
    return std::vector<at::Tensor>{m.sxx * (m.x_scale * m.x_scale), m.syy * (m.y_scale * m.y_scale),
                                   m.sxy * (m.x_scale * m.y_scale)};
  };
  struct Case {
    double x_offset;  // in standard deviations
    at::ScalarType dtype;
    bool strided;
    bool raw;
  };
  for (const Case& c : {Case{0.0, at::kDouble, false, true}, Case{1.7, at::kDouble, false, true},
                        Case{-1.7, at::kDouble, false, true}, Case{1e4, at::kDouble, false, false},
                        Case{2.0, at::kDouble, false, false}, Case{0.0, at::kFloat, false, false},
                        Case{0.0, at::kDouble, true, false}}) {
    SCOPED_TRACE(::testing::Message()
                 << "offset " << c.x_offset << " " << c.dtype << (c.strided ? " strided" : ""));
    // Unit-variance columns (exactly: standardized), one constant column.
    at::Tensor z = at::randn({400, 7}, at::kDouble);
    z = (z - z.mean(0)) / z.std(0);
    at::Tensor x = (z * 3.0 + 3.0 * c.x_offset).to(c.dtype);
    x.select(1, 5).fill_(250.0);
    if (c.strided) x = at::cat({x, x}, 1).narrow(1, 0, 7);
    at::Tensor y = (at::randn({400, 3}, at::kDouble) * 1e-3 + 1e-3).to(c.dtype);
    PairMoments m = pair_moments(x, y, Precision::kFloat64);
    if (have_blas()) {
      EXPECT_EQ(m.raw_products, c.raw);
    }
    const auto got = in_data_units(m);
    at::Tensor xd = x.to(at::kDouble), yd = y.to(at::kDouble);
    at::Tensor xc = xd - xd.mean(0), yc = yd - yd.mean(0);
    EXPECT_ALLCLOSE(got[0], at::mm(xc.t(), xc) / 399.0, testing::tol::kClosedForm64);
    EXPECT_ALLCLOSE(got[1], at::mm(yc.t(), yc) / 399.0, testing::tol::kClosedForm64);
    EXPECT_ALLCLOSE(got[2], at::mm(xc.t(), yc) / 399.0, testing::tol::kClosedForm64);
    EXPECT_ALLCLOSE(m.x_mean * m.x_scale, xd.mean(0), testing::tol::kClosedForm64);
    EXPECT_EQ(at::count_nonzero(m.sxx.select(0, 5)).item<int64_t>(), 0);
    EXPECT_EQ(at::count_nonzero(m.sxy.select(0, 5)).item<int64_t>(), 0);
    EXPECT_ALLCLOSE(centered_data(m, false).to(at::kDouble) * m.x_scale, xc,
                    testing::tol::kClosedForm64);
  }
}

// The symmetric products (BLAS syrk/herk where the build has it) equal the general product, for
// every dtype BLAS covers, both sides, both memory orders, lazy conjugates and accumulation.
TEST_F(LinalgTest, SymmetricProductsEqualTheGeneralProduct) {
  for (auto dtype : {at::kFloat, at::kDouble, at::kComplexFloat, at::kComplexDouble}) {
    const bool single = dtype == at::kFloat || dtype == at::kComplexFloat;
    const auto tol = single ? testing::tol::kFloat32 : testing::tol::kClosedForm64;
    for (int64_t p : {1, 7, 130}) {
      at::Tensor a = at::randn({53, p}, at::TensorOptions().dtype(dtype));
      at::Tensor ref_inner = at::mm(mh(a), a);
      at::Tensor ref_outer = at::mm(a, mh(a));
      SCOPED_TRACE(::testing::Message() << dtype << " p=" << p);
      EXPECT_ALLCLOSE(covariance(a), ref_inner / 52.0, tol);
      EXPECT_ALLCLOSE(gram(a), ref_outer, tol);
      // A transposed view (column-major memory) and a lazy conjugate.
      at::Tensor at_view = a.t().contiguous().t();
      if (p > 1) {
        ASSERT_FALSE(at_view.is_contiguous());
      }
      EXPECT_ALLCLOSE(covariance(at_view), ref_inner / 52.0, tol);
      EXPECT_ALLCLOSE(gram(at_view), ref_outer, tol);
      if (a.is_complex()) {
        EXPECT_ALLCLOSE(gram(a.conj()), at::mm(a.conj(), a.t()), tol);
        EXPECT_ALLCLOSE(covariance(at_view.conj()), at::mm(a.t(), a.conj()) / 52.0, tol);
      }
      // c = beta c + alpha a^H a, with c already Hermitian.
      at::Tensor c = ref_inner.clone();
      add_product_(c, a, /*outer=*/false, 0.5, 2.0);
      EXPECT_ALLCLOSE(c, ref_inner * 2.5, tol);
      at::Tensor d = ref_outer.clone();
      add_product_(d, at_view, /*outer=*/true, 1.0, 1.0);
      EXPECT_ALLCLOSE(d, ref_outer * 2.0, tol);
    }
  }
}

TEST_F(LinalgTest, SymmetricProductsOfEmptyAndNarrowInputs) {
  at::Tensor none = at::zeros({0, 4}, at::kDouble);
  at::Tensor c = at::ones({4, 4}, at::kDouble);
  add_product_(c, none, /*outer=*/false, 1.0, 3.0);  // no terms: beta c
  EXPECT_ALLCLOSE(c, at::full({4, 4}, 3.0, at::kDouble), testing::tol::kClosedForm64);
  // A column slice is neither contiguous nor a transpose: copied, same numbers.
  at::Tensor wide = at::randn({30, 12}, at::kDouble);
  at::Tensor part = wide.narrow(1, 3, 5);
  EXPECT_ALLCLOSE(covariance(part), at::mm(part.t(), part) / 29.0, testing::tol::kClosedForm64);
  // Autograd still flows (the BLAS path steps aside for inputs that need gradients).
  at::Tensor g = at::randn({20, 3}, at::kDouble).requires_grad_();
  covariance(g).sum().backward();
  ASSERT_TRUE(g.grad().defined());
  EXPECT_ALLCLOSE(g.grad(), (2.0 / 19.0) * g.sum(1, true).expand({20, 3}).detach(),
                  testing::tol::kClosedForm64);
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
