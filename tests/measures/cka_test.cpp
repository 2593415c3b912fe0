// Tests of the CKA family and Procrustes: published values, closed forms, invariances (over the
// dtype x device matrix), and error messages.
#include "svcca/measures/cka.h"

#include <cmath>
#include <functional>
#include <optional>
#include <vector>

#include "support/support.h"
#include "svcca/measures/cca.h"
#include "svcca/measures/procrustes.h"

namespace svcca {
namespace {

using testing::AllClose;
using testing::MatrixTest;

LinearCkaOptions linear(bool debiased, CkaForm form = CkaForm::kFeatures) {
  LinearCkaOptions o;
  o.debiased = debiased;
  o.form = form;
  return o;
}

RbfCkaOptions rbf(bool debiased, double threshold = 1.0, std::optional<double> sigma = {}) {
  RbfCkaOptions o;
  o.debiased = debiased;
  o.threshold = threshold;
  o.sigma = sigma;
  return o;
}

// Every CKA variant, as one callable each, for the invariance tests.
struct Variant {
  const char* name;
  std::function<at::Tensor(const at::Tensor&, const at::Tensor&)> fn;
  bool scale_invariant;  // an absolute sigma is not
};

std::vector<Variant> variants() {
  return {
      {"linear", [](auto& x, auto& y) { return linear_cka(x, y); }, true},
      {"linear_gram",
       [](auto& x, auto& y) { return linear_cka(x, y, linear(false, CkaForm::kGram)); }, true},
      {"linear_debiased", [](auto& x, auto& y) { return linear_cka(x, y, linear(true)); }, true},
      {"linear_debiased_gram",
       [](auto& x, auto& y) { return linear_cka(x, y, linear(true, CkaForm::kGram)); }, true},
      {"rbf", [](auto& x, auto& y) { return rbf_cka(x, y, rbf(false, 0.8)); }, true},
      {"rbf_debiased", [](auto& x, auto& y) { return rbf_cka(x, y, rbf(true, 0.8)); }, true},
      {"rbf_sigma", [](auto& x, auto& y) { return rbf_cka(x, y, rbf(false, 1.0, 3.0)); }, false},
      {"rbf_sigma_debiased", [](auto& x, auto& y) { return rbf_cka(x, y, rbf(true, 1.0, 3.0)); },
       false},
  };
}

// ---- Published values (Kornblith et al. 2019, representation_similarity/Demo.ipynb) ----------

class CkaPublishedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::NumpyRandomState rs(1337);
    x = rs.randn(100, 10);
    y = x + rs.randn(100, 10);
  }
  static at::Tensor scalar(double v) { return at::scalar_tensor(v, at::kDouble); }
  at::Tensor x, y;
};

TEST_F(CkaPublishedTest, DataMatchesTheRecipe) {
  EXPECT_ALLCLOSE(x[0].narrow(0, 0, 3), at::tensor({-0.703187, -0.490282, -0.321814}, at::kDouble),
                  testing::tol::kQuoted6);
}

TEST_F(CkaPublishedTest, LinearCka) {
  EXPECT_ALLCLOSE(linear_cka(x, y), scalar(0.55761), testing::tol::kQuoted5);
  EXPECT_ALLCLOSE(linear_cka(x, y, linear(false, CkaForm::kGram)), scalar(0.55761),
                  testing::tol::kQuoted5);
}

TEST_F(CkaPublishedTest, DebiasedLinearCka) {
  EXPECT_ALLCLOSE(linear_cka(x, y, linear(true)), scalar(0.51346), testing::tol::kQuoted5);
  EXPECT_ALLCLOSE(linear_cka(x, y, linear(true, CkaForm::kGram)), scalar(0.51346),
                  testing::tol::kQuoted5);
}

TEST_F(CkaPublishedTest, RbfCkaThresholdHalf) {
  EXPECT_ALLCLOSE(rbf_cka(x, y, rbf(false, 0.5)), scalar(0.65483), testing::tol::kQuoted5);
}

