// Every torch.ops.svcca op is found through the dispatcher and equals the direct C++ call.
#include <ATen/core/dispatch/Dispatcher.h>

#include "support/support.h"
#include "svcca/svcca.h"

namespace svcca {
namespace {

c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

class DispatcherTest : public testing::SeedingFixture {
 protected:
  at::Tensor x = at::randn({120, 5}, at::kDouble);
  at::Tensor y = x.narrow(1, 0, 3) + at::randn({120, 3}, at::kDouble);
};

TEST_F(DispatcherTest, CcaSvccaPwcca) {
  using CcaSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, double, double, c10::optional<double>, c10::string_view,
      bool);
  auto c = op("svcca::cca").typed<CcaSig>().call(x, y, 0.0, 0.0, c10::nullopt, "float64", false);
  auto direct = cca(x, y);
  EXPECT_ALLCLOSE(std::get<0>(c), direct.correlations, testing::tol::kClosedForm64);
  EXPECT_ALLCLOSE(std::get<1>(c), direct.x_weights, testing::tol::kClosedForm64);
  EXPECT_TRUE(std::get<3>(c).equal(direct.x_mask));

  using SvccaSig = std::tuple<at::Tensor, at::Tensor, int64_t, int64_t>(
      const at::Tensor&, const at::Tensor&, double, c10::optional<int64_t>, c10::string_view,
      double, double, c10::optional<double>, c10::string_view, bool);
  auto s = op("svcca::svcca")
               .typed<SvccaSig>()
               .call(x, y, 0.9, c10::nullopt, "singular_value_mass", 0.0, 0.0, c10::nullopt,
                     "float64", false);
  SvccaOptions so;
  so.fraction = 0.9;
  so.keep = SvccaKeep::kSingularValueMass;
  auto sd = svcca::svcca(x, y, so);
  EXPECT_ALLCLOSE(std::get<0>(s), sd.score, testing::tol::kClosedForm64);
  EXPECT_EQ(std::get<2>(s), sd.x_dims);

  using PwccaSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, c10::string_view, double, double, c10::optional<double>,
      c10::string_view, bool);
  auto p = op("svcca::pwcca")
               .typed<PwccaSig>()
               .call(x, y, "canonical_variates", 0.0, 0.0, c10::nullopt, "float64", false);
  PwccaOptions po;
  po.weighting = PwccaWeighting::kCanonicalVariates;
  EXPECT_ALLCLOSE(std::get<0>(p), pwcca(x, y, po).score, testing::tol::kClosedForm64);
}

TEST_F(DispatcherTest, CkaAndProcrustes) {
  using LinearSig = at::Tensor(const at::Tensor&, const at::Tensor&, bool, c10::string_view);
  LinearCkaOptions lo;
  lo.debiased = true;
  EXPECT_ALLCLOSE(op("svcca::linear_cka").typed<LinearSig>().call(x, y, true, "float64"),
                  linear_cka(x, y, lo), testing::tol::kClosedForm64);

  using RbfSig = at::Tensor(const at::Tensor&, const at::Tensor&, double, c10::optional<double>,
                            bool, c10::string_view);
  RbfCkaOptions ro;
  ro.threshold = 0.5;
  EXPECT_ALLCLOSE(
      op("svcca::rbf_cka").typed<RbfSig>().call(x, y, 0.5, c10::nullopt, false, "float64"),
      rbf_cka(x, y, ro), testing::tol::kClosedForm64);
  ro.sigma = 2.0;
  ro.debiased = true;
  EXPECT_ALLCLOSE(op("svcca::rbf_cka").typed<RbfSig>().call(x, y, 0.5, 2.0, true, "float64"),
                  rbf_cka(x, y, ro), testing::tol::kClosedForm64);

  using ProcrustesSig = at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view);
  EXPECT_ALLCLOSE(op("svcca::procrustes").typed<ProcrustesSig>().call(x, y, "float64"),
                  procrustes(x, y), testing::tol::kClosedForm64);
  EXPECT_ALLCLOSE(op("svcca::procrustes_distance").typed<ProcrustesSig>().call(x, y, "float64"),
                  procrustes_distance(x, y), testing::tol::kClosedForm64);
  EXPECT_THROWS_WITH_TYPE(
      op("svcca::linear_cka").typed<LinearSig>().call(x, y, false, "half"), c10::ValueError,
      "linear_cka: precision must be \"float64\" or \"input\", but got \"half\"");
}

TEST_F(DispatcherTest, UnknownOptionStringsAreValueErrors) {
  using PwccaSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, c10::string_view, double, double, c10::optional<double>,
      c10::string_view, bool);
  EXPECT_THROWS_WITH_TYPE(
      op("svcca::pwcca")
          .typed<PwccaSig>()
          .call(x, y, "paper", 0.0, 0.0, c10::nullopt, "float64", false),
      c10::ValueError,
      "pwcca: weighting must be \"reference\" or \"canonical_variates\", but got \"paper\"");
  EXPECT_THROWS_WITH_TYPE(op("svcca::pwcca")
                              .typed<PwccaSig>()
                              .call(x, y, "reference", 0.0, 0.0, c10::nullopt, "half", false),
                          c10::ValueError,
                          "pwcca: precision must be \"float64\" or \"input\", but got \"half\"");
}

TEST_F(DispatcherTest, CompatOps) {
  using DictSig = c10::Dict<std::string, at::Tensor>(const at::Tensor&, const at::Tensor&, double,
                                                     double, bool, bool);
  auto d =
      op("svcca::get_cca_similarity").typed<DictSig>().call(x.t(), y.t(), 0.0, 0.98, true, false);
  auto direct = compat::get_cca_similarity(x.t(), y.t());
  for (const char* key : {"cca_coef1", "mean", "sum", "coef_x", "full_invsqrt_yy"}) {
    EXPECT_ALLCLOSE(d.at(key), direct.at(key), testing::tol::kClosedForm64) << key;
  }
  EXPECT_EQ(d.size(), direct.size());

  using PwSig =
      std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double);
  auto pw = op("svcca::compute_pwcca").typed<PwSig>().call(x.t(), y.t(), 0.0);
  EXPECT_ALLCLOSE(std::get<0>(pw), std::get<0>(compat::compute_pwcca(x.t(), y.t())),
                  testing::tol::kClosedForm64);

  using StSig = int64_t(const at::Tensor&, double);
  EXPECT_EQ(op("svcca::sum_threshold").typed<StSig>().call(at::tensor({0.5, 0.5}), 0.5), 1);

  using PlsSig = c10::Dict<std::string, at::Tensor>(const at::Tensor&, const at::Tensor&);
  auto pls = op("svcca::get_pls_similarity").typed<PlsSig>().call(x.t(), y.t());
  EXPECT_ALLCLOSE(pls.at("eigenvals"), compat::get_pls_similarity(x.t(), y.t()).at("eigenvals"),
                  testing::tol::kClosedForm64);

  using PcaSig = c10::Dict<std::string, at::Tensor>(const at::Tensor&, bool);
  auto pca = op("svcca::get_pca").typed<PcaSig>().call(x.t(), true);
  EXPECT_TRUE(pca.contains("pca_dirns"));
  EXPECT_ALLCLOSE(pca.at("eigenvals"), compat::get_pca(x.t(), false).at("eigenvals"),
                  testing::tol::kClosedForm64);
}

}  // namespace
}  // namespace svcca
