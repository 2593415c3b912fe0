// google/svcca's numbers: every public golden case (tests/golden, copied from shared/golden),
// through svcca::compat, plus cross-checks of the modern API on the same data.
#include "svcca/compat/compat.h"

#include "support/support.h"
#include "svcca/measures/cca.h"
#include "svcca/measures/pwcca.h"
#include "svcca/measures/svcca.h"

namespace svcca {
namespace {

using testing::golden_array;
using testing::golden_tol;
using testing::load_golden;
using testing::Tol;
namespace tol = testing::tol;

// Rows i < k of (ax, ay) are singular-vector pairs: equal to the golden rows up to one sign per
// pair. Returns the signs (+1/-1) found.
at::Tensor ExpectPairedRowsMatch(const at::Tensor& ax, const at::Tensor& gx, const at::Tensor& ay,
                                 const at::Tensor& gy, int64_t k, Tol t) {
  at::Tensor sign = (ax.narrow(0, 0, k) * gx.narrow(0, 0, k)).sum(1).sign();
  EXPECT_ALLCLOSE(ax.narrow(0, 0, k) * sign.unsqueeze(1), gx.narrow(0, 0, k), t);
  EXPECT_ALLCLOSE(ay.narrow(0, 0, k) * sign.unsqueeze(1), gy.narrow(0, 0, k), t);
  return sign;
}

// Rows k.. of a square orthogonal factor are an arbitrary basis: compare their projector.
void ExpectCompletionSpansMatch(const at::Tensor& a, const at::Tensor& g, int64_t k, Tol t) {
  const int64_t rest = a.size(0) - k;
  if (rest <= 0) return;
  at::Tensor pa = at::mm(a.narrow(0, k, rest).t(), a.narrow(0, k, rest));
  at::Tensor pg = at::mm(g.narrow(0, k, rest).t(), g.narrow(0, k, rest));
  EXPECT_ALLCLOSE(pa, pg, t);
}

// Checks a get_cca_similarity result against a golden case holding the reference's outputs.
void ExpectCcaSimilarityMatches(const compat::TensorDict& r, const nlohmann::json& g,
                                bool with_dirns) {
  const Tol coef_tol = golden_tol(g, "cca_coef1", tol::kGoldenDefault);
  EXPECT_ALLCLOSE(r.at("cca_coef1"), golden_array(g, "cca_coef1"), coef_tol);
  EXPECT_ALLCLOSE(r.at("cca_coef2"), golden_array(g, "cca_coef2"), coef_tol);
  EXPECT_ALLCLOSE(r.at("mean"), golden_array(g, "mean"), golden_tol(g, "mean", coef_tol));
  EXPECT_ALLCLOSE(r.at("sum"), golden_array(g, "sum"), golden_tol(g, "sum", coef_tol));
  EXPECT_TRUE(r.at("x_idxs").equal(golden_array(g, "x_idxs")));
  EXPECT_TRUE(r.at("y_idxs").equal(golden_array(g, "y_idxs")));
  const Tol inv_tol = golden_tol(g, "invsqrt_xx", tol::kGoldenDefault);
  for (const char* key : {"invsqrt_xx", "invsqrt_yy", "full_invsqrt_xx", "full_invsqrt_yy"}) {
    EXPECT_ALLCLOSE(r.at(key), golden_array(g, key), inv_tol) << key;
  }
  for (const char* key : {"neuron_means1", "neuron_means2"}) {
    EXPECT_ALLCLOSE(r.at(key), golden_array(g, key), golden_tol(g, "neuron_means1", inv_tol));
  }
  const int64_t k = r.at("cca_coef1").numel();
  const Tol vec_tol = golden_tol(g, "coef_vectors_after_sign_alignment", tol::kGoldenVectors);
  at::Tensor sign = ExpectPairedRowsMatch(r.at("coef_x"), golden_array(g, "coef_x"), r.at("coef_y"),
                                          golden_array(g, "coef_y"), k, vec_tol);
  ExpectCompletionSpansMatch(r.at("coef_x"), golden_array(g, "coef_x"), k, vec_tol);
  ExpectCompletionSpansMatch(r.at("coef_y"), golden_array(g, "coef_y"), k, vec_tol);
  // full_coef_*: the coefficient blocks embedded at the kept neurons, zeros elsewhere.
  for (const char* side : {"x", "y"}) {
    const std::string full = std::string("full_coef_") + side;
    at::Tensor idx = r.at(std::string(side) + "_idxs").nonzero().view({-1});
    at::Tensor block = r.at(full).index_select(0, idx).index_select(1, idx);
    EXPECT_TRUE(block.equal(r.at(std::string("coef_") + side)));
    at::Tensor outside = r.at(full).clone();
    outside.index_put_({idx.unsqueeze(1), idx.unsqueeze(0)}, 0.0);
    EXPECT_EQ(outside.abs().max().item<double>(), 0.0) << full;
  }
  if (!with_dirns) return;
  // cca_dirns: variate p on row kept[p], plus that row's neuron mean; flips with pair p's sign.
  for (int side = 0; side < 2; ++side) {
    const std::string key = side == 0 ? "cca_dirns1" : "cca_dirns2";
    at::Tensor means = r.at(side == 0 ? "neuron_means1" : "neuron_means2");
    at::Tensor kept = r.at(side == 0 ? "x_idxs" : "y_idxs").nonzero().view({-1});
    at::Tensor rows = kept.narrow(0, 0, k);
    at::Tensor a = (r.at(key) - means).index_select(0, rows) * sign.unsqueeze(1);
    at::Tensor e = (golden_array(g, key) - means).index_select(0, rows);
    EXPECT_ALLCLOSE(a, e, tol::kGoldenDefault) << key;
    at::Tensor removed = (~r.at(side == 0 ? "x_idxs" : "y_idxs")).nonzero().view({-1});
    EXPECT_ALLCLOSE(r.at(key).index_select(0, removed),
                    golden_array(g, key).index_select(0, removed), tol::kClosedForm64);
  }
}

TEST(GoldenTest, CcaSmall) {
  auto g = load_golden("cca_small");
  auto r = compat::get_cca_similarity(golden_array(g, "acts1"), golden_array(g, "acts2"), 0.0, 0.98,
                                      true, true);
  ExpectCcaSimilarityMatches(r, g, /*with_dirns=*/true);
  EXPECT_EQ(compat::sum_threshold(r.at("cca_coef1"), 0.98),
            golden_array(g, "sum_threshold_idx")[0].item<int64_t>());
  // The modern API on the same data, in its [n, p] layout.
  auto m = cca(golden_array(g, "acts1").t(), golden_array(g, "acts2").t());
  EXPECT_ALLCLOSE(m.correlations, golden_array(g, "cca_coef1"),
                  golden_tol(g, "cca_coef1", tol::kGoldenDefault));
}

TEST(GoldenTest, CcaDeadNeurons) {
  auto g = load_golden("cca_dead_neurons");
  at::Tensor a1 = golden_array(g, "acts1");
  at::Tensor a2 = golden_array(g, "acts2");
  auto r = compat::get_cca_similarity(a1, a2, 1e-10, 0.98, true, true);
  ExpectCcaSimilarityMatches(r, g, /*with_dirns=*/true);
  CcaOptions o;
  o.epsilon = 1e-10;
  o.variance_cutoff = 1e-10;
  auto m = cca(a1.t(), a2.t(), o);
  EXPECT_TRUE(m.x_mask.equal(golden_array(g, "x_idxs")));
  EXPECT_TRUE(m.y_mask.equal(golden_array(g, "y_idxs")));
  EXPECT_ALLCLOSE(m.correlations, golden_array(g, "cca_coef1"),
                  golden_tol(g, "cca_coef1", tol::kGoldenDefault));
}

TEST(GoldenTest, CcaDeadNeuronsWithoutEpsilonGivesAFiniteResult) {
  // The reference fails with LinAlgError here (sqrt of tiny negative eigenvalues); compat clamps.
  auto g = load_golden("cca_dead_neurons");
  auto r = compat::get_cca_similarity(golden_array(g, "acts1"), golden_array(g, "acts2"), 0.0);
  EXPECT_TRUE(at::isfinite(r.at("cca_coef1")).all().item<bool>());
  EXPECT_TRUE(r.at("x_idxs").all().item<bool>());  // epsilon = 0 keeps every neuron (>= test)
  EXPECT_ALLCLOSE(r.at("cca_coef1").narrow(0, 0, 20), golden_array(g, "cca_coef1").narrow(0, 0, 20),
                  tol::kGoldenDefault);
}

TEST(GoldenTest, CcaAllRemovedIsAClearError) {
  auto g = load_golden("cca_dead_neurons");
  EXPECT_THROWS_WITH_TYPE(
      compat::get_cca_similarity(golden_array(g, "acts1"), golden_array(g, "acts2"), 2.0),
      c10::ValueError, "epsilon must keep at least one neuron of acts1");
}

TEST(GoldenTest, CcaThresholdEdges) {
  auto g = load_golden("cca_threshold_edges");
  at::Tensor a1 = golden_array(g, "acts1");
  at::Tensor a2 = golden_array(g, "acts2");
  at::Tensor thresholds = golden_array(g, "thresholds");
  at::Tensor means = golden_array(g, "mean");
  at::Tensor idx = golden_array(g, "sum_threshold_idx");
  const Tol t = golden_tol(g, "mean", tol::kGoldenDefault);
  for (int64_t i = 0; i < thresholds.numel(); ++i) {
    const double th = thresholds[i].item<double>();
    SCOPED_TRACE(th);
    auto r = compat::get_cca_similarity(a1, a2, 0.0, th == 0.0 ? 0.98 : th);
    EXPECT_EQ(compat::sum_threshold(r.at("cca_coef1"), th), idx[i].item<int64_t>());
    if (th == 0.0) {
      // Documented deviation: the reference's mean is NaN (empty prefix); we refuse.
      EXPECT_TRUE(std::isnan(means[i].item<double>()));
      EXPECT_THROWS_WITH_TYPE(compat::get_cca_similarity(a1, a2, 0.0, th), c10::ValueError,
                              "threshold must be in (0, 1]");
    } else {
      EXPECT_ALLCLOSE(r.at("mean")[0], means[i], t);
    }
  }
}

TEST(GoldenTest, SumThresholdTable) {
  auto g = load_golden("sum_threshold_table");
  for (const auto& row : g.at("table")) {
    at::Tensor array = at::tensor(row.at("array").get<std::vector<double>>(), at::kDouble);
    const double th = row.at("threshold").get<double>();
    const int64_t expected = row.at("result").is_null() ? -1 : row.at("result").get<int64_t>();
    EXPECT_EQ(compat::sum_threshold(array, th), expected) << row.dump();
  }
}

TEST(GoldenTest, PwccaEqual50Dead) {
  auto g = load_golden("pwcca_equal50_dead");
  at::Tensor a1 = golden_array(g, "acts1");
  at::Tensor a2 = golden_array(g, "acts2");
  auto [value, weights, coefs] = compat::compute_pwcca(a1, a2, 1e-10);
  EXPECT_ALLCLOSE(value.reshape({1}), golden_array(g, "pwcca"),
                  golden_tol(g, "pwcca", tol::kGoldenDefault));
  EXPECT_ALLCLOSE(weights, golden_array(g, "weights"),
                  golden_tol(g, "weights", tol::kGoldenDefault));
  EXPECT_ALLCLOSE(coefs, golden_array(g, "coefs"), golden_tol(g, "coefs", tol::kGoldenDefault));
  // The modern op with the reference weighting, in the [n, p] layout, gives the same numbers.
  PwccaOptions o;
  o.cca.epsilon = 1e-10;
  o.cca.variance_cutoff = 1e-10;
  auto m = pwcca(a1.t(), a2.t(), o);
  EXPECT_FALSE(m.weights_from_y);
  EXPECT_ALLCLOSE(m.score.reshape({1}), golden_array(g, "pwcca"),
                  golden_tol(g, "pwcca", tol::kGoldenDefault));
  EXPECT_ALLCLOSE(m.weights, golden_array(g, "weights"),
                  golden_tol(g, "weights", tol::kGoldenDefault));
}

TEST(GoldenTest, SvccaTop20) {
  auto g = load_golden("svcca_top20");
  // Regenerate the inputs (not stored) from the case's numpy recipe, RandomState(4).
  testing::NumpyRandomState rs(4);
  at::Tensor lat = rs.randn(30, 2000) * at::linspace(3, .3, 30, at::kDouble).unsqueeze(1);
  at::Tensor m1 = rs.randn(100, 30);
  at::Tensor n1 = rs.randn(100, 2000);
  at::Tensor b1 = rs.randn(100, 1);
  at::Tensor acts1 = at::mm(m1, lat) + 0.05 * n1 + b1;
  at::Tensor shared = at::cat({lat.narrow(0, 0, 20), rs.randn(10, 2000)}, 0);
  at::Tensor m2 = rs.randn(80, 30);
  at::Tensor acts2 = at::mm(m2, shared) + 0.05 * rs.randn(80, 2000);

  auto p1 = compat::get_pca(acts1);
  auto p2 = compat::get_pca(acts2);
  EXPECT_ALLCLOSE(p1.at("eigenvals"), golden_array(g, "sv1"),
                  golden_tol(g, "sv1", tol::kGoldenDefault));
  EXPECT_ALLCLOSE(p2.at("eigenvals"), golden_array(g, "sv2"),
                  golden_tol(g, "sv1", tol::kGoldenDefault));
  // svacts = s[:20] * Vh[:20] = U[:, :20]^T (acts - means).
  auto reduce = [](const at::Tensor& acts, const compat::TensorDict& pca) {
    return at::mm(pca.at("neuron_coefs").narrow(0, 0, 20), acts - acts.mean(1, true));
  };
  auto r = compat::get_cca_similarity(reduce(acts1, p1), reduce(acts2, p2), 1e-10);
  const Tol t = golden_tol(g, "cca_coef1", tol::kGoldenDefault);
  EXPECT_ALLCLOSE(r.at("cca_coef1"), golden_array(g, "cca_coef1"), t);
  EXPECT_ALLCLOSE(r.at("mean"), golden_array(g, "mean"), t);
  const Tol st = golden_tol(g, "svcca_score", t);
  EXPECT_ALLCLOSE(r.at("cca_coef1").mean().reshape({1}), golden_array(g, "svcca_score"), st);
  // The recipe in one call (covariance eigenvectors instead of the wide SVD).
  auto rec = compat::get_svcca_similarity(acts1, acts2, 20, -1, 1e-10);
  EXPECT_ALLCLOSE(rec.at("cca_coef1"), golden_array(g, "cca_coef1"), t);
  EXPECT_ALLCLOSE(rec.at("mean"), golden_array(g, "mean"), t);
  EXPECT_ALLCLOSE(rec.at("svcca_score").reshape({1}), golden_array(g, "svcca_score"), st);
  const Tol svt = golden_tol(g, "sv1", tol::kGoldenDefault);
  EXPECT_ALLCLOSE(rec.at("sv1"), golden_array(g, "sv1").narrow(0, 0, 20), svt);
  EXPECT_ALLCLOSE(rec.at("sv2"), golden_array(g, "sv2").narrow(0, 0, 20), svt);
  // Unequal dims: the same as reducing by hand.
  auto reduce_k = [](const at::Tensor& acts, const compat::TensorDict& pca, int64_t k) {
    return at::mm(pca.at("neuron_coefs").narrow(0, 0, k), acts - acts.mean(1, true));
  };
  auto r2 = compat::get_cca_similarity(reduce_k(acts1, p1, 25), reduce_k(acts2, p2, 15), 1e-10);
  auto rec2 = compat::get_svcca_similarity(acts1, acts2, 25, 15, 1e-10);
  EXPECT_ALLCLOSE(rec2.at("cca_coef1"), r2.at("cca_coef1"), t);
  EXPECT_EQ(rec2.at("sv2").numel(), 15);
  EXPECT_THROWS_WITH_TYPE(compat::get_svcca_similarity(acts1, acts2, 101), c10::ValueError,
                          "dims1 must be in [1, 100]");
  EXPECT_THROWS_WITH_TYPE(compat::get_svcca_similarity(acts1, acts2, 20, 0), c10::ValueError,
                          "dims2 must be in [1, 80]");
  // Modern svcca with the tutorial's fixed 20 directions.
  SvccaOptions o;
  o.dims = 20;
  o.cca.epsilon = 1e-10;
  auto m = svcca::svcca(acts1.t(), acts2.t(), o);
  EXPECT_ALLCLOSE(m.correlations, golden_array(g, "cca_coef1"), t);
  EXPECT_ALLCLOSE(m.score.reshape({1}), golden_array(g, "svcca_score"), st);
}

TEST(GoldenTest, PlsEqual) {
  auto g = load_golden("pls_equal");
  at::Tensor a1 = golden_array(g, "acts1");
  at::Tensor a2 = golden_array(g, "acts2");
  auto r = compat::get_pls_similarity(a1, a2);
  EXPECT_ALLCLOSE(r.at("eigenvals"), golden_array(g, "eigenvals"),
                  golden_tol(g, "eigenvals", tol::kGoldenDefault));
  const int64_t k = r.at("eigenvals").numel();
  const Tol vt = golden_tol(g, "neuron_coeffs", tol::kGoldenVectors);
  at::Tensor sign =
      ExpectPairedRowsMatch(r.at("neuron_coeffs1"), golden_array(g, "neuron_coeffs1"),
                            r.at("neuron_coeffs2"), golden_array(g, "neuron_coeffs2"), k, vt);
  for (int side = 1; side <= 2; ++side) {
    const std::string key = "pls_dirns" + std::to_string(side);
    at::Tensor means = (side == 1 ? a1 : a2).mean(1, true);
    EXPECT_ALLCLOSE((r.at(key) - means) * sign.unsqueeze(1), golden_array(g, key) - means,
                    tol::kGoldenDefault)
        << key;
  }
}

TEST(GoldenTest, PlsUnequalSizesWorks) {
  // The reference fails to broadcast here; compat adds neuron i's mean to direction i.
  at::Tensor a1 = at::randn({12, 300}, at::kDouble);
  at::Tensor a2 = at::randn({9, 300}, at::kDouble);
  auto r = compat::get_pls_similarity(a1, a2);
  EXPECT_EQ(r.at("pls_dirns1").sizes(), (at::IntArrayRef{9, 300}));
  at::Tensor centered = at::mm(r.at("neuron_coeffs1"), a1 - a1.mean(1, true));
  EXPECT_ALLCLOSE(r.at("pls_dirns1") - a1.mean(1, true).narrow(0, 0, 9), centered,
                  tol::kClosedForm64);
}

TEST(GoldenTest, PcaBasic) {
  auto g = load_golden("pca_basic");
  at::Tensor acts = golden_array(g, "acts");
  auto r = compat::get_pca(acts, /*compute_dirns=*/true);
  EXPECT_ALLCLOSE(r.at("eigenvals"), golden_array(g, "eigenvals"),
                  golden_tol(g, "eigenvals", tol::kGoldenDefault));
  at::Tensor gc = golden_array(g, "neuron_coefs");
  at::Tensor sign = (r.at("neuron_coefs") * gc).sum(1).sign().unsqueeze(1);
  EXPECT_ALLCLOSE(r.at("neuron_coefs") * sign, gc,
                  golden_tol(g, "neuron_coefs", tol::kGoldenVectors));
  at::Tensor means = acts.mean(1, true);
  EXPECT_ALLCLOSE((r.at("pca_dirns") - means) * sign, golden_array(g, "pca_dirns") - means,
                  tol::kGoldenDefault);
}

}  // namespace
}  // namespace svcca