TEST_F(CkaPublishedTest, MeanSquaredCcaCorrelationOfUncenteredData) {
  // The recipe's R^2_CCA: QR of X and Y as they are (no centering), squared singular values of
  // Qx^T Qy averaged over min(p1, p2) = ||Qx^T Qy||_F^2 / min(p1, p2).
  auto qr_svdvals = [](const at::Tensor& a, const at::Tensor& b) {
    at::Tensor qa = std::get<0>(at::linalg_qr(a, "reduced"));
    at::Tensor qb = std::get<0>(at::linalg_qr(b, "reduced"));
    return at::linalg_svdvals(at::mm(qa.t(), qb));
  };
  EXPECT_ALLCLOSE(mean_squared_correlation(qr_svdvals(x, y)), scalar(0.54312),
                  testing::tol::kQuoted5);
  // svcca::cca centers: it gives the CCA of centered data, which differs in the third decimal
  // here (0.54540 against 0.54312), so the published value is not svcca::cca's.
  at::Tensor centered = mean_squared_correlation(cca(x, y).correlations);
  EXPECT_ALLCLOSE(centered, mean_squared_correlation(qr_svdvals(x - x.mean(0), y - y.mean(0))),
                  testing::tol::kDecomp64);
  EXPECT_FALSE(AllClose(centered, scalar(0.54312), testing::tol::kQuoted5));
}

// ---- Closed forms and invariances over the dtype x device matrix ----------------------------

class CkaTest : public MatrixTest {
 protected:
  // Generic layers with different widths, non-zero means and a shared component.
  at::Tensor x() { return at::randn({60, 5}, opts()) * 2.0 + 1.5; }
  at::Tensor y_of(const at::Tensor& x) {
    return at::mm(x.narrow(1, 0, 3), at::randn({3, 4}, opts())) + at::randn({60, 4}, opts()) - 4.0;
  }
  at::Tensor scalar(double v) const { return at::scalar_tensor(v, opts().dtype(GetParam().dtype)); }
};

TEST_P(CkaTest, SelfSimilarityIsOne) {
  at::Tensor a = x();
  for (const auto& v : variants()) {
    EXPECT_ALLCLOSE(v.fn(in(a), in(a)), scalar(1.0), tol()) << v.name;
  }
}

TEST_P(CkaTest, InvariantToOrthogonalTransforms) {
  at::Tensor a = x();
  at::Tensor b = y_of(a);
  at::Tensor qa = testing::orthonormal_columns(5, 5, opts());
  at::Tensor qb = testing::orthonormal_columns(4, 4, opts());
  for (const auto& v : variants()) {
    EXPECT_ALLCLOSE(v.fn(in(a), in(at::mm(a, qa))), scalar(1.0), tol()) << v.name;
    EXPECT_ALLCLOSE(v.fn(in(at::mm(a, qa)), in(at::mm(b, qb))), v.fn(in(a), in(b)), tol())
        << v.name;
  }
}

TEST_P(CkaTest, InvariantToIsotropicScaling) {
  at::Tensor a = x();
  at::Tensor b = y_of(a);
  for (const auto& v : variants()) {
    if (!v.scale_invariant) continue;
    EXPECT_ALLCLOSE(v.fn(in(a), in(a * 7.0)), scalar(1.0), tol()) << v.name;
    EXPECT_ALLCLOSE(v.fn(in(a * 0.01), in(b * 30.0)), v.fn(in(a), in(b)), tol()) << v.name;
  }
}

TEST_P(CkaTest, InvariantToTranslation) {
  at::Tensor a = x();
  at::Tensor b = y_of(a);
  at::Tensor shift = at::randn({5}, opts()) * 10.0;
  for (const auto& v : variants()) {
    EXPECT_ALLCLOSE(v.fn(in(a + shift), in(b - 3.0)), v.fn(in(a), in(b)), tol()) << v.name;
  }
}

TEST_P(CkaTest, Symmetric) {
  at::Tensor a = x();
  at::Tensor b = y_of(a);
  for (const auto& v : variants()) {
    EXPECT_ALLCLOSE(v.fn(in(b), in(a)), v.fn(in(a), in(b)), tol()) << v.name;
  }
}

