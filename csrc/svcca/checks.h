// Boundary validation shared by every public entry point, with one message style:
// "<function>: <argument> must <requirement>, but got <actual>".
#pragma once

#include <ATen/core/Tensor.h>

namespace svcca {
namespace detail {

// Formats a shape as "[100, 64]".
std::string shape_str(const at::Tensor& t);

// t is a defined, non-empty 2-D real floating tensor (float32/float64) with finite values.
void check_matrix(const char* fn, const char* name, const at::Tensor& t);

// x and y are valid matrices (check_matrix), on the same device, with the same number of
// examples along dim `examples_dim` (0 for [n, p] layouts, 1 for google/svcca's layout), and at
// least two examples.
void check_pair(const char* fn, const at::Tensor& x, const at::Tensor& y, int64_t examples_dim = 0);

// t has enough examples for CCA on its features: n >= p + 2 in the modern layout (centered data
// has rank <= n - 1, so p = n - 1 features already span every direction), and n > p in
// google/svcca's layout (examples_dim = 1), which is the reference's own check.
void check_more_examples_than_features(const char* fn, const char* name, const at::Tensor& t,
                                       int64_t examples_dim = 0);

// value lies in [0, 1].
void check_unit_interval(const char* fn, const char* name, double value);

// value is finite and >= 0.
void check_non_negative(const char* fn, const char* name, double value);

}  // namespace detail
}  // namespace svcca
