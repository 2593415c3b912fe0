// Test support implementation.
#include "support/support.h"

#include <cmath>
#include <fstream>
#include <sstream>

#ifndef SVCCA_GOLDEN_DIR
#error "SVCCA_GOLDEN_DIR must point at tests/golden"
#endif

namespace svcca {
namespace testing {

Tol tol_for(at::ScalarType dtype, bool closed_form) {
  if (dtype == at::kFloat) return tol::kFloat32;
  return closed_form ? tol::kClosedForm64 : tol::kDecomp64;
}

::testing::AssertionResult AllClose(const at::Tensor& actual, const at::Tensor& expected, Tol t) {
  if (!actual.defined() || !expected.defined()) {
    return ::testing::AssertionFailure() << "undefined tensor";
  }
  if (actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure()
           << "shape " << actual.sizes() << " != expected " << expected.sizes();
  }
  if (actual.scalar_type() != expected.scalar_type()) {
    return ::testing::AssertionFailure()
           << "dtype " << actual.scalar_type() << " != expected " << expected.scalar_type();
  }
  if (actual.device() != expected.device()) {
    return ::testing::AssertionFailure()
           << "device " << actual.device() << " != expected " << expected.device();
  }
  if (actual.numel() == 0) return ::testing::AssertionSuccess();
  at::Tensor a = actual.detach().to(at::kCPU, at::kDouble);
  at::Tensor e = expected.detach().to(at::kCPU, at::kDouble);
  at::Tensor diff = (a - e).abs();
  at::Tensor allowed = t.atol + t.rtol * e.abs();
  at::Tensor bad = (diff > allowed) | (a.isnan() != e.isnan());
  if (!bad.any().item<bool>()) return ::testing::AssertionSuccess();
  const int64_t worst = (diff - allowed).nan_to_num(1e300).flatten().argmax().item<int64_t>();
  const double rel = (diff / e.abs()).flatten()[worst].item<double>();
  return ::testing::AssertionFailure()
         << bad.sum().item<int64_t>() << " of " << a.numel() << " entries differ (rtol " << t.rtol
         << ", atol " << t.atol << "); worst at flat index " << worst << ": actual "
         << a.flatten()[worst].item<double>() << ", expected " << e.flatten()[worst].item<double>()
         << ", abs err " << diff.flatten()[worst].item<double>() << ", rel err " << rel
         << "; max abs err " << diff.nan_to_num(0).max().item<double>();
}

std::string PrintToString(const DtypeDevice& p) {
  return std::string(p.dtype == at::kFloat ? "float32" : "float64") +
         (p.device == at::kCUDA ? "_cuda" : "_cpu");
}

std::vector<DtypeDevice> dtype_device_matrix() {
  return {{at::kDouble, at::kCPU},
          {at::kFloat, at::kCPU},
          {at::kDouble, at::kCUDA},
          {at::kFloat, at::kCUDA}};
}

std::string dtype_device_name(const ::testing::TestParamInfo<DtypeDevice>& info) {
  return PrintToString(info.param);
}

void MatrixTest::SetUp() {
  at::manual_seed(0);
  if (GetParam().device == at::kCUDA && !at::hasCUDA()) {
    GTEST_SKIP() << "CUDA is not available";
  }
}

at::TensorOptions MatrixTest::opts() const {
  return at::TensorOptions().dtype(at::kDouble).device(GetParam().device);
}

at::Tensor orthonormal_columns(int64_t rows, int64_t cols, at::TensorOptions opts) {
  at::Tensor g = at::randn({rows, cols}, opts.dtype(at::kDouble).device(at::kCPU));
  return std::get<0>(at::linalg_qr(g, "reduced")).to(opts.device());
}

at::Tensor whitened_columns(int64_t n, int64_t p, at::TensorOptions opts) {
  // Orthonormal columns orthogonal to the all-ones vector: QR of [1, G], drop the first.
  at::Tensor g = at::randn({n, p + 1}, opts.dtype(at::kDouble).device(at::kCPU));
  g.select(1, 0).fill_(1.0);
  at::Tensor q = std::get<0>(at::linalg_qr(g, "reduced")).narrow(1, 1, p);
  return (q * std::sqrt(static_cast<double>(n - 1))).to(opts.device());
}

at::Tensor well_conditioned(int64_t p, at::TensorOptions opts) {
  at::Tensor q = orthonormal_columns(p, p, opts);
  at::Tensor d = at::linspace(1.0, 3.0, p, opts.dtype(at::kDouble));
  return at::mm(q * d, q.t());
}

double pearson(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor ac = a.to(at::kDouble) - a.to(at::kDouble).mean();
  at::Tensor bc = b.to(at::kDouble) - b.to(at::kDouble).mean();
  return ((ac * bc).sum() / (ac.norm() * bc.norm())).item<double>();
}

double NumpyRandomState::uniform() {
  const uint64_t a = mt_() >> 5;
  const uint64_t b = mt_() >> 6;
  return (static_cast<double>(a) * 67108864.0 + static_cast<double>(b)) / 9007199254740992.0;
}

double NumpyRandomState::gauss() {
  if (has_gauss_) {
    has_gauss_ = false;
    return gauss_;
  }
  double x1, x2, r2;
  do {
    x1 = 2.0 * uniform() - 1.0;
    x2 = 2.0 * uniform() - 1.0;
    r2 = x1 * x1 + x2 * x2;
  } while (r2 >= 1.0 || r2 == 0.0);
  const double f = std::sqrt(-2.0 * std::log(r2) / r2);
  gauss_ = f * x1;
  has_gauss_ = true;
  return f * x2;
}

at::Tensor NumpyRandomState::randn(int64_t rows, int64_t cols) {
  at::Tensor t = at::empty({rows, cols}, at::kDouble);
  double* p = t.data_ptr<double>();
  for (int64_t i = 0; i < rows * cols; ++i) p[i] = gauss();
  return t;
}

nlohmann::json load_golden(const std::string& name) {
  const std::string path = std::string(SVCCA_GOLDEN_DIR) + "/" + name + ".json";
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open golden file " + path);
  return nlohmann::json::parse(in);
}

at::Tensor golden_array(const nlohmann::json& golden, const std::string& key) {
  const auto& a = golden.at("arrays").at(key);
  std::vector<int64_t> shape = a.at("shape").get<std::vector<int64_t>>();
  const std::string dtype = a.at("dtype").get<std::string>();
  const auto& data = a.at("data");
  std::vector<double> values;
  values.reserve(data.size());
  for (const auto& v : data) {
    values.push_back(v.is_null() ? std::nan("") : v.get<double>());
  }
  at::Tensor t = at::tensor(values, at::kDouble).reshape(shape);
  if (dtype == "uint8" || dtype == "bool") return t.to(at::kBool);
  if (dtype.rfind("int", 0) == 0) return t.to(at::kLong);
  return t;
}

Tol golden_tol(const nlohmann::json& golden, const std::string& key, Tol fallback) {
  if (!golden.contains("tolerance") || !golden.at("tolerance").contains(key)) return fallback;
  const auto& v = golden.at("tolerance").at(key);
  return {v.at(0).get<double>(), v.at(1).get<double>()};
}

}  // namespace testing
}  // namespace svcca