TEST_P(CkaTest, LinearCkaOfOneFeatureEachIsSquaredPearson) {
  at::Tensor a = at::randn({200, 1}, opts());
  at::Tensor b = 0.7 * a + at::randn({200, 1}, opts()) + 2.0;
  const double r = testing::pearson(in(a), in(b));
  EXPECT_ALLCLOSE(linear_cka(in(a), in(b)), scalar(r * r), tol(/*closed_form=*/true));
  EXPECT_ALLCLOSE(linear_cka(in(a), in(b), linear(false, CkaForm::kGram)), scalar(r * r),
                  tol(/*closed_form=*/true));
}

TEST_P(CkaTest, FeatureFormEqualsGramForm) {
  at::Tensor a = x();
  at::Tensor b = y_of(a);
  for (bool debiased : {false, true}) {
    EXPECT_ALLCLOSE(linear_cka(in(a), in(b), linear(debiased)),
                    linear_cka(in(a), in(b), linear(debiased, CkaForm::kGram)),
                    tol(/*closed_form=*/true))
        << "debiased " << debiased;
  }
  // More features than examples: the feature form's [p, p] products still agree.
  at::Tensor wide = at::randn({12, 30}, opts());
  at::Tensor wide_y = wide.narrow(1, 0, 20) + at::randn({12, 20}, opts());
  for (bool debiased : {false, true}) {
    EXPECT_ALLCLOSE(linear_cka(in(wide), in(wide_y), linear(debiased)),
                    linear_cka(in(wide), in(wide_y), linear(debiased, CkaForm::kGram)),
                    tol(/*closed_form=*/true))
        << "debiased " << debiased;
  }
}

TEST_P(CkaTest, DebiasedDiffersFromBiasedAndIsNearZeroForUnrelatedLayers) {
  // Independent layers: the biased estimate is positive (bias ~ p / n); the unbiased one is
  // centred on 0.
  at::Tensor a = at::randn({400, 20}, opts());
  at::Tensor b = at::randn({400, 20}, opts());
  const double biased = linear_cka(in(a), in(b)).item<double>();
  const double debiased = linear_cka(in(a), in(b), linear(true)).item<double>();
  EXPECT_GT(biased, 0.02);
  EXPECT_LT(std::abs(debiased), 0.5 * biased);
}

TEST_P(CkaTest, MedianRuleIsThresholdTimesRootMedianOfAllSquaredDistances) {
  at::Tensor a = x();
  at::Tensor b = y_of(a);
  // numpy's median over the full n x n matrix, zero diagonal included: the mean of the middle
  // two of n^2 = 3600 sorted entries.
  auto sigma = [](const at::Tensor& t, double threshold) {
    at::Tensor d = at::cdist(t, t).square().reshape({-1});
    at::Tensor s = std::get<0>(d.sort());
    const int64_t m = s.numel();
    const double median = 0.5 * (s[m / 2 - 1].item<double>() + s[m / 2].item<double>());
    return threshold * std::sqrt(median);
  };
  // One absolute sigma serves both layers: give b a copy of a's scale so that both medians
  // match, and compare with the median rule.
  at::Tensor b_scaled = b * (sigma(a, 1.0) / sigma(b, 1.0));
  for (bool debiased : {false, true}) {
    EXPECT_ALLCLOSE(rbf_cka(in(a), in(b_scaled), rbf(debiased, 0.7)),
                    rbf_cka(in(a), in(b_scaled), rbf(debiased, 1.0, sigma(a, 0.7))), tol())
        << "debiased " << debiased;
  }
}

TEST_P(CkaTest, RbfWithLargeSigmaApproachesLinearCka) {
  // exp(-d / 2s^2) = 1 - d / 2s^2 + O(s^-4): the centered kernel tends to that of -d, which
  // double-centers to 2 X X^T.
  at::Tensor a = x();
  at::Tensor b = y_of(a);
  for (bool debiased : {false, true}) {
    const double lin = linear_cka(a, b, linear(debiased)).item<double>();
    const double far = rbf_cka(in(a), in(b), rbf(debiased, 1.0, 1e3)).item<double>();
    EXPECT_NEAR(far, lin, 1e-3) << "debiased " << debiased;
    EXPECT_GT(std::abs(rbf_cka(in(a), in(b), rbf(debiased, 0.3)).item<double>() - lin), 1e-3);
  }
}

