// Orthogonal Procrustes similarity and distance of two layers (Ding et al. 2021).
#pragma once

#include <ATen/core/Tensor.h>

#include "svcca/linalg.h"

namespace svcca {

struct ProcrustesOptions {
  // Precision of the numerics (svcca.h).
  Precision precision = Precision::kFloat64;
};

// Orthogonal Procrustes on centered, Frobenius-normalized inputs. With X, Y the column-centered
// x: [n, p1] and y: [n, p2] scaled to ||X||_F = ||Y||_F = 1:
//   procrustes(x, y)          = ||X^T Y||_*                (score: nuclear norm, in [0, 1])
//   procrustes_distance(x, y) = 2 - 2 ||X^T Y||_*          (distance, in [0, 2])
// The distance is min over orthogonal Q of ||X Q - Y||_F^2 when p1 = p2 (the squared orthogonal
// Procrustes distance of Ding et al. 2021; Schonemann 1966 for the minimizer), and the same after
// zero-padding the narrower layer when p1 != p2 (then Q is a partial isometry). Its square root
// is a metric; Williams et al. (2021) use the angle arccos(score) instead. The score is 1 exactly
// when y is a scaled, rotated/reflected, translated copy of x (and a layer is padded with zero
// features). Both are symmetric; 0-d tensors in the input dtype, on the input device (svcca.h),
// clamped to their ranges against rounding. The nuclear norm is the sum of the singular values of a
// [p1, p2] matrix: O(n p1 p2 + p1 p2 min(p1, p2)), no n x n matrix.
// Throws (c10::ValueError / c10::TypeError) when the inputs are not both 2-D real float tensors on
// one device with the same n >= 2, contain NaN/Inf, or when a layer is constant (every feature:
// it cannot be normalized).
//   at::Tensor s = svcca::procrustes(x, y);  at::Tensor d = svcca::procrustes_distance(x, y);
at::Tensor procrustes(const at::Tensor& x, const at::Tensor& y,
                      const ProcrustesOptions& options = {});
at::Tensor procrustes_distance(const at::Tensor& x, const at::Tensor& y,
                               const ProcrustesOptions& options = {});

}  // namespace svcca
