// Power-of-two scales for the streaming accumulators: moments kept in units where the data is of
// order one, so that a batch at 1e200 (or 1e-200) neither overflows nor underflows them.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <string>

#include <c10/util/Exception.h>

#include "svcca/linalg.h"

namespace svcca {
namespace detail {

// Data of magnitude within [2^-K, 2^K] is stored unscaled (scale 1, so that ordinary data gives
// bitwise the numbers it always gave); beyond, it is divided by a power of two near its magnitude.
// K keeps every product the measures take of the moments (up to fourth powers, times n^2 p^2)
// inside the accumulation dtype's range.
inline int safe_exponent(at::ScalarType accumulation_dtype) {
  return accumulation_dtype == at::kFloat ? 16 : 64;
}

// The exponent k (scale 2^k) for data whose largest magnitude is m: 0 when m is 0, not finite or
// within [2^-K, 2^K], else the k with m / 2^k in [1, 2).
inline int scale_exponent(double m, int K) {
  if (!(m > 0.0) || !std::isfinite(m)) return 0;
  int e = 0;
  std::frexp(m, &e);  // m = f 2^e, f in [0.5, 1)
  if (e - 1 >= -K && e <= K) return 0;
  return e - 1;
}

// t * 2^k: detail::mul_pow2 (svcca/linalg.h).

// 2^k as a double, clamped to the finite range (for messages and the state's "scale" entries;
// |k| <= 1074 in practice).
inline double pow2(int k) {
  return std::ldexp(1.0, std::max(-1074, std::min(1023, k)));
}

// The exponent of a state's scale entry, which must be a finite positive power of two.
// `what` names the entry in the message.
inline int parse_scale(const char* fn, const std::string& what, double v) {
  int e = 0;
  const double f = std::isfinite(v) && v > 0.0 ? std::frexp(v, &e) : 0.0;
  TORCH_CHECK_VALUE(f == 0.5, fn, ": ", what, " must be a finite positive power of two, but got ",
                    v);
  return e - 1;
}

}  // namespace detail
}  // namespace svcca