TEST_P(CkaTest, ResultsComeBackInInputDtypeOnInputDevice) {
  at::Tensor a = in(x());
  at::Tensor b = in(y_of(x()));
  for (const auto& v : variants()) {
    at::Tensor r = v.fn(a, b);
    EXPECT_EQ(r.dim(), 0) << v.name;
    EXPECT_EQ(r.scalar_type(), GetParam().dtype) << v.name;
    EXPECT_EQ(r.device().type(), GetParam().device) << v.name;
  }
  for (const at::Tensor& r : {procrustes(a, b), procrustes_distance(a, b)}) {
    EXPECT_EQ(r.dim(), 0);
    EXPECT_EQ(r.scalar_type(), GetParam().dtype);
    EXPECT_EQ(r.device().type(), GetParam().device);
  }
}

TEST_P(CkaTest, InputPrecisionStaysCloseToFloat64) {
  at::Tensor a = x();
  at::Tensor b = y_of(a);
  LinearCkaOptions lo = linear(true);
  lo.precision = Precision::kInput;
  EXPECT_ALLCLOSE(linear_cka(in(a), in(b), lo), in(linear_cka(a, b, linear(true))), tol());
  RbfCkaOptions ro = rbf(false, 0.8);
  ro.precision = Precision::kInput;
  EXPECT_ALLCLOSE(rbf_cka(in(a), in(b), ro), in(rbf_cka(a, b, rbf(false, 0.8))), tol());
  ProcrustesOptions po;
  po.precision = Precision::kInput;
  EXPECT_ALLCLOSE(procrustes(in(a), in(b), po), in(procrustes(a, b)), tol());
}

INSTANTIATE_TEST_SUITE_P(Matrix, CkaTest, ::testing::ValuesIn(testing::dtype_device_matrix()),
                         testing::dtype_device_name);

// ---- Procrustes ---------------------------------------------------------------------------

class ProcrustesTest : public CkaTest {};

TEST_P(ProcrustesTest, RotatedScaledTranslatedCopyGivesScoreOneDistanceZero) {
  at::Tensor a = x();
  at::Tensor b = at::mm(a, testing::orthonormal_columns(5, 5, opts())) * 3.0 - 2.0;
  EXPECT_ALLCLOSE(procrustes(in(a), in(b)), scalar(1.0), tol());
  EXPECT_ALLCLOSE(procrustes_distance(in(a), in(b)), scalar(0.0), tol());
  // p1 != p2: a zero-padded copy is the same layer.
  at::Tensor padded = at::cat({b, at::zeros({60, 3}, opts())}, 1);
  EXPECT_ALLCLOSE(procrustes(in(a), in(padded)), scalar(1.0), tol());
}

TEST_P(ProcrustesTest, DistanceIsTheMinimumOverOrthogonalMaps) {
  // Normalized centered X, Y: d = min_Q ||X Q - Y||_F^2, attained at Q = U V^T from the SVD
  // X^T Y = U S V^T (Schonemann 1966).
  at::Tensor a = x();
  at::Tensor b = at::mm(a, at::randn({5, 5}, opts())) + at::randn({60, 5}, opts());
  auto normalized = [](const at::Tensor& t) {
    at::Tensor c = t - t.mean(0);
    return c / c.norm();
  };
  at::Tensor xn = normalized(a);
  at::Tensor yn = normalized(b);
  auto svd = at::linalg_svd(at::mm(xn.t(), yn), /*full_matrices=*/false);
  at::Tensor q = at::mm(std::get<0>(svd), std::get<2>(svd));
  const double best = (at::mm(xn, q) - yn).square().sum().item<double>();
  EXPECT_ALLCLOSE(procrustes_distance(in(a), in(b)), scalar(best), tol());
  // Any other orthogonal map does worse.
  at::Tensor other = testing::orthonormal_columns(5, 5, opts());
  EXPECT_GT((at::mm(xn, other) - yn).square().sum().item<double>(), best + 1e-3);
  EXPECT_ALLCLOSE(procrustes(in(a), in(b)), scalar(1.0 - best / 2.0), tol());
}

