// Every boundary error message, asserted once: argument named, problem stated, values shown.
#include "svcca/checks.h"

#include "support/support.h"
#include "svcca/svcca.h"

namespace svcca {
namespace {

class ChecksTest : public testing::SeedingFixture {
 protected:
  at::Tensor x = at::randn({50, 4}, at::kDouble);
  at::Tensor y = at::randn({50, 3}, at::kDouble);
};

TEST_F(ChecksTest, MismatchedExamples) {
  EXPECT_THROWS_WITH_TYPE(cca(x, y.narrow(0, 0, 40)), c10::ValueError,
                          "cca: x and y must have the same number of examples (dim 0), but got x "
                          "with shape [50, 4] and y with shape [40, 3]");
  EXPECT_THROWS_WITH_TYPE(compat::get_cca_similarity(x.t(), y.t().narrow(1, 0, 40)),
                          c10::ValueError,
                          "acts1 and acts2 must have the same number of datapoints");
}

TEST_F(ChecksTest, FewerExamplesThanFeaturesExplainsAndSuggestsSvcca) {
  at::Tensor wide = at::randn({10, 20}, at::kDouble);
  at::Tensor y10 = at::randn({10, 2}, at::kDouble);
  EXPECT_THROWS_WITH_TYPE(cca(wide, y10), c10::ValueError,
                          "cca: x must have more examples than features (at least 22 for 20 "
                          "features), but got x with shape [10, 20] (10 examples)");
  // p = n - 1 already spans every centered direction: rejected too.
  EXPECT_THROWS_WITH(cca(at::randn({11, 10}, at::kDouble), at::randn({11, 2}, at::kDouble)),
                     "at least 12 for 10 features");
  EXPECT_THROWS_WITH(cca(wide, y10), "reduce the features first with svcca");
  EXPECT_THROWS_WITH(pwcca(y10, wide), "pwcca: y must have more examples than features");
  EXPECT_THROWS_WITH(compat::get_cca_similarity(wide.t(), y10.t()),
                     "get_cca_similarity: acts1 must have more examples than features");
}

TEST_F(ChecksTest, NanAndInf) {
  at::Tensor bad = x.clone();
  bad[3][1] = std::nan("");
  bad[4][2] = INFINITY;
  EXPECT_THROWS_WITH_TYPE(
      cca(bad, y), c10::ValueError,
      "cca: x must contain only finite values, but got 1 NaN and 1 Inf entries");
  EXPECT_THROWS_WITH(svcca::svcca(x, bad.narrow(1, 0, 3)),
                     "svcca: y must contain only finite values");
}

TEST_F(ChecksTest, Dtypes) {
  EXPECT_THROWS_WITH_TYPE(
      cca(x.to(at::kInt), y), c10::TypeError,
      "cca: x must be a floating tensor (float32 or float64), but got dtype Int");
  EXPECT_THROWS_WITH_TYPE(
      cca(x, y.to(at::kComplexDouble)), c10::TypeError,
      "cca: y must be a real floating tensor (float32 or float64), but got dtype ComplexDouble");
  EXPECT_THROWS_WITH_TYPE(pwcca(x.to(at::kHalf), y), c10::TypeError,
                          "pwcca: x must be a floating tensor");
  EXPECT_THROWS_WITH_TYPE(compat::sum_threshold(at::ones({3}, at::kComplexFloat), 0.5),
                          c10::TypeError, "sum_threshold: array must be real numeric");
}

TEST_F(ChecksTest, Ranks) {
  EXPECT_THROWS_WITH_TYPE(cca(x.flatten(), y), c10::ValueError,
                          "cca: x must be a 2-D tensor [n_examples, n_features], but got a 1-D "
                          "tensor with shape [200]");
  EXPECT_THROWS_WITH(cca(x, y.unsqueeze(0)), "but got a 3-D tensor with shape [1, 50, 3]");
  EXPECT_THROWS_WITH(cca(at::empty({0, 4}, at::kDouble), y),
                     "cca: x must be non-empty, but got shape [0, 4]");
  EXPECT_THROWS_WITH(cca(x.narrow(0, 0, 1), y.narrow(0, 0, 1)),
                     "must have at least 2 examples (dim 0), but got 1");
  EXPECT_THROWS_WITH(compat::sum_threshold(at::ones({2, 2}), 0.5),
                     "sum_threshold: array must be a 1-D tensor, but got shape [2, 2]");
  EXPECT_THROWS_WITH(compat::get_pca(at::ones({3}), false), "get_pca: acts must be a 2-D tensor");
}

TEST_F(ChecksTest, Devices) {
  if (!at::hasCUDA()) GTEST_SKIP() << "CUDA is not available";
  EXPECT_THROWS_WITH(cca(x, y.cuda()),
                     "cca: x and y must be on the same device, but got x on cpu and y on cuda:0");
}

TEST_F(ChecksTest, AllConstantLayer) {
  at::Tensor c = at::full({50, 3}, 2.5, at::kDouble);
  EXPECT_THROWS_WITH_TYPE(
      cca(x, c), c10::ValueError,
      "cca: y must have at least one non-constant feature, but all 3 features are constant");
  EXPECT_THROWS_WITH(svcca::svcca(c, x), "svcca: x must have at least one non-constant feature");
  EXPECT_THROWS_WITH(compat::get_cca_similarity(c.t(), x.t()),
                     "get_cca_similarity: acts1 must have at least one non-constant neuron, but "
                     "all 3 neurons are constant");
}

TEST_F(ChecksTest, OptionRanges) {
  CcaOptions o;
  o.epsilon = -1e-3;
  EXPECT_THROWS_WITH_TYPE(cca(x, y, o), c10::ValueError,
                          "cca: epsilon must be finite and >= 0, but got -0.001");
  o = {};
  o.variance_cutoff = 1.5;
  EXPECT_THROWS_WITH(cca(x, y, o), "cca: variance_cutoff must be in [0, 1], but got 1.5");
  o = {};
  o.rank_rtol = -1.0;
  EXPECT_THROWS_WITH(cca(x, y, o), "cca: rank_rtol must be in [0, 1], but got -1");
  SvccaOptions s;
  s.fraction = 1.01;
  EXPECT_THROWS_WITH(svcca::svcca(x, y, s), "svcca: fraction must be in [0, 1], but got 1.01");
  s = {};
  s.dims = 0;
  EXPECT_THROWS_WITH(svcca::svcca(x, y, s), "svcca: dims must be >= 1, but got 0");
  EXPECT_THROWS_WITH(compat::get_cca_similarity(x.t(), y.t(), -1.0),
                     "get_cca_similarity: epsilon must be finite and >= 0");
  EXPECT_THROWS_WITH(compat::get_cca_similarity(x.t(), y.t(), 0.0, 1.5),
                     "get_cca_similarity: threshold must be in [0, 1], but got 1.5");
  EXPECT_THROWS_WITH(compat::sum_threshold(at::ones({3}), -0.1),
                     "sum_threshold: threshold must be in [0, 1], but got -0.1");
  EXPECT_THROWS_WITH(top_k_mean(at::ones({3}), 0), "top_k_mean: top_k must be >= 1, but got 0");
  EXPECT_THROWS_WITH(threshold_mean(at::ones({3}), 2.0),
                     "threshold_mean: threshold must be in [0, 1], but got 2");
}

TEST_F(ChecksTest, UndefinedTensor) {
  EXPECT_THROWS_WITH(cca(at::Tensor(), y), "cca: x and y must be defined tensors");
}

}  // namespace
}  // namespace svcca
