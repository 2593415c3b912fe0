// Test support: tolerance table, tensor comparison, error assertions, seeded factories, the
// dtype/device matrix, numpy's legacy random generator, and golden JSON access.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

namespace svcca {
namespace testing {

// {rtol, atol}: named, so that the order cannot be swapped by accident.
struct Tol {
  double rtol;
  double atol;
};

// The one tolerance table. Tighten or loosen here, never in a test.
namespace tol {
inline constexpr Tol kClosedForm64{1e-10, 1e-12};  // float64, exact closed-form identities
inline constexpr Tol kDecomp64{1e-8, 1e-10};       // float64 after eigh/SVD/QR
// float64 products of data with canonical weights of an ill-conditioned layer (kept eigenvalues
// spanning 1e12: weights up to 1e6 times the data's scale), formed by the test itself: their
// rounding is about eps |x| |w| sqrt(n), 1e-10 on some BLAS kernels (OpenBLAS picks them by CPU).
inline constexpr Tol kIllConditioned64{1e-8, 1e-9};
inline constexpr Tol kFloat32{1e-4, 1e-5};        // float32 anywhere
inline constexpr Tol kGoldenVectors{0.0, 1e-6};   // golden singular vectors, after sign alignment
inline constexpr Tol kGoldenDefault{1e-6, 1e-8};  // golden outputs whose file states no tolerance
// float64, streamed (accumulated moments) against one-shot: the same code path on moments that
// differ only by rounding (Chan et al.'s update is backward stable), so closed-form tight.
inline constexpr Tol kStreamed64{1e-10, 1e-12};
// Published numbers quoted to 5 (6) decimals: half a unit in the last quoted place.
inline constexpr Tol kQuoted5{0.0, 5e-6};
inline constexpr Tol kQuoted6{0.0, 5e-7};
// Fourier CCA golden (dft_same_size): the reference ran its FFT in complex64, so coefficients
// agree to ~1e-6 only; the file states atol 1e-5 (golden_tol reads it; this is the fallback).
inline constexpr Tol kGoldenComplex64Fft{0.0, 1e-5};
}  // namespace tol

// Tolerance for results computed from inputs of `dtype` (closed_form: an exact identity).
Tol tol_for(at::ScalarType dtype, bool closed_form = false);

// Shape, dtype and device first (allclose would broadcast), then values; reports the largest
// absolute and relative error and where they occur.
::testing::AssertionResult AllClose(const at::Tensor& actual, const at::Tensor& expected, Tol t);
#define EXPECT_ALLCLOSE(actual, expected, tol) \
  EXPECT_TRUE(::svcca::testing::AllClose((actual), (expected), (tol)))

// Expects `stmt` to throw a c10::Error of type `ErrorType` (c10::Error accepts any) whose message
// without backtrace contains `substring`.
template <typename ErrorType, typename F>
::testing::AssertionResult ThrowsWith(F&& f, const std::string& substring, const char* stmt) {
  try {
    f();
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    if (dynamic_cast<const ErrorType*>(&e) == nullptr) {
      return ::testing::AssertionFailure() << stmt << " threw the wrong error type: " << msg;
    }
    if (msg.find(substring) != std::string::npos) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << stmt << " threw \"" << msg << "\"\nexpected it to contain \"" << substring << "\"";
  }
  return ::testing::AssertionFailure() << "expected " << stmt << " to throw";
}
#define EXPECT_THROWS_WITH_TYPE(stmt, ErrorType, substring) \
  EXPECT_TRUE(::svcca::testing::ThrowsWith<ErrorType>([&]() { (void)(stmt); }, (substring), #stmt))
#define EXPECT_THROWS_WITH(stmt, substring) EXPECT_THROWS_WITH_TYPE(stmt, c10::Error, substring)

// Seeds torch in the constructor, so every test starts from the same state.
class SeedingFixture : public ::testing::Test {
 protected:
  SeedingFixture() { at::manual_seed(0); }
};

// The dtype x device matrix.
struct DtypeDevice {
  at::ScalarType dtype;
  at::DeviceType device;
};
std::string PrintToString(const DtypeDevice& p);
std::vector<DtypeDevice> dtype_device_matrix();
std::string dtype_device_name(const ::testing::TestParamInfo<DtypeDevice>& info);

class MatrixTest : public ::testing::TestWithParam<DtypeDevice> {
 protected:
  void SetUp() override;
  at::TensorOptions opts() const;  // float64 on the parameter's device
  // Casts a float64 test input to the parameter's dtype.
  at::Tensor in(const at::Tensor& t) const { return t.to(GetParam().dtype); }
  Tol tol(bool closed_form = false) const { return tol_for(GetParam().dtype, closed_form); }
};

// [rows, cols] with orthonormal columns (QR of a seeded Gaussian matrix), float64.
at::Tensor orthonormal_columns(int64_t rows, int64_t cols, at::TensorOptions opts);
// [n, p] with centered, mutually orthogonal columns of squared norm n - 1 (unit variance),
// generated together so that different blocks are orthogonal to each other too.
at::Tensor whitened_columns(int64_t n, int64_t p, at::TensorOptions opts);
// A well-conditioned invertible [p, p] matrix: Q diag(linspace(1, 3)) Q'.
at::Tensor well_conditioned(int64_t p, at::TensorOptions opts);
// Pearson correlation of two vectors.
double pearson(const at::Tensor& a, const at::Tensor& b);

// numpy's legacy RandomState: MT19937 seeded like std::mt19937(seed), 53-bit doubles, polar
// Gaussians with the cached second value.
class NumpyRandomState {
 public:
  explicit NumpyRandomState(uint32_t seed) : mt_(seed) {}
  double uniform();
  double gauss();
  at::Tensor randn(int64_t rows, int64_t cols);  // float64, row-major fill
 private:
  std::mt19937 mt_;
  bool has_gauss_ = false;
  double gauss_ = 0.0;
};

// Golden cases (tests/golden): one JSON per case.
nlohmann::json load_golden(const std::string& name);
// Array `key` of a golden case as a float64 (or int64/bool) CPU tensor; NaN for null.
at::Tensor golden_array(const nlohmann::json& golden, const std::string& key);
// Tolerance stated by a golden case for `key`, or `fallback`.
Tol golden_tol(const nlohmann::json& golden, const std::string& key, Tol fallback);

}  // namespace testing
}  // namespace svcca