TEST_P(ProcrustesTest, SymmetricAndHandlesDifferentWidths) {
  at::Tensor a = x();
  at::Tensor b = y_of(a);
  EXPECT_ALLCLOSE(procrustes(in(b), in(a)), procrustes(in(a), in(b)), tol());
  EXPECT_ALLCLOSE(procrustes_distance(in(b), in(a)), procrustes_distance(in(a), in(b)), tol());
  const double s = procrustes(in(a), in(b)).item<double>();
  EXPECT_GT(s, 0.1);
  EXPECT_LT(s, 0.99);
}

TEST_P(ProcrustesTest, OneFeatureEachIsAbsolutePearson) {
  at::Tensor a = at::randn({200, 1}, opts());
  at::Tensor b = -0.7 * a + at::randn({200, 1}, opts()) + 2.0;
  const double r = testing::pearson(in(a), in(b));
  EXPECT_ALLCLOSE(procrustes(in(a), in(b)), scalar(std::abs(r)), tol());
  EXPECT_ALLCLOSE(procrustes_distance(in(a), in(b)), scalar(2.0 - 2.0 * std::abs(r)), tol());
}

INSTANTIATE_TEST_SUITE_P(Matrix, ProcrustesTest,
                         ::testing::ValuesIn(testing::dtype_device_matrix()),
                         testing::dtype_device_name);

// ---- Errors ---------------------------------------------------------------------------------

class CkaErrorsTest : public testing::SeedingFixture {
 protected:
  at::Tensor x = at::randn({50, 4}, at::kDouble);
  at::Tensor y = at::randn({50, 3}, at::kDouble);
};

TEST_F(CkaErrorsTest, MismatchedExamplesAndDtype) {
  EXPECT_THROWS_WITH_TYPE(linear_cka(x, y.narrow(0, 0, 40)), c10::ValueError,
                          "linear_cka: x and y must have the same number of examples (dim 0), but "
                          "got x with shape [50, 4] and y with shape [40, 3]");
  EXPECT_THROWS_WITH_TYPE(rbf_cka(x, y.to(at::kInt)), c10::TypeError,
                          "rbf_cka: y must be a floating tensor (float32 or float64)");
  EXPECT_THROWS_WITH_TYPE(procrustes(x.unsqueeze(0), y), c10::ValueError,
                          "procrustes: x must be a 2-D tensor");
}

TEST_F(CkaErrorsTest, DebiasedNeedsFourExamples) {
  const char* msg =
      "x and y must have at least 4 examples (dim 0) for debiased CKA (the unbiased HSIC "
      "estimator divides by n - 3), but got 3";
  for (CkaForm form : {CkaForm::kFeatures, CkaForm::kGram}) {
    EXPECT_THROWS_WITH_TYPE(linear_cka(x.narrow(0, 0, 3), y.narrow(0, 0, 3), linear(true, form)),
                            c10::ValueError, std::string("linear_cka: ") + msg);
  }
  EXPECT_THROWS_WITH_TYPE(rbf_cka(x.narrow(0, 0, 3), y.narrow(0, 0, 3), rbf(true)), c10::ValueError,
                          std::string("rbf_cka: ") + msg);
  // Biased estimates are defined from 2 examples on.
  EXPECT_NO_THROW(linear_cka(x.narrow(0, 0, 3), y.narrow(0, 0, 3)));
  EXPECT_NO_THROW(linear_cka(x.narrow(0, 0, 4), y.narrow(0, 0, 4), linear(true)));
}

TEST_F(CkaErrorsTest, ConstantLayerIsAnErrorNotNan) {
  at::Tensor constant = at::full({50, 3}, 2.5, at::kDouble);
  const char* tail = "must have at least one non-constant feature, but all 3 features are constant";
  for (bool debiased : {false, true}) {
    for (CkaForm form : {CkaForm::kFeatures, CkaForm::kGram}) {
      EXPECT_THROWS_WITH_TYPE(linear_cka(x, constant, linear(debiased, form)), c10::ValueError,
                              std::string("linear_cka: y ") + tail);
    }
    EXPECT_THROWS_WITH_TYPE(rbf_cka(constant, y, rbf(debiased, 1.0, 2.0)), c10::ValueError,
                            std::string("rbf_cka: x ") + tail);
  }
  EXPECT_THROWS_WITH_TYPE(procrustes(x, constant), c10::ValueError,
                          std::string("procrustes: y ") + tail);
  EXPECT_THROWS_WITH_TYPE(procrustes_distance(constant, y), c10::ValueError,
                          std::string("procrustes_distance: x ") + tail);
}

TEST_F(CkaErrorsTest, DebiasedIsUndefinedWhenAllExamplesButOneAreIdentical) {
  // U-centering removes every a_i + a_j: a layer whose examples are all equal but one has a zero
  // U-centered Gram matrix (biased CKA is still defined there).
  at::Tensor degenerate = at::zeros({50, 3}, at::kDouble);
  degenerate[7] = at::tensor({1.0, -2.0, 0.5}, at::kDouble);
  degenerate = degenerate + at::tensor({3.0, 1.0, -1.0}, at::kDouble);
  const char* msg = "x must have a kernel matrix that is not zero after centering";
  for (CkaForm form : {CkaForm::kFeatures, CkaForm::kGram}) {
    EXPECT_THROWS_WITH_TYPE(linear_cka(degenerate, y, linear(true, form)), c10::ValueError, msg);
    EXPECT_THROWS_WITH(linear_cka(degenerate, y, linear(true, form)),
                       "all examples but one are identical");
    EXPECT_NO_THROW(linear_cka(degenerate, y, linear(false, form)));
    LinearCkaOptions f32 = linear(true, form);
    f32.precision = Precision::kInput;
    EXPECT_THROWS_WITH(linear_cka(degenerate.to(at::kFloat), y.to(at::kFloat), f32), msg);
  }
  EXPECT_THROWS_WITH_TYPE(rbf_cka(degenerate, y, rbf(true, 1.0, 1.0)), c10::ValueError, msg);
}

TEST_F(CkaErrorsTest, BandwidthOptions) {
  EXPECT_THROWS_WITH_TYPE(rbf_cka(x, y, rbf(false, 1.0, 0.0)), c10::ValueError,
                          "rbf_cka: sigma must be finite and > 0, but got 0");
  EXPECT_THROWS_WITH_TYPE(rbf_cka(x, y, rbf(false, 1.0, -2.0)), c10::ValueError,
                          "rbf_cka: sigma must be finite and > 0, but got -2");
  EXPECT_THROWS_WITH_TYPE(rbf_cka(x, y, rbf(false, -0.5)), c10::ValueError,
                          "rbf_cka: threshold must be finite and > 0, but got -0.5");
  EXPECT_THROWS_WITH_TYPE(rbf_cka(x, y, rbf(false, 0.0)), c10::ValueError,
                          "rbf_cka: threshold must be finite and > 0, but got 0");
  // A sigma so large that the kernel matrix is all ones (in float64) after rounding.
  EXPECT_THROWS_WITH_TYPE(rbf_cka(x, y, rbf(false, 1.0, 1e12)), c10::ValueError,
                          "rbf_cka: x must have a kernel matrix that is not zero after centering");
}

TEST_F(CkaErrorsTest, MedianRuleNeedsAPositiveMedian) {
  // 40 of 50 examples identical: more than half of the 2500 squared distances are 0.
  at::Tensor mostly_same = at::cat({at::ones({40, 4}, at::kDouble), x.narrow(0, 0, 10)}, 0);
  EXPECT_THROWS_WITH_TYPE(rbf_cka(y, mostly_same), c10::ValueError,
                          "rbf_cka: y must have a positive median squared distance between "
                          "examples for the median rule (sigma = threshold * sqrt(median)), but "
                          "got 0");
  EXPECT_THROWS_WITH(rbf_cka(y, mostly_same), "give an absolute sigma instead");
  EXPECT_NO_THROW(rbf_cka(y, mostly_same, rbf(false, 1.0, 1.0)));
}

}  // namespace
}  // namespace svcca
